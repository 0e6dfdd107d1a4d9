//! One build: the amazon-ebs sequence for one flavor in one region, with every temporary resource on the
//! cleanup stack before the next await, and the stack unwound whatever happens.
//!
//! source AMI → key pair → security group → launch → running → SSH → provisioners → build key out of
//! `authorized_keys` → stop → CreateImage (the image and its snapshots tagged at creation) → available → (image
//! handed to the scheduler) → cleanup. A one-time spot instance cannot be stopped: its image is made of the
//! running instance, with reboot; if EC2 takes it back mid-build ([`interruption`]), the attempt is unwound and
//! the build made again on demand, once.
//!
//! One module per phase: [`launch`] (source image, RunInstances), [`reach`] (the way in), [`provision`],
//! [`authorized`] (the build key removed from the image before it stops),
//! [`image`] (CreateImage and its wait), [`test`] (the image's tests), and [`failure`] (the on-failure phase,
//! run while a failed phase's instance and connection are still there); this module runs them in order.

mod authorized;
mod failure;
mod image;
mod interruption;
mod keep;
mod launch;
mod provision;
mod reach;
mod test;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cloud::consistency::{once_known, Created, NewKind};
use crate::cloud::hints;
use crate::cloud::wait::WaitError;
use crate::cloud::watch::{RegionWaits, WaitKind};
use crate::cloud::ImageOf;
use crate::cloud::{CloudError, ImageId, ImageSummary, InstanceId, RegionCloud};
use crate::config::{Flavor, Market, SourceAmi, Tags};
use crate::outcome::{Artifact, BuiltOn, Failure, JobEnd, JobLabel, Publication, SourceParameter, Stage};
use crate::plan::BuildJob;
use crate::remote::{Communicator, Connection, TargetInstance};
use crate::report::events::EventSender;
use crate::steps::cleanup::CleanupStack;
use crate::steps::cleanup::UndoStep;
use crate::steps::context::{RunContext, TEMPORARY_TAG};
use crate::steps::fingerprint::Fingerprint;
use crate::steps::finish::{self, Finished, Finishing, Made};
use crate::steps::ledger::{Resource, ResourceKind};
use crate::steps::network;
use crate::steps::publish;

use image::{create_image, fingerprint, wait_for_image};
use launch::resolve_source;
use provision::provision_all;
use reach::Reach;
use test::test_image;

pub use keep::Logins;

/// Everything one build needs.
pub struct BuildContext {
    pub run: Arc<RunContext>,
    pub cloud: Arc<dyn RegionCloud>,
    pub waits: RegionWaits,
    pub communicator: Arc<dyn Communicator>,
    pub flavor: Flavor,
    pub job: BuildJob,
    pub events: EventSender,
    pub cancel: CancellationToken,
    /// Resuming: the image an earlier attempt requested, still pending; the build only waits for it.
    pub pending_image: Option<PendingImage>,
    /// Resuming: what earlier attempts already published of this job's image.
    pub published_before: Vec<Publication>,
    /// `source_ami = { flavor = … }`: the parent's image in this region, made or reused this run (the plan's
    /// `BuildSource::ImageOf`); `None` otherwise, or when the plan does not build the parent (`--only`).
    pub parent_image: Option<Artifact>,
    /// `source_ami = { flavor = … }` with the parent not built in this run (`--only child`): the parent's image
    /// in this region as the fleet's manifest lists it, tried before the newest tagged one.
    pub manifest_parent: Option<ImageId>,
    /// `--keep-failed`: how this build's instances were logged in to (empty without it).
    pub logins: Logins,
    /// The build is being made again on demand after EC2 took its spot instance back: its resources and its
    /// launch are new ones, never a repeat of the interrupted attempt's (names, client tokens).
    pub rebuilt_on_demand: bool,
}

/// An image CreateImage was asked for in an earlier attempt, and the source image it was made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingImage {
    pub image: ImageId,
    pub source: ImageId,
}

