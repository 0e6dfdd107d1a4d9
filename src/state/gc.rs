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
use crate::cloud::{
    Cloud, CloudError, ImageId, ImageQuery, ImageState, ImageUser, OwnedImage, SnapshotId, TemplateImage,
};
use crate::config::{Account, Fleet, Place, Publish, Region, Retention};
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
    /// What refers to the images, per place that has images (read only when `[retention]` may deregister).
    pub in_use: BTreeMap<Place, InUse>,
    /// Places where a read of what is in use failed: none of their images is deregistered.
    pub in_use_unknown: Vec<UseUnknown>,
}

/// What launches, or names, an image in one place: an image any of these refers to is never deregistered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InUse {
    /// Every launch template's default and latest version that names an image.
    pub templates: Vec<TemplateImage>,
    /// The current version of each SSM parameter `[publish] ssm_parameter` writes, here.
    pub parameters: Vec<PublishedParameter>,
    /// The instances not terminated launched from one of the place's images.
    pub instances: Vec<ImageUser>,
}

/// The current version of a parameter fleetbake publishes, and the image it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedParameter {
    pub name: String,
    pub version: u64,
    pub image: ImageId,
}

/// Which read of what is in use failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UseRead {
    LaunchTemplates,
    Parameter(String),
    Instances,
}

impl std::fmt::Display for UseRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UseRead::LaunchTemplates => {
                f.write_str("reading the launch templates (DescribeLaunchTemplates, DescribeLaunchTemplateVersions)")
            }
            UseRead::Parameter(name) => write!(f, "reading the SSM parameter `{name}` (GetParameter)"),
            UseRead::Instances => f.write_str("reading the instances launched from the images (DescribeInstances)"),
        }
    }
}

/// A place where gc could not tell which images are in use: it deregisters none there (fail safe), and the
/// run counts it as a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UseUnknown {
    pub place: Place,
    pub read: UseRead,
    pub error: String,
}

impl std::fmt::Display for UseUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "could not tell which images are in use in {}: {} failed: {}; no image there is deregistered",
            self.place, self.read, self.error
        )
    }
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
    if fleet.retention.keep.is_some() || fleet.retention.keep_days.is_some() {
        survey_in_use(fleet, cloud, &mut survey).await;
    }
    Ok(survey)
}

