//! One build: the amazon-ebs sequence for one flavor in one region, with every temporary resource on the
//! cleanup stack before the next await, and the stack unwound whatever happens.
//!
//! source AMI → key pair → security group → launch → running → SSH → provisioners → stop → CreateImage →
//! available → tag snapshots → (image handed to the scheduler) → cleanup.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cloud::wait::WaitError;
use crate::cloud::watch::{RegionWaits, WaitKind};
use crate::cloud::{
    client_token, CloudError, ImageId, ImageState, KeyPairName, LaunchSpec, RegionCloud, SecurityGroupId,
};
use crate::config::{Flavor, SourceAmi, Tags};
use crate::plan::BuildJob;
use crate::remote::provision::{Described, ProvisionEnv};
use crate::remote::ssh::{self, SshTarget};
use crate::remote::{Communicator, ConnectTarget, Connection};
use crate::report::events::{Artifact, EventSender, Failure, JobEnd, JobLabel, Stage};
use crate::steps::adopt;
use crate::steps::cleanup::{CleanupStack, UndoStep};
use crate::steps::context::RunContext;
use crate::steps::ledger::{Resource, ResourceKind};

/// The port sshd listens on in the instance, which the security group opens.
const INSTANCE_SSH_PORT: u16 = 22;

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
}

impl StepError {
    fn new(stage: Stage, message: impl ToString) -> Self {
        StepError { stage, code: None, message: message.to_string() }
    }
    fn cloud(stage: Stage, error: CloudError) -> Self {
        StepError { stage, code: error.code.clone(), message: error.to_string() }
    }
    fn wait(stage: Stage, error: WaitError) -> Self {
        match error {
            WaitError::Cloud(error) => Self::cloud(stage, error),
            other => Self::new(stage, other),
        }
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
            () = self.cancel.cancelled() => Err(StepError::new(Stage::Interrupted, format!("interrupted during {stage}"))),
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
        tags.insert("fleetbake:temporary".into(), "true".into());
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
            wait_for_image(&context, pending.image, pending.source).await
        }
        None => sequence(&context, &mut stack).await,
    };
    let label = context.label();
    let mut end = JobEnd::default();
    match result {
        Ok(artifact) => {
            on_available(&artifact);
            // After the announcement: the image is usable whether or not its snapshots get their tags.
            if let Err(error) = tag_snapshots(&context, &artifact).await {
                end.failures.push(error.into_failure(&label));
            }
        }
        Err(Stopped::ImageInProgress(image)) => end.in_progress = Some(image),
        Err(Stopped::Failed(error)) => end.failures.push(error.into_failure(&label)),
    }
    if !stack.is_empty() {
        context.progress(Stage::Cleanup, format!("cleaning up {}", stack.pending().join(", ")));
    }
    for failure in stack.unwind(&*context.cloud, &context.waits, &*context.run.ledger).await {
        context.events.send(crate::report::events::RunEvent::CleanupFailed {
            job: label.clone(),
            resource: failure.resource.clone(),
            error: failure.error.clone(),
        });
        let message = format!("cleanup of {} failed: {}", failure.resource, failure.error);
        end.failures.push(Failure { code: failure.code, ..Failure::new(&label, Stage::Cleanup, message) });
    }
    end
}

impl StepError {
    fn into_failure(self, label: &JobLabel) -> Failure {
        Failure { code: self.code, ..Failure::new(label, self.stage, self.message) }
    }
}

