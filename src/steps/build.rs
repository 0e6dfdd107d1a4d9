//! One build: the amazon-ebs sequence for one flavor in one region, with every temporary resource on the
//! cleanup stack before the next await, and the stack unwound whatever happens.
//!
//! source AMI → key pair → security group → launch → running → SSH → provisioners → stop → CreateImage →
//! available → tag snapshots → (image handed to the scheduler) → cleanup.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::cloud::consistency::{once_known, Created, NewKind};
use crate::cloud::hints;
use crate::cloud::retry;
use crate::cloud::wait::WaitError;
use crate::cloud::watch::{RegionWaits, WaitKind};
use crate::cloud::{
    client_token, CloudError, ImageId, ImageSummary, InstanceId, KeyPairName, LaunchSpec, RegionCloud, RootDevice,
    SecurityGroupId,
};
use crate::config::{Flavor, Provisioner, Tags};
use crate::outcome::{Artifact, Failure, JobEnd, JobLabel, Publication, Stage};
use crate::plan::BuildJob;
use crate::remote::provision::{Described, ProvisionEnv};
use crate::remote::ssh::SshTarget;
use crate::remote::{Communicator, ConnectTarget, Connection};
use crate::report::events::{EventSender, RunEvent};
use crate::steps::adopt;
use crate::steps::cleanup::{CleanupStack, UndoStep};
use crate::steps::context::{RunContext, TEMPORARY_TAG, TEST_TAG};
use crate::steps::fingerprint::Fingerprint;
use crate::steps::finish::{self, Finishing};
use crate::steps::ledger::{Resource, ResourceKind};
use crate::steps::network::{self, Network, Placement};
use crate::steps::patience::{image_not_ready, no_room, Placements};
use crate::steps::publish;
use crate::steps::source::{self, SourceError};

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
}

impl StepError {
    fn new(stage: Stage, message: impl ToString) -> Self {
        StepError { stage, code: None, message: message.to_string(), hint: None }
    }
    fn cloud(stage: Stage, error: CloudError) -> Self {
        StepError { stage, code: error.code.clone(), message: error.to_string(), hint: hints::hint(&error) }
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
        JobLabel { flavor: self.flavor.name.clone(), region: self.job.region.clone() }
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
        let resource = Resource { region: self.job.region.clone(), kind, id: id.to_string() };
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
pub async fn run(context: BuildContext, on_available: impl FnOnce(&Artifact)) -> JobEnd {
    let mut stack = CleanupStack::default();
    let result = match context.pending_image.clone() {
        Some(pending) => {
            context.progress(Stage::WaitImage, format!("waiting for {} from an earlier attempt", pending.image));
            // Its fingerprint tag was given at CreateImage; the manifest's is the same computation.
            let fingerprint =
                Fingerprint::of(&context.run.fleet, &context.flavor, &context.job.region, &pending.source);
            let digest = fingerprint.ok().map(|fingerprint| fingerprint.digest);
            wait_for_image(&context, &mut stack, pending.image, pending.source, None, digest).await
        }
        None => sequence(&context, &mut stack).await,
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
    let mut end = JobEnd::default();
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
            };
            let (settings, failures) = finish::finish(finishing).await;
            *artifact.settings = settings;
            end.failures.extend(failures.into_iter().map(|f| Failure::from_cloud(&label, f.stage, &f.error)));
            let (cloud, key) = (&*context.cloud, context.job.key());
            let already = &context.published_before;
            let run = &context.run;
            let (published, failures) =
                publish::each(run, cloud, &context.flavor.name, &key, &label, &artifact.image_id, already).await;
            artifact.published = published;
            end.failures.extend(failures);
            on_available(&artifact);
            // After the announcement: the image is usable whether or not its snapshots get their tags.
            let tags = context.run.artifact_tags(&context.flavor, &artifact);
            if let Err(error) = finish::tag_snapshots(&*context.cloud, &artifact.snapshot_ids, &tags).await {
                end.failures.push(Failure::from_cloud(&label, Stage::Tag, &error));
            }
        }
        Err(Stopped::ImageInProgress(image)) => end.in_progress = Some(image),
        Err(Stopped::Failed(error)) => end.failures.push(error.into_failure(&label)),
    }
    if !stack.is_empty() {
        context.progress(Stage::Cleanup, format!("cleaning up {}", stack.pending().join(", ")));
    }
    let cleanup = stack.unwind_for_job(&label, &*context.cloud, &context.waits, &*context.run.ledger, &context.events);
    end.failures.extend(cleanup.await);
    end
}

