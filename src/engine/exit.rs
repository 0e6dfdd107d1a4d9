//! How a command ended, and the one decision of its exit code: the "Exit codes" table of docs/getting-started.md.
//!
//! Layer: engine, the top, because an ending is made of every layer's outcomes (a fleet file `config`
//! refused, a run's [`RunSummary`], `state`'s journal and gc errors). `main.rs` prints what happened, turns it
//! into an [`Ending`] and exits with [`Ending::exit`]; nothing else chooses a code. Every error enum is matched
//! without a wildcard, so a new variant must be given its code here.

use crate::engine::run::RunError;
use crate::engine::scheduler::RunSummary;
use crate::state::gc::GcError;
use crate::state::journal::JournalError;
use crate::state::manifest::ExistingManifestError;

/// The exit codes the "Exit codes" table of docs/getting-started.md documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: everything the command meant to do was done.
    Success,
    /// 1: a job or a check failed, something could not be removed or is not there, or the command could not
    /// do its work (an AWS error, a journal or file that cannot be read or written, another run in progress).
    Failed,
    /// 2: bad input: the fleet file, a file it names, the command line, or a journal `--resume` cannot use.
    BadInput,
    /// 3: the run's credentials expired mid-run (AWS answered `ExpiredToken`): nothing new was started, and what
    /// could not be cleaned up is named with the `fleetbake gc` command to run with fresh credentials.
    CredentialsExpired,
    /// 130 / 143: the run was interrupted by SIGINT / SIGTERM.
    Interrupted(Interrupt),
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::BadInput => 2,
            Exit::CredentialsExpired => 3,
            Exit::Interrupted(interrupt) => interrupt.exit_code,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

/// An interrupt delivered to the loop (SIGINT, SIGTERM): [`Interrupt::SIGINT`] and [`Interrupt::SIGTERM`],
/// with the exit codes they end a run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    pub signal: &'static str,
    pub exit_code: u8,
}

impl Interrupt {
    /// Ctrl-C: exit 130, as a shell reports a process SIGINT ended (128 + 2).
    pub const SIGINT: Interrupt = Interrupt { signal: "SIGINT", exit_code: 130 };
    /// `kill`, a CI runner's timeout: exit 143 (128 + 15).
    pub const SIGTERM: Interrupt = Interrupt { signal: "SIGTERM", exit_code: 143 };
}

/// How a command ended, as far as its exit code is concerned.
#[derive(Debug)]
pub enum Ending {
    /// The command did what it was asked (`validate`, `plan`, `manifest get` and `diff`, `completions`).
    Done,
    /// The fleet file, a `--only`/`--except` pattern or the command line was refused before anything ran.
    Refused,
    /// A manifest named on the command line cannot be read (`manifest get`, `manifest diff`).
    ManifestUnreadable,
    /// `manifest get`: the manifest has no image of that flavor in that region.
    NoSuchImage,
    /// `preflight` made its checks: how many failed.
    Checked { failed: usize },
    /// `gc` went through its plan: how many removals failed (and `[[distribution]]` accounts it could not survey).
    Collected { failures: usize },
    /// A run's loop ended: its summary (boxed: the other endings are small), and how many resources the
    /// simulated cloud says it left behind, and whether its `[sim] state` could not be saved (a failure, unless
    /// the run ended worse).
    Ran { summary: Box<RunSummary>, leaked: usize, unsaved: bool },
    /// `matrix` stopped on an error of its own (its lock, its journal, the preflight, an output file, AWS).
    RunStopped(RunError),
    /// `gc` stopped before removing anything (its lock, a journal, the manifest, a survey call).
    GcStopped(GcError),
    /// A command that talks to AWS found no credentials it could load (`plan --changed-only`, `gc`).
    NoCredentials,
    /// `[sim] state` could not be read, or the simulated account not kept (`plan`, `preflight`, `gc`).
    SimStateUnreadable,
}

