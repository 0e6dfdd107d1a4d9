//! The run journal: what a run did, one JSON record per line, appended and flushed to disk before anything
//! that depends on it (the next AWS call, the next job). `--resume` replays it; gc asks it which runs are
//! still in progress; a second Ctrl-C prints what it says may be left.
//!
//! A journal lives beside its fleet file, `.fleetbake/<fleet file stem>/<run id>.jsonl`. The first line is a
//! [`Header`]; every line after it is a [`Record`]. The process running the run holds an exclusive lock on the
//! file, so "in progress" means "locked": a run killed with `kill -9` releases it with its process.
//!
//! Reading never guesses: a journal from a newer format, or a record that does not parse in the middle of the
//! file, is an error naming the file and line. Only a torn last line (the process died while writing it) is
//! dropped, with a warning, and cut off before the journal is appended to again.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::cloud::ImageId;
use crate::config::variables::VariableDigests;
use crate::config::{Fleet, Selection};
use crate::outcome::{Artifact, Failure, Publication, RunStatus};
use crate::plan::bound::{BuildDuration, JobDurations};
use crate::plan::{JobId, JobKey, Plan, PlannedJob, RunId};
use crate::steps::ledger::{Ledger, Resource};

/// The first line's `format`.
pub const JOURNAL_FORMAT: &str = "fleetbake-journal";
/// The version this fleetbake writes and the newest it reads.
pub const JOURNAL_VERSION: u32 = 2;

/// The first line: which run of which fleet, and the jobs its plan had.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub fleet: String,
    pub run_id: RunId,
    pub started_at: DateTime<Utc>,
    /// Every job of the plan and the image name it makes: a resume must make the same ones.
    pub jobs: Vec<PlannedJob>,
    /// The run's `--only` / `--except`: a resume re-plans with them.
    #[serde(default, skip_serializing_if = "Selection::is_everything")]
    pub selection: Selection,
    /// Each `[variables]` value's digest (salted with the run id; never a value): a resume must have the same.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: VariableDigests,
}

impl Header {
    pub fn new(plan: &Plan) -> Self {
        Header {
            format: JOURNAL_FORMAT.to_string(),
            version: JOURNAL_VERSION,
            fleet: plan.fleet.clone(),
            run_id: plan.run_id.clone(),
            started_at: plan.started_at,
            jobs: plan.planned_jobs(),
            selection: plan.selection.clone(),
            variables: plan.variables.clone(),
        }
    }
}

/// One line after the header.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "record", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// A process started (1) or resumed (2, 3, …) the run.
    Attempt {
        attempt: u32,
        pid: u32,
        at: DateTime<Utc>,
    },
    /// A temporary resource exists.
    Created {
        job: JobKey,
        resource: Resource,
    },
    /// A temporary resource is gone.
    Removed {
        resource: Resource,
    },
    /// CreateImage or CopyImage answered: the image exists (pending).
    ImageRequested {
        job: JobKey,
        image_id: ImageId,
    },
    /// The job's image ended `failed` and was deregistered (by the job, or by a resume).
    ImageDiscarded {
        job: JobKey,
        image_id: ImageId,
    },
    ImageAvailable {
        job: JobKey,
        artifact: Artifact,
    },
    JobFailed {
        job: JobKey,
        failure: Failure,
    },
    /// The job's image was published (`[publish]`).
    Published {
        job: JobKey,
        publication: Publication,
    },
    /// How long a job took, in seconds from its start: to its image (if it made one) and to its end. The next
    /// run's live view estimates from them.
    JobTimed {
        job: JobKey,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_image: Option<f64>,
        to_end: f64,
    },
    /// The process ended the run; `interrupted` runs can be resumed.
    Finished {
        status: RunStatus,
        interrupted: bool,
    },
    /// `--keep-failed`: a failed build's temporary resource is kept (tagged `fleetbake:keep-until`) until
    /// `until`: no longer outstanding; `gc` removes it once the time is past.
    Kept {
        job: JobKey,
        resource: Resource,
        until: DateTime<Utc>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}:1: not a fleetbake journal: {why}", path.display())]
    NotAJournal { path: PathBuf, why: String },
    #[error("{}:1: journal format version {version} was written by a newer fleetbake (this one reads up to {JOURNAL_VERSION}); resume it with that version", path.display())]
    Newer { path: PathBuf, version: u64 },
    #[error("{}:{line}: corrupt journal record: {why}; a torn last line is recovered, but this one has whole records after it — fix or remove the file", path.display())]
    Corrupt { path: PathBuf, line: usize, why: String },
    #[error("{}: the journal is of fleet `{found}`, not `{expected}`", path.display())]
    OtherFleet { path: PathBuf, found: String, expected: String },
    #[error("{}: run {run_id} is in progress (another fleetbake holds its journal)", path.display())]
    InProgress { path: PathBuf, run_id: RunId },
    #[error("{}: the fleet file no longer plans what run {run_id} planned ({detail}); finish it with the fleet file it started with, or start a new run without --resume", path.display())]
    PlanChanged { path: PathBuf, run_id: RunId, detail: String },
    #[error("{}: run {run_id} started with other values of {names} (the journal keeps a digest of each); resume it with the values it started with, or start a new run without --resume", path.display())]
    VariablesChanged { path: PathBuf, run_id: RunId, names: String },
    #[error("nothing to resume: no interrupted or unfinished run of this fleet in `{}`", dir.display())]
    NothingToResume { dir: PathBuf },
    #[error("another fleetbake is running this fleet file: {holder} holds `{}`; let it finish (or stop it, then `--resume` it) before starting another", path.display())]
    Busy { path: PathBuf, holder: String },
}

