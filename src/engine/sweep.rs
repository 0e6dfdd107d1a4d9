//! The end-of-run sweep: once every job has ended, whatever temporary resource of this run is still tagged in
//! the account (a cleanup step that failed, a call whose answer was lost) is looked for and removed, in every
//! build region at once, with every grant to another account the journal still holds (an interrupted or
//! skipped distribution copy's). Each removal is told to the reporters; each problem becomes a cleanup failure.
//!
//! Layer: `engine`. The loop ([`crate::engine::scheduler`]) runs it and decides what an interrupt does to it.

use std::sync::Arc;

use crate::cloud::watch::Waits;
use crate::cloud::Cloud;
use crate::config::{FlavorName, Region};
use crate::outcome::{Failure, JobLabel, Stage};
use crate::plan::Plan;
use crate::report::events::{EventSender, RunEvent};
use crate::state::journal::Journal;
use crate::state::leftovers;

/// What the sweep reaches: the run's cloud, its waits and the journal that says what it removed.
pub struct Sweeper {
    pub cloud: Arc<dyn Cloud>,
    pub waits: Arc<Waits>,
    pub journal: Arc<Journal>,
    pub events: EventSender,
}

impl Sweeper {
    /// Sweeps every build region of `plan`; returns how many problems it reported as failures.
    pub async fn sweep(&self, plan: &Plan) -> usize {
        let mut regions: Vec<&Region> = plan.builds.iter().map(|build| &build.region).collect();
        regions.sort();
        regions.dedup();
        let tags = leftovers::temporary_tags(&plan.fleet, Some(&plan.run_id));
        let outstanding = self.journal.outstanding();
        let sweeps = regions.into_iter().map(|region| {
            let cloud = self.cloud.region(region);
            let waits = self.waits.region(region);
            let tags = tags.clone();
            let grants = leftovers::journaled_grants(&outstanding, region, &plan.run_id);
            async move {
                let found = leftovers::find(&*cloud, &tags).await.map_err(|error| error.to_string())?;
                // A failed build's resources this run kept (`--keep-failed`) are left, whatever their time: they
                // are there to be looked at, and `gc` removes them once it is past.
                let (mut found, _kept) = leftovers::set_aside_kept(found, chrono::DateTime::<chrono::Utc>::MIN_UTC);
                found.extend(grants);
                Ok::<_, String>(leftovers::remove(&*cloud, &waits, &found, &*self.journal).await)
            }
        });
        let swept = futures::future::join_all(sweeps).await;
        let label = JobLabel::new(FlavorName::new("*"), Region::new("*"));
        let mut problems = 0;
        for outcome in swept {
            let found_problems: Vec<String> = match outcome {
                Ok(removal) => {
                    for resource in removal.removed {
                        self.events.send(RunEvent::Swept { resource: resource.to_string() });
                    }
                    removal
                        .failed
                        .iter()
                        .map(|(resource, error)| format!("could not remove {resource}: {error}"))
                        .collect()
                }
                Err(error) => vec![format!("could not look for leftovers: {error}")],
            };
            for problem in found_problems {
                problems += 1;
                let failure = Failure::new(&label, Stage::Cleanup, format!("the end-of-run sweep {problem}"));
                self.events.send(RunEvent::JobFailed(failure));
            }
        }
        problems
    }
}
