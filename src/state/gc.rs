//! `fleetbake gc FLEET [--dry-run]`: removes what fleetbake runs left in the account.
//!
//! Three steps, the middle one pure: [`survey`] describes every region of the fleet (temporary resources and
//! the fleet's images, by tag), and with `[[distribution]]` each destination account's regions (its images,
//! acting as its role); [`GcPlan::new`] decides, from the survey, the journals, the manifest and
//! `[retention]`, what goes and why; [`execute`] removes it (unless it is a dry run).
//!
//! Per account: `keep` counts per flavor, account and region; an account's copies are its own images (CopyImage
//! made them there, with snapshots of their own), so they are surveyed and retired only in that account, and
//! deregistering the builder's image leaves them. An account whose role cannot be assumed (or that refuses
//! the describe) is named, and counts as a failure, so gc exits non-zero: it is never skipped silently.
//!
//! Never removed: anything of a run in progress (its journal is locked here, or, for a run with no journal
//! here, it started less than [`FOREIGN_RUN_GRACE`] ago: it may be running on another machine), an image named
//! in the current manifest, a pending image, and with no `[retention] keep`, any image at all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::cloud::wait::{poll_until, Poll, PollPolicy};
use crate::cloud::watch::Waits;
use crate::cloud::{Cloud, CloudError, ImageId, ImageQuery, ImageState, OwnedImage, SnapshotId};
use crate::config::{Account, Fleet, Place, Region, Retention};
use crate::plan::RunId;
use crate::state::journal::{Journal, JournalDir, JournalError, RunLock};
use crate::state::leftovers::{self, Leftover};
use crate::state::manifest::Manifest;
use crate::steps::context::{FLAVOR_TAG, FLEET_TAG, RUN_ID_TAG};
use crate::steps::distribute::DISTRIBUTED_FROM_TAG;
use crate::steps::finish::SHARED_TAG;
use crate::steps::ledger::{Resource, ResourceKind};

/// A run with no journal here is treated as in progress until this long after it started.
pub const FOREIGN_RUN_GRACE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot read the manifest `{path}` (gc never removes an image it names, so it stops): {error}")]
    Manifest { path: String, error: std::io::Error },
}

/// What is in the account (and the distribution accounts), as of the survey.
#[derive(Clone, Debug, Default)]
pub struct Survey {
    pub leftovers: Vec<Leftover>,
    pub images: Vec<(Place, OwnedImage)>,
    /// Distribution accounts whose images could not be listed: their role not assumed, or the call refused.
    pub unreachable: Vec<Unreachable>,
}

/// A distribution account gc could not survey, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreachable {
    pub place: Place,
    pub role_arn: String,
    pub error: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "could not survey account {} in {} acting as `{}`: {}; its copies were not looked at: check that the role exists there and trusts this account",
            self.place.account, self.place.region, self.role_arn, self.error
        )
    }
}

/// Every region the fleet builds in or copies to.
pub fn regions(fleet: &Fleet) -> BTreeSet<Region> {
    let mut regions: BTreeSet<Region> = fleet.regions.keys().cloned().collect();
    regions.extend(fleet.regions.values().flatten().cloned());
    regions
}

/// Every region of every distribution account (`[[distribution]]`), with the role gc acts as there.
pub fn distribution_places(fleet: &Fleet) -> Vec<(Place, String)> {
    let mut places = Vec::new();
    for distribution in fleet.distributions.iter() {
        for account in &distribution.accounts {
            for region in &distribution.regions {
                let place = Place { account: Account::Id(account.clone()), region: region.clone() };
                places.push((place, distribution.role_for(account)));
            }
        }
    }
    places
}

