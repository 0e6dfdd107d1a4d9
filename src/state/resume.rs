//! `fleetbake matrix FLEET --resume`: finish the newest run that was interrupted or killed, building nothing
//! twice.
//!
//! [`prepare`] reads the journal and re-plans the run with its run id and start time (the same image names),
//! before any AWS call. [`reconcile`] then asks the account what each job's image is: AMI names are unique per
//! region, so looking them up by name finds what the journal recorded and what it did not get to (a process
//! killed between CopyImage's answer and the journal write). It removes the temporary resources earlier
//! attempts left (the journal's list and the run's tags together), and deregisters an image of the run that
//! failed, so its job can make it again under the same name. A copy into another account (`[[distribution]]`)
//! is looked up in that account's region, acting as its role: the account owns it, and its name is unique
//! there, not in the own account.

use std::collections::{BTreeMap, BTreeSet};

use crate::cloud::watch::Waits;
use crate::cloud::{Cloud, CloudError, ImageId, ImageQuery, ImageState, OwnedImage};
use crate::config::{FlavorName, Fleet, Place};
use crate::outcome::Artifact;
use crate::plan::{JobId, Plan};
use crate::report::events::{EventSender, RunEvent};
use crate::state::journal::{Journal, JournalDir, JournalError, Replay};
use crate::state::leftovers::{self, Leftover};
use crate::steps::adopt;
use crate::steps::build::PendingImage;
use crate::steps::context::SOURCE_IMAGE_TAG;
use crate::steps::finish;
use crate::steps::ledger::Ledger;

/// What an earlier attempt of the run (found by `--resume`) left for a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prior {
    /// The image is available: the job is done.
    Available(Artifact),
    /// CreateImage or CopyImage was called and the image is still pending: the job only waits for it.
    Pending(PendingImage),
}

/// What a resumed run starts from: per job, what earlier attempts left, and how many of its images they
/// discarded (a copy's next CopyImage then takes a new client token).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resumed {
    pub priors: BTreeMap<JobId, Prior>,
    pub generations: BTreeMap<JobId, u32>,
    /// What each job's image was already published to (`[publish]`).
    pub published: BTreeMap<JobId, Vec<crate::outcome::Publication>>,
}

/// The run to resume and its plan, as of the fleet file now (which must plan the same jobs and names), with
/// the run's own `--only` / `--except` (which `fleet` takes on).
pub fn prepare(fleet: &mut Fleet) -> Result<(Replay, Plan), JournalError> {
    let replay = JournalDir::of(fleet).newest_unfinished(fleet)?;
    fleet.selection = replay.header.selection.clone();
    let plan = Plan::new(fleet, replay.header.run_id.clone(), replay.header.started_at);
    replay.check_plan(&plan).map_err(|error| unit_changed(fleet, error))?;
    Ok((replay, plan))
}

/// A changed plan of a fleet whose `[[distribution]]` names organizational units: a distribution copy gone or
/// new is most likely a unit whose accounts changed since the run started (its units are resolved again).
fn unit_changed(fleet: &Fleet, error: JournalError) -> JournalError {
    match error {
        JournalError::PlanChanged { path, run_id, detail }
            if !fleet.distributions.units().is_empty() && detail.contains('>') =>
        {
            let units = fleet.distributions.units().join(", ");
            JournalError::PlanChanged {
                path,
                run_id,
                detail: format!(
                    "{detail}: the organizational units of `[[distribution]]` ({units}) hold other accounts than when the run started; a resumed run copies into the accounts it planned, so start a new run"
                ),
            }
        }
        other => other,
    }
}

/// Where a job's image lands, and what it is called there.
struct Landing<'a> {
    job: JobId,
    place: Place,
    name: &'a str,
    flavor: &'a FlavorName,
}

fn landings(plan: &Plan) -> Vec<Landing<'_>> {
    let builds = plan.builds.iter().map(|build| Landing {
        job: JobId::Build(build.index),
        place: Place::own(build.region.clone()),
        name: &build.image_name,
        flavor: &build.flavor,
    });
    let copies = plan.copies.iter().map(|copy| Landing {
        job: JobId::Copy(copy.index),
        place: copy.target.clone(),
        name: &copy.image_name,
        flavor: &copy.flavor,
    });
    builds.chain(copies).collect()
}

