//! What an image gets once it is available, before it is announced (build) or recorded (copy): IMDSv2
//! required of its instances, its deprecation time, and its launch and create-volume permissions. Launch
//! permissions and these attributes are per image and per region: CopyImage carries none of them over, so
//! every copy is finished in its own region (as the Packer amazon plugin's `StepModifyAMIAttributes` does for
//! every region's image).
//!
//! Each call adds or sets, and repeating it changes nothing, so a resumed run finishes an image again rather
//! than remember how far an earlier attempt got. A step that fails is recorded and the others still run: the
//! image stays (it is built, and in the manifest), and the manifest leaves out what it does not have.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use crate::cloud::{CloudError, ImageId, LaunchPermissions, RegionCloud, SnapshotId};
use crate::config::{Flavor, Fleet, Region, Sharing, Tags};
use crate::outcome::{ImageSettings, Stage};

/// The tag a shared image carries: `fleetbake gc` leaves shared images alone unless `[retention] shared =
/// "deregister"` (another account may run instances from them).
pub const SHARED_TAG: &str = "fleetbake:shared";

/// One image to finish, in its region.
pub struct Finishing<'a> {
    pub cloud: &'a dyn RegionCloud,
    pub fleet: &'a Fleet,
    pub flavor: &'a Flavor,
    pub region: &'a Region,
    pub image: &'a ImageId,
    pub snapshots: &'a [SnapshotId],
    /// Now, by the run's clock: the deprecation time counts from here.
    pub now: DateTime<Utc>,
}

/// A step that failed, and the step.
#[derive(Debug)]
pub struct FinishFailure {
    pub stage: Stage,
    pub error: CloudError,
}

/// Applies the fleet's settings to the image; what was applied, and what failed.
pub async fn finish(image: Finishing<'_>) -> (ImageSettings, Vec<FinishFailure>) {
    let Finishing { cloud, fleet, flavor, region, .. } = image;
    let mut settings =
        ImageSettings { kms_key_id: fleet.kms_key(region).map(String::from), ..ImageSettings::default() };
    let mut failures = Vec::new();
    let mut failed = |stage, error| failures.push(FinishFailure { stage, error });

    if flavor.metadata.tokens_required {
        match cloud.require_imdsv2(image.image).await {
            Ok(()) => settings.imds_support = Some("v2.0".into()),
            Err(error) => failed(Stage::Imds, error),
        }
    }
    if let Some(after) = fleet.deprecate_after {
        let at = deprecation_time(image.now, after);
        match cloud.deprecate_image(image.image, at).await {
            Ok(()) => settings.deprecation_time = Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            Err(error) => failed(Stage::Deprecate, error),
        }
    }
    if fleet.sharing.any() {
        match share(&image, &fleet.sharing).await {
            Ok(()) => settings.shared_with = Some(fleet.sharing.clone()),
            Err(error) => failed(Stage::Share, error),
        }
    }
    (settings, failures)
}

/// `now + after`, to the minute as EC2 keeps it (it rounds `DeprecateAt` to the nearest minute).
pub fn deprecation_time(now: DateTime<Utc>, after: std::time::Duration) -> DateTime<Utc> {
    let at = now + TimeDelta::from_std(after).unwrap_or(TimeDelta::MAX);
    at.duration_round(TimeDelta::minutes(1)).unwrap_or(at)
}

/// Marks the image shared (so gc knows), then grants its launch permissions and its snapshots'
/// create-volume permissions. Marked first: a share that fails half-way still leaves an image another account
/// may be using.
async fn share(image: &Finishing<'_>, sharing: &Sharing) -> Result<(), CloudError> {
    let cloud = image.cloud;
    let tags = Tags::from([(SHARED_TAG.to_string(), "true".to_string())]);
    cloud.create_tags(std::slice::from_ref(&image.image.0), &tags).await?;
    let launch = LaunchPermissions {
        accounts: sharing.accounts.clone(),
        organizations: sharing.organizations.clone(),
        organizational_units: sharing.organizational_units.clone(),
        public: sharing.public,
    };
    if !launch.is_empty() {
        cloud.share_image(image.image, &launch).await?;
    }
    if !sharing.snapshot_accounts.is_empty() {
        for snapshot in image.snapshots {
            cloud.share_snapshot(snapshot, &sharing.snapshot_accounts).await?;
        }
    }
    Ok(())
}

/// Whether an image with these settings still lacks one the fleet asks for (a resumed run finishes it again).
pub fn unfinished(fleet: &Fleet, flavor: &Flavor, settings: &ImageSettings) -> bool {
    (flavor.metadata.tokens_required && settings.imds_support.is_none())
        || (fleet.deprecate_after.is_some() && settings.deprecation_time.is_none())
        || (fleet.sharing.any() && settings.shared_with.as_ref() != Some(&fleet.sharing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deprecation_time_is_rounded_to_the_minute_as_ec2_keeps_it() {
        let now: DateTime<Utc> = "2026-11-27T12:00:31Z".parse().unwrap();
        let at = deprecation_time(now, std::time::Duration::from_secs(90 * 24 * 3600));
        assert_eq!(at.to_rfc3339(), "2027-02-25T12:01:00+00:00");
        let early: DateTime<Utc> = "2026-11-27T12:00:29Z".parse().unwrap();
        assert_eq!(
            deprecation_time(early, std::time::Duration::from_secs(60)).to_rfc3339(),
            "2026-11-27T12:01:00+00:00"
        );
    }
}
