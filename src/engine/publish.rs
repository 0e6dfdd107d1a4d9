//! Publishing at the end of a run (`[publish] when = "flavor_complete"`): once every job has ended, each
//! flavor is published, image by image, in each account where all its jobs made their image: the own
//! account's builds and copies, and each `[[distribution]]` account's copies (only if `[publish] accounts`
//! names the account), so one account whose role is refused holds back no other account's publication. Images an earlier run made (reused)
//! were published by that run. What is published is journaled and told to the reporters; what fails is handed
//! handed to the loop as a `publish` failure of that image's job, as it happens.
//!
//! Layer: `engine`. The loop ([`crate::engine::scheduler`]) runs it; the publishing itself is
//! [`crate::steps::publish`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::cloud::Cloud;
use crate::config::{Account, FlavorName, Fleet, PublishWhen};
use crate::outcome::{Artifact, Failure, JobLabel, Publication};
use crate::plan::{JobId, Plan};
use crate::report::events::{EventSender, RunEvent};
use crate::state::journal::{Journal, Record};
use crate::steps::publish::{publish, Publishing};

/// What publishing reaches: the fleet's settings, the cloud, and where publications are recorded.
pub struct Publisher {
    pub fleet: Arc<Fleet>,
    pub cloud: Arc<dyn Cloud>,
    pub journal: Arc<Journal>,
    pub events: EventSender,
}

/// What the loop knows of the run's images when every job has ended.
pub struct Images<'a> {
    pub artifacts: &'a BTreeMap<JobId, Artifact>,
    pub failed_jobs: &'a BTreeSet<JobId>,
    /// Resuming: what each job's image was already published to.
    pub published_before: &'a BTreeMap<JobId, Vec<Publication>>,
}

impl Publisher {
    /// Publishes every complete flavor of `plan` (nothing unless `when = "flavor_complete"`); each failure goes
    /// to `failed` with the job whose image it concerns, before the next image is published.
    pub async fn publish_complete_flavors(
        &self,
        plan: &Plan,
        images: Images<'_>,
        mut failed: impl FnMut(JobId, Failure),
    ) {
        let Some(settings) = self.fleet.publish.as_ref().filter(|s| s.when == PublishWhen::FlavorComplete) else {
            return;
        };
        // A flavor's images in each account: complete, and published, account by account.
        let mut flavors: BTreeMap<(&FlavorName, Account), Vec<JobId>> = BTreeMap::new();
        for job in plan.jobs() {
            flavors.entry((plan.placement(job).0, plan.place_of(job).account)).or_default().push(job);
        }
        for ((flavor, _), jobs) in flavors {
            let complete =
                jobs.iter().all(|job| images.artifacts.contains_key(job) && !images.failed_jobs.contains(job));
            if !complete {
                continue;
            }
            for job in jobs {
                let artifact = &images.artifacts[&job];
                if artifact.reused_from.is_some() {
                    continue;
                }
                let label = JobLabel { flavor: flavor.clone(), place: plan.place_of(job) };
                // Another account's copy: in that account, if `[publish] accounts` says so.
                if !settings.accounts.covers(&label.place.account) {
                    continue;
                }
                let cloud = self.cloud.place(&label.place);
                let already = images.published_before.get(&job).cloned().unwrap_or_default();
                let publishing = Publishing {
                    cloud: &*cloud,
                    publish: settings,
                    fleet: &self.fleet.name,
                    flavor,
                    run_id: &plan.run_id,
                    image: &artifact.image_id,
                    already: &already,
                };
                let (published, failures) = publish(publishing).await;
                for publication in published {
                    self.journal.record(Record::Published { job: plan.key(job), publication: publication.clone() });
                    self.events.send(RunEvent::Published { job: label.clone(), publication });
                }
                for error in failures {
                    failed(job, error.failure(&label));
                }
            }
        }
    }
}