impl JournalError {
    fn io(path: &Path, error: std::io::Error) -> Self {
        JournalError::Io { path: path.to_path_buf(), error }
    }
}

/// The journals of one fleet file: `.fleetbake/<stem>/` beside it, the file found through any symlinks
/// (its canonical path), so the same fleet reached through a link in another folder, or by another relative
/// path, has one journal directory and one [`RunLock`].
#[derive(Clone, Debug)]
pub struct JournalDir {
    pub path: PathBuf,
}

impl JournalDir {
    pub fn of(fleet: &Fleet) -> Self {
        JournalDir::of_file(&fleet.file)
    }

    /// The journal directory of the fleet file at `file`, as typed: beside the file it resolves to (as typed
    /// when it cannot be resolved, e.g. a file that no longer exists; the lock is then that path's).
    pub fn of_file(file: &Path) -> Self {
        let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        let directory = file.parent().unwrap_or(Path::new("."));
        let stem = file.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
        JournalDir { path: directory.join(".fleetbake").join(stem) }
    }

    pub fn journal_path(&self, run_id: &RunId) -> PathBuf {
        self.path.join(format!("{run_id}.jsonl"))
    }

    /// Every journal, newest run first (run ids sort by start time).
    pub fn journals(&self) -> Result<Vec<PathBuf>, JournalError> {
        let entries = match std::fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(JournalError::io(&self.path, error)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|extension| extension == "jsonl"))
            .collect();
        paths.sort();
        paths.reverse();
        Ok(paths)
    }

    /// How long the jobs of `plan` took in the newest earlier run that timed any of them; a job it did not
    /// time takes the mean of its kind. `None`: no earlier run timed one.
    pub fn previous_durations(&self, plan: &Plan) -> Option<JobDurations> {
        let replay = self.journals().ok()?.into_iter().filter_map(|path| Replay::read(&path).ok()).find(|replay| {
            replay.header.run_id != plan.run_id && plan.jobs().any(|job| replay.timed.contains_key(&plan.key(job)))
        })?;
        let seconds = |value: f64| Duration::from_secs_f64(value.max(0.0));
        let took = |job: JobId| replay.timed.get(&plan.key(job)).copied();
        let mean = |values: Vec<f64>| (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
        let builds: Vec<_> = plan.builds.iter().filter_map(|build| took(JobId::Build(build.index))).collect();
        let copies: Vec<_> = plan.copies.iter().filter_map(|copy| took(JobId::Copy(copy.index))).collect();
        let build_image = mean(builds.iter().map(|(image, end)| image.unwrap_or(*end)).collect()).unwrap_or(0.0);
        let build_end = mean(builds.iter().map(|(_, end)| *end).collect()).unwrap_or(0.0);
        let copy_end = mean(copies.iter().map(|(_, end)| *end).collect()).unwrap_or(0.0);
        Some(JobDurations {
            builds: plan
                .builds
                .iter()
                .map(|build| {
                    let (image, end) = took(JobId::Build(build.index)).unwrap_or((Some(build_image), build_end));
                    BuildDuration { to_image: seconds(image.unwrap_or(end)), to_cleaned_up: seconds(end) }
                })
                .collect(),
            copies: plan
                .copies
                .iter()
                .map(|copy| seconds(took(JobId::Copy(copy.index)).map_or(copy_end, |(_, end)| end)))
                .collect(),
        })
    }

    /// The newest run that did not finish (killed, or interrupted), replayed. Every journal newer than it
    /// must read cleanly: a broken one is an error, never skipped.
    pub fn newest_unfinished(&self, fleet: &Fleet) -> Result<Replay, JournalError> {
        for path in self.journals()? {
            let replay = Replay::read(&path)?;
            if replay.header.fleet != fleet.name {
                return Err(JournalError::OtherFleet {
                    path,
                    found: replay.header.fleet,
                    expected: fleet.name.clone(),
                });
            }
            if replay.finished.is_some_and(|(_, interrupted)| !interrupted) {
                continue;
            }
            if is_locked(&path)? {
                return Err(JournalError::InProgress { path, run_id: replay.header.run_id });
            }
            return Ok(replay);
        }
        Err(JournalError::NothingToResume { dir: self.path.clone() })
    }

    /// Whether the run's journal is here and held by a running fleetbake.
    pub fn in_progress(&self, run_id: &RunId) -> Result<Option<bool>, JournalError> {
        let path = self.journal_path(run_id);
        if !path.exists() {
            return Ok(None);
        }
        is_locked(&path).map(Some)
    }
}