impl Ending {
    /// The one decision of the exit code.
    pub fn exit(&self) -> Exit {
        match self {
            Ending::Done => Exit::Success,
            Ending::Refused | Ending::ManifestUnreadable => Exit::BadInput,
            Ending::NoSuchImage | Ending::NoCredentials | Ending::SimStateUnreadable => Exit::Failed,
            Ending::Checked { failed: 0 } | Ending::Collected { failures: 0 } => Exit::Success,
            Ending::Checked { .. } | Ending::Collected { .. } => Exit::Failed,
            Ending::Ran { summary, leaked, unsaved } => match summary.interrupted {
                Some(interrupt) => Exit::Interrupted(interrupt),
                None if summary.credentials_expired => Exit::CredentialsExpired,
                None if summary.failed > 0 || *leaked > 0 || *unsaved => Exit::Failed,
                None => Exit::Success,
            },
            Ending::RunStopped(error) => match error {
                RunError::Journal(journal) => journal_exit(journal),
                RunError::Manifest(ExistingManifestError::Unreadable { .. }) => Exit::BadInput,
                RunError::Manifest(ExistingManifestError::CannotSetAside { .. })
                | RunError::DetectAddress(_)
                | RunError::Report(_)
                | RunError::Statistics { .. }
                | RunError::Resume(_)
                | RunError::Preflight(_)
                | RunError::Units(_)
                | RunError::Events { .. }
                | RunError::SimState(_) => Exit::Failed,
            },
            Ending::GcStopped(error) => match error {
                GcError::Journal(journal) => journal_exit(journal),
                GcError::Cloud(_) | GcError::Manifest { .. } => Exit::Failed,
            },
        }
    }
}