impl StepError {
    fn into_failure(self, label: &JobLabel) -> Failure {
        Failure { code: self.code, hint: self.hint, ..Failure::new(label, self.stage, self.message) }
    }
}

async fn sequence(context: &BuildContext, stack: &mut CleanupStack) -> Result<Artifact, Stopped> {
    let cloud = &*context.cloud;
    let source = context.interruptible(Stage::SourceAmi, resolve_source(context)).await?;
    let fingerprint = fingerprint(context, &source.id)?;
    let up = bring_up(context, stack, &source, Purpose::Build).await?;
    let (instance, launched, connection) = (up.instance, up.launched, up.connection);
    let source = source.id;
    let provisioned = context.interruptible(Stage::Provision, provision_all(context, &*connection)).await;
    connection.close().await;
    provisioned?;

    context.progress(Stage::Stop, format!("stopping {instance}"));
    once_known(&[launched], || cloud.stop_instance(&instance))
        .await
        .map_err(|error| StepError::cloud(Stage::Stop, error))?;
    context
        .interruptible(Stage::Stop, async {
            context
                .waits
                .instance(&instance, WaitKind::InstanceStopped)
                .await
                .map_err(|error| StepError::wait(Stage::Stop, error))
        })
        .await?;

    let image = create_image(context, &instance, launched, &source, &fingerprint).await?;
    let requested = Created::now(NewKind::Image);
    context.run.ledger.image_requested(&context.job.key(), &image);
    context.progress(Stage::CreateImage, format!("creating image {image} `{}`", context.job.image_name));
    wait_for_image(context, stack, image, source, Some(requested), Some(fingerprint.digest)).await
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
}

/// Brings an instance up from `image` and connects to it: its network settled, a temporary key pair and
/// security group, the launch (capacity waited out), running, SSH. Everything made is on `stack`.
async fn bring_up(
    context: &BuildContext,
    stack: &mut CleanupStack,
    image: &ImageSummary,
    purpose: Purpose,
) -> Result<Up, StepError> {
    let run = &context.run;
    let cloud = &*context.cloud;
    let network =
        network::resolve(&*context.cloud, &run.fleet.ssh, &run.ssh_sources, &context.flavor, &context.job.region)
            .await
            .map_err(|error| StepError {
                stage: Stage::Network,
                hint: error.cloud.as_ref().and_then(hints::hint),
                code: error.cloud.and_then(|e| e.code),
                message: error.message,
            })?;

    let resource_name = match purpose {
        Purpose::Build => format!("fleetbake-{}-{}", run.run_id, context.flavor.name),
        Purpose::Test => format!("fleetbake-{}-{}-test", run.run_id, context.flavor.name),
    };
    let key_name = KeyPairName(resource_name.clone());
    let private_key = adopt::key_pair(cloud, &key_name, &context.temporary_tags())
        .await
        .map_err(|error| StepError::cloud(Stage::KeyPair, error))?;
    let key_pair = Created::now(NewKind::KeyPair);
    stack.push(UndoStep::DeleteKeyPair { name: key_name.clone() });
    context.created(ResourceKind::KeyPair, &key_name);
    // Kept in memory: the communicator writes it to a private file only while it is connected.
    context.progress(Stage::KeyPair, format!("created temporary key pair {key_name}"));

    let (security_group, group) = create_security_group(context, stack, &network, &resource_name).await?;

    let flavor = &context.flavor;
    let mut tags = flavor.run_tags.clone();
    tags.extend(context.temporary_tags());
    let launch_spec = LaunchSpec {
        image_id: image.id.clone(),
        instance_type: flavor.instance_type.clone(),
        key_name,
        security_group,
        subnet_id: None,
        associate_public_ip: flavor.associate_public_ip,
        client_token: String::new(),
        tags,
        metadata: flavor.metadata,
        root_volume: root_device(context, image)?,
        iam_instance_profile: flavor.iam_instance_profile.clone(),
        user_data: flavor.user_data.clone(),
    };
    let (instance, placement) = launch(context, launch_spec, &network, &[key_pair, group], purpose).await?;
    let launched = Created::now(NewKind::Instance);
    stack.push(UndoStep::TerminateInstance { id: instance.clone(), fresh: Some(launched) });
    context.created(ResourceKind::Instance, &instance);
    let placed = placement.map(|placement| format!(" in {placement}")).unwrap_or_default();
    context.progress(
        Stage::Launch,
        format!("launched {} {instance}{placed} from {}", context.flavor.instance_type, image.id),
    );

    let running = context
        .interruptible(Stage::WaitRunning, async {
            let running = context
                .waits
                .instance(&instance, WaitKind::InstanceRunning)
                .await
                .map_err(|error| StepError::wait(Stage::WaitRunning, error))?;
            Ok(running.expect("a running instance was described"))
        })
        .await?;
    let host = match &run.fleet.ssh.host {
        Some(host) => host.clone(),
        None => network.address.of(&running).ok_or_else(|| {
            StepError::new(
                Stage::Connect,
                format!(
                    "instance {instance} has no {} to connect to; set `[ssh] interface` (or a subnet that gives public addresses)",
                    network.address
                ),
            )
        })?,
    };

    let target = ConnectTarget {
        flavor: context.flavor.name.clone(),
        region: context.job.region.clone(),
        instance: instance.clone(),
        ssh: SshTarget {
            host,
            port: run.fleet.ssh.port,
            user: context.flavor.ssh_username.clone(),
            private_key,
            bastion: run.fleet.ssh.bastion.clone(),
        },
    };
    let how = match &run.fleet.ssh.host {
        Some(_) => "`[ssh] host`".to_string(),
        None => network.why.clone(),
    };
    context.progress(Stage::Connect, format!("waiting for SSH on {}:{} ({how})", target.ssh.host, target.ssh.port));
    let connection = context
        .interruptible(Stage::Connect, async {
            context
                .communicator
                .connect(&target, run.fleet.ssh.timeout)
                .await
                .map_err(|error| StepError::new(Stage::Connect, error))
        })
        .await?;
    Ok(Up { instance, launched, connection })
}

