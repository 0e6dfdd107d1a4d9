//! Ready jobs waiting for a slot: one pool per concurrency cap (builds, or copies into one region), each with
//! its semaphore from [`RunLimits`] and its jobs in the order they became ready. The loop asks it what can
//! start now, and empties it when nothing more may start. And [`HeldSlots`]: slots a job keeps after it ended,
//! until the jobs of other pools that start from its image have ended.
//!
//! Layer: `engine`. Pure bookkeeping over the run's semaphores; [`crate::engine::scheduler`] owns one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Place;
use crate::engine::limits::RunLimits;
use crate::plan::{JobId, Plan};

/// When a build gives its slot back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildSlotRelease {
    /// Once it has cleaned up; its copies go on without it (fleetbake's way).
    WhenCleanedUp,
    /// Only when all of its copies have ended: how most tools do it. The benches compare the two.
    AfterItsCopies,
}

/// The concurrency cap a job needs a slot of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotPool {
    Builds,
    /// Copies into one place (today a region of the run's own account).
    CopiesInto(Place),
}

impl SlotPool {
    pub fn of(plan: &Plan, job: JobId) -> Self {
        match job {
            JobId::Build(_) => SlotPool::Builds,
            JobId::Copy(index) => SlotPool::CopiesInto(plan.copies[index].target.clone()),
        }
    }
}

/// Every pool that has had a ready job, with its slots and the jobs still waiting for one.
pub struct SlotPools {
    limits: Arc<RunLimits>,
    waiting: BTreeMap<SlotPool, Waiting>,
}

/// A pool's slots and its ready jobs.
struct Waiting {
    slots: Arc<Semaphore>,
    jobs: VecDeque<JobId>,
}

impl SlotPools {
    pub fn new(limits: Arc<RunLimits>) -> Self {
        SlotPools { limits, waiting: BTreeMap::new() }
    }

    /// `job` is ready: it waits behind the pool's other ready jobs.
    pub fn push(&mut self, pool: SlotPool, job: JobId) {
        let limits = &self.limits;
        let waiting = self.waiting.entry(pool).or_insert_with_key(|pool| {
            let slots = match pool {
                SlotPool::Builds => limits.builds(),
                SlotPool::CopiesInto(place) => limits.copies_into(place),
            };
            Waiting { slots, jobs: VecDeque::new() }
        });
        waiting.jobs.push_back(job);
    }

    /// Every waiting job a slot is free for, pool by pool, each pool's in the order they became ready; each
    /// holds its slot until the permit is dropped.
    pub fn take_what_fits(&mut self) -> Vec<(JobId, OwnedSemaphorePermit)> {
        let mut starting = Vec::new();
        for waiting in self.waiting.values_mut() {
            while !waiting.jobs.is_empty() {
                let Ok(slot) = Arc::clone(&waiting.slots).try_acquire_owned() else { break };
                starting.push((waiting.jobs.pop_front().expect("checked non-empty"), slot));
            }
        }
        starting
    }

    /// Removes every waiting job; returns them pool by pool.
    pub fn drain(&mut self) -> Vec<JobId> {
        std::mem::take(&mut self.waiting).into_values().flat_map(|waiting| waiting.jobs).collect()
    }

    /// No job waits for a slot.
    pub fn is_empty(&self) -> bool {
        self.waiting.values().all(|waiting| waiting.jobs.is_empty())
    }
}

/// Slots kept after their job ended (a build's, under `BuildSlotRelease::AfterItsCopies`) until every job of
/// another pool that starts from its image has ended or will never start. A job never holds a slot for a job
/// of its own pool: that job would need the very slot.
#[derive(Default)]
pub struct HeldSlots {
    held: HashMap<JobId, OwnedSemaphorePermit>,
    /// Per job, how many of the jobs it would hold its slot for have not ended (or been skipped).
    dependents_to_end: HashMap<JobId, usize>,
}

impl HeldSlots {
    pub fn new(plan: &Plan) -> Self {
        let mut held = HeldSlots::default();
        for job in plan.jobs() {
            if let Some(input) = Self::held_for(plan, job) {
                *held.dependents_to_end.entry(input).or_default() += 1;
            }
        }
        held
    }

    /// The job whose slot stays held for `job`: its input, when that is in another pool.
    fn held_for(plan: &Plan, job: JobId) -> Option<JobId> {
        plan.input(job).filter(|&input| SlotPool::of(plan, input) != SlotPool::of(plan, job))
    }

