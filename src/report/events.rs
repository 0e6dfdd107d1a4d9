//! The closed set of events the engine emits. Reporters (terminal lines, the manifest writer) consume them;
//! nothing in the engine prints.

use std::fmt;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::cloud::{CloudError, ImageId, SnapshotId};
use crate::config::Sharing;
use crate::config::{FlavorName, Region};
use crate::plan::RunId;
use crate::util::clock::RunClock;

/// Which image a job is making: a flavor in a region (the build region, or a copy's target).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobLabel {
    pub flavor: FlavorName,
    pub region: Region,
}

impl fmt::Display for JobLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.flavor, self.region)
    }
}

/// A step of a build or a copy; a failure names the one it happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    SourceAmi,
    /// Settling where the instance goes and how it is reached (subnets, VPC, SSH sources).
    Network,
    KeyPair,
    SecurityGroup,
    Launch,
    WaitRunning,
    Connect,
    Provision,
    Stop,
    CreateImage,
    WaitImage,
    /// Running the flavor's tests on an instance launched from the new image.
    Test,
    /// Requiring IMDSv2 of the image's instances.
    Imds,
    /// Setting the image's deprecation time.
    Deprecate,
    /// Granting launch and create-volume permissions (`[sharing]`).
    Share,
    /// Writing the image's id where deploys look (`[publish]`).
    Publish,
    Tag,
    Copy,
    WaitCopy,
    Cleanup,
    /// Never started: what it depended on failed.
    Skipped,
    /// Never started or cut short: the run was interrupted.
    Interrupted,
    /// Done by an earlier attempt of the run (`--resume`).
    Reused,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self).ok().and_then(|value| value.as_str().map(str::to_string));
        f.write_str(text.as_deref().unwrap_or("?"))
    }
}

/// An image that exists and is available: what the manifest records per flavor and region.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Artifact {
    pub image_id: ImageId,
    pub name: String,
    pub build_region: Region,
    pub source_image_id: ImageId,
    pub snapshot_ids: Vec<SnapshotId>,
    /// When this image became available, RFC 3339.
    pub created_at: String,
    /// `fleetbake:fingerprint`: what determines its contents (see `steps::fingerprint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// `--changed-only`: nothing changed since the run that made it, which this run reused it from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// Where it was published (`[publish]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<Publication>,
    /// What `[encryption]`, `[sharing]`, IMDSv2 and `deprecate_after` made of it.
    /// Boxed: most runs set none of them, and every event carrying an artifact stays small.
    #[serde(flatten)]
    pub settings: Box<ImageSettings>,
}

/// Where an image's id was published for deploys.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Publication {
    /// An SSM parameter's new version, labelled with the run (`fleetbake-<run id>`).
    SsmParameter { name: String, version: u64, label: String },
    /// A launch template's new default version.
    LaunchTemplate { name: String, id: String, version: u64 },
}

/// What the fleet's settings made of an image, as far as they were applied: a field is absent when its setting
/// is off, or when applying it failed (the failure is in the summary).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageSettings {
    /// The KMS key its snapshots are encrypted with (`[encryption]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// `v2.0`: instances launched from it require IMDSv2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_support: Option<String>,
    /// When EC2 deprecates it, RFC 3339 (`[fleet] deprecate_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation_time: Option<String>,
    /// Who may launch it, and create volumes from its snapshots (`[sharing]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<Sharing>,
}

/// Why a job did not produce its image (or did, but left something behind).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub flavor: FlavorName,
    pub region: Region,
    pub stage: String,
    /// The AWS error code, where the cause was an AWS error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub error: String,
    /// What to do about it, when the cause is one the user must act on (a missing permission, expired
    /// credentials, a region not enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(label: &JobLabel, stage: Stage, error: impl fmt::Display) -> Self {
        Failure {
            flavor: label.flavor.clone(),
            region: label.region.clone(),
            stage: stage.to_string(),
            code: None,
            error: error.to_string(),
            hint: None,
        }
    }

    pub fn from_cloud(label: &JobLabel, stage: Stage, error: &CloudError) -> Self {
        Failure {
            code: error.code.clone(),
            hint: crate::cloud::hints::hint(error),
            ..Failure::new(label, stage, error)
        }
    }
}

/// How a job ended: what went wrong (nothing, for a clean success), and the image it leaves being made if the
/// run was interrupted after CreateImage or CopyImage answered (a resume waits for it).
#[derive(Debug, Default)]
pub struct JobEnd {
    pub failures: Vec<Failure>,
    pub in_progress: Option<ImageId>,
}

/// An image still being made when the run stopped: in the manifest, for `--resume` and for people.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InProgress {
    pub flavor: FlavorName,
    pub region: Region,
    pub image_id: ImageId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every build and copy succeeded.
    Complete,
    /// Some images exist, something failed or is still to come.
    Partial,
    /// No image was made.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
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
    /// EC2 answered `RequestLimitExceeded`; the call waits and is retried.
    Throttled {
        region: Region,
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
        line: String,
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
