//! The closed set of events the engine emits. Reporters (terminal lines, the manifest writer) consume them;
//! nothing in the engine prints. Events carry the run's outcomes ([`crate::outcome`]) but do not define them:
//! what a reporter writes of an outcome is that reporter's choice.

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::config::{Place, Region};
use crate::outcome::{Artifact, Failure, InProgress, JobLabel, Kept, Publication, RunStatus, Stage};
use crate::plan::RunId;
use crate::util::clock::RunClock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One line a command printed on an instance, as the bytes it printed (without its line ending): carried as
/// bytes end to end, made text only at the edge, by whatever writes it ([`OutputLine::text`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLine(Vec<u8>);

impl OutputLine {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        OutputLine(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The line as text: UTF-8 as printed, any byte that is not UTF-8 as U+FFFD.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl From<String> for OutputLine {
    fn from(text: String) -> Self {
        OutputLine(text.into_bytes())
    }
}

impl From<&str> for OutputLine {
    fn from(text: &str) -> Self {
        OutputLine(text.as_bytes().to_vec())
    }
}

/// What a run killed outright left on this machine, found by its run id and ended by a later run (as it
/// starts) or `gc`: its ssh control masters (still logged in to their instances) and its connections' private
/// directories (a key, a control socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalLeftovers {
    pub run_id: String,
    pub masters: usize,
    pub key_directories: usize,
}

impl LocalLeftovers {
    /// What would be ended (`gc --dry-run`): `would end 1 ssh master and remove 1 key directory left by run X`.
    pub fn would_end(&self) -> String {
        format!("would end {} and remove {} left by run {}", self.masters_text(), self.directories_text(), self.run_id)
    }

    fn masters_text(&self) -> String {
        plural(self.masters, "ssh master", "ssh masters")
    }

    fn directories_text(&self) -> String {
        plural(self.key_directories, "key directory", "key directories")
    }
}

fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

impl std::fmt::Display for LocalLeftovers {
    /// `ended 1 ssh master and removed 1 key directory left by run X`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ended {} and removed {} left by run {}", self.masters_text(), self.directories_text(), self.run_id)
    }
}

/// A build or a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Build,
    Copy,
}

/// A job of the plan, as reporters know it: where its image lands, and whether it builds or copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedLanding {
    pub job: JobLabel,
    pub kind: JobKind,
    /// The build region (a copy's source).
    pub build_region: Region,
}

#[derive(Clone, Debug)]
pub enum RunEvent {
    RunStarted {
        fleet: String,
        run_id: RunId,
        started_at: DateTime<Utc>,
        builds: usize,
        copies: usize,
        /// Every job of the plan, in plan order.
        planned: Vec<PlannedLanding>,
        /// `--only` / `--except` narrowed the run.
        selective: bool,
    },
    /// A job got its slot and started.
    JobStarted {
        job: JobLabel,
        kind: JobKind,
    },
    /// A job ended with its image and nothing wrong.
    JobSucceeded {
        job: JobLabel,
    },
    /// An image's id was published (`[publish]`); `job` names the flavor and the region it is in.
    Published {
        job: JobLabel,
        publication: Publication,
    },
    /// EC2 answered `RequestLimitExceeded` in `place`; the call waits and is retried.
    Throttled {
        place: Place,
        action: String,
    },
    /// Every preflight check passed (before anything was created).
    PreflightPassed {
        checks: usize,
    },
    /// A job moved on; `detail` says what it did or waits for.
    Progress {
        job: JobLabel,
        stage: Stage,
        detail: String,
    },
    /// A line a provisioner printed on the instance.
    Output {
        job: JobLabel,
        stream: OutputStream,
        line: OutputLine,
    },
    /// `job` names the flavor and the region the image is in.
    ImageAvailable {
        job: JobLabel,
        artifact: Artifact,
    },
    JobFailed(Failure),
    /// The run stopped while this image was being made; it is left to finish in AWS.
    ImageInProgress(InProgress),
    /// The sweep at the end of a run removed a temporary resource a job's cleanup had not.
    Swept {
        resource: String,
    },
    /// A cleanup step failed; what it names may be left in the account.
    CleanupFailed {
        job: JobLabel,
        resource: String,
        error: String,
    },
    /// As the run started, it ended what a run killed outright had left on this machine.
    LocalLeftoversEnded(LocalLeftovers),
    /// The manifest the run is to write over could not be read (not JSON, not a manifest, a newer version): it
    /// was kept beside as `kept_as`, and the run writes a new one.
    ManifestSetAside {
        path: std::path::PathBuf,
        kept_as: std::path::PathBuf,
        why: String,
    },
    /// `--resume`: the run continues from its journal.
    Resuming {
        run_id: RunId,
        attempt: u32,
        journal: std::path::PathBuf,
    },
    /// The first interrupt: nothing new starts, everything cleans up.
    Interrupted {
        signal: &'static str,
    },
    RunFinished {
        status: RunStatus,
        finished_at: DateTime<Utc>,
        succeeded: usize,
        failed: usize,
        /// Images left being made in AWS by an interrupt.
        in_progress: usize,
    },
    /// `--keep-failed`: a failed build's instance (with its key pair and group) is kept for a person to look at.
    Kept(Kept),
}

/// See [`EventSender::downgrade`]; sends nothing once the run's senders are gone.
#[derive(Clone, Debug)]
pub struct WeakEventSender {
    sender: mpsc::WeakUnboundedSender<Stamped>,
    clock: RunClock,
}

impl WeakEventSender {
    pub fn send(&self, event: RunEvent) {
        if let Some(sender) = self.sender.upgrade() {
            let _ = sender.send(Stamped { at: self.clock.now(), event });
        }
    }
}

/// An event and when it happened, by the run's clock (in the sim, the simulated time).
#[derive(Clone, Debug)]
pub struct Stamped {
    pub at: DateTime<Utc>,
    pub event: RunEvent,
}

/// Where the engine sends events, each stamped with the run's clock as it is sent. Cloning is cheap; sending
/// never blocks and never fails the engine.
#[derive(Clone, Debug)]
pub struct EventSender {
    sender: mpsc::UnboundedSender<Stamped>,
    clock: RunClock,
}

impl EventSender {
    pub fn channel(clock: RunClock) -> (EventSender, mpsc::UnboundedReceiver<Stamped>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (EventSender { sender, clock }, receiver)
    }

    pub fn send(&self, event: RunEvent) {
        // The reporters outlive the engine; a closed channel only means the process is exiting.
        let _ = self.sender.send(Stamped { at: self.clock.now(), event });
    }

    /// A sender that does not keep the channel open: for observers that outlive the run (the reporters end
    /// when every strong sender is gone).
    pub fn downgrade(&self) -> WeakEventSender {
        WeakEventSender { sender: self.sender.downgrade(), clock: self.clock }
    }

    pub fn progress(&self, job: &JobLabel, stage: Stage, detail: impl Into<String>) {
        self.send(RunEvent::Progress { job: job.clone(), stage, detail: detail.into() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_line_is_its_bytes_and_its_text_is_made_lossily() {
        let line = OutputLine::new(b"caf\xc3\xa9 \xff ok".to_vec());
        assert_eq!(line.as_bytes(), b"caf\xc3\xa9 \xff ok");
        assert_eq!(line.text(), "café \u{fffd} ok");
        assert_eq!(OutputLine::from("plain text").text(), "plain text");
    }
}