/// Why the sequence stopped short of an available image.
enum Stopped {
    Failed(StepError),
    /// Interrupted after CreateImage: the image goes on being made.
    ImageInProgress(ImageId),
    /// EC2 took the attempt's spot instance back (`Server.SpotInstanceTermination`).
    SpotInterrupted(Box<interruption::Interrupted>),
}

impl From<StepError> for Stopped {
    fn from(error: StepError) -> Self {
        Stopped::Failed(error)
    }
}

/// A step's failure, before it is labelled with the job.
struct StepError {
    stage: Stage,
    code: Option<String>,
    message: String,
    /// What to do about it (see `cloud::hints`).
    hint: Option<String>,
    /// What the on-failure phase saved about it ([`failure`]).
    logs: Vec<std::path::PathBuf>,
}

impl StepError {
    fn new(stage: Stage, message: impl ToString) -> Self {
        StepError { stage, code: None, message: message.to_string(), hint: None, logs: Vec::new() }
    }
    fn cloud(stage: Stage, error: CloudError) -> Self {
        let hint = hints::hint(&error);
        StepError { stage, code: error.code.clone(), message: error.to_string(), hint, logs: Vec::new() }
    }
    fn wait(stage: Stage, error: WaitError) -> Self {
        match error {
            WaitError::Cloud(error) => Self::cloud(stage, error),
            other => Self::new(stage, other),
        }
    }
    fn interrupted(during: Stage) -> Self {
        StepError::new(Stage::Interrupted, format!("interrupted during {during}"))
    }
    /// Says how long the step waited before it gave up.
    fn waited(mut self, how_long: &str) -> Self {
        self.message = format!("{} ({how_long})", self.message);
        self
    }
}

impl BuildContext {
    fn label(&self) -> JobLabel {
        JobLabel::new(self.flavor.name.clone(), self.job.region.clone())
    }

    fn progress(&self, stage: Stage, detail: impl Into<String>) {
        self.events.progress(&self.label(), stage, detail);
    }

    /// Runs a wait, giving up when the run is interrupted. Calls that create resources are never raced:
    /// what they create must reach the cleanup stack.
    async fn interruptible<T>(
        &self,
        stage: Stage,
        wait: impl std::future::Future<Output = Result<T, StepError>>,
    ) -> Result<T, StepError> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(StepError::interrupted(stage)),
            result = wait => result,
        }
    }

    /// Journals a temporary resource the moment it exists, before the next call depends on it.
    fn created(&self, kind: ResourceKind, id: impl ToString) {
        let resource = Resource::new(self.job.region.clone(), kind, id.to_string());
        self.run.ledger.created(&self.job.key(), resource);
    }

    /// Tags on every temporary resource of this build.
    fn temporary_tags(&self) -> Tags {
        let mut tags = self.run.identity_tags(&self.flavor.name);
        tags.insert(TEMPORARY_TAG.into(), "true".into());
        tags.insert("Name".into(), format!("fleetbake {} {}", self.flavor.name, self.run.run_id));
        tags
    }
}

