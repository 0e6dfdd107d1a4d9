//! The on-failure phase: what runs after a phase failed on a connected instance (a provisioner, a test), while
//! the instance and the connection are still there, before the connection is closed and the cleanup stack
//! unwinds. The flavor's `on_failure` provisioners run over the same connection (their own `timeout`s; their
//! failures are noted, never the build's), what they print is saved, and each `collect` file is read
//! ([`Connection::read_file`]); all of it under the run's logs folder, `<flavor>/<region>/`, in a 0700 folder
//! as 0600 files, bytes as received (a sensitive variable's value masked). Bounded: [`FILE_CAP`] per file,
//! [`TOTAL_CAP`] in all, [`PHASE_DEADLINE`] for the whole phase. Skipped when the run is interrupted (Ctrl-C
//! does not wait for logs); a connection found gone stops it, saying so. What it saved is the failure's `logs`.
//!
//! Layer: `steps` (part of [`super`], the build).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cloud::InstanceId;
use crate::config::ProvisionerEntry;
use crate::outcome::Stage;
use crate::remote::collect::{escaped, CollectError};
use crate::remote::provision::{self, Described, Phase, ProvisionCause, ProvisionEnv, ProvisionError};
use crate::remote::Connection;
use crate::report::events::OutputLine;
use crate::steps::context::safe_file_name;

use super::{BuildContext, StepError};

/// The most bytes saved of one file (an `on_failure` provisioner's output, or a collected file).
pub(super) const FILE_CAP: usize = 4 * 1024 * 1024;
/// The most bytes one on-failure phase saves in all.
pub(super) const TOTAL_CAP: usize = 16 * 1024 * 1024;
/// How long one on-failure phase may take in all (each provisioner also within its own `timeout`).
pub(super) const PHASE_DEADLINE: Duration = Duration::from_secs(5 * 60);

/// Ends a phase run over `connection` to `instance` with its `result`: a failure (interruption included) goes
/// through the on-failure phase first, and carries what it saved; then the connection is closed, whatever the
/// result.
pub(super) async fn close_after<T>(
    context: &BuildContext,
    instance: &InstanceId,
    connection: Box<dyn Connection>,
    result: Result<T, StepError>,
) -> Result<T, StepError> {
    let result = match result {
        // A spot instance EC2 took back has nothing left to tell, and its build is made again on demand: the
        // phase would only wait on a dropped connection.
        Err(error) if super::interruption::was_taken_back(context, instance).await => {
            context.progress(error.stage, "on failure: skipped, EC2 took the spot instance back");
            Err(error)
        }
        Err(mut error) => {
            error.logs = on_failure(context, instance, &*connection, &error).await;
            Err(error)
        }
        ok => ok,
    };
    connection.close().await;
    result
}

