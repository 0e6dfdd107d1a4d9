//! `[publish]`: the new image's id where deploys look for it, in the region it is in: a new version of an SSM
//! parameter (DataType `aws:ec2:image`, labelled `fleetbake-<run id>`) and a new default version of a launch
//! template. With `when = "each"` a job publishes its image once it is tested and finished; with
//! `"flavor_complete"` (the default) the engine publishes a flavor's images at the end of the run, and only if
//! every one of its jobs succeeded. Either way each publication is journaled, and one an earlier attempt of the
//! run made is not made again.
//!
//! What AWS refuses, and what is done about it here:
//! - SSM keeps a parameter's newest 100 versions and refuses a new one (`ParameterMaxVersionLimitExceeded`)
//!   while the oldest carries a label (SSM API reference, the `ParameterMaxVersionLimitExceeded` error: "Move
//!   the label to another version of the parameter, and try again"). Run labels are therefore kept on the newest [`KEEP_LABELS`] versions
//!   only: before each put, fleetbake's own labels (`fleetbake-…`) on older versions are removed
//!   (UnlabelParameterVersion). Labels fleetbake did not make are never touched; one on the oldest of 100
//!   versions is named by the preflight.
//! - PutParameter with `aws:ec2:image` validates the id asynchronously (SSM API reference, PutParameter
//!   `DataType`: a 200 "does not guarantee that your parameter was successfully created or updated"; an
//!   invalid value leaves it "not created or updated"): a put is confirmed by reading
//!   the history back ([`CONFIRM`]) until its version holds our image id; not there in time, or holding
//!   another value, is a publish failure. A parameter of another data type can never become `aws:ec2:image`
//!   (SSM user guide, "Parameter data types in Parameter Store": no change to or from `aws:ec2:image`).
//! - Another account's copy (`[[distribution]]`) is published in that account (the role assumed there), if
//!   `[publish] accounts` names it: its parameter and launch template are that account's.
//! - CreateLaunchTemplateVersion takes no client token: the cloud port looks for the version an earlier
//!   attempt made (by its description, which names the run and the image) before each attempt.

use std::time::Duration;

use crate::cloud::wait::{poll_until, Poll, PollPolicy, WaitError};
use crate::cloud::{CloudError, ImageId, ParameterHistory, RegionCloud, IMAGE_DATA_TYPE};
use crate::config::{FlavorName, Publish};
use crate::outcome::{Failure, JobLabel, Publication, Stage};
use crate::plan::RunId;

/// Run labels stay on this many of a parameter's newest versions (the one being published included); SSM keeps
/// 100, so no label of fleetbake's ever pins the oldest.
pub const KEEP_LABELS: usize = 10;

/// What fleetbake's run labels start with: only these are ever removed.
pub const LABEL_PREFIX: &str = "fleetbake-";

/// Whether a label is one of fleetbake's run labels: the prefix and a run id (so a person's own
/// `fleetbake-prod` is never removed).
pub fn is_run_label(label: &str) -> bool {
    label.strip_prefix(LABEL_PREFIX).and_then(RunId::parse).is_some()
}

/// How a put is confirmed: the history read back every few seconds, for at most 3 minutes (SSM's validation
/// of an image id usually takes seconds).
pub const CONFIRM: PollPolicy =
    PollPolicy::new(Duration::from_secs(2), Duration::from_secs(15), Duration::from_secs(180));

/// SSM takes at most 10 labels in one UnlabelParameterVersion.
const UNLABEL_BATCH: usize = 10;

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
    format!("{LABEL_PREFIX}{run_id}")
}

/// Why a publication was not made.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Cloud(#[from] CloudError),
    /// SSM never changes a parameter's data type to `aws:ec2:image`.
    #[error("the SSM parameter `{name}` has data type `{data_type}`, and SSM never changes a parameter's data type to `aws:ec2:image`: delete it, or publish to another name")]
    DataType { name: String, data_type: String },
    /// The put's version never appeared: SSM's validation of the image id failed, or took too long.
    #[error("the SSM parameter `{name}` version {version} never appeared (waited {}): SSM's asynchronous validation of {image} failed or did not end; the parameter still names its earlier image", humantime::format_duration(*waited))]
    NotConfirmed { name: String, version: u64, image: ImageId, waited: Duration },
    /// The put's version holds another value: someone else's put took the number.
    #[error(
        "the SSM parameter `{name}` version {version} holds `{value}`, not {image}: another writer published to it"
    )]
    NotOurs { name: String, version: u64, image: ImageId, value: String },
}

impl PublishError {
    /// As a job's failure at stage `publish`.
    pub fn failure(&self, label: &JobLabel) -> Failure {
        match self {
            PublishError::Cloud(error) => Failure::from_cloud(label, Stage::Publish, error),
            other => Failure::new(label, Stage::Publish, other),
        }
    }
}

/// Publishes the image as `[publish]` says; what was published, and what failed.
pub async fn publish(image: Publishing<'_>) -> (Vec<Publication>, Vec<PublishError>) {
    let Publishing { cloud, publish, fleet, flavor, run_id, .. } = image;
    let mut published = Vec::new();
    let mut failures = Vec::new();
    if let Some(template) = &publish.ssm_parameter {
        let name = Publish::render(template, fleet, flavor);
        let done = image.already.iter().any(|p| matches!(p, Publication::SsmParameter { name: n, .. } if *n == name));
        if !done {
            match publish_parameter(cloud, &name, image.image, &label(run_id)).await {
                Ok(publication) => published.push(publication),
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
                Err(error) => failures.push(error.into()),
            }
        }
    }
    (published, failures)
}

