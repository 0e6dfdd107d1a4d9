//! `--changed-only` (`[matrix] rebuild = "changed"`): per build, reuse the newest available image of the fleet
//! whose fingerprint ([`crate::steps::fingerprint`]) is the build's own, instead of building; its copies are made
//! only into target regions that lack a copy with that fingerprint. Otherwise it is rebuilt, and the decision
//! says why (the source image moved, a provisioner changed, …). `fleetbake plan --changed-only` prints the
//! decisions; a run applies them, after re-applying the fleet's image settings (IMDSv2, deprecation,
//! sharing: idempotent) to each image it reuses: one that cannot be finished is rebuilt instead.

use std::collections::BTreeMap;
use std::fmt;

use crate::cloud::{Cloud, ImageQuery, ImageState, OwnedImage, RegionCloud};
use crate::config::{Flavor, Fleet, Region, Tags};
use crate::outcome::{Artifact, ImageSettings};
use crate::plan::{JobId, Plan};
use crate::state::resume::Prior;
use crate::steps::context::{FLAVOR_TAG, FLEET_TAG, RUN_ID_TAG, SOURCE_IMAGE_TAG, TEST_TAG};
use crate::steps::fingerprint::{Fingerprint, FINGERPRINT_TAG, PARTS_TAG};
use crate::steps::finish::{self, Finishing};
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
}

impl Changes {
    pub fn reused(&self) -> usize {
        self.decisions.iter().filter(|decision| decision.reuse.is_some()).count()
    }
}

/// Decides every build of `plan`. With `apply` (a run, not `plan`), each image to reuse gets the fleet's image
/// settings again first; without, nothing is changed in the account.
pub async fn decide(fleet: &Fleet, plan: &Plan, cloud: &dyn Cloud, clock: &RunClock, apply: bool) -> Changes {
    let mut changes = Changes::default();
    for build in &plan.builds {
        let flavor = fleet.flavor(&build.flavor).expect("planned from the fleet");
        let region_cloud = cloud.region(&build.region);
        let (reuse, why) = match fingerprint_of(fleet, flavor, &build.region, &*region_cloud).await {
            Err(why) => (None, vec![why]),
            Ok(fingerprint) => {
                let images = fleet_images(fleet, flavor, &*region_cloud).await;
                match newest(&images, Some(&fingerprint.digest)) {
                    Some(image) => {
                        match reusable(fleet, flavor, &build.region, &*region_cloud, image, clock, apply).await {
                            Ok(artifact) => {
                                let run = artifact.reused_from.clone().unwrap_or_default();
                                let why = vec![format!("nothing changed since {} (run {run})", artifact.image_id)];
                                (Some(artifact), why)
                            }
                            Err(why) => (None, vec![why]),
                        }
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
                let target = &plan.copies[copy].target_region;
                let target_cloud = cloud.region(target);
                let images = fleet_images(fleet, flavor, &*target_cloud).await;
                let Some(image) = newest(&images, digest.as_deref()) else { continue };
                if let Ok(copied) = reusable(fleet, flavor, target, &*target_cloud, image, clock, apply).await {
                    let copied = Artifact { build_region: build.region.clone(), ..copied };
                    changes.priors.insert(JobId::Copy(copy), Prior::Available(copied));
                }
            }
        }
        changes.decisions.push(Decision { build: build.index, reuse, why });
    }
    changes
}

async fn fingerprint_of(
    fleet: &Fleet,
    flavor: &Flavor,
    region: &Region,
    cloud: &dyn RegionCloud,
) -> Result<Fingerprint, String> {
    let source = source::find(cloud, &flavor.source_ami, region)
        .await
        .map_err(|error| format!("the source image is not known: {error}"))?;
    Fingerprint::of(fleet, flavor, region, &source.id)
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

/// The artifact of an image to reuse; with `apply`, after the fleet's image settings are applied to it again.
async fn reusable(
    fleet: &Fleet,
    flavor: &Flavor,
    region: &Region,
    cloud: &dyn RegionCloud,
    image: &OwnedImage,
    clock: &RunClock,
    apply: bool,
) -> Result<Artifact, String> {
    let settings = if apply {
        let finishing = Finishing {
            cloud,
            fleet,
            flavor,
            region,
            image: &image.id,
            snapshots: &image.snapshot_ids,
            now: clock.now(),
        };
        let (settings, failures) = finish::finish(finishing).await;
        if let Some(failure) = failures.first() {
            return Err(format!(
                "{} could not be given the fleet's image settings again ({}: {}); rebuilding",
                image.id, failure.stage, failure.error
            ));
        }
        settings
    } else {
        ImageSettings::default()
    };
    let tag = |key: &str| image.tags.get(key).cloned();
    Ok(Artifact {
        image_id: image.id.clone(),
        name: image.name.clone(),
        build_region: region.clone(),
        source_image_id: tag(SOURCE_IMAGE_TAG).map(crate::cloud::ImageId::new).unwrap_or_else(|| image.id.clone()),
        snapshot_ids: image.snapshot_ids.clone(),
        created_at: image.creation_date.clone(),
        fingerprint: tag(FINGERPRINT_TAG),
        reused_from: Some(tag(RUN_ID_TAG).unwrap_or_else(|| "an earlier run".into())),
        published: Vec::new(),
        settings: Box::new(settings),
    })
}

/// `plan --changed-only`: the plan, each build marked `rebuild` or `reuse`, with why.
pub struct ChangedPlan<'a> {
    pub plan: &'a Plan,
    pub changes: &'a Changes,
}

impl fmt::Display for ChangedPlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Changes { decisions, priors } = self.changes;
        let rebuilt = decisions.len() - self.changes.reused();
        writeln!(f, "fleet `{}`: {rebuilt} to rebuild, {} to reuse", self.plan.fleet, self.changes.reused())?;
        for decision in decisions {
            let build = &self.plan.builds[decision.build];
            let verdict = if decision.reuse.is_some() { "reuse  " } else { "rebuild" };
            writeln!(f, "{verdict} {} in {}: {}", build.flavor, build.region, decision.why.join("; "))?;
            for &copy in &build.copies {
                let target = &self.plan.copies[copy].target_region;
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