/// Runs the whole build, cleanup included; calls `on_available` the moment the image is available, before
/// cleanup, so its copies can start.
pub async fn run(mut context: BuildContext, on_available: impl FnOnce(&Artifact)) -> JobEnd {
    let mut stack = CleanupStack::default();
    let mut end = JobEnd::default();
    let result = match context.pending_image.clone() {
        Some(pending) => {
            context.progress(Stage::WaitImage, format!("waiting for {} from an earlier attempt", pending.image));
            // Its fingerprint tag was given at CreateImage; the manifest's is the same computation (with an SSM
            // parameter's version read again: if the parameter has moved since, the digest is left out).
            let parameter = pending_parameter(&context, &pending.source).await;
            let (fleet, flavor, region) = (&context.run.fleet, &context.flavor, &context.job.region);
            let fingerprint = match &parameter {
                Err(()) => None,
                Ok(parameter) => {
                    Fingerprint::of_source(fleet, flavor, region, &pending.source, parameter.as_ref()).ok()
                }
            };
            let digest = fingerprint.map(|fingerprint| fingerprint.digest);
            let waited = wait_for_image(&context, &mut stack, pending.image, pending.source, None, digest).await;
            waited.map(|mut artifact| {
                artifact.settings.source_parameter = parameter.ok().flatten();
                artifact
            })
        }
        None => match sequence(&context, &mut stack).await {
            Err(Stopped::SpotInterrupted(interrupted)) => {
                // Not the build's failure: the attempt's resources go, and the build is made again on demand.
                context.progress(Stage::Launch, interruption::told(&interrupted));
                end.spot_interruptions.push(interrupted.attempt);
                end.failures.extend(unwind(&context, &mut stack).await);
                context.flavor.market = Market::OnDemand;
                context.rebuilt_on_demand = true;
                // On demand, EC2 does not take the instance back: a second interruption is not possible (and
                // would be a failure that keeps nothing: the instance is gone).
                sequence(&context, &mut stack).await
            }
            other => other,
        },
    };
    // Only an image that passed its tests is finished, announced, copied.
    let result = match result {
        Ok(artifact) => match test_image(&context, &mut stack, &artifact).await {
            Ok(()) => Ok(artifact),
            Err(error) => Err(Stopped::Failed(error)),
        },
        stopped => stopped,
    };
    let label = context.label();
    match result {
        Ok(mut artifact) => {
            let finishing = Finishing {
                cloud: &*context.cloud,
                fleet: &context.run.fleet,
                flavor: &context.flavor,
                region: &context.job.region,
                image: &artifact.image_id,
                snapshots: &artifact.snapshot_ids,
                now: context.run.clock.now(),
                made: Made::ThisRun { started: context.run.clock.started_at() },
            };
            let Finished { settings, failures, notes } = finish::finish(finishing).await;
            for note in notes {
                context.progress(Stage::Deprecate, note);
            }
            let source_parameter = artifact.settings.source_parameter.take();
            let built_on = artifact.settings.built_on.take();
            *artifact.settings = settings;
            artifact.settings.source_parameter = source_parameter;
            artifact.settings.built_on = built_on;
            artifact.settings.interface = Some(context.flavor.interface.way_in().to_string());
            end.failures.extend(failures.into_iter().map(|f| Failure::from_cloud(&label, f.stage, &f.error)));
            let (cloud, key) = (&*context.cloud, context.job.key());
            let already = &context.published_before;
            let run = &context.run;
            let (published, failures) =
                publish::each(run, cloud, &context.flavor.name, &key, &label, &artifact.image_id, already).await;
            artifact.published = published;
            end.failures.extend(failures);
            on_available(&artifact);
        }
        Err(Stopped::ImageInProgress(image)) => end.in_progress = Some(image),
        Err(Stopped::Failed(error)) => {
            let stage = error.stage;
            end.failures.push(error.into_failure(&label));
            end.kept = keep::keep_failed(&context, &mut stack, stage).await;
        }
        Err(Stopped::SpotInterrupted(interrupted)) => end.failures.push(interrupted.error.into_failure(&label)),
    }
    end.failures.extend(unwind(&context, &mut stack).await);
    end
}

/// Unwinds what the build's stack holds (saying so), leaving it empty; what could not be removed.
async fn unwind(context: &BuildContext, stack: &mut CleanupStack) -> Vec<Failure> {
    if !stack.is_empty() {
        context.progress(Stage::Cleanup, format!("cleaning up {}", stack.pending().join(", ")));
    }
    let stack = std::mem::take(stack);
    let label = context.label();
    stack.unwind_for_job(&label, &*context.cloud, &context.waits, &*context.run.ledger, &context.events).await
}

