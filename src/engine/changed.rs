//! `--changed-only` (`[matrix] rebuild = "changed"`): per build, reuse the newest available image of the fleet
//! whose fingerprint ([`crate::steps::fingerprint`]) is the build's own, instead of building; its copies are made
//! only into target regions that lack a copy with that fingerprint. Otherwise it is rebuilt, and the decision
//! says why (the source image moved, a provisioner changed, …). `fleetbake plan --changed-only` prints the
//! decisions; a run applies them, after re-applying the fleet's image settings (IMDSv2, deprecation, sharing
//! made exactly `[sharing]`) to each image it reuses. A setting that cannot be applied (a public share refused
//! by block public access) fails that image's job, as it would a fresh image's, and the image is still
//! reused: its contents did not change, so a rebuild would meet the same refusal, every night. The next
//! night finishes it again.
//!
//! A copy is reused only if it carries the build's fingerprint and was encrypted with its region's key as the
//! fleet names it now (`fleetbake:kms-key`, see [`crate::steps::fingerprint::copy_key_tag`]): a changed key
//! makes a new copy.
//!
//! A copy into another account (`[[distribution]]`) is looked up in that account's region, acting as its role:
//! reused when the account already owns a copy with the build's fingerprint, encrypted with the key
//! `[[distribution]] kms_keys` names for that region now; else made. A reused copy there is finished again
//! without `[sharing]` (which does not apply inside the accounts): IMDSv2 and deprecation only.

use std::collections::BTreeMap;
use std::fmt;

use crate::cloud::{Cloud, ImageId, ImageQuery, ImageState, OwnedImage, RegionCloud};
use crate::config::{Flavor, Fleet, Place, Region, SourceAmi, Tags};
use crate::outcome::{Artifact, Failure, ImageSettings, JobLabel, Parent, SourceParameter};
use crate::plan::{BuildJob, JobId, Plan};
use crate::state::resume::Prior;
use crate::steps::context::{FLAVOR_TAG, FLEET_TAG, PARENT_IMAGE_TAG, RUN_ID_TAG, SOURCE_IMAGE_TAG, TEST_TAG};
use crate::steps::distribute::DISTRIBUTED_FROM_TAG;
use crate::steps::fingerprint::{self, Fingerprint, COPY_KEY_TAG, FINGERPRINT_TAG, PARTS_TAG};
use crate::steps::finish::{self, Finished, Finishing, Made};
use crate::steps::source;
use crate::util::clock::RunClock;

/// What one build does under `--changed-only`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub build: usize,
    /// The image it reuses, or `None`: it is rebuilt.
    pub reuse: Option<Artifact>,
    /// Why it is rebuilt, or what it reuses.
    pub why: Vec<String>,
}

/// Every build's decision, and the jobs (builds and copies) that start with an image.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub decisions: Vec<Decision>,
    pub priors: BTreeMap<JobId, Prior>,
    /// What could not be applied again to a reused image: its job's failures.
    pub failures: BTreeMap<JobId, Vec<Failure>>,
    /// What to say of a reused image (a deprecation time kept within EC2's limit).
    pub notes: Vec<(JobLabel, String)>,
}

/// An image to reuse, and what re-applying the fleet's settings to it came to.
struct Reused {
    artifact: Artifact,
    failures: Vec<Failure>,
    notes: Vec<(JobLabel, String)>,
}

impl Changes {
    /// What re-applying the settings to a reused image failed at, and what it said.
    fn keep(&mut self, job: JobId, reused: &Reused) {
        if !reused.failures.is_empty() {
            self.failures.insert(job, reused.failures.clone());
        }
        self.notes.extend(reused.notes.iter().cloned());
    }

    pub fn reused(&self) -> usize {
        self.decisions.iter().filter(|decision| decision.reuse.is_some()).count()
    }
}