    /// `job` ended holding `slot`: kept while jobs it is held for have not ended, else given back.
    pub fn keep(&mut self, job: JobId, slot: OwnedSemaphorePermit) {
        if self.dependents_to_end.get(&job).is_some_and(|&left| left > 0) {
            self.held.insert(job, slot);
        }
    }

    /// `job` ended or will never start: the slot its input holds for it may be free now.
    pub fn ended(&mut self, plan: &Plan, job: JobId) {
        let Some(input) = Self::held_for(plan, job) else { return };
        let left = self.dependents_to_end.entry(input).or_default();
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.held.remove(&input);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::limiter::Pacing;
    use crate::cloud::retry::Policy;
    use crate::config::Limits;

    fn pools(builds: usize, copies_per_region: usize) -> SlotPools {
        let limits = Limits {
            max_parallel_builds: builds,
            max_parallel_copies_per_region: copies_per_region,
            ..Limits::default()
        };
        SlotPools::new(Arc::new(RunLimits::new(&limits, Policy::THROTTLED, Pacing::Fixed)))
    }

    fn into(region: &str) -> SlotPool {
        SlotPool::CopiesInto(Place::own(crate::config::Region::new(region)))
    }

    #[test]
    fn each_pool_starts_as_many_as_it_has_slots_in_the_order_they_were_ready() {
        let mut pools = pools(1, 2);
        for job in [JobId::Build(0), JobId::Build(1)] {
            pools.push(SlotPool::Builds, job);
        }
        for index in 0..3 {
            pools.push(into("us-east-1"), JobId::Copy(index));
        }
        pools.push(into("eu-west-1"), JobId::Copy(3));
        let starting = pools.take_what_fits();
        let jobs: Vec<JobId> = starting.iter().map(|(job, _)| *job).collect();
        assert_eq!(jobs, [JobId::Build(0), JobId::Copy(3), JobId::Copy(0), JobId::Copy(1)], "pool by pool");
        assert!(pools.take_what_fits().is_empty(), "every slot is held");
        assert!(!pools.is_empty());
        drop(starting);
        let jobs: Vec<JobId> = pools.take_what_fits().iter().map(|(job, _)| *job).collect();
        assert_eq!(jobs, [JobId::Build(1), JobId::Copy(2)], "freed slots go to the next in line");
        assert!(pools.is_empty());
    }

    #[test]
    fn a_held_slot_frees_when_the_last_job_of_another_pool_from_its_image_ends() {
        let text = "[fleet]\nname = \"held\"\n\n[defaults]\ninstance_type = \"t3.micro\"\nssh_username = \"u\"\n\n\
                    [[flavor]]\nname = \"a\"\nsource_ami = { id = \"ami-1\" }\n\n\
                    [regions]\nus-west-2 = [\"us-east-1\", \"eu-west-1\"]\n\n[limits]\nmax_parallel_builds = 1\n";
        let fleet = crate::config::parse(std::path::Path::new("fleet.toml"), text).expect("the test fleet parses");
        let started = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 12, 7, 2, 0, 0).unwrap();
        let plan = Plan::new(&fleet, crate::plan::RunId::new(started, 1), started);
        let mut pools = SlotPools::new(Arc::new(RunLimits::new(&fleet.limits, Policy::THROTTLED, Pacing::Fixed)));
        let mut held = HeldSlots::new(&plan);
        pools.push(SlotPool::Builds, JobId::Build(0));
        let (build, slot) = pools.take_what_fits().pop().expect("one build slot");
        held.keep(build, slot);
        held.ended(&plan, JobId::Copy(0));
        pools.push(SlotPool::Builds, JobId::Build(0));
        assert!(pools.take_what_fits().is_empty(), "one copy is still to end");
        held.ended(&plan, JobId::Copy(1));
        assert_eq!(pools.take_what_fits().len(), 1, "both copies ended: the slot is free");
    }

    #[test]
    fn drain_empties_every_pool() {
        let mut pools = pools(1, 1);
        pools.push(SlotPool::Builds, JobId::Build(0));
        pools.push(into("us-east-1"), JobId::Copy(0));
        assert_eq!(pools.drain(), [JobId::Build(0), JobId::Copy(0)]);
        assert!(pools.is_empty());
        assert!(pools.take_what_fits().is_empty());
    }
}