/// RunInstances, waiting out EC2's capacity and quota answers (`InsufficientInstanceCapacity`,
/// `VcpuLimitExceeded`, …): another placement first, then a pause of minutes, up to `[limits]
/// capacity_patience`. Each try is a new request with its own client token (a repeat within one try, after a
/// lost answer, keeps it); `Invalid*.NotFound` about the key pair or group made moments ago is EC2's lag.
async fn launch(
    context: &BuildContext,
    spec: LaunchSpec,
    network: &Network,
    fresh: &[Created],
    purpose: Purpose,
) -> Result<(InstanceId, Option<Placement>), StepError> {
    let run = &context.run;
    // Read as a try starts and moved on as it ends; never held across an await.
    let placements = Mutex::new(Placements::new(network.placements.clone()));
    let launched = retry::retry_cancellable(
        retry::Policy::capacity(run.fleet.limits.capacity_patience).start(),
        &context.cancel,
        |tries| {
            // Per attempt of the run: a resumed run's new instance is a new request, not a repeat of the killed
            // one's.
            let attempt = run.attempt.to_string();
            let try_number = format!("try{tries}");
            let mut parts =
                vec![run.run_id.as_str(), context.flavor.name.as_str(), context.job.region.as_str(), attempt.as_str()];
            if purpose == Purpose::Test {
                // Not a repeat of the build's launch: EC2 would answer it with the build's instance.
                parts.push("test");
            }
            if tries > 0 {
                parts.push(&try_number);
            }
            let placement = placements.lock().expect("not poisoned").current().clone();
            let subnet_id = placement.as_ref().map(|placement| placement.subnet.clone());
            let spec = LaunchSpec { subnet_id, client_token: client_token(&parts), ..spec.clone() };
            let placements = &placements;
            async move {
                let error = match once_known(fresh, || context.cloud.run_instance(&spec)).await {
                    Ok(instance) => return retry::Outcome::Done(Ok((instance, placement))),
                    Err(error) if no_room(&error) => error,
                    Err(error) => return retry::Outcome::Done(Err(error)),
                };
                let code = error.code.clone().unwrap_or_default();
                let mut placements = placements.lock().expect("not poisoned");
                if placements.rotate() {
                    let next = placements.current().as_ref().map_or("the default VPC".to_string(), ToString::to_string);
                    context.progress(Stage::Launch, format!("no room now ({code}); trying {next}"));
                    return retry::Outcome::AgainAtOnce(error);
                }
                // After the pause, every placement may be tried again.
                placements.new_round();
                retry::Outcome::Again(error)
            }
        },
        |error, pause| {
            let code = error.code.clone().unwrap_or_default();
            let detail = format!("no room now ({code}); trying again in {}", humantime::format_duration(pause));
            context.progress(Stage::Launch, detail);
        },
    )
    .await;
    match launched {
        Ok(launched) => Ok(launched),
        Err(retry::Stopped::Cancelled) => Err(StepError::interrupted(Stage::Launch)),
        Err(retry::Stopped::GaveUp(retry::GaveUp::Refused(error))) => Err(StepError::cloud(Stage::Launch, error)),
        Err(retry::Stopped::GaveUp(retry::GaveUp::Spent { error, tries })) => {
            let waited = humantime::format_duration(run.fleet.limits.capacity_patience);
            Err(StepError::cloud(Stage::Launch, error).waited(&format!("tried {tries} times over {waited}")))
        }
    }
}

