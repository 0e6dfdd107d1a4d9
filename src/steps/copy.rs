//! One copy: CopyImage a build's image into one more region, tag it as the original, wait until available.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cloud::wait::WaitError;
use crate::cloud::watch::{RegionWaits, WaitKind};
use crate::cloud::{client_token, CopySpec, ImageId, RegionCloud};
use crate::config::Flavor;
use crate::plan::CopyJob;
use crate::report::events::{Artifact, EventSender, Failure, JobEnd, JobLabel, Stage};
use crate::steps::context::RunContext;

pub struct CopyContext {
    pub run: Arc<RunContext>,
    /// The destination region's cloud: CopyImage is called there.
    pub cloud: Arc<dyn RegionCloud>,
    pub waits: RegionWaits,
    pub flavor: Flavor,
    pub job: CopyJob,
    /// The build's image, in the source region.
    pub source: Artifact,
    pub events: EventSender,
    pub cancel: CancellationToken,
    /// Resuming: the copy an earlier attempt started, still pending; the copy only waits for it.
    pub pending_image: Option<ImageId>,
}

/// How a copy ended: its image if it became available, and the rest as for any job.
#[derive(Debug, Default)]
pub struct CopyEnd {
    pub artifact: Option<Artifact>,
    pub end: JobEnd,
}

/// Copies, tags and waits. Interrupted once CopyImage has answered, leaves the copy running in AWS and says so.
pub async fn run(context: CopyContext) -> CopyEnd {
    let label = JobLabel { flavor: context.flavor.name.clone(), region: context.job.target_region.clone() };
    let mut end = CopyEnd::default();
    let image = match context.pending_image.clone() {
        Some(image) => {
            context.events.progress(&label, Stage::WaitCopy, format!("waiting for {image} from an earlier attempt"));
            image
        }
        None => match start(&context, &label).await {
            Ok(image) => image,
            Err(failure) => {
                end.end.failures.push(failure);
                return end;
            }
        },
    };
    let run = &context.run;
    // Tag at once (CopyImage does not carry tags everywhere), so an interrupted run still leaves a tagged image.
    // A refused tag does not stop the copy: the image is still made, and the failure is recorded.
    let tags = run.image_tags(&context.flavor, &context.source.source_image_id);
    if let Err(error) = context.cloud.create_tags(std::slice::from_ref(&image.0), &tags).await {
        end.end.failures.push(Failure::from_cloud(&label, Stage::Tag, &error));
    }
    let waited = tokio::select! {
        biased;
        () = context.cancel.cancelled() => {
            end.end.in_progress = Some(image);
            return end;
        }
        result = context.waits.image(&image, WaitKind::ImageCopied, run.fleet.limits.image_timeout) => result,
    };
    let snapshot_ids = match waited {
        Ok(snapshot_ids) => snapshot_ids,
        Err(WaitError::Cloud(error)) => {
            end.end.failures.push(Failure::from_cloud(&label, Stage::WaitCopy, &error));
            return end;
        }
        Err(other) => {
            end.end.failures.push(Failure::new(&label, Stage::WaitCopy, other));
            return end;
        }
    };
    if !snapshot_ids.is_empty() {
        let ids: Vec<String> = snapshot_ids.iter().map(|id| id.0.clone()).collect();
        if let Err(error) = context.cloud.create_tags(&ids, &tags).await {
            end.end.failures.push(Failure::from_cloud(&label, Stage::Tag, &error));
        }
    }
    end.artifact = Some(Artifact {
        image_id: image,
        name: context.job.image_name.clone(),
        build_region: context.job.source_region.clone(),
        source_image_id: context.source.source_image_id.clone(),
        snapshot_ids,
        created_at: run.clock.now_rfc3339(),
    });
    end
}

/// CopyImage, journaled before anything depends on it. The token is the same in every attempt: EC2 answers a
/// repeated request with the copy it already started.
async fn start(context: &CopyContext, label: &JobLabel) -> Result<ImageId, Failure> {
    let run = &context.run;
    let spec = CopySpec {
        source_region: context.job.source_region.clone(),
        source_image: context.source.image_id.clone(),
        name: context.job.image_name.clone(),
        description: run.fleet.ami_description.clone(),
        client_token: client_token(&[
            run.run_id.as_str(),
            context.flavor.name.as_str(),
            context.job.target_region.as_str(),
            "copy",
        ]),
    };
    if context.cancel.is_cancelled() {
        return Err(Failure::new(label, Stage::Interrupted, "not started: the run was interrupted"));
    }
    let image = crate::steps::adopt::copy_image(&*context.cloud, &spec, &run.run_id)
        .await
        .map_err(|error| Failure::from_cloud(label, Stage::Copy, &error))?;
    run.ledger.image_requested(&context.job.key(), &image);
    context.events.progress(
        label,
        Stage::Copy,
        format!("copying {} from {} as {image}", spec.source_image, spec.source_region),
    );
    Ok(image)
}
