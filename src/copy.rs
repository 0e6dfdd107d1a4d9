//! One copy: CopyImage a build's image into one more region, tag it as the original, wait until available.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cloud::{client_token, CopySpec, RegionCloud};
use crate::config::Flavor;
use crate::events::{Artifact, EventSender, Failure, JobLabel, Stage};
use crate::plan::CopyJob;
use crate::run::RunContext;
use crate::wait::WaitError;
use crate::watch::{RegionWaits, WaitKind};

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
}

/// Copies, tags and waits; the copy's artifact, or the failure.
pub async fn run(context: CopyContext) -> Result<Artifact, Failure> {
    let label = JobLabel { flavor: context.flavor.name.clone(), region: context.job.target_region.clone() };
    let cloud = &*context.cloud;
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
        return Err(Failure::new(&label, Stage::Interrupted, "not started: the run was interrupted"));
    }
    let image = cloud.copy_image(&spec).await.map_err(|error| Failure::from_cloud(&label, Stage::Copy, &error))?;
    context.events.progress(
        &label,
        Stage::Copy,
        format!("copying {} from {} as {image}", spec.source_image, spec.source_region),
    );
    // Tag at once (CopyImage does not carry tags everywhere), so an interrupted run still leaves a tagged image.
    let tags = run.image_tags(&context.flavor, &context.source.source_image_id);
    cloud
        .create_tags(std::slice::from_ref(&image.0), &tags)
        .await
        .map_err(|error| Failure::from_cloud(&label, Stage::Tag, &error))?;
    let snapshot_ids = tokio::select! {
        biased;
        () = context.cancel.cancelled() => {
            return Err(Failure::new(&label, Stage::Interrupted, format!("copy {image} into {} was still in progress", label.region)));
        }
        result = context.waits.image(&image, WaitKind::ImageCopied, run.fleet.limits.image_timeout) => result.map_err(|error| match error {
            WaitError::Cloud(error) => Failure::from_cloud(&label, Stage::WaitCopy, &error),
            other => Failure::new(&label, Stage::WaitCopy, other),
        })?,
    };
    if !snapshot_ids.is_empty() {
        let ids: Vec<String> = snapshot_ids.iter().map(|id| id.0.clone()).collect();
        cloud.create_tags(&ids, &tags).await.map_err(|error| Failure::from_cloud(&label, Stage::Tag, &error))?;
    }
    Ok(Artifact {
        image_id: image,
        name: context.job.image_name.clone(),
        build_region: context.job.source_region.clone(),
        source_image_id: context.source.source_image_id.clone(),
        snapshot_ids,
        created_at: run.clock.now_rfc3339(),
    })
}