/// One run of a fleet file at a time: `.fleetbake/<stem>/run.lock` beside the file's canonical path (see
/// [`JournalDir::of_file`]: a symlink to it takes the same lock), held (flock) by the process that runs the
/// fleet — a new run, a resumed one, or gc removing images — for as long as it lives, and released by the
/// kernel if it dies. Two runs of one fleet at once would make images of the same names in the same second
/// (real EC2 refuses the second CreateImage) and overwrite each other's manifest. The file holds the holder's
/// pid and, once known, its run id, so the process refused can say who holds it.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the fleet file's lock, or says who holds it (before any AWS call).
    pub fn acquire(dir: &JournalDir) -> Result<RunLock, JournalError> {
        std::fs::create_dir_all(&dir.path).map_err(|error| JournalError::io(&dir.path, error))?;
        let path = dir.path.join("run.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|error| JournalError::io(&path, error))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => "a fleetbake that is starting".to_string(),
                    holder => holder.to_string(),
                };
                return Err(JournalError::Busy { path, holder });
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(JournalError::io(&path, error)),
        }
        let lock = RunLock { file, path };
        lock.say(&format!("pid {}", std::process::id()));
        Ok(lock)
    }

    /// Names the run holding the lock, for whoever is refused next.
    pub fn name_run(&self, run_id: &RunId) {
        self.say(&format!("run {run_id} (pid {})", std::process::id()));
    }

    /// Names what holds the lock when it is not a run (gc).
    pub fn name_holder(&self, holder: &str) {
        self.say(&format!("{holder} (pid {})", std::process::id()));
    }

    fn say(&self, holder: &str) {
        use std::io::{Seek, SeekFrom};
        let mut file = &self.file;
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{holder}\n").as_bytes()));
        if let Err(error) = written {
            tracing::warn!("cannot write `{}`: {error}", self.path.display());
        }
    }
}

fn is_locked(path: &Path) -> Result<bool, JournalError> {
    let file = File::open(path).map_err(|error| JournalError::io(path, error))?;
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(error)) => Err(JournalError::io(path, error)),
    }
}