/// The SSM parameter version an earlier attempt's image was built from: read again, it must still name that
/// source (`Err`: it has moved or cannot be read; `Ok(None)`: the flavor reads no parameter).
async fn pending_parameter(context: &BuildContext, source: &ImageId) -> Result<Option<SourceParameter>, ()> {
    if !matches!(context.flavor.source_ami, SourceAmi::SsmParameter(_)) {
        return Ok(None);
    }
    match crate::steps::source::resolve(&*context.cloud, &context.flavor.source_ami, &context.job.region).await {
        Ok(resolved) if &resolved.image.id == source => Ok(resolved.parameter),
        _ => Err(()),
    }
}

impl StepError {
    fn into_failure(self, label: &JobLabel) -> Failure {
        Failure { code: self.code, hint: self.hint, logs: self.logs, ..Failure::new(label, self.stage, self.message) }
    }
}

async fn sequence(context: &BuildContext, stack: &mut CleanupStack) -> Result<Artifact, Stopped> {
    let resolved = context.interruptible(Stage::SourceAmi, resolve_source(context)).await?;
    let (source, parameter) = (resolved.image, resolved.parameter);
    let fingerprint = fingerprint(context, &source.id, parameter.as_ref())?;
    let up = match bring_up(context, stack, &source, Purpose::Build).await {
        Ok(up) => up,
        // A spot instance taken back while it was coming up (or being connected to) is an interruption too.
        Err(error) => return Err(interruption::of_bring_up(context, stack, error).await),
    };
    let (instance, launched, built_on) = (up.instance.clone(), up.launched, up.built_on.clone());
    let source = source.id;
    let provisioned = context.interruptible(Stage::Provision, provision_all(context, &*up.connection)).await;
    let provisioned = match provisioned {
        Ok(()) => authorized::clear_build_key(context, &*up.connection).await,
        failed => failed,
    };
    if let Err(error) = up.close_after(context, stack, provisioned).await {
        return Err(interruption::or_failure(context, &instance, launched, &built_on, error).await);
    }

    let of = match built_on.market {
        // A one-time spot instance cannot be stopped (StopInstances: `UnsupportedOperation`, EC2 User Guide,
        // "Stop a Spot Instance"): CreateImage with reboot stops and starts it for a consistent snapshot.
        Market::Spot => ImageOf::RunningRebooted,
        Market::OnDemand => {
            stop(context, &instance, launched).await?;
            ImageOf::Stopped
        }
    };
    let image = match create_image(context, &instance, launched, &source, &fingerprint, of).await {
        Ok(image) => image,
        Err(error) => return Err(interruption::or_failure(context, &instance, launched, &built_on, error).await),
    };
    let requested = Created::now(NewKind::Image);
    context.run.ledger.image_requested(&context.job.key(), &image);
    context.progress(Stage::CreateImage, format!("creating image {image} `{}`", context.job.image_name));
    let waited = wait_for_image(context, stack, image, source, Some(requested), Some(fingerprint.digest)).await;
    let mut artifact = match waited {
        // The image of a spot instance EC2 took back during CreateImage's reboot ends `failed`: an interruption.
        Err(Stopped::Failed(error)) => {
            return Err(interruption::or_failure(context, &instance, launched, &built_on, error).await)
        }
        waited => waited?,
    };
    artifact.settings.source_parameter = parameter;
    artifact.settings.built_on = Some(built_on);
    Ok(artifact)
}

/// StopInstances, and the wait until the instance is stopped.
async fn stop(context: &BuildContext, instance: &InstanceId, launched: Created) -> Result<(), StepError> {
    context.progress(Stage::Stop, format!("stopping {instance}"));
    once_known(&[launched], || context.cloud.stop_instance(instance))
        .await
        .map_err(|error| StepError::cloud(Stage::Stop, error))?;
    context
        .interruptible(Stage::Stop, async {
            context
                .waits
                .instance(instance, WaitKind::InstanceStopped)
                .await
                .map_err(|error| StepError::wait(Stage::Stop, error))
        })
        .await
        .map(|_| ())
}