/// In every place that has images of the fleet: the launch templates' default and latest versions, the
/// current versions of the parameters `[publish]` writes there, the instances launched from the images. A
/// read that fails is recorded ([`Survey::in_use_unknown`]), never taken for "not in use".
async fn survey_in_use(fleet: &Fleet, cloud: &dyn Cloud, survey: &mut Survey) {
    let mut places: BTreeMap<Place, Vec<ImageId>> = BTreeMap::new();
    for (place, image) in &survey.images {
        places.entry(place.clone()).or_default().push(image.id.clone());
    }
    let parameter_names: Vec<String> = match fleet.publish.as_ref() {
        Some(publish) => match &publish.ssm_parameter {
            Some(template) => {
                fleet.flavors.iter().map(|flavor| Publish::render(template, &fleet.name, &flavor.name)).collect()
            }
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    for (place, images) in places {
        let region_cloud = cloud.place(&place);
        let mut in_use = InUse::default();
        let unknown =
            |read: UseRead, error: CloudError| UseUnknown { place: place.clone(), read, error: error.to_string() };
        match region_cloud.launch_template_images().await {
            Ok(templates) => in_use.templates = templates,
            Err(error) => {
                survey.in_use_unknown.push(unknown(UseRead::LaunchTemplates, error));
                continue;
            }
        }
        // Parameters are published in another account only if `[publish] accounts` names it.
        let published_here = fleet.publish.as_ref().is_some_and(|publish| publish.accounts.covers(&place.account));
        let mut failed = None;
        for name in parameter_names.iter().filter(|_| published_here) {
            match region_cloud.parameter(name).await {
                Ok(Some(current)) => in_use.parameters.push(PublishedParameter {
                    name: name.clone(),
                    version: current.version,
                    image: ImageId::new(&current.value),
                }),
                Ok(None) => {}
                Err(error) => {
                    failed = Some(unknown(UseRead::Parameter(name.clone()), error));
                    break;
                }
            }
        }
        if let Some(failed) = failed {
            survey.in_use_unknown.push(failed);
            continue;
        }
        match region_cloud.instances_of_images(&images).await {
            Ok(instances) => in_use.instances = instances,
            Err(error) => {
                survey.in_use_unknown.push(unknown(UseRead::Instances, error));
                continue;
            }
        }
        survey.in_use.insert(place, in_use);
    }
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

    /// Every run seen in the survey ended (the simulated account's: see [`GcAccount::Simulated`]).
    pub fn all_ended(survey: &Survey) -> Self {
        let tagged = survey.images.iter().filter_map(|(_, image)| image.tags.get(RUN_ID_TAG));
        let run_ids = survey
            .leftovers
            .iter()
            .filter_map(|leftover| leftover.run_id.clone())
            .chain(tagged.filter_map(|id| RunId::parse(id)));
        RunsInProgress(run_ids.map(|run_id| (run_id, false)).collect())
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
    pub why: Removed,
}

/// Why gc keeps an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kept {
    /// The current manifest names it.
    InManifest,
    /// Its run may be in progress.
    RunInProgress,
    /// Not yet available.
    Pending,
    /// A launch template's default or latest version launches it.
    InLaunchTemplate(TemplateImage),
    /// The current version of a parameter `[publish]` writes names it.
    InParameter(PublishedParameter),
    /// An instance not terminated was launched from it.
    UsedByInstance(ImageUser),
    /// One of the newest `keep` of its flavor and place.
    Newest(usize),
    /// Younger than `keep_days`.
    Younger(u32),
    /// Shared with other accounts, and `[retention] shared = "leave"`.
    Shared,
    /// Neither `keep` nor `keep_days` is set.
    NoRule,
    /// What is in use in its place could not be read.
    UseUnknown,
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kept::InManifest => f.write_str("kept: named in the manifest"),
            Kept::RunInProgress => f.write_str("kept: its run may be in progress"),
            Kept::Pending => f.write_str("kept: pending"),
            Kept::InLaunchTemplate(template) => write!(
                f,
                "kept: in launch template {} ({}) {} version {}",
                template.template_id, template.template_name, template.kind, template.version
            ),
            Kept::InParameter(parameter) => {
                write!(f, "kept: SSM parameter {} current version ({})", parameter.name, parameter.version)
            }
            Kept::UsedByInstance(user) => write!(f, "kept: instance {} ({}) uses it", user.instance, user.state),
            Kept::Newest(keep) => write!(f, "kept: newest {keep}"),
            Kept::Younger(days) => write!(f, "kept: younger than {days} days"),
            Kept::Shared => f.write_str("kept: shared (shared = \"leave\")"),
            Kept::NoRule => f.write_str("kept: no `[retention] keep` or `keep_days`"),
            Kept::UseUnknown => f.write_str("kept: could not tell whether it is in use"),
        }
    }
}

/// Why gc deregisters an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    /// Its creation failed (EC2's state reason).
    Failed(String),
    /// Beyond the newest `keep` (if set) and older than `keep_days` (if set).
    Retired { keep: Option<usize>, keep_days: Option<u32> },
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Removed::Failed(state) => write!(f, "removed: it failed ({state})"),
            Removed::Retired { keep: Some(keep), keep_days: Some(days) } => {
                write!(f, "removed: beyond the newest {keep} and older than {days} days")
            }
            Removed::Retired { keep: Some(keep), keep_days: None } => write!(f, "removed: beyond the newest {keep}"),
            Removed::Retired { keep: None, keep_days: Some(days) } => write!(f, "removed: older than {days} days"),
            Removed::Retired { keep: None, keep_days: None } => f.write_str("removed"),
        }
    }
}

/// An image of the fleet, and whether gc keeps it and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageDecision {
    pub place: Place,
    pub image: OwnedImage,
    pub verdict: Result<Kept, Removed>,
}

/// What gc removes, and what it leaves that a user might expect it to remove.
#[derive(Clone, Debug, Default)]
pub struct GcPlan {
    pub remove: Vec<Leftover>,
    pub deregister: Vec<Deregistration>,
    /// Every image of the fleet gc surveyed, kept or removed, and why.
    pub images: Vec<ImageDecision>,
    /// Distribution accounts the survey could not look into: named, and failures of gc.
    pub unreachable: Vec<Unreachable>,
    /// Places where what is in use could not be read: none of their images deregistered; failures of gc.
    pub in_use_unknown: Vec<UseUnknown>,
    /// Things left on purpose, with the reason: runs in progress, images without `[retention]`.
    pub notes: Vec<String>,
}