/// CreateImage of the stopped instance. EC2 can refuse it right after the instance reports `stopped`
/// (`IncorrectInstanceState`, `InvalidParameterValue … is not in state`): the Packer amazon plugin retries that
/// for 15 minutes, and so does this, rather than fail a build whose provisioning is done.
async fn create_image(
    context: &BuildContext,
    instance: &InstanceId,
    launched: Created,
    source: &ImageId,
    fingerprint: &Fingerprint,
) -> Result<ImageId, StepError> {
    let run = &context.run;
    let mut image_tags = run.image_tags(&context.flavor, source);
    image_tags.extend(fingerprint.tags());
    let description = run.fleet.ami_description.as_deref();
    let name = &context.job.image_name;
    let created = retry::retry_cancellable(
        retry::Policy::IMAGE_NOT_READY.start(),
        &context.cancel,
        |_| async {
            let created = once_known(&[launched], || {
                adopt::create_image(&*context.cloud, instance, name, description, &image_tags, &run.run_id)
            })
            .await;
            match created {
                Err(error) if image_not_ready(&error) => retry::Outcome::Again(error),
                answer => retry::Outcome::Done(answer),
            }
        },
        |error, pause| tracing::debug!("{error}; CreateImage again in {pause:?}"),
    )
    .await;
    match created {
        Ok(image) => Ok(image),
        Err(retry::Stopped::Cancelled) => Err(StepError::interrupted(Stage::CreateImage)),
        Err(retry::Stopped::GaveUp(retry::GaveUp::Refused(error))) => Err(StepError::cloud(Stage::CreateImage, error)),
        Err(retry::Stopped::GaveUp(retry::GaveUp::Spent { error, .. })) => {
            let waited = humantime::format_duration(retry::CREATE_IMAGE_PATIENCE);
            Err(StepError::cloud(Stage::CreateImage, error).waited(&format!("refused for {waited}")))
        }
    }
}

/// Waits until CreateImage's image is available; interrupted, leaves it to be made (and resumed). An image that
/// ends `failed` fails the build with EC2's reason and is discarded (deregistered, its snapshots deleted) as
/// the stack unwinds.
async fn wait_for_image(
    context: &BuildContext,
    stack: &mut CleanupStack,
    image: ImageId,
    source: ImageId,
    requested: Option<Created>,
    fingerprint: Option<String>,
) -> Result<Artifact, Stopped> {
    let run = &context.run;
    let waited = tokio::select! {
        biased;
        () = context.cancel.cancelled() => return Err(Stopped::ImageInProgress(image)),
        result = context.waits.image(&image, WaitKind::ImageCreated, run.fleet.limits.image_timeout) => result,
    };
    let snapshot_ids = match waited {
        Ok(snapshot_ids) => snapshot_ids,
        Err(WaitError::Failed(reason)) => {
            let ledger = &*context.run.ledger;
            stack.push(UndoStep::discard_failed(&*context.cloud, ledger, &context.job.key(), &image, requested).await);
            return Err(StepError::new(Stage::WaitImage, reason).into());
        }
        Err(error) => return Err(StepError::wait(Stage::WaitImage, error).into()),
    };
    Ok(Artifact {
        image_id: image,
        name: context.job.image_name.clone(),
        build_region: context.job.region.clone(),
        source_image_id: source,
        snapshot_ids,
        created_at: run.clock.now_rfc3339(),
        fingerprint,
        reused_from: None,
        published: Vec::new(),
        settings: Default::default(),
    })
}