/// Describes every region: the fleet's temporary resources and its images; then each distribution account's
/// images (copies make no temporary resources there). A failure in the own account stops gc; in a
/// distribution account it is recorded ([`Survey::unreachable`]) and that account's other regions are not
/// tried (the same role would be refused again).
pub async fn survey(fleet: &Fleet, cloud: &dyn Cloud) -> Result<Survey, CloudError> {
    let temporary = leftovers::temporary_tags(&fleet.name, None);
    let images = ImageQuery::Tagged(BTreeMap::from([(FLEET_TAG.to_string(), fleet.name.clone())]));
    let mut survey = Survey::default();
    for region in regions(fleet) {
        let cloud = cloud.region(&region);
        survey.leftovers.extend(leftovers::find(&*cloud, &temporary).await?);
        let found = cloud.find_owned_images(&images).await?;
        survey.images.extend(found.into_iter().map(|image| (Place::own(region.clone()), image)));
    }
    for (place, role_arn) in distribution_places(fleet) {
        if survey.unreachable.iter().any(|unreachable| unreachable.place.account == place.account) {
            continue;
        }
        match cloud.place(&place).find_owned_images(&images).await {
            // Only the copies distribution made (`fleetbake:distributed-from`): an image the account built itself
            // with a fleet of the same name is the account's to keep or remove, never the builder's gc's.
            Ok(found) => survey.images.extend(
                found
                    .into_iter()
                    .filter(|image| image.tags.contains_key(DISTRIBUTED_FROM_TAG))
                    .map(|image| (place.clone(), image)),
            ),
            Err(error) => survey.unreachable.push(Unreachable { place, role_arn, error: error.to_string() }),
        }
    }
    Ok(survey)
}

/// Whether each run seen in the survey may be running now.
#[derive(Clone, Debug, Default)]
pub struct RunsInProgress(pub BTreeMap<RunId, bool>);

impl RunsInProgress {
    /// Asks the journals; a run without one here is in progress for [`FOREIGN_RUN_GRACE`] after it started.
    pub fn ask(dir: &JournalDir, survey: &Survey, now: DateTime<Utc>) -> Result<Self, JournalError> {
        let tagged = survey.images.iter().filter_map(|(_, image)| image.tags.get(RUN_ID_TAG));
        let run_ids: BTreeSet<RunId> = survey
            .leftovers
            .iter()
            .filter_map(|leftover| leftover.run_id.clone())
            .chain(tagged.filter_map(|id| RunId::parse(id)))
            .collect();
        let mut runs = BTreeMap::new();
        for run_id in run_ids {
            let in_progress = match dir.in_progress(&run_id)? {
                Some(locked) => locked,
                None => run_id.started_at().is_none_or(|started| {
                    now.signed_duration_since(started).to_std().unwrap_or_default() < FOREIGN_RUN_GRACE
                }),
            };
            runs.insert(run_id, in_progress);
        }
        Ok(RunsInProgress(runs))
    }

    /// A resource or image without a run id fleetbake can read is left alone, as if its run were in progress.
    fn in_progress(&self, run_id: Option<&RunId>) -> bool {
        run_id.is_none_or(|run_id| self.0.get(run_id).copied().unwrap_or(true))
    }
}

/// An image to deregister, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deregistration {
    /// Where the image is: a region of the own account, or of a distribution account (its copy).
    pub place: Place,
    pub image: OwnedImage,
    pub why: String,
}

/// What gc removes, and what it leaves that a user might expect it to remove.
#[derive(Clone, Debug, Default)]
pub struct GcPlan {
    pub remove: Vec<Leftover>,
    pub deregister: Vec<Deregistration>,
    /// Distribution accounts the survey could not look into: named, and failures of gc.
    pub unreachable: Vec<Unreachable>,
    /// Things left on purpose, with the reason: runs in progress, images without `[retention]`.
    pub notes: Vec<String>,
}