/// What runs on the instance after `error`: the files it saved. Its own failures are said as progress, never
/// the build's.
async fn on_failure(
    context: &BuildContext,
    instance: &InstanceId,
    connection: &dyn Connection,
    error: &StepError,
) -> Vec<PathBuf> {
    let forensics = &context.flavor.forensics;
    if !forensics.any() {
        return Vec::new();
    }
    let stage = error.stage;
    if stage == Stage::Interrupted || context.cancel.is_cancelled() {
        context
            .progress(stage, format!("on failure: skipped, the run is interrupted: nothing collected from {instance}"));
        return Vec::new();
    }
    let folder = context.run.logs.of_build(&context.flavor.name, &context.job.region);
    if let Err(why) = private_folder(&context.run.logs.folder, &folder) {
        let shown = escaped(&folder.display().to_string());
        context
            .progress(stage, format!("on failure: cannot make `{shown}` ({why}): nothing collected from {instance}"));
        return Vec::new();
    }
    context.progress(
        stage,
        format!(
            "on failure: running {} `on_failure` provisioners and collecting {} files from {instance}",
            forensics.on_failure.len(),
            forensics.collect.len()
        ),
    );
    let mut gathered = Gathered::new(folder, context.run.attempt);
    let cut_short = tokio::select! {
        biased;
        () = context.cancel.cancelled() => Some("the run was interrupted".to_string()),
        timed = tokio::time::timeout(PHASE_DEADLINE, gather(context, connection, &mut gathered, stage)) => match timed {
            Ok(()) => None,
            Err(_) => Some(format!("it did not end within {}", humantime::format_duration(PHASE_DEADLINE))),
        },
    };
    if let Some(why) = cut_short {
        gathered.notes.push(format!("stopped: {why}; what was saved before is kept"));
    }
    for note in &gathered.notes {
        context.progress(stage, format!("on failure: {note}"));
    }
    let shown = escaped(&gathered.folder.display().to_string());
    if gathered.saved.is_empty() {
        context.progress(stage, format!("on failure: nothing saved in `{shown}`"));
    } else {
        let names: Vec<String> = gathered
            .saved
            .iter()
            .filter_map(|path| path.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        context.progress(
            stage,
            format!("on failure: saved {} files in `{shown}`: {}", gathered.saved.len(), names.join(", ")),
        );
    }
    gathered.saved
}

/// What the phase has saved so far, and what it has to say.
struct Gathered {
    folder: PathBuf,
    /// Each file's name starts with this (`attempt-N-` after a `--resume`, so no attempt's files are replaced).
    prefix: String,
    saved: Vec<PathBuf>,
    /// Bytes still allowed under [`TOTAL_CAP`].
    budget: usize,
    notes: Vec<String>,
}

impl Gathered {
    fn new(folder: PathBuf, attempt: u32) -> Self {
        let prefix = if attempt > 1 { format!("attempt-{attempt}-") } else { String::new() };
        Gathered { folder, prefix, saved: Vec::new(), budget: TOTAL_CAP, notes: Vec::new() }
    }

    /// The most the next file may hold.
    fn next_cap(&self) -> usize {
        FILE_CAP.min(self.budget)
    }

    /// Saves `bytes` as `name` (a safe name), 0600.
    fn save(&mut self, name: &str, bytes: &[u8]) {
        let path = self.folder.join(format!("{}{name}", self.prefix));
        match write_private(&path, bytes) {
            Ok(()) => {
                self.budget = self.budget.saturating_sub(bytes.len());
                self.saved.push(path);
            }
            Err(why) => self.notes.push(format!("cannot write `{}`: {why}", escaped(&path.display().to_string()))),
        }
    }
}

/// Runs the `on_failure` provisioners, then reads the `collect` files; stops when the connection is found gone.
async fn gather(context: &BuildContext, connection: &dyn Connection, gathered: &mut Gathered, stage: Stage) {
    let forensics = &context.flavor.forensics;
    let env = ProvisionEnv {
        flavor: context.flavor.name.to_string(),
        region: context.job.region.to_string(),
        run_id: context.run.run_id.to_string(),
        phase: Phase::OnFailure,
    };
    for (index, entry) in forensics.on_failure.iter().enumerate() {
        let number = index + 1;
        if gathered.budget == 0 {
            gathered.notes.push(format!("all saved logs reached {TOTAL_CAP} bytes: `on_failure` {number} not run"));
            return;
        }
        let (ran, output) = run_one(context, connection, entry, number, &env, gathered.next_cap(), stage).await;
        if output.truncated {
            gathered.notes.push(format!("`on_failure` {number}'s output cut at {} bytes", output.bytes.len()));
        }
        gathered.save(&format!("on_failure-{number}.log"), &output.bytes);
        match ran {
            Ok(()) => {}
            Err(ProvisionError { cause: ProvisionCause::Remote(why), .. }) => {
                gathered
                    .notes
                    .push(format!("the connection is gone ({}): nothing more collected", escaped(&why.to_string())));
                return;
            }
            Err(error) => gathered.notes.push(escaped(&error.to_string())),
        }
    }
    for (index, path) in forensics.collect.iter().enumerate() {
        let number = index + 1;
        if gathered.budget == 0 {
            gathered.notes.push(format!("all saved logs reached {TOTAL_CAP} bytes: `{path}` not collected"));
            return;
        }
        match connection.read_file(path, gathered.next_cap()).await {
            Ok(collected) => {
                if collected.truncated {
                    gathered.notes.push(format!("`{path}` cut at {} bytes", collected.bytes.len()));
                }
                let bytes = context.run.fleet.variables.mask(&collected.bytes).unwrap_or(collected.bytes);
                gathered.save(&collected_name(number, path), &bytes);
            }
            Err(CollectError::Remote(why)) => {
                gathered.notes.push(format!(
                    "the connection is gone ({}): `{path}` and later files not collected",
                    escaped(&why.to_string())
                ));
                return;
            }
            Err(why) => gathered.notes.push(format!("cannot collect `{path}`: {why}")),
        }
    }
}

/// One `on_failure` provisioner's output, both streams in the order printed, one line each.
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Runs one `on_failure` provisioner within its `timeout`, capturing at most `cap` bytes of what it prints.
async fn run_one(
    context: &BuildContext,
    connection: &dyn Connection,
    entry: &ProvisionerEntry,
    number: usize,
    env: &ProvisionEnv,
    cap: usize,
    stage: Stage,
) -> (Result<(), ProvisionError>, Captured) {
    let provisioner = &entry.provisioner;
    context.progress(stage, format!("on failure: `on_failure` {number}: {}", Described(provisioner)));
    let mut captured = Captured { bytes: Vec::new(), truncated: false };
    let mut output = |_stream, line: OutputLine| {
        let line = context.run.fleet.variables.mask(line.as_bytes()).map_or(line, OutputLine::new);
        captured.append_line(line.as_bytes(), cap);
    };
    let ran = tokio::time::timeout(entry.timeout, provision::run(connection, number, provisioner, env, &mut output))
        .await
        .unwrap_or_else(|_| {
            Err(ProvisionError::new(env, number, provisioner, ProvisionCause::TimedOut(entry.timeout)))
        });
    (ran, captured)
}

impl Captured {
    /// Appends `line` and its newline, up to `cap` bytes in all.
    fn append_line(&mut self, line: &[u8], cap: usize) {
        if self.truncated {
            return;
        }
        let room = cap.saturating_sub(self.bytes.len());
        if line.len() + 1 > room {
            self.bytes.extend_from_slice(&line[..room.min(line.len())]);
            self.truncated = true;
        } else {
            self.bytes.extend_from_slice(line);
            self.bytes.push(b'\n');
        }
    }
}

/// The name a collected file is saved as: its number in `collect` (so two paths that make the same name
/// differ) and its path made a safe file name (`/var/log/cloud-init.log` → `collect-1-var_log_cloud-init.log`).
fn collected_name(number: usize, remote_path: &str) -> String {
    format!("collect-{number}-{}", safe_file_name(remote_path))
}

/// Makes `folder` (and what is missing of it under `logs`), each folder made 0700, and `folder` and every
/// folder between it and `logs`'s parent (the run's) 0700 even if it was there.
fn private_folder(logs: &Path, folder: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(folder)?;
    let run_folder = logs.parent().unwrap_or(logs);
    for ancestor in folder.ancestors().take_while(|ancestor| ancestor.starts_with(run_folder)) {
        std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `bytes` to `path`, readable by its owner alone (0600, an existing file made so first).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::context::SAFE_NAME_CHARS;

    #[test]
    fn a_collected_file_is_named_safely_from_its_path() {
        assert_eq!(collected_name(1, "/var/log/cloud-init-output.log"), "collect-1-var_log_cloud-init-output.log");
        assert_eq!(collected_name(2, "/var/log/../../etc/shadow"), "collect-2-var_log__.__._etc_shadow");
        assert_eq!(collected_name(3, "/tmp/a b;$(rm -rf ~)\u{1b}[2J"), "collect-3-tmp_a_b___rm_-rf_____2J");
        let long = collected_name(4, &format!("/{}", "x".repeat(500)));
        assert_eq!(long.len(), "collect-4-".len() + SAFE_NAME_CHARS);
        for name in [collected_name(5, "/.."), collected_name(6, "/"), safe_file_name(".."), safe_file_name(".hidden")]
        {
            assert!(
                !name.contains("..") && !name.contains('/') && !name.starts_with('.') && !name.is_empty(),
                "{name}"
            );
        }
    }

    #[test]
    fn captured_output_is_capped() {
        let mut captured = Captured { bytes: Vec::new(), truncated: false };
        captured.append_line(b"first", 12);
        assert_eq!((captured.bytes.as_slice(), captured.truncated), (&b"first\n"[..], false));
        captured.append_line(b"second line", 12);
        assert_eq!((captured.bytes.as_slice(), captured.truncated), (&b"first\nsecond"[..], true));
        captured.append_line(b"third", 12);
        assert_eq!(captured.bytes.len(), 12);
    }

    #[test]
    fn the_caps_bound_each_file_and_the_whole() {
        let mut gathered = Gathered::new(PathBuf::from("/nonexistent"), 1);
        assert_eq!(gathered.next_cap(), FILE_CAP);
        gathered.budget = 10;
        assert_eq!(gathered.next_cap(), 10);
        const { assert!(FILE_CAP <= TOTAL_CAP) };
        assert_eq!(Gathered::new(PathBuf::new(), 2).prefix, "attempt-2-");
    }

    #[test]
    fn saved_files_are_private_in_private_folders() {
        let root = tempfile::tempdir().unwrap();
        let logs = root.path().join("run-1").join("logs");
        let folder = logs.join("web").join("us-west-2");
        private_folder(&logs, &folder).unwrap();
        let mut gathered = Gathered::new(folder.clone(), 1);
        gathered.save("collect-1-x.log", b"\x1b]0;raw bytes\x07");
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        for path in [&folder, &logs.join("web"), &logs, &root.path().join("run-1")] {
            assert_eq!(mode(path), 0o700, "{}", path.display());
        }
        assert_eq!(mode(&gathered.saved[0]), 0o600);
        assert_eq!(std::fs::read(&gathered.saved[0]).unwrap(), b"\x1b]0;raw bytes\x07", "stored as received");
        assert_eq!(gathered.budget, TOTAL_CAP - 14);
    }
}