/// A journal read back: the state of its run as of its last whole record.
#[derive(Clone, Debug)]
pub struct Replay {
    pub path: PathBuf,
    pub header: Header,
    pub attempts: u32,
    /// The last `Finished` record: status and whether it was interrupted.
    pub finished: Option<(RunStatus, bool)>,
    /// Images that became available, per job.
    pub available: BTreeMap<JobKey, Artifact>,
    /// Images requested (CreateImage / CopyImage answered), per job.
    pub requested: BTreeMap<JobKey, ImageId>,
    /// How many images of each job were discarded (failed, deregistered): a copy's next request needs a new
    /// client token.
    pub discarded: BTreeMap<JobKey, u32>,
    /// Temporary resources created and not recorded as removed.
    pub outstanding: BTreeMap<Resource, JobKey>,
    /// The byte length of the whole records; a torn line after it is cut off before appending.
    whole_length: u64,
    /// The line number of a torn last record that was dropped.
    pub torn_line: Option<usize>,
    /// How long each job took (seconds to its image, to its end).
    pub timed: BTreeMap<JobKey, (Option<f64>, f64)>,
    /// What each job's image was published to.
    pub published: BTreeMap<JobKey, Vec<Publication>>,
    /// Temporary resources kept (`--keep-failed`), per resource: the job and until when.
    pub kept: BTreeMap<Resource, (JobKey, DateTime<Utc>)>,
}

impl Replay {
    pub fn read(path: &Path) -> Result<Replay, JournalError> {
        let file = File::open(path).map_err(|error| JournalError::io(path, error))?;
        let mut reader = BufReader::new(file);
        let mut lines: Vec<(String, bool)> = Vec::new();
        loop {
            let mut line = String::new();
            let read = reader.read_line(&mut line).map_err(|error| JournalError::io(path, error))?;
            if read == 0 {
                break;
            }
            let whole = line.ends_with('\n');
            lines.push((line, whole));
        }
        let not_a_journal = |why: &str| JournalError::NotAJournal { path: path.to_path_buf(), why: why.to_string() };
        let Some((first, first_whole)) = lines.first() else {
            return Err(not_a_journal("the file is empty"));
        };
        if !first_whole {
            return Err(not_a_journal("the header line is incomplete"));
        }
        let value: serde_json::Value =
            serde_json::from_str(first).map_err(|error| not_a_journal(&format!("the header is not JSON: {error}")))?;
        if value.get("format").and_then(|format| format.as_str()) != Some(JOURNAL_FORMAT) {
            return Err(not_a_journal(&format!("the header has no `\"format\": \"{JOURNAL_FORMAT}\"`")));
        }
        let version = value.get("version").and_then(|version| version.as_u64()).unwrap_or(0);
        if version > u64::from(JOURNAL_VERSION) {
            return Err(JournalError::Newer { path: path.to_path_buf(), version });
        }
        let header: Header = serde_json::from_value(value).map_err(|error| JournalError::Corrupt {
            path: path.to_path_buf(),
            line: 1,
            why: error.to_string(),
        })?;
        let mut replay = Replay {
            path: path.to_path_buf(),
            header,
            attempts: 0,
            finished: None,
            available: BTreeMap::new(),
            requested: BTreeMap::new(),
            discarded: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            whole_length: first.len() as u64,
            torn_line: None,
            timed: BTreeMap::new(),
            published: BTreeMap::new(),
            kept: BTreeMap::new(),
        };
        let count = lines.len();
        for (index, (line, whole)) in lines.iter().enumerate().skip(1) {
            let number = index + 1;
            let parsed = if *whole {
                serde_json::from_str::<Record>(line).map_err(|error| error.to_string())
            } else {
                Err("the line is incomplete".to_string())
            };
            match parsed {
                Ok(record) => {
                    replay.apply(record);
                    replay.whole_length += line.len() as u64;
                }
                // Only the last line may be torn: the process died while writing it.
                Err(_) if number == count => replay.torn_line = Some(number),
                Err(why) => return Err(JournalError::Corrupt { path: path.to_path_buf(), line: number, why }),
            }
        }
        Ok(replay)
    }

