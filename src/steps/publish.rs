//! `[publish]`: the new image's id where deploys look for it, in the region it is in: a new version of an SSM
//! parameter (DataType `aws:ec2:image`, labelled `fleetbake-<run id>`; SSM keeps the earlier versions) and a
//! new default version of a launch template. With `when = "each"` a job publishes its image once it is tested
//! and finished; with `"flavor_complete"` (the default) the engine publishes a flavor's images at the end of
//! the run, and only if every one of its jobs succeeded. Either way each publication is journaled, and one an
//! earlier attempt of the run made is not made again.

use crate::cloud::{CloudError, ImageId, RegionCloud};
use crate::config::{FlavorName, Publish};
use crate::outcome::Publication;
use crate::plan::RunId;

/// One image to publish.
pub struct Publishing<'a> {
    pub cloud: &'a dyn RegionCloud,
    pub publish: &'a Publish,
    pub fleet: &'a str,
    pub flavor: &'a FlavorName,
    pub run_id: &'a RunId,
    pub image: &'a ImageId,
    /// What earlier attempts of the run already published for this image.
    pub already: &'a [Publication],
}

/// The SSM label of a run's versions: SSM labels may not start with a digit, as run ids do.
pub fn label(run_id: &RunId) -> String {
    format!("fleetbake-{run_id}")
}

/// Publishes the image as `[publish]` says; what was published, and what failed.
pub async fn publish(image: Publishing<'_>) -> (Vec<Publication>, Vec<CloudError>) {
    let Publishing { cloud, publish, fleet, flavor, run_id, .. } = image;
    let mut published = Vec::new();
    let mut failures = Vec::new();
    if let Some(template) = &publish.ssm_parameter {
        let name = Publish::render(template, fleet, flavor);
        let done = image.already.iter().any(|p| matches!(p, Publication::SsmParameter { name: n, .. } if *n == name));
        if !done {
            let label = label(run_id);
            match cloud.put_image_parameter(&name, image.image, &label).await {
                Ok(version) => published.push(Publication::SsmParameter { name, version, label }),
                Err(error) => failures.push(error),
            }
        }
    }
    if let Some(template) = &publish.launch_template {
        let name = Publish::render(template, fleet, flavor);
        let done = image.already.iter().any(|p| matches!(p, Publication::LaunchTemplate { name: n, .. } if *n == name));
        if !done {
            let description = format!("fleetbake run {run_id}: {}", image.image);
            match cloud.launch_template_version(&name, image.image, &description).await {
                Ok((id, version)) => published.push(Publication::LaunchTemplate { name, id, version }),
                Err(error) => failures.push(error),
            }
        }
    }
    (published, failures)
}

/// `when = "each"`: a job publishes its own image, journaled as it goes; what was published (for the
/// artifact), and the failures (stage `publish`).
pub async fn each(
    run: &crate::steps::context::RunContext,
    cloud: &dyn RegionCloud,
    flavor: &FlavorName,
    job: &crate::plan::JobKey,
    label: &crate::outcome::JobLabel,
    image: &ImageId,
    already: &[Publication],
) -> (Vec<Publication>, Vec<crate::outcome::Failure>) {
    use crate::config::PublishWhen;
    use crate::outcome::{Failure, Stage};
    let Some(settings) = run.fleet.publish.as_ref().filter(|settings| settings.when == PublishWhen::Each) else {
        return (Vec::new(), Vec::new());
    };
    let publishing =
        Publishing { cloud, publish: settings, fleet: &run.fleet.name, flavor, run_id: &run.run_id, image, already };
    let (published, failures) = publish(publishing).await;
    for publication in &published {
        run.ledger.published(job, publication);
    }
    let failures = failures.iter().map(|error| Failure::from_cloud(label, Stage::Publish, error)).collect();
    (published, failures)
}
