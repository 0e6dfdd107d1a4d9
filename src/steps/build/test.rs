//! Testing the image just made: an instance launched from it, the flavor's tests run on it; a failure tags
//! the image and, unless it is kept, discards it.
//!
//! Layer: `steps` (part of [`super`], the build).

use crate::cloud::ImageSummary;
use crate::config::Tags;
use crate::outcome::{Artifact, Stage};
use crate::remote::provision::Phase;
use crate::steps::cleanup::{CleanupStack, UndoStep};
use crate::steps::context::TEST_TAG;

use super::provision::run_all;
use super::{bring_up, BuildContext, Purpose, StepError};

/// The flavor's tests, on an instance launched from the new image (its own temporary key pair and security
/// group, on the build's cleanup stack). A failure tags the image `fleetbake:test=failed` and, unless
/// `[fleet] keep_failed_images`, discards it (deregistered with its snapshots, as the stack unwinds).
pub(super) async fn test_image(
    context: &BuildContext,
    stack: &mut CleanupStack,
    artifact: &Artifact,
) -> Result<(), StepError> {
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
        let phase = Phase::Test { image_id: image.to_string() };
        let result = context.interruptible(Stage::Test, run_all(context, &*up.connection, tests, phase)).await;
        up.close_after(context, stack, result).await
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
    // Kept (`keep_failed_images`), its snapshots carry the image's tags from its creation like any image's.
    if !context.run.fleet.keep_failed_images {
        let ledger = &*context.run.ledger;
        stack.push(UndoStep::discard_failed(&*context.cloud, ledger, &context.job.key(), image, None).await);
    }
    Err(error)
}