/// The temporary key pair's and group's name: the run and flavor, and what makes this launch's resources new ones:
/// the attempt after the first (a kept build's resources of an earlier attempt keep their names, and `adopt`
/// would take a same-named one as its own), an on-demand rebuild, the image's test.
fn resource_name(context: &BuildContext, purpose: Purpose) -> String {
    let mut name = format!("fleetbake-{}-{}", context.run.run_id, context.flavor.name);
    if context.run.attempt > 1 {
        name.push_str(&format!("-a{}", context.run.attempt));
    }
    if context.rebuilt_on_demand {
        name.push_str("-od");
    }
    if purpose == Purpose::Test {
        name.push_str("-test");
    }
    name
}

/// Why an instance is brought up: to build on, or to test the image just made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Build,
    Test,
}

/// An instance up and connected to.
struct Up {
    instance: InstanceId,
    launched: Created,
    connection: Box<dyn Connection>,
    /// Through Session Manager: the sessions its connections open.
    sessions: Option<Arc<reach::BuildSessions>>,
    /// The market and type it was launched as.
    built_on: BuiltOn,
}

/// Brings an instance up from `image` and connects to it: its network settled, what its way in needs (a
/// temporary key pair and security group), the launch (capacity waited out), running, connected. Everything
/// made is on `stack`.
async fn bring_up(
    context: &BuildContext,
    stack: &mut CleanupStack,
    image: &ImageSummary,
    purpose: Purpose,
) -> Result<Up, StepError> {
    let run = &context.run;
    let network =
        network::resolve(&*context.cloud, &run.fleet.ssh, &run.ssh_sources, &context.flavor, &context.job.region)
            .await
            .map_err(|error| StepError {
                stage: Stage::Network,
                hint: error.cloud.as_ref().and_then(hints::hint),
                code: error.cloud.and_then(|e| e.code),
                message: error.message,
                logs: Vec::new(),
            })?;

    let resource_name = resource_name(context, purpose);
    let reach = Reach::new(context, &network);
    let prepared = reach.prepare(context, stack, &resource_name).await?;
    let launch::Launched { instance, created: launched, running, built_on } =
        launch::instance(context, stack, image, &network, &prepared, purpose).await?;
    let for_build = TargetInstance {
        id: instance.clone(),
        flavor: context.flavor.name.clone(),
        region: context.job.region.clone(),
    };
    let host_key = reach.host_key(context, &instance).await?;
    let sessions = reach.sessions();
    if sessions.is_some() {
        // Undone before the instance is terminated: every session to it ends, those whose id was lost too.
        stack.push(UndoStep::EndSessionsTo { instance: instance.clone() });
    }
    let target = match &sessions {
        Some(_) => reach.session_target(context, prepared, for_build, host_key)?,
        None => reach.target(prepared, for_build, &running, host_key)?,
    };
    context.logins.note(context, &target);
    let connected = reach.connect(context, &target).await;
    // A session a failed (or interrupted) connect did not end is the stack's to end.
    if let (Err(_), Some(sessions)) = (&connected, &sessions) {
        sessions.left_open(stack);
    }
    Ok(Up { instance, launched, connection: connected?, sessions, built_on })
}

impl Up {
    /// Closes the connection after a phase's `result` ([`failure::close_after`]); a session the connection could
    /// not end goes to `stack`.
    async fn close_after<T>(
        self,
        context: &BuildContext,
        stack: &mut CleanupStack,
        result: Result<T, StepError>,
    ) -> Result<T, StepError> {
        let result = failure::close_after(context, &self.instance, self.connection, result).await;
        if let Some(sessions) = &self.sessions {
            sessions.left_open(stack);
        }
        result
    }
}
