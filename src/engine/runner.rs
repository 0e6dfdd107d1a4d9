//! What runs one job once the loop has given it a slot and its input: the [`JobRunner`] port, its real
//! implementation over the steps ([`StepRunner`]: a build, or a copy of its input image), and the
//! [`Announcer`] a job tells that its image is available. The loop knows jobs only through this port, so its
//! unit tests run it with a fake runner under the paused clock.
//!
//! Layer: `engine`. [`crate::engine::scheduler`] calls it; the work itself is in `steps`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cloud::watch::Waits;
use crate::cloud::Cloud;
use crate::config::SourceAmi;
use crate::engine::changed;
use crate::engine::scheduler::LoopEvent;
use crate::outcome::{Artifact, JobEnd, JobLabel, Publication};
use crate::plan::{JobId, JobKey, Plan};
use crate::remote::Communicator;
use crate::report::events::{EventSender, RunEvent};
use crate::state::journal::{Journal, Record};
use crate::state::resume::Prior;
use crate::steps::build::{self, BuildContext, PendingImage};
use crate::steps::context::RunContext;
use crate::steps::copy::{self, CopyContext};

/// Runs one job to its end. `input` is the image of the job it waits on (`None` for a build from its source
/// filter); `announce` is told once its own image is available; `cancel` fires on an interrupt.
pub trait JobRunner: Send + Sync {
    fn run(
        &self,
        job: JobId,
        input: Option<Artifact>,
        announce: Announcer,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, JobEnd>;
}

/// The real jobs: builds and copies, as the steps do them.
pub struct StepRunner {
    pub run: Arc<RunContext>,
    pub plan: Arc<Plan>,
    pub cloud: Arc<dyn Cloud>,
    pub communicator: Arc<dyn Communicator>,
    pub waits: Arc<Waits>,
    pub events: EventSender,
    /// Resuming: what earlier attempts left, per job (a pending image is waited for, not made again).
    pub priors: BTreeMap<JobId, Prior>,
    /// Resuming: how many images of each job earlier attempts discarded.
    pub generations: BTreeMap<JobId, u32>,
    /// Resuming: what each job's image was already published to.
    pub published: BTreeMap<JobId, Vec<Publication>>,
}

impl StepRunner {
    /// Resuming: the image an earlier attempt left pending for this job.
    fn pending_image(&self, job: JobId) -> Option<&PendingImage> {
        match self.priors.get(&job) {
            Some(Prior::Pending(pending)) => Some(pending),
            _ => None,
        }
    }
}

impl JobRunner for StepRunner {
    fn run(
        &self,
        job: JobId,
        input: Option<Artifact>,
        announce: Announcer,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, JobEnd> {
        let flavor_name = self.plan.placement(job).0;
        let flavor = self.run.fleet.flavor(flavor_name).expect("the plan names only configured flavors").clone();
        let published_before = self.published.get(&job).cloned().unwrap_or_default();
        match job {
            JobId::Build(index) => {
                // A build from another flavor's image (`BuildSource::ImageOf`) gets that image as its input.
                let build_job = self.plan.builds[index].clone();
                let manifest_parent = match (&flavor.source_ami, &input) {
                    (SourceAmi::Flavor(parent), None) => {
                        changed::manifest_parent(&self.run.fleet, parent, &build_job.region)
                    }
                    _ => None,
                };
                let context = BuildContext {
                    run: Arc::clone(&self.run),
                    cloud: self.cloud.region(&build_job.region),
                    waits: self.waits.region(&build_job.region),
                    communicator: Arc::clone(&self.communicator),
                    flavor,
                    job: build_job,
                    events: self.events.clone(),
                    cancel,
                    pending_image: self.pending_image(job).cloned(),
                    published_before,
                    parent_image: input,
                    manifest_parent,
                    logins: Default::default(),
                    rebuilt_on_demand: false,
                };
                Box::pin(async move { build::run(context, |artifact| announce.image_available(artifact)).await })
            }
            JobId::Copy(index) => {
                let copy_job = self.plan.copies[index].clone();
                let context = CopyContext {
                    run: Arc::clone(&self.run),
                    cloud: self.cloud.place(&copy_job.target),
                    waits: self.waits.place(&copy_job.target),
                    source_cloud: self.cloud.region(&copy_job.source_region),
                    source_waits: self.waits.region(&copy_job.source_region),
                    flavor,
                    job: copy_job,
                    source: input.expect("a copy starts from its build's image"),
                    events: self.events.clone(),
                    cancel,
                    pending_image: self.pending_image(job).map(|pending| pending.image.clone()),
                    generation: self.generations.get(&job).copied().unwrap_or(0),
                    published_before,
                };
                Box::pin(async move {
                    let copied = copy::run(context).await;
                    if let Some(artifact) = &copied.artifact {
                        announce.image_available(artifact);
                    }
                    copied.end
                })
            }
        }
    }
}

/// Tells the reporters (in order with the job's other events) and the loop that a job's image is available.
pub struct Announcer {
    pub(crate) job: JobId,
    pub(crate) key: JobKey,
    pub(crate) label: JobLabel,
    pub(crate) events: EventSender,
    pub(crate) scheduler: mpsc::UnboundedSender<LoopEvent>,
    pub(crate) journal: Arc<Journal>,
}

impl Announcer {
    /// Journaled first: once the loop hears of it, the jobs waiting on it may start. Then what the job published
    /// itself (`when = "each"`), told to the reporters after the image.
    pub fn image_available(&self, artifact: &Artifact) {
        publish_available(&self.journal, &self.events, self.key.clone(), self.label.clone(), artifact);
        // The loop outlives its jobs; a closed channel means the run was abandoned.
        let _ = self.scheduler.send(LoopEvent::ImageAvailable { job: self.job, artifact: artifact.clone() });
        for publication in &artifact.published {
            self.events.send(RunEvent::Published { job: self.label.clone(), publication: publication.clone() });
        }
    }
}

/// An image is available: journaled, then told to the reporters (the loop hears of it separately).
pub fn publish_available(journal: &Journal, events: &EventSender, key: JobKey, label: JobLabel, artifact: &Artifact) {
    journal.record(Record::ImageAvailable { job: key, artifact: artifact.clone() });
    events.send(RunEvent::ImageAvailable { job: label, artifact: artifact.clone() });
}