/// Decides every build of `plan`. With `apply` (a run, not `plan`), each image to reuse gets the fleet's image
/// settings again first; without, nothing is changed in the account.
pub async fn decide(fleet: &Fleet, plan: &Plan, cloud: &dyn Cloud, clock: &RunClock, apply: bool) -> Changes {
    let mut changes = Changes::default();
    for build in parents_first(plan) {
        let flavor = fleet.flavor(&build.flavor).expect("planned from the fleet");
        let region_cloud = cloud.region(&build.region);
        let source = source_of(fleet, plan, &changes, build, &*region_cloud).await;
        let fingerprint = source.and_then(|(source, parameter)| {
            Fingerprint::of_source(fleet, flavor, &build.region, &source, parameter.as_ref())
        });
        let (reuse, why) = match fingerprint {
            Err(why) => (None, vec![why]),
            Ok(fingerprint) => {
                let images = fleet_images(fleet, flavor, &*region_cloud).await;
                match newest(&images, Some(&fingerprint.digest)) {
                    Some(image) => {
                        let place = Place::own(build.region.clone());
                        let mut reused = reusable(fleet, flavor, &place, &*region_cloud, image, clock, apply).await;
                        // Same fingerprint, same SSM parameter version (if the source is read from one).
                        reused.artifact.settings.source_parameter = fingerprint.parameter.clone();
                        let run = reused.artifact.reused_from.clone().unwrap_or_default();
                        let why = vec![format!("nothing changed since {} (run {run})", reused.artifact.image_id)];
                        changes.keep(JobId::Build(build.index), &reused);
                        (Some(reused.artifact), why)
                    }
                    None => match newest(&images, None).and_then(|image| image.tags.get(PARTS_TAG)) {
                        Some(parts) => (None, fingerprint.why_not(flavor, parts)),
                        None => (None, vec![format!("no earlier image of `{}` in {}", flavor.name, build.region)]),
                    },
                }
            }
        };
        if let Some(artifact) = &reuse {
            changes.priors.insert(JobId::Build(build.index), Prior::Available(artifact.clone()));
            let digest = artifact.fingerprint.clone();
            for &copy in &build.copies {
                let place = &plan.copies[copy].target;
                let target_cloud = cloud.place(place);
                let mut images = fleet_images(fleet, flavor, &*target_cloud).await;
                // In another account, only the copies distribution made: never an image the account built itself
                // with a fleet of the same name.
                images.retain(|image| place.account.is_own() || image.tags.contains_key(DISTRIBUTED_FROM_TAG));
                let key = fingerprint::copy_key_tag_in(fleet, place);
                let same_key = |image: &&OwnedImage| image.tags.get(COPY_KEY_TAG) == key.as_ref();
                let Some(image) = newest(&images, digest.as_deref()).filter(same_key) else { continue };
                let mut reused = reusable(fleet, flavor, place, &*target_cloud, image, clock, apply).await;
                if !place.account.is_own() {
                    reused.artifact.settings.kms_key_id = key.clone();
                }
                reused.artifact.build_region = build.region.clone();
                reused.artifact.settings.source_parameter = artifact.settings.source_parameter.clone();
                changes.keep(JobId::Copy(copy), &reused);
                changes.priors.insert(JobId::Copy(copy), Prior::Available(reused.artifact));
            }
        }
        changes.decisions.push(Decision { build: build.index, reuse, why });
    }
    changes.decisions.sort_by_key(|decision| decision.build);
    changes
}

/// The plan's builds, each after the build whose image it starts from (`source_ami = { flavor = … }`, through
/// a copy or not), so a child is decided knowing whether its parent is reused.
fn parents_first(plan: &Plan) -> Vec<&BuildJob> {
    let depth = |build: &BuildJob| {
        let mut depth = 0;
        let mut job = plan.input(JobId::Build(build.index));
        while let Some(input) = job {
            depth += usize::from(matches!(input, JobId::Build(_)));
            job = plan.input(input);
        }
        depth
    };
    let mut builds: Vec<&BuildJob> = plan.builds.iter().collect();
    builds.sort_by_key(|build| depth(build));
    builds
}

/// The image a build would start from. A child's is its parent's image in its region: known if the parent's
/// job there reuses one (so the child's fingerprint, which names its source image, is the same as when it was
/// built from that image), else the parent is made anew and the child must be too.
async fn source_of(
    fleet: &Fleet,
    plan: &Plan,
    changes: &Changes,
    build: &BuildJob,
    cloud: &dyn RegionCloud,
) -> Result<(ImageId, Option<SourceParameter>), String> {
    let flavor = fleet.flavor(&build.flavor).expect("planned from the fleet");
    if let Some(input) = plan.input(JobId::Build(build.index)) {
        let (parent, region) = plan.placement(input);
        return match changes.priors.get(&input) {
            Some(Prior::Available(artifact)) => Ok((artifact.image_id.clone(), None)),
            _ => Err(format!("its parent `{parent}` gets a new image in {region}")),
        };
    }
    let found = match &flavor.source_ami {
        // As the build will choose.
        SourceAmi::Flavor(parent) => {
            let listed = manifest_parent(fleet, parent, &build.region);
            source::parent_not_built(cloud, &fleet.name, parent, &build.region, listed.as_ref())
                .await
                .map(|(image, _)| (image.id, None))
        }
        configured => source::resolve(cloud, configured, &build.region)
            .await
            .map(|resolved| (resolved.image.id, resolved.parameter)),
    };
    found.map_err(|error| format!("the source image is not known: {error}"))
}

/// `--only child`: the parent's image in `region` as the fleet's manifest lists it (none if the manifest is
/// missing or unreadable, or lists none there).
pub fn manifest_parent(fleet: &Fleet, parent: &crate::config::FlavorName, region: &Region) -> Option<ImageId> {
    let manifest = crate::state::manifest::Manifest::read(&fleet.manifest_path).ok()?;
    manifest.image(parent.as_str(), region.as_str()).cloned()
}