/// One SSM publication: fleetbake's labels moved off older versions, the put, its confirmation, its label.
async fn publish_parameter(
    cloud: &dyn RegionCloud,
    name: &str,
    image: &ImageId,
    label: &str,
) -> Result<Publication, PublishError> {
    if let Some(history) = cloud.parameter_history(name).await? {
        if history.data_type != IMAGE_DATA_TYPE {
            return Err(PublishError::DataType { name: name.to_string(), data_type: history.data_type });
        }
        for (version, labels) in labels_to_remove(&history) {
            for batch in labels.chunks(UNLABEL_BATCH) {
                cloud.unlabel_parameter_version(name, version, batch).await?;
            }
        }
    }
    let version = cloud.put_image_parameter(name, image).await?;
    confirm(cloud, name, version, image).await?;
    cloud.label_parameter_version(name, version, label).await?;
    Ok(Publication::SsmParameter { name: name.to_string(), version, label: label.to_string() })
}

/// fleetbake's labels on the versions older than the newest `KEEP_LABELS - 1` (the put about to be made is
/// the newest): version and labels, oldest first.
pub fn labels_to_remove(history: &ParameterHistory) -> Vec<(u64, Vec<String>)> {
    let keep_from = history.versions.len().saturating_sub(KEEP_LABELS - 1);
    history.versions[..keep_from]
        .iter()
        .filter_map(|version| {
            let ours: Vec<String> = version.labels.iter().filter(|label| is_run_label(label)).cloned().collect();
            (!ours.is_empty()).then_some((version.version, ours))
        })
        .collect()
}

/// Reads the history back until `version` is there and holds `image`.
async fn confirm(cloud: &dyn RegionCloud, name: &str, version: u64, image: &ImageId) -> Result<(), PublishError> {
    let what = format!("version {version} of the SSM parameter `{name}`");
    let found = poll_until(CONFIRM, &what, || async {
        let history = cloud.parameter_history(name).await?;
        Ok(match history.as_ref().and_then(|history| history.version(version)) {
            Some(found) => Poll::Ready(found.value.clone()),
            None => Poll::NotYet,
        })
    })
    .await;
    match found {
        Ok(value) if value == image.as_str() => Ok(()),
        // Another writer's value: untrusted text, shown escaped and bounded.
        Ok(value) => Err(PublishError::NotOurs {
            name: name.to_string(),
            version,
            image: image.clone(),
            value: value.escape_debug().take(100).collect(),
        }),
        Err(WaitError::Cloud(error)) => Err(error.into()),
        // The check never answers `Failed` (a version not there yet is waited for); either way, not confirmed.
        Err(WaitError::Timeout { after: waited, .. }) => {
            Err(PublishError::NotConfirmed { name: name.to_string(), version, image: image.clone(), waited })
        }
        Err(WaitError::Failed(_)) => Err(PublishError::NotConfirmed {
            name: name.to_string(),
            version,
            image: image.clone(),
            waited: CONFIRM.timeout,
        }),
    }
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
    let Some(settings) = run.fleet.publish.as_ref().filter(|settings| settings.when == PublishWhen::Each) else {
        return (Vec::new(), Vec::new());
    };
    // Another account's copy (`[[distribution]]`) only as `[publish] accounts` says; `cloud` is that account's.
    if !settings.accounts.covers(&label.place.account) {
        return (Vec::new(), Vec::new());
    }
    let publishing =
        Publishing { cloud, publish: settings, fleet: &run.fleet.name, flavor, run_id: &run.run_id, image, already };
    let (published, failures) = publish(publishing).await;
    for publication in &published {
        run.ledger.published(job, publication);
    }
    let failures = failures.iter().map(|error| error.failure(label)).collect();
    (published, failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::ParameterVersion;

    fn history(labels: &[&[&str]]) -> ParameterHistory {
        let versions = labels
            .iter()
            .enumerate()
            .map(|(index, labels)| ParameterVersion {
                version: index as u64 + 1,
                value: format!("ami-{index}"),
                labels: labels.iter().map(|label| label.to_string()).collect(),
            })
            .collect();
        ParameterHistory { data_type: IMAGE_DATA_TYPE.into(), versions }
    }

    /// Before a put, fleetbake's labels stay on the newest 9 versions (the put makes the 10th); older ones
    /// lose theirs; labels fleetbake did not make (`prod`, a person's `fleetbake-prod`) are never removed.
    #[test]
    fn only_fleetbakes_labels_past_the_newest_nine_are_removed() {
        let mut labels: Vec<&[&str]> =
            vec![&["fleetbake-20261201-000000-aaaaa", "prod", "fleetbake-prod"], &["fleetbake-20261202-000000-bbbbb"]];
        labels.extend(std::iter::repeat_n(&["fleetbake-20261203-000000-ccccc"][..], 9));
        let remove = labels_to_remove(&history(&labels));
        assert_eq!(
            remove,
            [
                (1, vec!["fleetbake-20261201-000000-aaaaa".to_string()]),
                (2, vec!["fleetbake-20261202-000000-bbbbb".to_string()])
            ]
        );
        assert!(labels_to_remove(&history(&labels[2..])).is_empty(), "9 versions: nothing to remove");
        assert!(labels_to_remove(&history(&[&["prod"][..]; 20])).is_empty(), "no label of fleetbake's");
    }
}