/// What each job of the run already has, from the account and the journal; removes what earlier attempts
/// left behind. Reports what it found and removed as events.
pub async fn reconcile(
    fleet: &Fleet,
    plan: &Plan,
    replay: &Replay,
    cloud: &dyn Cloud,
    waits: &std::sync::Arc<Waits>,
    journal: &Journal,
    events: &EventSender,
) -> Result<Resumed, CloudError> {
    let landings = landings(plan);
    let mut places: BTreeSet<Place> = landings.iter().map(|landing| landing.place.clone()).collect();
    places.extend(plan.builds.iter().map(|build| Place::own(build.region.clone())));
    let run_tags = leftovers::temporary_tags(&plan.fleet, Some(&plan.run_id));

    let mut priors = BTreeMap::new();
    let mut generations: BTreeMap<JobId, u32> =
        plan.jobs().filter_map(|job| replay.discarded.get(&plan.key(job)).map(|&discarded| (job, discarded))).collect();
    for place in &places {
        let region_cloud = cloud.place(place);
        let here: Vec<&Landing> = landings.iter().filter(|landing| &landing.place == place).collect();

        // What earlier attempts left: found by the run's tags (in the own account: a copy into another account
        // makes no temporary resource there, and its role may not describe them), and what the journal says
        // it made.
        let mut found =
            if place.account.is_own() { leftovers::find(&*region_cloud, &run_tags).await? } else { Vec::new() };
        for resource in replay.outstanding.keys().filter(|resource| &resource.place == place) {
            if !found.iter().any(|leftover| &leftover.resource == resource) {
                let run_id = Some(plan.run_id.clone());
                found.push(Leftover { resource: resource.clone(), run_id, flavor: None, keep_until: None });
            }
        }
        // What an earlier attempt kept (`--keep-failed`) stays: the journal says so, and its tag until when.
        let now = chrono::Utc::now();
        found.retain(|leftover| !replay.kept.contains_key(&leftover.resource) && !leftover.kept_at(now));
        let removal = leftovers::remove(&*region_cloud, &waits.place(place), &found, journal).await;
        for resource in removal.removed {
            events.send(RunEvent::Swept { resource: resource.to_string() });
        }
        // Left for gc: the resumed build that needs the name fails at that step and says why.
        for (resource, error) in removal.failed {
            tracing::warn!("cannot remove {resource} left by an earlier attempt: {error}");
        }

        if here.is_empty() {
            continue;
        }
        let names: Vec<String> = here.iter().map(|landing| landing.name.to_string()).collect();
        let mut images = match region_cloud.find_owned_images(&ImageQuery::Named(names)).await {
            Ok(images) => images,
            // Another account that does not answer (its role not assumed): its copies start afresh and meet
            // the same refusal, failing only themselves, as in a fresh run.
            Err(error) if !place.account.is_own() => {
                tracing::warn!("cannot look up the run's copies in {place}: {error}");
                continue;
            }
            Err(error) => return Err(error),
        };
        // What the journal recorded and the name lookup missed (EC2's describes lag a new image for a while):
        // described by id, and taken as the image of its name.
        let missed: Vec<ImageId> = here
            .iter()
            .filter_map(|landing| replay.requested.get(&plan.key(landing.job)))
            .filter(|id| !images.iter().any(|image| &image.id == *id))
            .cloned()
            .collect();
        if !missed.is_empty() {
            for status in region_cloud.describe_images(&missed).await? {
                let Some(landing) =
                    here.iter().find(|landing| replay.requested.get(&plan.key(landing.job)) == Some(&status.id))
                else {
                    continue;
                };
                images.push(OwnedImage {
                    id: status.id,
                    name: landing.name.to_string(),
                    state: status.state,
                    creation_date: String::new(),
                    snapshot_ids: status.snapshot_ids,
                    tags: Default::default(),
                });
            }
        }
        for landing in here {
            let key = plan.key(landing.job);
            // Reused by `--changed-only` (an image of an earlier run, under its own name): as journaled.
            if let Some(artifact) = replay.available.get(&key).filter(|artifact| artifact.reused_from.is_some()) {
                priors.insert(landing.job, Prior::Available(artifact.clone()));
                continue;
            }
            let ours = |image: &&OwnedImage| image.name == landing.name && adopt::is_of_run(image, &plan.run_id);
            let Some(image) = images.iter().find(ours) else {
                continue;
            };
            match &image.state {
                ImageState::Available => {
                    let recorded = replay.available.get(&key).filter(|artifact| artifact.image_id == image.id);
                    let finished = recorded.filter(|artifact| {
                        let flavor = fleet.flavor(landing.flavor).expect("planned from the fleet");
                        !finish::unfinished(fleet, flavor, &artifact.settings)
                    });
                    match finished {
                        Some(artifact) => priors.insert(landing.job, Prior::Available(artifact.clone())),
                        // Available, but not (all) given what the fleet asks (IMDSv2, deprecation, sharing):
                        // the job waits for it (at once) and finishes it.
                        None => {
                            let source = source_of(image, landing, replay, plan);
                            priors.insert(landing.job, Prior::Pending(PendingImage { image: image.id.clone(), source }))
                        }
                    };
                }
                ImageState::Pending => {
                    let source = source_of(image, landing, replay, plan);
                    priors.insert(landing.job, Prior::Pending(PendingImage { image: image.id.clone(), source }));
                }
                ImageState::Failed(why) => {
                    tracing::warn!(
                        "{} `{}` in {place} failed ({why}); it is deregistered and made again",
                        image.id,
                        image.name
                    );
                    // Recorded first: the job's next request must not repeat this one's client token.
                    journal.image_discarded(&key, &image.id);
                    *generations.entry(landing.job).or_default() += 1;
                    region_cloud.deregister_image(&image.id).await?;
                    for snapshot in &image.snapshot_ids {
                        if let Err(error) =
                            crate::steps::cleanup::delete_released_snapshot(&*region_cloud, snapshot).await
                        {
                            tracing::warn!("cannot delete {snapshot} of failed image {}: {error}", image.id);
                        }
                    }
                }
            }
        }
    }
    let published =
        plan.jobs().filter_map(|job| replay.published.get(&plan.key(job)).map(|list| (job, list.clone()))).collect();
    Ok(Resumed { priors, generations, published })
}

/// The image a job was made from: the image's own tag, else what the journal recorded for its build.
fn source_of(image: &OwnedImage, landing: &Landing, replay: &Replay, plan: &Plan) -> ImageId {
    if let Some(source) = image.tags.get(SOURCE_IMAGE_TAG) {
        return ImageId::new(source);
    }
    let build = match landing.job {
        JobId::Copy(index) => JobId::Build(plan.copies[index].build),
        build => build,
    };
    replay
        .available
        .get(&plan.key(build))
        .map(|artifact| artifact.source_image_id.clone())
        .unwrap_or_else(|| ImageId::new("unknown"))
}
