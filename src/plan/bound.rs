//! The critical-path bound of a plan: when the run would end if every job started the instant its dependency
//! and a slot allowed, and every wait ended the instant the cloud was done. Builds are list-scheduled in plan
//! order over `max_parallel_builds`; each image's copies become ready when it is available and start, in that
//! order, within their destination's copy cap and CopyImage bucket. API latency and polling are left out: they
//! are what the scheduler is measured on. Pure: no clock, no cloud.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use crate::config::{Bucket, Fleet, Region};
use crate::plan::{JobId, Plan};

/// When a job started, made its image available and ended, measured from the start of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JobTiming {
    pub started: Duration,
    pub available: Option<Duration>,
    pub ended: Option<Duration>,
}

/// How long one build takes to its image, and to its slot being free again.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BuildDuration {
    pub to_image: Duration,
    pub to_cleaned_up: Duration,
}

/// Every job's duration, by plan index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobDurations {
    pub builds: Vec<BuildDuration>,
    /// CopyImage → available.
    pub copies: Vec<Duration>,
}

impl JobDurations {
    /// As the `[sim]` table says: nominal durations, no jitter.
    pub fn simulated(plan: &Plan, fleet: &Fleet) -> Self {
        let sim = &fleet.sim;
        let builds = plan
            .builds
            .iter()
            .map(|build| {
                let flavor = fleet.flavor(&build.flavor);
                let provision = match flavor {
                    Some(flavor) if flavor.provisioners.is_empty() => Duration::ZERO,
                    Some(flavor) => flavor.sim_provision.unwrap_or(sim.provision),
                    None => sim.provision,
                };
                let to_image = sim.boot + sim.ssh_ready + provision + sim.stop + sim.create_image;
                BuildDuration { to_image, to_cleaned_up: to_image + sim.terminate }
            })
            .collect();
        JobDurations { builds, copies: vec![sim.copy_image; plan.copies.len()] }
    }

    /// As measured in a run; a job that did not run counts as taking no time.
    pub fn measured(plan: &Plan, timings: &BTreeMap<JobId, JobTiming>) -> Self {
        let span = |job: JobId, to: fn(&JobTiming) -> Option<Duration>| {
            timings.get(&job).and_then(|timing| Some(to(timing)?.saturating_sub(timing.started))).unwrap_or_default()
        };
        let builds = (0..plan.builds.len())
            .map(|index| {
                let to_cleaned_up = span(JobId::Build(index), |timing| timing.ended);
                let to_image = timings
                    .get(&JobId::Build(index))
                    .and_then(|timing| timing.available.map(|at| at.saturating_sub(timing.started)))
                    .unwrap_or(to_cleaned_up);
                BuildDuration { to_image, to_cleaned_up }
            })
            .collect();
        let copies = (0..plan.copies.len()).map(|index| span(JobId::Copy(index), |timing| timing.ended)).collect();
        JobDurations { builds, copies }
    }
}

/// The caps the bound respects.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub builds: usize,
    pub copies_per_region: usize,
    /// CopyImage's request bucket, per destination region.
    pub copy_bucket: Bucket,
}

/// The ideal makespan of `plan`.
pub fn critical_path(plan: &Plan, caps: Caps, durations: &JobDurations) -> Duration {
    let mut end = Duration::ZERO;
    let mut build_slots: BinaryHeap<Reverse<Duration>> =
        (0..caps.builds.max(1)).map(|_| Reverse(Duration::ZERO)).collect();
    let mut image_at = Vec::with_capacity(plan.builds.len());
    for (build, duration) in plan.builds.iter().zip(&durations.builds) {
        let Reverse(start) = build_slots.pop().expect("at least one slot");
        image_at.push(start + duration.to_image);
        build_slots.push(Reverse(start + duration.to_cleaned_up));
        end = end.max(start + duration.to_cleaned_up);
        debug_assert_eq!(image_at.len(), build.index + 1);
    }
    let mut ready_by_region: BTreeMap<&Region, Vec<(Duration, usize)>> = BTreeMap::new();
    for (index, copy) in plan.copies.iter().enumerate() {
        ready_by_region.entry(&copy.target_region).or_default().push((image_at[copy.build], index));
    }
    for (_, mut ready) in ready_by_region {
        ready.sort();
        let mut slots: BinaryHeap<Reverse<Duration>> =
            (0..caps.copies_per_region.max(1)).map(|_| Reverse(Duration::ZERO)).collect();
        let mut bucket = IdealBucket::new(caps.copy_bucket);
        for (ready_at, index) in ready {
            let Reverse(free_at) = slots.pop().expect("at least one slot");
            let start = bucket.take_at(ready_at.max(free_at));
            let copy_end = start + durations.copies[index];
            slots.push(Reverse(copy_end));
            end = end.max(copy_end);
        }
    }
    end
}

/// A token bucket over ideal time, asked in time order.
struct IdealBucket {
    tokens: f64,
    at: Duration,
    bucket: Bucket,
}

impl IdealBucket {
    fn new(bucket: Bucket) -> Self {
        IdealBucket { tokens: f64::from(bucket.burst), at: Duration::ZERO, bucket }
    }

    /// When a token can be taken at or after `wanted`; takes it.
    fn take_at(&mut self, wanted: Duration) -> Duration {
        let wanted = wanted.max(self.at);
        let refilled = self.tokens + (wanted - self.at).as_secs_f64() * self.bucket.per_second;
        self.tokens = refilled.min(f64::from(self.bucket.burst));
        self.at = wanted;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.bucket.per_second);
            self.at += wait;
            self.tokens = 1.0;
        }
        self.tokens -= 1.0;
        self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_spaces_takes_beyond_its_burst() {
        let mut bucket = IdealBucket::new(Bucket { burst: 2, per_second: 1.0 });
        let takes: Vec<u64> = (0..4).map(|_| bucket.take_at(Duration::ZERO).as_secs()).collect();
        assert_eq!(takes, [0, 0, 1, 2]);
        assert_eq!(bucket.take_at(Duration::from_secs(10)).as_secs(), 10);
    }
}