async fn sequence(context: &BuildContext, stack: &mut CleanupStack) -> Result<Artifact, Stopped> {
    let cloud = &*context.cloud;
    let run = &context.run;
    let source = context.interruptible(Stage::SourceAmi, resolve_source(context)).await?;

    let local_dir = tempfile::Builder::new()
        .prefix("fb-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|error| {
            StepError::new(Stage::KeyPair, format!("cannot create a private temporary directory: {error}"))
        })?;
    let key_file = local_dir.path().join("key");
    let control_dir = local_dir.path().to_path_buf();
    stack.push(UndoStep::RemoveLocalDir(local_dir));

    let resource_name = format!("fleetbake-{}-{}", run.run_id, context.flavor.name);
    let key_name = KeyPairName(resource_name.clone());
    let private_key = adopt::key_pair(cloud, &key_name, &context.temporary_tags())
        .await
        .map_err(|error| StepError::cloud(Stage::KeyPair, error))?;
    stack.push(UndoStep::DeleteKeyPair(key_name.clone()));
    context.created(ResourceKind::KeyPair, &key_name);
    ssh::write_private_file(&key_file, private_key.expose())
        .map_err(|error| StepError::new(Stage::KeyPair, format!("cannot write the private key: {error}")))?;
    drop(private_key);
    context.progress(Stage::KeyPair, format!("created temporary key pair {key_name}"));

    let security_group = create_security_group(context, stack, &resource_name).await?;

    let launch = LaunchSpec {
        image_id: source.clone(),
        instance_type: context.flavor.instance_type.clone(),
        key_name,
        security_group,
        subnet_id: context.flavor.subnet_id.clone(),
        associate_public_ip: context.flavor.associate_public_ip,
        // Per attempt: a resumed run's new instance is a new request, not a repeat of the killed one's.
        client_token: client_token(&[
            run.run_id.as_str(),
            context.flavor.name.as_str(),
            context.job.region.as_str(),
            &run.attempt.to_string(),
        ]),
        tags: context.temporary_tags(),
    };
    let instance = cloud.run_instance(&launch).await.map_err(|error| StepError::cloud(Stage::Launch, error))?;
    stack.push(UndoStep::TerminateInstance(instance.clone()));
    context.created(ResourceKind::Instance, &instance);
    context.progress(Stage::Launch, format!("launched {} {instance} from {source}", context.flavor.instance_type));

    let address = context
        .interruptible(Stage::WaitRunning, async {
            let running = context
                .waits
                .instance(&instance, WaitKind::InstanceRunning)
                .await
                .map_err(|error| StepError::wait(Stage::WaitRunning, error))?;
            let running = running.expect("a running instance was described");
            Ok(run.fleet.ssh.host.clone().or(running.public_ip).or(running.private_ip))
        })
        .await?;
    let host = address.ok_or_else(|| {
        StepError::new(
            Stage::Connect,
            format!(
                "instance {instance} has no IP address to connect to; set `ssh.host` or a subnet with public addresses"
            ),
        )
    })?;

    let target = ConnectTarget {
        flavor: context.flavor.name.clone(),
        region: context.job.region.clone(),
        instance: instance.clone(),
        ssh: SshTarget {
            host,
            port: run.fleet.ssh.port,
            user: context.flavor.ssh_username.clone(),
            key_file,
            control_dir,
        },
    };
    context.progress(Stage::Connect, format!("waiting for SSH on {}:{}", target.ssh.host, target.ssh.port));
    let connection = context
        .interruptible(Stage::Connect, async {
            context
                .communicator
                .connect(&target, run.fleet.ssh.timeout)
                .await
                .map_err(|error| StepError::new(Stage::Connect, error))
        })
        .await?;
    let provisioned = context.interruptible(Stage::Provision, provision_all(context, &*connection)).await;
    connection.close().await;
    provisioned?;

    context.progress(Stage::Stop, format!("stopping {instance}"));
    cloud.stop_instance(&instance).await.map_err(|error| StepError::cloud(Stage::Stop, error))?;
    context
        .interruptible(Stage::Stop, async {
            context
                .waits
                .instance(&instance, WaitKind::InstanceStopped)
                .await
                .map_err(|error| StepError::wait(Stage::Stop, error))
        })
        .await?;

    let image_tags = run.image_tags(&context.flavor, &source);
    let description = run.fleet.ami_description.as_deref();
    let image = adopt::create_image(cloud, &instance, &context.job.image_name, description, &image_tags, &run.run_id)
        .await
        .map_err(|error| StepError::cloud(Stage::CreateImage, error))?;
    context.run.ledger.image_requested(&context.job.key(), &image);
    context.progress(Stage::CreateImage, format!("creating image {image} `{}`", context.job.image_name));
    wait_for_image(context, image, source).await
}

/// Waits until CreateImage's image is available; interrupted, leaves it to be made (and resumed).
async fn wait_for_image(context: &BuildContext, image: ImageId, source: ImageId) -> Result<Artifact, Stopped> {
    let run = &context.run;
    let snapshot_ids = tokio::select! {
        biased;
        () = context.cancel.cancelled() => return Err(Stopped::ImageInProgress(image)),
        result = context.waits.image(&image, WaitKind::ImageCreated, run.fleet.limits.image_timeout) => {
            result.map_err(|error| StepError::wait(Stage::WaitImage, error))?
        }
    };
    Ok(Artifact {
        image_id: image,
        name: context.job.image_name.clone(),
        build_region: context.job.region.clone(),
        source_image_id: source,
        snapshot_ids,
        created_at: run.clock.now_rfc3339(),
    })
}