    fn apply(&mut self, record: Record) {
        match record {
            Record::Attempt { attempt, .. } => {
                self.attempts = self.attempts.max(attempt);
                self.finished = None;
            }
            Record::Created { job, resource } => {
                self.outstanding.insert(resource, job);
            }
            Record::Removed { resource } => {
                self.outstanding.remove(&resource);
            }
            Record::ImageRequested { job, image_id } => {
                self.requested.insert(job, image_id);
            }
            Record::ImageDiscarded { job, image_id } => {
                if self.requested.get(&job) == Some(&image_id) {
                    self.requested.remove(&job);
                }
                *self.discarded.entry(job).or_default() += 1;
            }
            Record::ImageAvailable { job, artifact } => {
                self.available.insert(job, artifact);
            }
            Record::JobFailed { .. } => {}
            Record::Published { job, publication } => {
                self.published.entry(job).or_default().push(publication);
            }
            Record::JobTimed { job, to_image, to_end } => {
                self.timed.insert(job, (to_image, to_end));
            }
            Record::Finished { status, interrupted } => self.finished = Some((status, interrupted)),
            Record::Kept { job, resource, until } => {
                self.outstanding.remove(&resource);
                self.kept.insert(resource, (job, until));
            }
        }
    }

    /// The plan of the fleet file as it is now must make the jobs and names the run planned.
    pub fn check_plan(&self, plan: &Plan) -> Result<(), JournalError> {
        // First, so a variable in an image name is named as such, not as a changed name.
        self.check_variables(&plan.variables)?;
        let now = plan.planned_jobs();
        let then = &self.header.jobs;
        let changed = |detail: String| JournalError::PlanChanged {
            path: self.path.clone(),
            run_id: self.header.run_id.clone(),
            detail,
        };
        for job in then {
            match now.iter().find(|planned| planned.job == job.job) {
                None => return Err(changed(format!("job {} is gone", job.job))),
                Some(planned) if planned.image_name != job.image_name => {
                    return Err(changed(format!(
                        "job {} now names its image `{}`, not `{}`",
                        job.job, planned.image_name, job.image_name
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = now.iter().find(|planned| !then.iter().any(|job| job.job == planned.job)) {
            return Err(changed(format!("job {} is new", extra.job)));
        }
        Ok(())
    }

    /// The variables of the resumed run (digests under its run id) are those it started with.
    fn check_variables(&self, now: &VariableDigests) -> Result<(), JournalError> {
        let then = &self.header.variables;
        let differ: Vec<String> = then
            .keys()
            .chain(now.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|name| then.get(*name) != now.get(*name))
            .map(|name| format!("`{name}`"))
            .collect();
        if differ.is_empty() {
            return Ok(());
        }
        Err(JournalError::VariablesChanged {
            path: self.path.clone(),
            run_id: self.header.run_id.clone(),
            names: differ.join(", "),
        })
    }
}

/// The journal a run appends to (or, in the simulated cloud, only keeps in memory).
pub struct Journal {
    file: Option<Mutex<File>>,
    path: Option<PathBuf>,
    /// 1 for a new run; each resume adds one.
    attempt: u32,
    /// Temporary resources created and not yet removed, as of now.
    outstanding: Mutex<BTreeMap<Resource, JobKey>>,
    /// The first write that failed, if any: reported at the end of the run.
    write_error: Mutex<Option<String>>,
}

impl Journal {
    /// A journal that keeps only what is outstanding, in memory: for the simulated cloud, whose account does
    /// not outlive the process.
    pub fn in_memory() -> Self {
        Journal { file: None, path: None, attempt: 1, outstanding: Mutex::default(), write_error: Mutex::default() }
    }

    /// Starts a new run's journal, locked, with its header and first attempt.
    pub fn create(dir: &JournalDir, plan: &Plan) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(&dir.path).map_err(|error| JournalError::io(&dir.path, error))?;
        let path = dir.journal_path(&plan.run_id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|error| JournalError::io(&path, error))?;
        lock(&file, &path, &plan.run_id)?;
        let journal = Journal::writing(file, path, 1);
        let header = serde_json::to_string(&Header::new(plan)).expect("a header serializes");
        journal.append_line(&header).map_err(|error| JournalError::io(journal.path(), error))?;
        journal.record_attempt()?;
        Ok(journal)
    }

    /// Appends to a replayed run's journal: locks it, cuts off a torn last line, records the next attempt.
    pub fn resume(replay: &Replay) -> Result<Journal, JournalError> {
        let path = replay.path.clone();
        let file = OpenOptions::new().append(true).open(&path).map_err(|error| JournalError::io(&path, error))?;
        lock(&file, &path, &replay.header.run_id)?;
        file.set_len(replay.whole_length).map_err(|error| JournalError::io(&path, error))?;
        let journal = Journal::writing(file, path, replay.attempts + 1);
        *journal.outstanding.lock().expect("not poisoned") = replay.outstanding.clone();
        journal.record_attempt()?;
        Ok(journal)
    }

    fn writing(file: File, path: PathBuf, attempt: u32) -> Journal {
        Journal {
            file: Some(Mutex::new(file)),
            path: Some(path),
            attempt,
            outstanding: Mutex::default(),
            write_error: Mutex::default(),
        }
    }

    /// Which attempt at the run this process is: 1, or more when resumed.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    fn record_attempt(&self) -> Result<(), JournalError> {
        let record = Record::Attempt { attempt: self.attempt, pid: std::process::id(), at: Utc::now() };
        let line = serde_json::to_string(&record).expect("a record serializes");
        self.append_line(&line).map_err(|error| JournalError::io(self.path(), error))
    }

    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new("(in memory)"))
    }

    fn append_line(&self, line: &str) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut file = file.lock().expect("not poisoned");
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        file.write_all(&bytes)?;
        file.sync_data()
    }

    /// Appends a record and flushes it to disk before returning: whatever comes next may depend on it.
    /// A failed write does not stop the run (its resources are tagged, so resume and gc still find them);
    /// the first one is kept and reported at the end.
    pub fn record(&self, record: Record) {
        {
            let mut outstanding = self.outstanding.lock().expect("not poisoned");
            match &record {
                Record::Created { job, resource } => {
                    outstanding.insert(resource.clone(), job.clone());
                }
                Record::Removed { resource } | Record::Kept { resource, .. } => {
                    outstanding.remove(resource);
                }
                _ => {}
            }
        }
        if self.file.is_none() {
            return;
        }
        let line = serde_json::to_string(&record).expect("a record serializes");
        if let Err(error) = self.append_line(&line) {
            let mut first = self.write_error.lock().expect("not poisoned");
            if first.is_none() {
                tracing::error!("cannot write the journal `{}`: {error}", self.path().display());
                *first = Some(format!("cannot write the journal `{}`: {error}", self.path().display()));
            }
        }
    }

    /// Temporary resources created and not removed, as far as this process knows.
    pub fn outstanding(&self) -> Vec<Resource> {
        self.outstanding.lock().expect("not poisoned").keys().cloned().collect()
    }

    pub fn write_error(&self) -> Option<String> {
        self.write_error.lock().expect("not poisoned").clone()
    }
}

/// What steps record goes into the journal, flushed before the step's next call.
impl Ledger for Journal {
    fn created(&self, job: &JobKey, resource: Resource) {
        self.record(Record::Created { job: job.clone(), resource });
    }

