//! What an image gets once it is available, before it is announced (build) or recorded (copy): IMDSv2
//! required of its instances, its deprecation time, and its launch and create-volume permissions. Launch
//! permissions and these attributes are per image and per region: CopyImage carries none of them over, so
//! every copy is finished in its own region (as the Packer amazon plugin's `StepModifyAMIAttributes` does for
//! every region's image).
//!
//! Each call adds or sets, and repeating it changes nothing, so a resumed run finishes an image again rather
//! than remember how far an earlier attempt got. A step that fails is recorded and the others still run: the
//! image stays (it is built, and in the manifest), and the manifest leaves out what it does not have.
//!
//! Sharing is made exact: the accounts, organizations and OUs are granted first, and `all` (public) in a call of
//! its own, so a refused public share (block public access for AMIs, on in new accounts) fails only that. An
//! image of an earlier run (reused by `--changed-only`) has its launch and create-volume permissions read back,
//! and what `[sharing]` no longer lists is removed (ModifyImageAttribute `Add` only adds). A public image's
//! deprecation time is kept within EC2's limit, 2 years from its creation, and the note says so.

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
    /// Who made it and when: what it may carry already, and where a public image's deprecation limit falls.
    pub made: Made,
}

/// When, and by which run, the image was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Made {
    /// By this run, which started at `started` (before the image was made): it carries no permission but the
    /// ones this run gives it.
    ThisRun { started: DateTime<Utc> },
    /// By an earlier run, at `created` (EC2's creation date); `shared`: its [`SHARED_TAG`] says `true`, so it
    /// may carry permissions an earlier `[sharing]` gave (fleetbake tags an image before its first grant, and
    /// `false` once a finish took every grant away; one not marked has none of fleetbake's to take away, and
    /// its permissions are not read).
    Earlier { created: DateTime<Utc>, shared: bool },
}

impl Made {
    /// Whether the image may carry grants an earlier run's `[sharing]` gave: what a finish reads back and trims.
    pub fn maybe_shared(self) -> bool {
        matches!(self, Made::Earlier { shared: true, .. })
    }

    /// The latest deprecation time EC2 accepts for a public image: 2 years (730 days, never more than 2
    /// calendar years) after its creation, or after the run's start for an image made in this run, to the
    /// minute below.
    pub fn public_deprecation_limit(self) -> DateTime<Utc> {
        let from = match self {
            Made::ThisRun { started } => started,
            Made::Earlier { created, .. } => created,
        };
        let limit = from + TimeDelta::days(730);
        limit.duration_trunc(TimeDelta::minutes(1)).unwrap_or(limit)
    }
}

/// What a finish came to: what was applied, what failed, and what to tell about it.
#[derive(Debug, Default)]
pub struct Finished {
    pub settings: ImageSettings,
    pub failures: Vec<FinishFailure>,
    /// Said of the image, not failures (a deprecation time kept within EC2's limit for public images).
    pub notes: Vec<String>,
}

/// A step that failed, and the step.
#[derive(Debug)]
pub struct FinishFailure {
    pub stage: Stage,
    pub error: CloudError,
}

/// Applies the fleet's settings to the image; what was applied, what failed, and what to say about it.
pub async fn finish(image: Finishing<'_>) -> Finished {
    let fleet = image.fleet;
    let Finished { mut settings, mut failures, notes } = imds_and_deprecation(&image, fleet.sharing.public).await;
    // An image an earlier run shared may carry grants `[sharing]` no longer lists, even when it lists none.
    if fleet.sharing.any() || image.made.maybe_shared() {
        let shared = share(&image, &fleet.sharing).await;
        if fleet.sharing.any() {
            settings.shared_with = shared.applied;
        }
        failures.extend(shared.failures);
    }
    Finished { settings, failures, notes }
}

/// Finishes a copy another account owns (`[[distribution]]`): IMDSv2 and deprecation apply, `[sharing]` does
/// not (it is the own account's; the account decides whom to share its copy with), and the copy is never
/// public. What it is encrypted with is the caller's to say (the account's key).
pub async fn finish_in_account(image: Finishing<'_>) -> Finished {
    let mut finished = imds_and_deprecation(&image, false).await;
    finished.settings.kms_key_id = None;
    finished
}