/// A journal is bad input only as one `--resume` cannot use; one that cannot be read or written, or that
/// another process holds, is not the input's fault, whichever command met it.
fn journal_exit(error: &JournalError) -> Exit {
    match error {
        JournalError::NotAJournal { .. }
        | JournalError::Newer { .. }
        | JournalError::Corrupt { .. }
        | JournalError::OtherFleet { .. }
        | JournalError::PlanChanged { .. }
        | JournalError::VariablesChanged { .. }
        | JournalError::NothingToResume { .. } => Exit::BadInput,
        JournalError::Io { .. } | JournalError::Busy { .. } | JournalError::InProgress { .. } => Exit::Failed,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::cloud::{CloudError, ErrorKind};
    use crate::config::api::Action;
    use crate::config::Region;
    use crate::engine::preflight::Preflight;
    use crate::outcome::RunStatus;
    use crate::plan::RunId;
    use crate::remote::net::DetectError;
    use crate::report::ReportError;

    /// A run whose credentials expired mid-run.
    fn expired(failed: usize) -> Box<RunSummary> {
        Box::new(RunSummary { credentials_expired: true, ..*summary(failed, None) })
    }

    fn summary(failed: usize, interrupted: Option<Interrupt>) -> Box<RunSummary> {
        Box::new(RunSummary {
            credentials_expired: false,
            status: if failed == 0 { RunStatus::Complete } else { RunStatus::Partial },
            succeeded: 3,
            failed,
            in_progress: 0,
            reused: 0,
            interrupted,
            abandoned: false,
            left_behind: Vec::new(),
            makespan: Duration::from_secs(60),
            timings: BTreeMap::new(),
            images: BTreeMap::new(),
            failed_jobs: Default::default(),
            built_on: BTreeMap::new(),
            spot_interruptions: BTreeMap::new(),
        })
    }

    fn path() -> PathBuf {
        PathBuf::from(".fleetbake/fleet/20261126-120000-0000a.jsonl")
    }

    fn run_id() -> RunId {
        RunId::parse("20261126-120000-0000a").unwrap()
    }

    fn cloud_error() -> CloudError {
        CloudError {
            action: Action::DescribeImages,
            region: Region::new("us-east-1"),
            kind: ErrorKind::Transient,
            code: None,
            message: "connection refused".to_string(),
        }
    }

    fn io_error() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotADirectory, "Not a directory")
    }

    /// Every journal error, and its code, whichever command met it.
    fn journal_errors() -> Vec<(JournalError, u8)> {
        vec![
            (JournalError::Io { path: path(), error: io_error() }, 1),
            (JournalError::Busy { path: path(), holder: "run x (pid 1)".to_string() }, 1),
            (JournalError::InProgress { path: path(), run_id: run_id() }, 1),
            (JournalError::NotAJournal { path: path(), why: "the file is empty".to_string() }, 2),
            (JournalError::Newer { path: path(), version: 99 }, 2),
            (JournalError::Corrupt { path: path(), line: 3, why: "expected value".to_string() }, 2),
            (JournalError::OtherFleet { path: path(), found: "a".to_string(), expected: "b".to_string() }, 2),
            (JournalError::PlanChanged { path: path(), run_id: run_id(), detail: "a build".to_string() }, 2),
            (JournalError::NothingToResume { dir: path() }, 2),
        ]
    }

    /// Every ending but the journal errors, and the code docs/getting-started.md gives it.
    fn endings() -> Vec<(Ending, u8)> {
        let io = || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "Permission denied");
        vec![
            (Ending::Done, 0),
            (Ending::Refused, 2),
            (Ending::ManifestUnreadable, 2),
            (Ending::NoSuchImage, 1),
            (Ending::Checked { failed: 0 }, 0),
            (Ending::Checked { failed: 2 }, 1),
            (Ending::Collected { failures: 0 }, 0),
            (Ending::Collected { failures: 1 }, 1),
            (Ending::Ran { summary: summary(0, None), leaked: 0, unsaved: false }, 0),
            (Ending::Ran { summary: summary(1, None), leaked: 0, unsaved: false }, 1),
            (Ending::Ran { summary: summary(0, None), leaked: 1, unsaved: false }, 1),
            (Ending::Ran { summary: summary(0, None), leaked: 0, unsaved: true }, 1),
            (Ending::Ran { summary: summary(0, Some(Interrupt::SIGINT)), leaked: 0, unsaved: true }, 130),
            (Ending::Ran { summary: expired(2), leaked: 0, unsaved: false }, 3),
            (Ending::Ran { summary: summary(1, Some(Interrupt::SIGINT)), leaked: 0, unsaved: false }, 130),
            (Ending::Ran { summary: summary(0, Some(Interrupt::SIGTERM)), leaked: 1, unsaved: false }, 143),
            (
                Ending::RunStopped(RunError::DetectAddress(DetectError {
                    url: "http://checkip.amazonaws.com/".to_string(),
                    reason: "timed out".to_string(),
                })),
                1,
            ),
            (Ending::RunStopped(RunError::Report(ReportError("disk full".to_string()))), 1),
            (Ending::RunStopped(RunError::Statistics { path: PathBuf::from("summary.json"), error: io() }), 1),
            (Ending::RunStopped(RunError::Resume(cloud_error())), 1),
            (Ending::RunStopped(RunError::Preflight(Preflight::default())), 1),
            (Ending::RunStopped(RunError::Events { path: PathBuf::from("events.jsonl"), error: io() }), 1),
            (
                Ending::RunStopped(RunError::Manifest(ExistingManifestError::Unreadable {
                    path: PathBuf::from("manifest.json"),
                    why: "expected value at line 1 column 1".to_string(),
                })),
                2,
            ),
            (
                Ending::RunStopped(RunError::Manifest(ExistingManifestError::CannotSetAside {
                    path: PathBuf::from("manifest.json"),
                    kept_as: PathBuf::from("manifest.json.unreadable-20261207T123000Z"),
                    error: io(),
                })),
                1,
            ),
            (Ending::GcStopped(GcError::Cloud(cloud_error())), 1),
            (Ending::GcStopped(GcError::Manifest { path: "manifest.json".to_string(), error: io() }), 1),
        ]
    }

    #[test]
    fn every_ending_exits_with_the_code_readme_gives_it() {
        for (ending, code) in endings() {
            assert_eq!(ending.exit().code(), code, "{ending:?}");
        }
    }

    #[test]
    fn a_journal_error_exits_with_the_same_code_from_matrix_and_gc() {
        let from_matrix = journal_errors().into_iter().map(|(error, code)| (Ending::RunStopped(error.into()), code));
        let from_gc = journal_errors().into_iter().map(|(error, code)| (Ending::GcStopped(error.into()), code));
        for (ending, code) in from_matrix.chain(from_gc) {
            assert_eq!(ending.exit().code(), code, "{ending:?}");
        }
    }

    /// The codes in the first column of the "Exit codes" table of docs/getting-started.md (`130 / 143` is two).
    fn readme_codes() -> BTreeSet<u8> {
        let readme = include_str!("../../docs/getting-started.md");
        let table = readme.split("## Exit codes").nth(1).expect("docs/getting-started.md has an `Exit codes` section");
        table
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .filter_map(|row| row.split('|').nth(1))
            .flat_map(|cell| cell.split('/').map(|code| code.trim().parse::<u8>()).collect::<Vec<_>>())
            .filter_map(Result::ok)
            .collect()
    }

    #[test]
    fn readme_lists_exactly_the_codes_an_ending_can_exit_with() {
        let journal = journal_errors().into_iter().map(|(error, code)| (Ending::RunStopped(error.into()), code));
        let produced: BTreeSet<u8> =
            endings().into_iter().chain(journal).map(|(ending, _)| ending.exit().code()).collect();
        assert_eq!(produced, readme_codes());
    }
}