impl GcPlan {
    /// Pure: the survey, which runs are in progress, the images the manifest names, and `[retention]`.
    pub fn new(survey: &Survey, runs: &RunsInProgress, protected: &BTreeSet<ImageId>, retention: &Retention) -> Self {
        let mut plan = GcPlan { unreachable: survey.unreachable.clone(), ..GcPlan::default() };
        let mut busy_runs = BTreeSet::new();
        for leftover in &survey.leftovers {
            if runs.in_progress(leftover.run_id.as_ref()) {
                busy_runs.insert(leftover.run_id.as_ref().map_or("(untagged)".to_string(), ToString::to_string));
            } else {
                plan.remove.push(leftover.clone());
            }
        }
        for run in busy_runs {
            plan.notes.push(format!("left the temporary resources of run {run}: it may be in progress"));
        }
        let Some(keep) = retention.keep else {
            if !survey.images.is_empty() {
                plan.notes.push(format!(
                    "left all {} images of the fleet: set `[retention] keep = N` to deregister all but the newest N per flavor and region",
                    survey.images.len()
                ));
            }
            return plan;
        };
        // Newest first per flavor, account and region; pending images and runs in progress are never touched.
        let mut groups: BTreeMap<(String, Place), Vec<&OwnedImage>> = BTreeMap::new();
        for (place, image) in &survey.images {
            let run_id = image.tags.get(RUN_ID_TAG).and_then(|id| RunId::parse(id));
            if image.state == ImageState::Pending || runs.in_progress(run_id.as_ref()) {
                continue;
            }
            let flavor = image.tags.get(FLAVOR_TAG).cloned().unwrap_or_default();
            groups.entry((flavor, place.clone())).or_default().push(image);
        }
        let mut shared_left = 0;
        for ((flavor, place), mut images) in groups {
            images.sort_by(|a, b| (&b.creation_date, &b.id).cmp(&(&a.creation_date, &a.id)));
            let mut kept = 0;
            for image in images {
                let why = if protected.contains(&image.id) {
                    None
                } else if let ImageState::Failed(state) = &image.state {
                    Some(format!("it failed ({state})"))
                } else if kept >= keep {
                    Some(format!("{flavor} in {place} keeps its newest {keep}"))
                } else {
                    None
                };
                // Another account may run instances from a shared image: left unless `shared = "deregister"`.
                let shared = image.tags.get(SHARED_TAG).is_some_and(|value| value == "true");
                let failed = matches!(image.state, ImageState::Failed(_));
                match why {
                    Some(_) if shared && !failed && !retention.deregister_shared => shared_left += 1,
                    Some(why) => {
                        plan.deregister.push(Deregistration { place: place.clone(), image: image.clone(), why })
                    }
                    None if image.state == ImageState::Available => kept += 1,
                    None => {}
                }
            }
        }
        if shared_left > 0 {
            plan.notes.push(format!(
                "left {shared_left} shared images past `[retention] keep`: other accounts may use them; set `[retention] shared = \"deregister\"` to deregister them too"
            ));
        }
        plan
    }
}

/// What gc did (or, in a dry run, would do), line by line, and whether everything went.
#[derive(Debug, Default)]
pub struct GcOutcome {
    pub lines: Vec<String>,
    pub removed: usize,
    pub deregistered: usize,
    pub snapshots: usize,
    pub failures: usize,
    /// Temporary resources whose removal failed.
    pub not_removed: Vec<Resource>,
}