    fn removed(&self, resource: Resource) {
        self.record(Record::Removed { resource });
    }

    fn image_requested(&self, job: &JobKey, image: &ImageId) {
        self.record(Record::ImageRequested { job: job.clone(), image_id: image.clone() });
    }

    fn image_discarded(&self, job: &JobKey, image: &ImageId) {
        self.record(Record::ImageDiscarded { job: job.clone(), image_id: image.clone() });
    }

    fn published(&self, job: &JobKey, publication: &Publication) {
        self.record(Record::Published { job: job.clone(), publication: publication.clone() });
    }

    fn kept(&self, job: &JobKey, resource: Resource, until: DateTime<Utc>) {
        self.record(Record::Kept { job: job.clone(), resource, until });
    }
}

fn lock(file: &File, path: &Path, run_id: &RunId) -> Result<(), JournalError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(JournalError::InProgress { path: path.to_path_buf(), run_id: run_id.clone() })
        }
        Err(std::fs::TryLockError::Error(error)) => Err(JournalError::io(path, error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FlavorName, Region};
    use crate::plan::{BuildJob, BuildSource};
    use crate::steps::ledger::ResourceKind;

    fn plan() -> Plan {
        let run_id = RunId::new("2026-11-26T12:00:00Z".parse().unwrap(), 10);
        Plan {
            fleet: "unit".into(),
            run_id: run_id.clone(),
            started_at: "2026-11-26T12:00:00Z".parse().unwrap(),
            builds: vec![BuildJob {
                index: 0,
                flavor: FlavorName::new("base"),
                region: Region::new("us-west-2"),
                source: BuildSource::Configured,
                image_name: format!("base-{run_id}"),
                copies: Vec::new(),
                interface: Default::default(),
            }],
            copies: Vec::new(),
            selection: Default::default(),
            variables: Default::default(),
        }
    }

    /// The journal keeps each variable's digest, never its value, and a resume with another value is refused
    /// naming the variable.
    #[test]
    fn a_resume_with_other_variable_values_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let dir = JournalDir { path: directory.path().to_path_buf() };
        let mut started = plan();
        started.variables = BTreeMap::from([("token".to_string(), "digest-one".to_string())]);
        let journal = Journal::create(&dir, &started).unwrap();
        let path = journal.path().to_path_buf();
        drop(journal);
        let replay = Replay::read(&path).unwrap();
        replay.check_plan(&started).unwrap();
        let mut rotated = started.clone();
        rotated.variables.insert("token".to_string(), "digest-two".to_string());
        let error = replay.check_plan(&rotated).unwrap_err();
        assert!(matches!(error, JournalError::VariablesChanged { .. }), "{error}");
        assert!(error.to_string().contains("started with other values of `token`"), "{error}");
        let mut unset = started.clone();
        unset.variables.clear();
        assert!(matches!(replay.check_plan(&unset).unwrap_err(), JournalError::VariablesChanged { .. }));
    }

    #[test]
    fn the_next_run_estimates_from_how_long_the_last_took() {
        let directory = tempfile::tempdir().unwrap();
        let dir = JournalDir { path: directory.path().to_path_buf() };
        let earlier = plan();
        assert!(dir.previous_durations(&earlier).is_none(), "no journal yet");
        let journal = Journal::create(&dir, &earlier).unwrap();
        journal.record(Record::JobTimed { job: earlier.builds[0].key(), to_image: Some(600.0), to_end: 700.0 });
        drop(journal);
        let next = Plan { run_id: RunId::new("2026-11-27T12:00:00Z".parse().unwrap(), 11), ..plan() };
        let durations = dir.previous_durations(&next).unwrap();
        assert_eq!(durations.builds[0].to_image, Duration::from_secs(600));
        assert_eq!(durations.builds[0].to_cleaned_up, Duration::from_secs(700));
        assert!(dir.previous_durations(&earlier).is_none(), "a run's own journal is not an earlier run");
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_cut_off_before_appending() {
        let directory = tempfile::tempdir().unwrap();
        let dir = JournalDir { path: directory.path().to_path_buf() };
        let plan = plan();
        let job = plan.builds[0].key();
        let resource = Resource::new(Region::new("us-west-2"), ResourceKind::KeyPair, "k");
        {
            let journal = Journal::create(&dir, &plan).unwrap();
            journal.record(Record::Created { job: job.clone(), resource: resource.clone() });
            journal.record(Record::ImageRequested { job: job.clone(), image_id: ImageId::new("ami-1") });
        }
        let path = dir.journal_path(&plan.run_id);
        let whole = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{whole}{{\"record\":\"removed\",\"reso")).unwrap();

        let replay = Replay::read(&path).unwrap();
        assert_eq!(replay.torn_line, Some(5), "header, attempt, created, requested, then the torn line");
        assert_eq!(replay.attempts, 1);
        assert_eq!(replay.outstanding.keys().collect::<Vec<_>>(), [&resource], "the torn removal did not count");
        assert_eq!(replay.requested[&job], ImageId::new("ami-1"));
        assert!(replay.finished.is_none());

        let resumed = Journal::resume(&replay).unwrap();
        assert_eq!(resumed.outstanding(), std::slice::from_ref(&resource));
        resumed.record(Record::Removed { resource });
        drop(resumed);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&whole) && !text.contains("\"reso\n"), "{text}");
        let again = Replay::read(&path).unwrap();
        assert_eq!((again.attempts, again.torn_line), (2, None));
        assert!(again.outstanding.is_empty());
    }

    #[test]
    fn a_kept_resource_is_no_longer_outstanding_and_the_replay_says_until_when() {
        let directory = tempfile::tempdir().unwrap();
        let dir = JournalDir { path: directory.path().to_path_buf() };
        let plan = plan();
        let job = plan.builds[0].key();
        let instance = Resource::new(Region::new("us-west-2"), ResourceKind::Instance, "i-1");
        let key_pair = Resource::new(Region::new("us-west-2"), ResourceKind::KeyPair, "k");
        let until: DateTime<Utc> = "2026-11-26T13:00:00Z".parse().unwrap();
        let journal = Journal::create(&dir, &plan).unwrap();
        journal.created(&job, instance.clone());
        journal.created(&job, key_pair.clone());
        journal.kept(&job, instance.clone(), until);
        assert_eq!(journal.outstanding(), std::slice::from_ref(&key_pair), "what is kept is not left over");
        drop(journal);
        let replay = Replay::read(&dir.journal_path(&plan.run_id)).unwrap();
        assert_eq!(replay.outstanding.keys().collect::<Vec<_>>(), [&key_pair]);
        assert_eq!(replay.kept[&instance], (job, until));
    }

    #[test]
    fn a_journal_held_by_a_running_process_is_in_progress() {
        let directory = tempfile::tempdir().unwrap();
        let dir = JournalDir { path: directory.path().to_path_buf() };
        let plan = plan();
        let journal = Journal::create(&dir, &plan).unwrap();
        assert_eq!(dir.in_progress(&plan.run_id).unwrap(), Some(true));
        let replay = Replay::read(&dir.journal_path(&plan.run_id)).unwrap();
        assert!(matches!(Journal::resume(&replay), Err(JournalError::InProgress { .. })));
        drop(journal);
        // A process another test of this binary spawns at this moment holds the lock's file description too
        // until it has exec'd (the descriptor is close-on-exec): released within moments, not at once.
        let released = (0..100).any(|_| {
            let in_progress = dir.in_progress(&plan.run_id).unwrap();
            assert!(in_progress.is_some(), "the journal is still there");
            in_progress == Some(false) || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                false
            }
        });
        assert!(released, "the run lock was not released within 2 s of the journal's end");
        assert_eq!(dir.in_progress(&RunId::new("2026-11-26T12:00:00Z".parse().unwrap(), 11)).unwrap(), None);
    }

    /// The same fleet file through a symlink in another folder, under another name: one journal directory, so
    /// one run lock, and the second taker is refused naming the first.
    #[test]
    fn a_fleet_file_reached_through_a_symlink_shares_its_journal_directory_and_run_lock() {
        let directory = tempfile::tempdir().unwrap();
        let real = directory.path().join("fleets").join("fleet.toml");
        std::fs::create_dir_all(real.parent().unwrap()).unwrap();
        std::fs::write(&real, "").unwrap();
        let elsewhere = directory.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let link = elsewhere.join("prod.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let by_link = JournalDir::of_file(&link);
        assert_eq!(by_link.path, JournalDir::of_file(&real).path);
        assert_eq!(by_link.path, std::fs::canonicalize(directory.path()).unwrap().join("fleets/.fleetbake/fleet"));
        assert_eq!(JournalDir::of_file(&elsewhere.join("../fleets/./fleet.toml")).path, by_link.path);

        let first = RunLock::acquire(&JournalDir::of_file(&real)).unwrap();
        first.name_holder("the first");
        match RunLock::acquire(&by_link) {
            Err(JournalError::Busy { holder, .. }) => assert!(holder.starts_with("the first (pid "), "{holder}"),
            other => panic!("not refused: {other:?}"),
        }
        drop(first);
        RunLock::acquire(&by_link).expect("free once the first is gone");
    }
}