/// IMDSv2 and deprecation (its time kept within EC2's limit for public images when `public`).
async fn imds_and_deprecation(image: &Finishing<'_>, public: bool) -> Finished {
    let Finishing { cloud, fleet, flavor, region, .. } = *image;
    let mut settings =
        ImageSettings { kms_key_id: fleet.kms_key(region).map(String::from), ..ImageSettings::default() };
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    let mut failed = |stage, error| failures.push(FinishFailure { stage, error });

    if flavor.metadata.tokens_required {
        match cloud.require_imdsv2(image.image).await {
            Ok(()) => settings.imds_support = Some("v2.0".into()),
            Err(error) => failed(Stage::Imds, error),
        }
    }
    if let Some(after) = fleet.deprecate_after {
        let mut at = deprecation_time(image.now, after);
        let limit = image.made.public_deprecation_limit();
        if public && at > limit {
            notes.push(format!(
                "deprecating {} at {} instead of {}: EC2 deprecates a public image at most 2 years after its creation",
                image.image,
                limit.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
            at = limit;
        }
        match cloud.deprecate_image(image.image, at).await {
            Ok(()) => settings.deprecation_time = Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            Err(error) => failed(Stage::Deprecate, error),
        }
    }
    Finished { settings, failures, notes }
}

/// `now + after`, to the minute as EC2 keeps it (it rounds `DeprecateAt` to the nearest minute).
pub fn deprecation_time(now: DateTime<Utc>, after: std::time::Duration) -> DateTime<Utc> {
    let at = now + TimeDelta::from_std(after).unwrap_or(TimeDelta::MAX);
    at.duration_round(TimeDelta::minutes(1)).unwrap_or(at)
}

/// What sharing came to: what of `[sharing]` the image has (`None`: not all of the non-public part), and what
/// failed.
struct Shared {
    applied: Option<Sharing>,
    failures: Vec<FinishFailure>,
}

/// Marks the image shared (so gc knows), grants its launch permissions to the accounts, organizations and OUs,
/// removes the ones no longer listed (an image an earlier run shared), does the same with its snapshots'
/// create-volume permissions, and last makes it public, in a call of its own: a refusal there (block public
/// access) leaves the rest granted. Marked first: a share that fails half-way still leaves an image another
/// account may be using.
async fn share(image: &Finishing<'_>, sharing: &Sharing) -> Shared {
    let failure = |stage, error| Shared { applied: None, failures: vec![FinishFailure { stage, error }] };
    let had = match share_privately(image, sharing).await {
        Ok(had) => had,
        Err(error) => return failure(Stage::Share, error),
    };
    // Already public (an earlier night's grant, read back): not asked again. Block public access refuses new
    // public sharing only, and whether EC2 takes a repeated grant under it is not documented: not depending on
    // it keeps a block turned on since from failing the image every night.
    if !sharing.public || had.is_some_and(|had| had.public) {
        return Shared { applied: Some(sharing.clone()), failures: Vec::new() };
    }
    let public = LaunchPermissions { public: true, ..LaunchPermissions::default() };
    match image.cloud.share_image(image.image, &public).await {
        Ok(()) => Shared { applied: Some(sharing.clone()), failures: Vec::new() },
        // What was granted stays: the manifest lists it, without `public`.
        Err(error) => Shared {
            applied: Some(Sharing { public: false, ..sharing.clone() }),
            failures: vec![FinishFailure { stage: Stage::Share, error }],
        },
    }
}

/// Everything of [`share`] but the public grant; the launch permissions the image had, when they were read
/// (an image an earlier run shared).
async fn share_privately(image: &Finishing<'_>, sharing: &Sharing) -> Result<Option<LaunchPermissions>, CloudError> {
    let cloud = image.cloud;
    if sharing.any() {
        let tags = Tags::from([(SHARED_TAG.to_string(), "true".to_string())]);
        cloud.create_tags(std::slice::from_ref(&image.image.0), &tags).await?;
    }
    let wanted = LaunchPermissions {
        accounts: sharing.accounts.clone(),
        organizations: sharing.organizations.clone(),
        organizational_units: sharing.organizational_units.clone(),
        public: sharing.public,
    };
    let private = LaunchPermissions { public: false, ..wanted.clone() };
    if !private.is_empty() {
        cloud.share_image(image.image, &private).await?;
    }
    let earlier = image.made.maybe_shared();
    let mut had = None;
    if earlier {
        let found = cloud.launch_permissions(image.image).await?;
        let unlisted = found.beyond(&wanted);
        if !unlisted.is_empty() {
            cloud.unshare_image(image.image, &unlisted).await?;
        }
        had = Some(found);
    }
    for snapshot in image.snapshots {
        if !sharing.snapshot_accounts.is_empty() {
            cloud.share_snapshot(snapshot, &sharing.snapshot_accounts).await?;
        }
        if earlier {
            let unlisted: Vec<String> = cloud
                .snapshot_permissions(snapshot)
                .await?
                .into_iter()
                .filter(|account| !sharing.snapshot_accounts.contains(account))
                .collect();
            if !unlisted.is_empty() {
                cloud.unshare_snapshot(snapshot, &unlisted).await?;
            }
        }
    }
    if earlier && !sharing.any() {
        // Shared no more: gc may retire it, and later nights need not read its permissions again.
        let tags = Tags::from([(SHARED_TAG.to_string(), "false".to_string())]);
        cloud.create_tags(std::slice::from_ref(&image.image.0), &tags).await?;
    }
    Ok(had)
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