/// The fingerprint of this build from `source`; a provisioner's file that cannot be read fails the build.
fn fingerprint(context: &BuildContext, source: &ImageId) -> Result<Fingerprint, StepError> {
    Fingerprint::of(&context.run.fleet, &context.flavor, &context.job.region, source)
        .map_err(|error| StepError::new(Stage::SourceAmi, format!("cannot fingerprint the build: {error}")))
}

/// The source image in this region: the given id, or the newest match of the filter.
async fn resolve_source(context: &BuildContext) -> Result<ImageSummary, StepError> {
    match source::find(&*context.cloud, &context.flavor.source_ami, &context.job.region).await {
        Ok(image) => {
            if !image.name.is_empty() {
                context.progress(Stage::SourceAmi, format!("source image {} `{}`", image.id, image.name));
            }
            Ok(image)
        }
        Err(SourceError::Missing(message)) => Err(StepError::new(Stage::SourceAmi, message)),
        Err(SourceError::Cloud(error)) => Err(StepError::cloud(Stage::SourceAmi, error)),
    }
}

/// The root volume the instance launches with: the source image's root device, resized or retyped as the flavor
/// says, and encrypted with the build region's key of `[encryption]`; `None` when neither asks for a change.
/// The image made from it keeps that encryption (CreateImage snapshots the volume as it is).
fn root_device(context: &BuildContext, source: &ImageSummary) -> Result<Option<RootDevice>, StepError> {
    let kms_key = context.run.fleet.kms_key(&context.job.region).map(String::from);
    if context.flavor.root_volume.is_none() && kms_key.is_none() {
        return Ok(None);
    }
    let device_name = source.root_device.clone().ok_or_else(|| {
        StepError::new(
            Stage::SourceAmi,
            format!(
                "source image {} names no root device, so its root volume cannot be set (root_volume, [encryption])",
                source.id
            ),
        )
    })?;
    Ok(Some(RootDevice { device_name, volume: context.flavor.root_volume.clone().unwrap_or_default(), kms_key }))
}

/// The temporary security group (in the build's VPC) and its one ingress rule (`ssh.port` from the build's
/// sources); the rule right after the group is made may meet EC2's lag (`InvalidGroup.NotFound`), which is
/// waited out.
async fn create_security_group(
    context: &BuildContext,
    stack: &mut CleanupStack,
    network: &Network,
    name: &str,
) -> Result<(SecurityGroupId, Created), StepError> {
    let cloud = &*context.cloud;
    let description = "fleetbake temporary build group: SSH from the builder only";
    let group = adopt::security_group(cloud, name, description, network.vpc.as_ref(), &context.temporary_tags())
        .await
        .map_err(|error| StepError::cloud(Stage::SecurityGroup, error))?;
    let created = Created::now(NewKind::SecurityGroup);
    stack.push(UndoStep::DeleteSecurityGroup { id: group.clone(), fresh: Some(created) });
    context.created(ResourceKind::SecurityGroup, &group);
    let port = context.run.fleet.ssh.port;
    once_known(&[created], || adopt::ingress(cloud, &group, port, &network.ssh_sources))
        .await
        .map_err(|error| StepError::cloud(Stage::SecurityGroup, error))?;
    let cidrs: Vec<String> = network.ssh_sources.iter().map(ToString::to_string).collect();
    let vpc = network.vpc.as_ref().map(|vpc| format!(" in {vpc}")).unwrap_or_default();
    context.progress(
        Stage::SecurityGroup,
        format!("created temporary security group {group}{vpc} (port {port} from {})", cidrs.join(", ")),
    );
    Ok((group, created))
}

async fn provision_all(context: &BuildContext, connection: &dyn Connection) -> Result<(), StepError> {
    run_all(context, connection, &context.flavor.provisioners, None).await
}

/// How many of a failed test's last output lines its failure quotes.
const TEST_OUTPUT_LINES: usize = 10;

