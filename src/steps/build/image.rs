//! The build's image: the fingerprint it will carry, CreateImage of the stopped instance (EC2's "not ready"
//! refusals waited out), and the wait until it is available.
//!
//! Layer: `steps` (part of [`super`], the build).

use crate::cloud::consistency::{once_known, Created};
use crate::cloud::retry;
use crate::cloud::wait::WaitError;
use crate::cloud::watch::WaitKind;
use crate::cloud::ImageOf;
use crate::cloud::{ImageId, InstanceId};
use crate::outcome::{Artifact, SourceParameter, Stage};
use crate::steps::adopt;
use crate::steps::cleanup::{CleanupStack, UndoStep};
use crate::steps::fingerprint::Fingerprint;
use crate::steps::patience::image_not_ready;

use super::{BuildContext, StepError, Stopped};

/// CreateImage of the stopped instance (or, `ImageOf::RunningRebooted`, of the running one with reboot). EC2 can
/// refuse it right after the instance reports `stopped`
/// (`IncorrectInstanceState`, `InvalidParameterValue … is not in state`): the Packer amazon plugin retries that
/// for 15 minutes, and so does this, rather than fail a build whose provisioning is done.
pub(super) async fn create_image(
    context: &BuildContext,
    instance: &InstanceId,
    launched: Created,
    source: &ImageId,
    fingerprint: &Fingerprint,
    of: ImageOf,
) -> Result<ImageId, StepError> {
    let run = &context.run;
    if of == ImageOf::RunningRebooted {
        let detail =
            format!("creating the image of the running instance {instance} with reboot (it cannot be stopped)");
        context.progress(Stage::CreateImage, detail);
    }
    let mut image_tags = run.image_tags(&context.flavor, source);
    image_tags.extend(fingerprint.tags());
    let description = run.fleet.ami_description.as_deref();
    let name = &context.job.image_name;
    let created = retry::retry_cancellable(
        retry::Policy::IMAGE_NOT_READY.start(),
        &context.cancel,
        |_| async {
            let created = once_known(&[launched], || {
                adopt::create_image(&*context.cloud, instance, of, name, description, &image_tags, &run.run_id)
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
pub(super) async fn wait_for_image(
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
        source_image_id: source.clone(),
        snapshot_ids,
        created_at: run.clock.now_rfc3339(),
        fingerprint,
        reused_from: None,
        published: Vec::new(),
        parent: crate::outcome::Parent::of(&context.flavor, &source),
        settings: Default::default(),
    })
}

/// The fingerprint of this build from `source` (read from that SSM parameter version, if any); a
/// provisioner's file that cannot be read fails the build.
pub(super) fn fingerprint(
    context: &BuildContext,
    source: &ImageId,
    parameter: Option<&SourceParameter>,
) -> Result<Fingerprint, StepError> {
    Fingerprint::of_source(&context.run.fleet, &context.flavor, &context.job.region, source, parameter)
        .map_err(|error| StepError::new(Stage::SourceAmi, format!("cannot fingerprint the build: {error}")))
}