/// The image's tags on its snapshots (CreateImage tags only the image).
async fn tag_snapshots(context: &BuildContext, artifact: &Artifact) -> Result<(), StepError> {
    if artifact.snapshot_ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = artifact.snapshot_ids.iter().map(|id| id.0.clone()).collect();
    let tags = context.run.image_tags(&context.flavor, &artifact.source_image_id);
    context.cloud.create_tags(&ids, &tags).await.map_err(|error| StepError::cloud(Stage::Tag, error))
}

/// The source image in this region: the given id, or the newest match of the filter.
async fn resolve_source(context: &BuildContext) -> Result<ImageId, StepError> {
    let cloud = &*context.cloud;
    let region = &context.job.region;
    let source = match &context.flavor.source_ami {
        SourceAmi::Id(id) => {
            let id = ImageId(id.clone());
            let found = cloud
                .describe_images(std::slice::from_ref(&id))
                .await
                .map_err(|error| StepError::cloud(Stage::SourceAmi, error))?;
            match found.first().map(|image| &image.state) {
                Some(ImageState::Available) => id,
                Some(state) => {
                    return Err(StepError::new(
                        Stage::SourceAmi,
                        format!("source image {id} in {region} is not available: {state:?}"),
                    ))
                }
                None => {
                    return Err(StepError::new(
                        Stage::SourceAmi,
                        format!("source image {id} does not exist in {region}"),
                    ))
                }
            }
        }
        SourceAmi::Filter(filter) => {
            let images = cloud.find_images(filter).await.map_err(|error| StepError::cloud(Stage::SourceAmi, error))?;
            let newest = images.into_iter().max_by(|a, b| (&a.creation_date, &a.id).cmp(&(&b.creation_date, &b.id)));
            match newest {
                Some(image) => {
                    context.progress(Stage::SourceAmi, format!("source image {} `{}`", image.id, image.name));
                    image.id
                }
                None => {
                    return Err(StepError::new(
                        Stage::SourceAmi,
                        format!(
                            "no image owned by {} matches `{}` in {region}",
                            filter.owners.join(", "),
                            filter.name_pattern
                        ),
                    ))
                }
            }
        }
    };
    Ok(source)
}

async fn create_security_group(
    context: &BuildContext,
    stack: &mut CleanupStack,
    name: &str,
) -> Result<SecurityGroupId, StepError> {
    let cloud = &*context.cloud;
    let vpc = match &context.flavor.subnet_id {
        Some(subnet) => {
            Some(cloud.subnet_vpc(subnet).await.map_err(|error| StepError::cloud(Stage::SecurityGroup, error))?)
        }
        None => None,
    };
    let description = "fleetbake temporary build group: SSH from the builder only";
    let group = adopt::security_group(cloud, name, description, vpc.as_ref(), &context.temporary_tags())
        .await
        .map_err(|error| StepError::cloud(Stage::SecurityGroup, error))?;
    stack.push(UndoStep::DeleteSecurityGroup(group.clone()));
    context.created(ResourceKind::SecurityGroup, &group);
    adopt::ingress(cloud, &group, INSTANCE_SSH_PORT, &context.run.ssh_cidrs)
        .await
        .map_err(|error| StepError::cloud(Stage::SecurityGroup, error))?;
    let cidrs: Vec<String> = context.run.ssh_cidrs.iter().map(ToString::to_string).collect();
    context.progress(
        Stage::SecurityGroup,
        format!("created temporary security group {group} (port {INSTANCE_SSH_PORT} from {})", cidrs.join(", ")),
    );
    Ok(group)
}

async fn provision_all(context: &BuildContext, connection: &dyn Connection) -> Result<(), StepError> {
    let env = ProvisionEnv {
        flavor: context.flavor.name.to_string(),
        region: context.job.region.to_string(),
        run_id: context.run.run_id.to_string(),
    };
    let label = context.label();
    for (index, provisioner) in context.flavor.provisioners.iter().enumerate() {
        let number = index + 1;
        context.progress(Stage::Provision, format!("provisioner {number}: {}", Described(provisioner)));
        let mut output = |stream, line| {
            context.events.send(crate::report::events::RunEvent::Output { job: label.clone(), stream, line });
        };
        connection
            .provision(number, provisioner, &env, &mut output)
            .await
            .map_err(|error| StepError::new(Stage::Provision, error))?;
    }
    Ok(())
}