/// Runs provisioners (or, with `image`, the image's tests) in order over the connection, output streamed.
async fn run_all(
    context: &BuildContext,
    connection: &dyn Connection,
    list: &[Provisioner],
    image: Option<&ImageId>,
) -> Result<(), StepError> {
    let env = ProvisionEnv {
        flavor: context.flavor.name.to_string(),
        region: context.job.region.to_string(),
        run_id: context.run.run_id.to_string(),
        image_id: image.map(ToString::to_string),
    };
    let (stage, kind) = match image {
        Some(_) => (Stage::Test, "test"),
        None => (Stage::Provision, "provisioner"),
    };
    let label = context.label();
    for (index, provisioner) in list.iter().enumerate() {
        let number = index + 1;
        context.progress(stage, format!("{kind} {number}/{}: {}", list.len(), Described(provisioner)));
        // A test's last lines, for its failure; a provisioner's are only streamed.
        let mut last = std::collections::VecDeque::with_capacity(if image.is_some() { TEST_OUTPUT_LINES } else { 0 });
        let mut output = |stream, line: String| {
            if image.is_some() {
                if last.len() == TEST_OUTPUT_LINES {
                    last.pop_front();
                }
                last.push_back(line.clone());
            }
            context.events.send(RunEvent::Output { job: label.clone(), stream, line });
        };
        if let Err(error) = connection.provision(number, provisioner, &env, &mut output).await {
            let mut message = error.to_string();
            if image.is_some() {
                message = message.replacen("provisioner ", "test ", 1);
            }
            if image.is_some() && !last.is_empty() {
                let lines: Vec<String> = last.into_iter().collect();
                message.push_str(&format!("; its last output: {}", lines.join(" | ")));
            }
            return Err(StepError::new(stage, message));
        }
    }
    Ok(())
}

/// The flavor's tests, on an instance launched from the new image (its own temporary key pair and security
/// group, on the build's cleanup stack). A failure tags the image `fleetbake:test=failed` and, unless
/// `[fleet] keep_failed_images`, discards it (deregistered with its snapshots, as the stack unwinds).
async fn test_image(context: &BuildContext, stack: &mut CleanupStack, artifact: &Artifact) -> Result<(), StepError> {
    let tests = &context.flavor.tests;
    if tests.is_empty() {
        return Ok(());
    }
    let image = &artifact.image_id;
    context.progress(Stage::Test, format!("testing {image} on an instance launched from it"));
    let described = context
        .cloud
        .describe_images(std::slice::from_ref(image))
        .await
        .map_err(|error| StepError::cloud(Stage::Test, error))?;
    let summary = ImageSummary {
        id: image.clone(),
        name: artifact.name.clone(),
        creation_date: String::new(),
        root_device: described.into_iter().next().and_then(|status| status.root_device),
        owner: None,
    };
    let tested = async {
        let up = bring_up(context, stack, &summary, Purpose::Test).await?;
        let result = context.interruptible(Stage::Test, run_all(context, &*up.connection, tests, Some(image))).await;
        up.connection.close().await;
        result
    }
    .await;
    let Err(error) = tested else {
        context.progress(Stage::Test, format!("{image} passed its {} tests", tests.len()));
        return Ok(());
    };
    if error.stage != Stage::Test {
        // Interrupted, or the test instance never came up: the image is not judged; it stays, unannounced.
        return Err(error);
    }
    let failed = Tags::from([(TEST_TAG.to_string(), "failed".to_string())]);
    if let Err(tag_error) = context.cloud.create_tags(std::slice::from_ref(&image.0), &failed).await {
        tracing::warn!("cannot tag {image} as failed its tests: {tag_error}");
    }
    if !context.run.fleet.keep_failed_images {
        let ledger = &*context.run.ledger;
        stack.push(UndoStep::discard_failed(&*context.cloud, ledger, &context.job.key(), image, None).await);
    } else {
        // Kept: its snapshots carry the image's tags like any image's (a passing image's get them once finished).
        let tags = context.run.artifact_tags(&context.flavor, artifact);
        if let Err(tag_error) = finish::tag_snapshots(&*context.cloud, &artifact.snapshot_ids, &tags).await {
            tracing::warn!("cannot tag the snapshots of {image}, kept though it failed its tests: {tag_error}");
        }
    }
    Err(error)
}