/// The images the current manifest names: gc never removes them.
pub fn protected_images(fleet: &Fleet) -> Result<BTreeSet<ImageId>, GcError> {
    match Manifest::read(&fleet.manifest_path) {
        Ok(manifest) => Ok(manifest
            .entries()
            .map(|(_, _, image)| image.image_id.clone())
            .chain(manifest.in_progress.iter().map(|image| image.image_id.clone()))
            .collect()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(error) => Err(GcError::Manifest { path: fleet.manifest_path.display().to_string(), error }),
    }
}

/// A snapshot stays in use for a moment after its image is deregistered.
const SNAPSHOT_RELEASE: PollPolicy =
    PollPolicy::new(Duration::from_secs(2), Duration::from_secs(5), Duration::from_secs(60));

/// Carries the plan out (or only says what it would do).
pub async fn execute(plan: &GcPlan, cloud: Arc<dyn Cloud>, dry_run: bool) -> GcOutcome {
    let mut outcome = GcOutcome::default();
    // Named first, and failed: an account gc could not look into may hold copies past `keep`.
    for unreachable in &plan.unreachable {
        outcome.failures += 1;
        outcome.lines.push(unreachable.to_string());
    }
    let run_of = |leftover: &Leftover| leftover.run_id.as_ref().map_or("untagged".to_string(), ToString::to_string);
    if dry_run {
        for leftover in &plan.remove {
            outcome.lines.push(format!("would remove {} (run {})", leftover.resource, run_of(leftover)));
        }
    } else {
        let waits = Waits::new(Arc::clone(&cloud), crate::cloud::watch::WaitStyle::Batched);
        let journal = Journal::in_memory();
        let mut by_region: BTreeMap<&Region, Vec<Leftover>> = BTreeMap::new();
        for leftover in &plan.remove {
            by_region.entry(leftover.resource.region()).or_default().push(leftover.clone());
        }
        for (region, leftovers) in by_region {
            let removal = leftovers::remove(&*cloud.region(region), &waits.region(region), &leftovers, &journal).await;
            let run = |resource: &Resource| {
                leftovers.iter().find(|leftover| &leftover.resource == resource).map(run_of).unwrap_or_default()
            };
            for resource in &removal.removed {
                outcome.removed += 1;
                outcome.lines.push(format!("removed {resource} (run {})", run(resource)));
            }
            for (resource, error) in &removal.failed {
                outcome.failures += 1;
                outcome.not_removed.push(resource.clone());
                outcome.lines.push(format!("could not remove {resource}: {error}"));
            }
        }
    }
    for deregistration in &plan.deregister {
        let Deregistration { place, image, why } = deregistration;
        let snapshots: Vec<String> = image.snapshot_ids.iter().map(ToString::to_string).collect();
        let what =
            format!("{} `{}` in {place} and its snapshots [{}]: {why}", image.id, image.name, snapshots.join(", "));
        if dry_run {
            outcome.lines.push(format!("would deregister {what}"));
            continue;
        }
        let region_cloud = cloud.place(place);
        if let Err(error) = region_cloud.deregister_image(&image.id).await {
            outcome.failures += 1;
            outcome.lines.push(format!("could not deregister {}: {error}", image.id));
            continue;
        }
        outcome.deregistered += 1;
        outcome.lines.push(format!("deregistered {what}"));
        for snapshot in &image.snapshot_ids {
            match delete_snapshot(&*region_cloud, snapshot).await {
                Ok(()) => outcome.snapshots += 1,
                Err(error) => {
                    outcome.failures += 1;
                    outcome.lines.push(format!("could not delete {snapshot} of {}: {error}", image.id));
                }
            }
        }
    }
    outcome
}

async fn delete_snapshot(cloud: &dyn crate::cloud::RegionCloud, snapshot: &SnapshotId) -> Result<(), String> {
    poll_until(SNAPSHOT_RELEASE, &format!("snapshot {snapshot} to be released"), || async {
        match cloud.delete_snapshot(snapshot).await {
            Ok(()) => Ok(Poll::Ready(())),
            Err(error) if error.code.as_deref() == Some("InvalidSnapshot.InUse") => Ok(Poll::NotYet),
            Err(error) if error.kind == crate::cloud::ErrorKind::NotFound => Ok(Poll::Ready(())),
            Err(error) => Err(error),
        }
    })
    .await
    .map_err(|error| error.to_string())
}

/// The Session Manager sessions the fleet's journals say were opened and not ended: sessions carry no tags, so
/// only a journal names them (a killed run's). Ending one that already ended is fine (TerminateSession is
/// idempotent); an unreadable journal is skipped here (resume is what reports it).
fn journaled_sessions(dir: &JournalDir) -> Vec<Leftover> {
    let Ok(paths) = dir.journals() else { return Vec::new() };
    let mut sessions = Vec::new();
    for path in paths {
        let Ok(replay) = crate::state::journal::Replay::read(&path) else { continue };
        // Grants to other accounts carry no tags either: a killed run's are taken back here too.
        let untagged = |resource: &&Resource| resource.kind == ResourceKind::Session || resource.kind.is_grant();
        for resource in replay.outstanding.keys().filter(untagged) {
            let run_id = Some(replay.header.run_id.clone());
            sessions.push(Leftover { resource: resource.clone(), run_id, flavor: None, keep_until: None });
        }
    }
    sessions
}

/// What gc says of a resource kept until later (`--keep-failed`).
fn kept_note(leftover: &Leftover) -> String {
    let until = leftover.keep_until.map(|until| until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let run = leftover.run_id.as_ref().map_or("untagged".to_string(), ToString::to_string);
    format!("left {} (run {run}): kept until {} (`--keep-failed`)", leftover.resource, until.unwrap_or_default())
}

/// The whole command: survey, plan, execute.
pub async fn gc(fleet: &Fleet, cloud: Arc<dyn Cloud>, dry_run: bool) -> Result<(GcPlan, GcOutcome), GcError> {
    // Removing images takes the fleet file's run lock, refused at once if a run holds it: a run in progress
    // is making images gc's retention would count, and none may start while gc deregisters.
    let _lock = match (fleet.retention.keep, dry_run) {
        (Some(_), false) => {
            let lock = RunLock::acquire(&JournalDir::of(fleet))?;
            lock.name_holder("gc");
            Some(lock)
        }
        _ => None,
    };
    let protected = protected_images(fleet)?;
    let mut survey = survey(fleet, &*cloud).await?;
    survey.leftovers.extend(journaled_sessions(&JournalDir::of(fleet)));
    // A failed build's resources kept (`--keep-failed`) are left until their `fleetbake:keep-until`.
    let (due, kept) = leftovers::set_aside_kept(std::mem::take(&mut survey.leftovers), Utc::now());
    survey.leftovers = due;
    let runs = RunsInProgress::ask(&JournalDir::of(fleet), &survey, Utc::now())?;
    let mut plan = GcPlan::new(&survey, &runs, &protected, &fleet.retention);
    plan.notes.extend(kept.iter().map(kept_note));
    let mut outcome = execute(&plan, cloud, dry_run).await;
    let found = leftovers::kept_keys(&JournalDir::of(fleet).path);
    for keys in leftovers::stale_kept_keys(found, &kept, &outcome.not_removed) {
        let folder = keys.folder.display();
        if dry_run {
            outcome
                .lines
                .push(format!("would remove the login key folder `{folder}` of kept instance {}", keys.instance));
            continue;
        }
        match std::fs::remove_dir_all(&keys.folder) {
            Ok(()) => outcome
                .lines
                .push(format!("removed the login key folder `{folder}` of kept instance {}", keys.instance)),
            Err(error) => {
                outcome.failures += 1;
                outcome.lines.push(format!("could not remove `{folder}`: {error}"));
            }
        }
    }
    Ok((plan, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(second: u32) -> RunId {
        RunId::new(format!("2026-11-26T12:00:{second:02}Z").parse().unwrap(), 1)
    }

    fn image(id: &str, flavor: &str, run_id: &RunId, created: &str, state: ImageState) -> (Place, OwnedImage) {
        let tags = BTreeMap::from([
            ("fleetbake:flavor".to_string(), flavor.to_string()),
            ("fleetbake:run-id".to_string(), run_id.to_string()),
        ]);
        let image = OwnedImage {
            id: ImageId::new(id),
            name: id.to_string(),
            state,
            creation_date: created.to_string(),
            snapshot_ids: Vec::new(),
            tags,
        };
        (Place::own(Region::new("us-west-2")), image)
    }

    fn keep(keep: Option<usize>) -> Retention {
        Retention { keep, ..Retention::default() }
    }

    fn deregistered(plan: &GcPlan) -> Vec<&str> {
        plan.deregister.iter().map(|gone| gone.image.id.as_str()).collect()
    }

    #[test]
    fn keeps_the_newest_per_flavor_and_region_the_manifests_and_anything_in_progress() {
        let (old, mid, new, busy) = (run(1), run(2), run(3), run(4));
        let survey = Survey {
            leftovers: vec![
                Leftover {
                    resource: Resource::new(Region::new("us-west-2"), ResourceKind::Instance, "i-old"),
                    run_id: Some(old.clone()),
                    flavor: None,
                    keep_until: None,
                },
                Leftover {
                    resource: Resource::new(Region::new("us-west-2"), ResourceKind::Instance, "i-busy"),
                    run_id: Some(busy.clone()),
                    flavor: None,
                    keep_until: None,
                },
            ],
            images: vec![
                image("ami-a1", "a", &old, "2026-11-26T12:00:01Z", ImageState::Available),
                image("ami-a2", "a", &mid, "2026-11-26T12:00:02Z", ImageState::Available),
                image("ami-a3", "a", &new, "2026-11-26T12:00:03Z", ImageState::Available),
                image("ami-a4", "a", &busy, "2026-11-26T12:00:04Z", ImageState::Available),
                image("ami-b1", "b", &old, "2026-11-26T12:00:01Z", ImageState::Failed("failed: disk".into())),
                image("ami-b3", "b", &new, "2026-11-26T12:00:03Z", ImageState::Pending),
            ],
            unreachable: Vec::new(),
        };
        let runs = RunsInProgress(BTreeMap::from([(old, false), (mid, false), (new, false), (busy.clone(), true)]));
        let protected = BTreeSet::from([ImageId::new("ami-a1")]);

        let plan = GcPlan::new(&survey, &runs, &protected, &keep(Some(1)));
        // a: a4 is a run in progress, a3 the newest, a1 in the manifest; b: b3 pending, b1 failed.
        assert_eq!(deregistered(&plan), ["ami-a2", "ami-b1"]);
        assert_eq!(plan.remove.iter().map(|leftover| leftover.resource.id.as_str()).collect::<Vec<_>>(), ["i-old"]);
        assert!(plan.notes.iter().any(|note| note.contains(&busy.to_string())), "{:?}", plan.notes);

        let keep_two = GcPlan::new(&survey, &runs, &protected, &keep(Some(2)));
        assert_eq!(deregistered(&keep_two), ["ami-b1"]);
        let no_retention = GcPlan::new(&survey, &runs, &protected, &keep(None));
        assert!(no_retention.deregister.is_empty());
        assert!(no_retention.notes.iter().any(|note| note.contains("[retention] keep")), "{:?}", no_retention.notes);
    }

    #[test]
    fn shared_images_are_left_unless_the_retention_says_deregister() {
        let (old, mid, new) = (run(1), run(2), run(3));
        let shared = |(region, mut image): (Place, OwnedImage)| {
            image.tags.insert(SHARED_TAG.into(), "true".into());
            (region, image)
        };
        let survey = Survey {
            leftovers: Vec::new(),
            images: vec![
                shared(image("ami-a1", "a", &old, "2026-11-26T12:00:01Z", ImageState::Available)),
                image("ami-a2", "a", &mid, "2026-11-26T12:00:02Z", ImageState::Available),
                shared(image("ami-a3", "a", &new, "2026-11-26T12:00:03Z", ImageState::Available)),
                shared(image("ami-b1", "b", &old, "2026-11-26T12:00:01Z", ImageState::Failed("failed".into()))),
            ],
            unreachable: Vec::new(),
        };
        let runs = RunsInProgress(BTreeMap::from([(old, false), (mid, false), (new, false)]));
        let protected = BTreeSet::new();

        let leave = GcPlan::new(&survey, &runs, &protected, &keep(Some(1)));
        // a1 is shared: left, and said so; a failed image is shared with no one that can use it.
        assert_eq!(deregistered(&leave), ["ami-a2", "ami-b1"]);
        assert!(leave.notes.iter().any(|note| note.contains("left 1 shared images")), "{:?}", leave.notes);

        let deregister = Retention { keep: Some(1), deregister_shared: true, ..Retention::default() };
        let all = GcPlan::new(&survey, &runs, &protected, &deregister);
        assert_eq!(deregistered(&all), ["ami-a2", "ami-a1", "ami-b1"]);
        assert!(all.notes.is_empty(), "{:?}", all.notes);
    }

    #[test]
    fn a_run_without_a_journal_here_is_in_progress_for_a_day() {
        let directory = tempfile::tempdir().unwrap();
        let dir = JournalDir { path: directory.path().to_path_buf() };
        let started = run(0);
        let survey = Survey {
            leftovers: vec![Leftover {
                resource: Resource::new(Region::new("us-west-2"), ResourceKind::KeyPair, "k"),
                run_id: Some(started.clone()),
                flavor: None,
                keep_until: None,
            }],
            images: Vec::new(),
            unreachable: Vec::new(),
        };
        let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
        let soon = RunsInProgress::ask(&dir, &survey, at("2026-11-27T11:59:00Z")).unwrap();
        assert!(soon.0[&started]);
        let later = RunsInProgress::ask(&dir, &survey, at("2026-11-27T12:01:00Z")).unwrap();
        assert!(!later.0[&started]);
    }

    #[test]
    fn keep_counts_per_flavor_account_and_region_and_an_unreachable_account_is_a_failure() {
        let (old, new) = (run(1), run(2));
        let in_account = |(_, image): (Place, OwnedImage), account: &str| {
            (Place { account: Account::Id(account.to_string()), region: Region::new("us-west-2") }, image)
        };
        let survey = Survey {
            leftovers: Vec::new(),
            images: vec![
                image("ami-own1", "a", &old, "2026-11-26T12:00:01Z", ImageState::Available),
                image("ami-own2", "a", &new, "2026-11-26T12:00:02Z", ImageState::Available),
                in_account(image("ami-b1", "a", &old, "2026-11-26T12:00:01Z", ImageState::Available), "222233334444"),
                in_account(image("ami-b2", "a", &new, "2026-11-26T12:00:02Z", ImageState::Available), "222233334444"),
                in_account(image("ami-c2", "a", &new, "2026-11-26T12:00:02Z", ImageState::Available), "555566667777"),
            ],
            unreachable: vec![Unreachable {
                place: Place { account: Account::Id("888899990000".into()), region: Region::new("us-west-2") },
                role_arn: "arn:aws:iam::888899990000:role/image-distribution".into(),
                error: "AccessDenied".into(),
            }],
        };
        let runs = RunsInProgress(BTreeMap::from([(old, false), (new, false)]));
        let plan = GcPlan::new(&survey, &runs, &BTreeSet::new(), &keep(Some(1)));
        // Each account's newest copy is kept, whatever the other accounts hold; the own account's likewise.
        assert_eq!(deregistered(&plan), ["ami-own1", "ami-b1"]);
        assert_eq!(plan.deregister[1].place.to_string(), "222233334444/us-west-2");
        let outcome = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
            let text = "[fleet]\nname = \"gc\"\n\n[defaults]\ninstance_type = \"t3.micro\"\nssh_username = \"u\"\n\n\
                        [[flavor]]\nname = \"a\"\nsource_ami = { id = \"ami-1\" }\n\n[regions]\nus-west-2 = []\n";
            let fleet = crate::config::parse(std::path::Path::new("fleet.toml"), text).expect("the test fleet parses");
            let sim: Arc<dyn Cloud> = Arc::new(crate::cloud::sim::SimCloud::new(&fleet));
            execute(&plan, sim, true).await
        });
        assert_eq!(outcome.failures, 1, "{:?}", outcome.lines);
        assert!(outcome.lines[0].contains("888899990000") && outcome.lines[0].contains("role/image-distribution"));
    }
}