/// The fleet's images of `flavor` in a region (any state; empty if the lookup fails: then nothing is reused).
async fn fleet_images(fleet: &Fleet, flavor: &Flavor, cloud: &dyn RegionCloud) -> Vec<OwnedImage> {
    let tags =
        Tags::from([(FLEET_TAG.to_string(), fleet.name.clone()), (FLAVOR_TAG.to_string(), flavor.name.to_string())]);
    match cloud.find_owned_images(&ImageQuery::Tagged(tags)).await {
        Ok(images) => images,
        Err(error) => {
            tracing::warn!("cannot look for earlier images of `{}`: {error}; rebuilding", flavor.name);
            Vec::new()
        }
    }
}

/// The newest available image, with this fingerprint if one is given, not one whose tests failed.
fn newest<'a>(images: &'a [OwnedImage], fingerprint: Option<&str>) -> Option<&'a OwnedImage> {
    images
        .iter()
        .filter(|image| image.state == ImageState::Available)
        .filter(|image| image.tags.get(TEST_TAG).is_none_or(|result| result != "failed"))
        .filter(|image| {
            fingerprint.is_none_or(|digest| image.tags.get(FINGERPRINT_TAG).is_some_and(|tag| tag == digest))
        })
        .max_by(|a, b| (&a.creation_date, &a.id).cmp(&(&b.creation_date, &b.id)))
}

/// The artifact of an image to reuse; with `apply`, after the fleet's image settings are applied to it again
/// (what failed is its job's failure; the image is reused all the same).
async fn reusable(
    fleet: &Fleet,
    flavor: &Flavor,
    place: &Place,
    cloud: &dyn RegionCloud,
    image: &OwnedImage,
    clock: &RunClock,
    apply: bool,
) -> Reused {
    let region = &place.region;
    let label = JobLabel { flavor: flavor.name.clone(), place: place.clone() };
    let (settings, failures, notes) = if apply {
        // EC2's creation date (it always gives one; without, the run's start).
        let created = chrono::DateTime::parse_from_rfc3339(&image.creation_date)
            .map(|date| date.to_utc())
            .unwrap_or_else(|_| clock.started_at());
        let finishing = Finishing {
            cloud,
            fleet,
            flavor,
            region,
            image: &image.id,
            snapshots: &image.snapshot_ids,
            now: clock.now(),
            made: Made::Earlier {
                created,
                shared: image.tags.get(finish::SHARED_TAG).is_some_and(|value| value == "true"),
            },
        };
        // A copy another account owns: IMDSv2 and deprecation, never `[sharing]`.
        let Finished { settings, failures, notes } = if place.account.is_own() {
            finish::finish(finishing).await
        } else {
            finish::finish_in_account(finishing).await
        };
        let failures = failures.iter().map(|failure| Failure::from_cloud(&label, failure.stage, &failure.error));
        let notes = notes.into_iter().map(|note| (label.clone(), note));
        (settings, failures.collect(), notes.collect())
    } else {
        (ImageSettings::default(), Vec::new(), Vec::new())
    };
    let tag = |key: &str| image.tags.get(key).cloned();
    let artifact = Artifact {
        image_id: image.id.clone(),
        name: image.name.clone(),
        build_region: region.clone(),
        source_image_id: tag(SOURCE_IMAGE_TAG).map(crate::cloud::ImageId::new).unwrap_or_else(|| image.id.clone()),
        snapshot_ids: image.snapshot_ids.clone(),
        created_at: image.creation_date.clone(),
        fingerprint: tag(FINGERPRINT_TAG),
        reused_from: Some(tag(RUN_ID_TAG).unwrap_or_else(|| "an earlier run".into())),
        published: Vec::new(),
        parent: tag(PARENT_IMAGE_TAG).and_then(|parent| Parent::of(flavor, &crate::cloud::ImageId::new(parent))),
        settings: Box::new(settings),
    };
    Reused { artifact, failures, notes }
}

/// `plan --changed-only`: the plan, each build marked `rebuild` or `reuse`, with why.
pub struct ChangedPlan<'a> {
    pub plan: &'a Plan,
    pub changes: &'a Changes,
}

impl fmt::Display for ChangedPlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Changes { decisions, priors, .. } = self.changes;
        let rebuilt = decisions.len() - self.changes.reused();
        writeln!(f, "fleet `{}`: {rebuilt} to rebuild, {} to reuse", self.plan.fleet, self.changes.reused())?;
        for decision in decisions {
            let build = &self.plan.builds[decision.build];
            let verdict = if decision.reuse.is_some() { "reuse  " } else { "rebuild" };
            writeln!(f, "{verdict} {} in {}: {}", build.flavor, build.region, decision.why.join("; "))?;
            for &copy in &build.copies {
                let target = &self.plan.copies[copy].target;
                let copied = match priors.get(&JobId::Copy(copy)) {
                    Some(Prior::Available(artifact)) => format!("has {}", artifact.image_id),
                    _ => "to copy".to_string(),
                };
                writeln!(f, "  {target}: {copied}")?;
            }
        }
        Ok(())
    }
}