impl GcPlan {
    /// Pure: the survey, which runs are in progress, the images the manifest names, `[retention]`, and now
    /// (for `keep_days`).
    pub fn new(
        survey: &Survey,
        runs: &RunsInProgress,
        protected: &BTreeSet<ImageId>,
        retention: &Retention,
        now: DateTime<Utc>,
    ) -> Self {
        let mut plan = GcPlan {
            unreachable: survey.unreachable.clone(),
            in_use_unknown: survey.in_use_unknown.clone(),
            ..GcPlan::default()
        };
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
        let has_rule = retention.keep.is_some() || retention.keep_days.is_some();
        if !has_rule && !survey.images.is_empty() {
            plan.notes.push(format!(
                "left all {} images of the fleet: set `[retention] keep = N` to deregister all but the newest N per flavor and region (or `keep_days`, by age)",
                survey.images.len()
            ));
        }
        // Newest first per flavor, account and region.
        let mut groups: BTreeMap<(String, Place), Vec<&OwnedImage>> = BTreeMap::new();
        for (place, image) in &survey.images {
            let flavor = image.tags.get(FLAVOR_TAG).cloned().unwrap_or_default();
            groups.entry((flavor, place.clone())).or_default().push(image);
        }
        let unknown: BTreeSet<&Place> = survey.in_use_unknown.iter().map(|unknown| &unknown.place).collect();
        let mut shared_left = 0;
        for ((_, place), mut images) in groups {
            images.sort_by(|a, b| (&b.creation_date, &b.id).cmp(&(&a.creation_date, &a.id)));
            let in_use = survey.in_use.get(&place);
            let mut kept = 0;
            for image in images {
                let run_id = image.tags.get(RUN_ID_TAG).and_then(|id| RunId::parse(id));
                let verdict = decide(Candidate {
                    image,
                    in_progress: runs.in_progress(run_id.as_ref()),
                    protected: protected.contains(&image.id),
                    in_use,
                    use_unknown: unknown.contains(&place),
                    kept_before: kept,
                    retention,
                    now,
                });
                match &verdict {
                    Ok(Kept::Shared) => shared_left += 1,
                    // A run in progress may fail yet: its image does not take one of the `keep` places.
                    Ok(Kept::RunInProgress) => {}
                    Ok(_) if image.state == ImageState::Available => kept += 1,
                    Ok(_) => {}
                    Err(why) => plan.deregister.push(Deregistration {
                        place: place.clone(),
                        image: image.clone(),
                        why: why.clone(),
                    }),
                }
                if has_rule {
                    plan.images.push(ImageDecision { place: place.clone(), image: image.clone(), verdict });
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

/// One image as [`decide`] sees it.
struct Candidate<'a> {
    image: &'a OwnedImage,
    in_progress: bool,
    protected: bool,
    in_use: Option<&'a InUse>,
    use_unknown: bool,
    /// Available images of its flavor and place kept before it (all newer).
    kept_before: usize,
    retention: &'a Retention,
    now: DateTime<Utc>,
}

/// Kept or removed, and why, in this order: the manifest, a run in progress, pending, no rule, what is in use
/// (a failed image is removed: nothing can launch it), the newest `keep`, younger than `keep_days`, shared.
/// With both `keep` and `keep_days` an image goes only if it is beyond the newest `keep` and older than
/// `keep_days`; with `keep_days` alone, by age only.
fn decide(candidate: Candidate<'_>) -> Result<Kept, Removed> {
    let Candidate { image, in_progress, protected, in_use, use_unknown, kept_before, retention, now } = candidate;
    if protected {
        return Ok(Kept::InManifest);
    }
    if in_progress {
        return Ok(Kept::RunInProgress);
    }
    if image.state == ImageState::Pending {
        return Ok(Kept::Pending);
    }
    if retention.keep.is_none() && retention.keep_days.is_none() {
        return Ok(Kept::NoRule);
    }
    if let ImageState::Failed(state) = &image.state {
        return Err(Removed::Failed(state.clone()));
    }
    if use_unknown {
        return Ok(Kept::UseUnknown);
    }
    if let Some(reason) = in_use.and_then(|in_use| in_use_reason(in_use, &image.id)) {
        return Ok(reason);
    }
    if let Some(keep) = retention.keep {
        if kept_before < keep {
            return Ok(Kept::Newest(keep));
        }
    }
    if let Some(days) = retention.keep_days {
        // A creation date fleetbake cannot read is taken as young: kept.
        let created = image.creation_date.parse::<DateTime<Utc>>().ok();
        if created.is_none_or(|created| now.signed_duration_since(created) < chrono::Duration::days(days.into())) {
            return Ok(Kept::Younger(days));
        }
    }
    let shared = image.tags.get(SHARED_TAG).is_some_and(|value| value == "true");
    if shared && !retention.deregister_shared {
        return Ok(Kept::Shared);
    }
    Err(Removed::Retired { keep: retention.keep, keep_days: retention.keep_days })
}

/// The first thing in use that refers to the image: a launch template, a parameter, an instance.
fn in_use_reason(in_use: &InUse, image: &ImageId) -> Option<Kept> {
    let template = in_use.templates.iter().find(|template| &template.image == image);
    let parameter = in_use.parameters.iter().find(|parameter| &parameter.image == image);
    let instance = in_use.instances.iter().find(|user| &user.image == image);
    template
        .map(|template| Kept::InLaunchTemplate(template.clone()))
        .or_else(|| parameter.map(|parameter| Kept::InParameter(parameter.clone())))
        .or_else(|| instance.map(|user| Kept::UsedByInstance(user.clone())))
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
    for unknown in &plan.in_use_unknown {
        outcome.failures += 1;
        outcome.lines.push(unknown.to_string());
    }
    for decision in &plan.images {
        if let Ok(kept) = &decision.verdict {
            outcome
                .lines
                .push(format!("{} `{}` in {}: {kept}", decision.image.id, decision.image.name, decision.place));
        }
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

/// Whose account gc works in, which says what time it is there and which runs may be in progress.
#[derive(Clone, Copy, Debug)]
pub enum GcAccount {
    /// A real one: the wall time, and the journals (a run without one here is in progress for a while).
    Real,
    /// The simulated account of `[sim] state`, at its own clock (`now`): every run in it has ended, since a
    /// simulated run lives in its process and keeps the account when it ends.
    Simulated { now: DateTime<Utc> },
}

/// The whole command: survey, plan, execute.
pub async fn gc(fleet: &Fleet, cloud: Arc<dyn Cloud>, dry_run: bool) -> Result<(GcPlan, GcOutcome), GcError> {
    gc_in(fleet, cloud, dry_run, GcAccount::Real).await
}

/// [`gc`] in `account`.
pub async fn gc_in(
    fleet: &Fleet,
    cloud: Arc<dyn Cloud>,
    dry_run: bool,
    account: GcAccount,
) -> Result<(GcPlan, GcOutcome), GcError> {
    let now = match account {
        GcAccount::Real => Utc::now(),
        GcAccount::Simulated { now } => now,
    };
    // Removing images takes the fleet file's run lock, refused at once if a run holds it: a run in progress
    // is making images gc's retention would count, and none may start while gc deregisters.
    let may_deregister = fleet.retention.keep.is_some() || fleet.retention.keep_days.is_some();
    // A simulated account's gc touches only that account and its state file (whose lock its caller holds):
    // never this machine's journals, saved logs, kept login keys or the fleet's run lock, which are real runs'.
    let simulated = matches!(account, GcAccount::Simulated { .. });
    let _lock = match (may_deregister, dry_run, simulated) {
        (true, false, false) => {
            let lock = RunLock::acquire(&JournalDir::of(fleet))?;
            lock.name_holder("gc");
            Some(lock)
        }
        _ => None,
    };
    let protected = protected_images(fleet)?;
    let mut survey = survey(fleet, &*cloud).await?;
    if !simulated {
        survey.leftovers.extend(journaled_sessions(&JournalDir::of(fleet)));
    }
    // A failed build's resources kept (`--keep-failed`) are left until their `fleetbake:keep-until`.
    let (due, kept) = leftovers::set_aside_kept(std::mem::take(&mut survey.leftovers), now);
    survey.leftovers = due;
    let runs = match account {
        GcAccount::Real => RunsInProgress::ask(&JournalDir::of(fleet), &survey, now)?,
        GcAccount::Simulated { .. } => RunsInProgress::all_ended(&survey),
    };
    let mut plan = GcPlan::new(&survey, &runs, &protected, &fleet.retention, now);
    plan.notes.extend(kept.iter().map(kept_note));
    let mut outcome = execute(&plan, cloud, dry_run).await;
    if simulated {
        return Ok((plan, outcome));
    }
    // The runs' saved logs on this machine, past `[retention] logs` (`state::logs`).
    let logs = crate::state::logs::gc_logs(&JournalDir::of(fleet), fleet.retention.logs, now, dry_run);
    outcome.lines.extend(logs.lines);
    outcome.failures += logs.failures;
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

    fn now() -> DateTime<Utc> {
        "2026-12-07T12:00:00Z".parse().unwrap()
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
            ..Survey::default()
        };
        let runs = RunsInProgress(BTreeMap::from([(old, false), (mid, false), (new, false), (busy.clone(), true)]));
        let protected = BTreeSet::from([ImageId::new("ami-a1")]);

        let plan = GcPlan::new(&survey, &runs, &protected, &keep(Some(1)), now());
        // a: a4 is a run in progress, a3 the newest, a1 in the manifest; b: b3 pending, b1 failed.
        assert_eq!(deregistered(&plan), ["ami-a2", "ami-b1"]);
        assert_eq!(plan.remove.iter().map(|leftover| leftover.resource.id.as_str()).collect::<Vec<_>>(), ["i-old"]);
        assert!(plan.notes.iter().any(|note| note.contains(&busy.to_string())), "{:?}", plan.notes);

        let keep_two = GcPlan::new(&survey, &runs, &protected, &keep(Some(2)), now());
        assert_eq!(deregistered(&keep_two), ["ami-b1"]);
        let no_retention = GcPlan::new(&survey, &runs, &protected, &keep(None), now());
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
            ..Survey::default()
        };
        let runs = RunsInProgress(BTreeMap::from([(old, false), (mid, false), (new, false)]));
        let protected = BTreeSet::new();

        let leave = GcPlan::new(&survey, &runs, &protected, &keep(Some(1)), now());
        // a1 is shared: left, and said so; a failed image is shared with no one that can use it.
        assert_eq!(deregistered(&leave), ["ami-a2", "ami-b1"]);
        assert!(leave.notes.iter().any(|note| note.contains("left 1 shared images")), "{:?}", leave.notes);

        let deregister = Retention { keep: Some(1), deregister_shared: true, ..Retention::default() };
        let all = GcPlan::new(&survey, &runs, &protected, &deregister, now());
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
            ..Survey::default()
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
            ..Survey::default()
        };
        let runs = RunsInProgress(BTreeMap::from([(old, false), (new, false)]));
        let plan = GcPlan::new(&survey, &runs, &BTreeSet::new(), &keep(Some(1)), now());
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

    fn verdicts(plan: &GcPlan) -> Vec<(String, String)> {
        plan.images
            .iter()
            .map(|decision| {
                let verdict = match &decision.verdict {
                    Ok(kept) => kept.to_string(),
                    Err(removed) => removed.to_string(),
                };
                (decision.image.id.to_string(), verdict)
            })
            .collect()
    }

    /// Five nights of flavor `a`, one a day (ami-d1 the oldest, made 2026-12-01; `now` is 2026-12-07T12:00).
    fn nights() -> Survey {
        let runs: Vec<RunId> = (1..=5).map(run).collect();
        let images = (1..=5)
            .map(|day| {
                image(
                    &format!("ami-d{day}"),
                    "a",
                    &runs[day - 1],
                    &format!("2026-12-0{day}T12:00:00Z"),
                    ImageState::Available,
                )
            })
            .collect();
        Survey { images, ..Survey::default() }
    }

    fn finished() -> RunsInProgress {
        RunsInProgress((1..=5).map(|second| (run(second), false)).collect())
    }

    #[test]
    fn keep_days_keeps_what_is_young_whatever_keep_says_and_alone_retires_by_age() {
        let survey = nights();
        let both = Retention { keep: Some(1), keep_days: Some(4), ..Retention::default() };
        let plan = GcPlan::new(&survey, &finished(), &BTreeSet::new(), &both, now());
        // d5 the newest; d4 (3 days old) younger than 4 days; d3 (4 days old exactly) no longer.
        assert_eq!(deregistered(&plan), ["ami-d3", "ami-d2", "ami-d1"]);
        assert_eq!(
            verdicts(&plan)[..3],
            [
                ("ami-d5".to_string(), "kept: newest 1".to_string()),
                ("ami-d4".to_string(), "kept: younger than 4 days".to_string()),
                ("ami-d3".to_string(), "removed: beyond the newest 1 and older than 4 days".to_string()),
            ]
        );

        // keep_days alone: by age only, however few images there are.
        let days_only = Retention { keep_days: Some(5), ..Retention::default() };
        let plan = GcPlan::new(&survey, &finished(), &BTreeSet::new(), &days_only, now());
        assert_eq!(deregistered(&plan), ["ami-d2", "ami-d1"]);
        assert_eq!(plan.deregister[0].why.to_string(), "removed: older than 5 days");

        // keep wider than keep_days: the count keeps them.
        let count_wins = Retention { keep: Some(4), keep_days: Some(1), ..Retention::default() };
        let plan = GcPlan::new(&survey, &finished(), &BTreeSet::new(), &count_wins, now());
        assert_eq!(deregistered(&plan), ["ami-d1"]);
    }

    #[test]
    fn an_image_in_a_template_a_parameter_or_an_instance_is_kept_with_its_reason() {
        let mut survey = nights();
        let place = Place::own(Region::new("us-west-2"));
        let in_use = InUse {
            templates: vec![TemplateImage {
                template_id: "lt-0abc".into(),
                template_name: "web".into(),
                kind: crate::cloud::TemplateVersionKind::Default,
                version: 4,
                image: ImageId::new("ami-d1"),
            }],
            parameters: vec![PublishedParameter { name: "/fleet/a".into(), version: 7, image: ImageId::new("ami-d2") }],
            instances: vec![ImageUser {
                instance: crate::cloud::InstanceId::new("i-0123"),
                state: "stopped".into(),
                image: ImageId::new("ami-d3"),
            }],
        };
        survey.in_use.insert(place.clone(), in_use);
        let plan = GcPlan::new(&survey, &finished(), &BTreeSet::from([ImageId::new("ami-d4")]), &keep(Some(1)), now());
        assert_eq!(deregistered(&plan), Vec::<&str>::new());
        assert_eq!(
            verdicts(&plan).into_iter().map(|(_, why)| why).collect::<Vec<_>>(),
            [
                "kept: newest 1",
                "kept: named in the manifest",
                "kept: instance i-0123 (stopped) uses it",
                "kept: SSM parameter /fleet/a current version (7)",
                "kept: in launch template lt-0abc (web) default version 4",
            ]
        );

        // The same images with nothing in use: all but the newest and the manifest's go.
        survey.in_use.insert(place, InUse::default());
        let plan = GcPlan::new(&survey, &finished(), &BTreeSet::from([ImageId::new("ami-d4")]), &keep(Some(1)), now());
        assert_eq!(deregistered(&plan), ["ami-d3", "ami-d2", "ami-d1"]);
    }

    #[test]
    fn a_place_whose_use_could_not_be_read_deregisters_nothing_and_fails() {
        let mut survey = nights();
        survey.in_use_unknown.push(UseUnknown {
            place: Place::own(Region::new("us-west-2")),
            read: UseRead::LaunchTemplates,
            error: "AccessDenied: not authorized to perform ec2:DescribeLaunchTemplates".into(),
        });
        let plan = GcPlan::new(&survey, &finished(), &BTreeSet::new(), &keep(Some(1)), now());
        assert!(plan.deregister.is_empty(), "{:?}", plan.deregister);
        assert!(verdicts(&plan).iter().all(|(_, why)| why == "kept: could not tell whether it is in use"));
        let text = "[fleet]\nname = \"gc\"\n\n[defaults]\ninstance_type = \"t3.micro\"\nssh_username = \"u\"\n\n\
                    [[flavor]]\nname = \"a\"\nsource_ami = { id = \"ami-1\" }\n\n[regions]\nus-west-2 = []\n";
        let fleet = crate::config::parse(std::path::Path::new("fleet.toml"), text).expect("the test fleet parses");
        let outcome = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
            let sim: Arc<dyn Cloud> = Arc::new(crate::cloud::sim::SimCloud::new(&fleet));
            execute(&plan, sim, true).await
        });
        assert_eq!(outcome.failures, 1, "{:?}", outcome.lines);
        assert!(
            outcome.lines[0].contains("DescribeLaunchTemplates")
                && outcome.lines[0].contains("no image there is deregistered")
        );
    }
}
