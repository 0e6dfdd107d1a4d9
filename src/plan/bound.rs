//! The critical-path bound of a plan: when the run would end if every job started the instant its input image
//! and a slot allowed, and every wait ended the instant the cloud was done. A list schedule in topological
//! order over the plan's graph: a job is ready when the image it starts from is available (a build from its
//! configured source at once), and ready jobs take the earliest free slot of their pool in the order they
//! became ready, then in plan order: builds within `max_parallel_builds`, copies within their destination's
//! copy cap and CopyImage bucket. API latency and polling are left out: they are what the scheduler is
//! measured on. Pure: no clock, no cloud.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use crate::config::{Bucket, Fleet, Place};
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

/// Every job's duration, by plan index (a job without one takes no time).
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
                let built = sim.boot + sim.ssh_ready + provision + sim.stop + sim.create_image;
                // An image with tests is handed on only once they pass (`steps::build::test`): an instance
                // launched from it, reached, the tests run (`[sim] test` in all). The stack then unwinds the
                // test instance and the build instance one after the other, each waited to `terminated`.
                let tested = flavor.is_some_and(|flavor| !flavor.tests.is_empty());
                let (to_image, instances) = match tested {
                    true => (built + sim.boot + sim.ssh_ready + sim.test, 2),
                    false => (built, 1),
                };
                BuildDuration { to_image, to_cleaned_up: to_image + sim.terminate * instances }
            })
            .collect();
        JobDurations { builds, copies: vec![sim.copy_image; plan.copies.len()] }
    }

    /// How long `job` takes to its image, and to its slot being free again.
    fn of(&self, job: JobId) -> (Duration, Duration) {
        match job {
            JobId::Build(index) => {
                let build = self.builds.get(index).copied().unwrap_or_default();
                (build.to_image, build.to_cleaned_up)
            }
            JobId::Copy(index) => {
                let copy = self.copies.get(index).copied().unwrap_or_default();
                (copy, copy)
            }
        }
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

/// The ideal makespan of `plan`. Jobs are taken in the order they become ready (ties in plan order), so every
/// job's input is scheduled before it, and a pool serves its jobs in that order.
pub fn critical_path(plan: &Plan, caps: Caps, durations: &JobDurations) -> Duration {
    let jobs: Vec<JobId> = plan.jobs().collect();
    // Positions in plan order: the jobs waiting on each job's image, and the jobs ready at once.
    let mut dependents: BTreeMap<JobId, Vec<usize>> = BTreeMap::new();
    let mut ready: BinaryHeap<Reverse<(Duration, usize)>> = BinaryHeap::new();
    for (position, &job) in jobs.iter().enumerate() {
        match plan.input(job) {
            Some(input) => dependents.entry(input).or_default().push(position),
            None => ready.push(Reverse((Duration::ZERO, position))),
        }
    }
    let mut pools: BTreeMap<Pool<'_>, IdealPool> = BTreeMap::new();
    let mut end = Duration::ZERO;
    while let Some(Reverse((ready_at, position))) = ready.pop() {
        let job = jobs[position];
        let pool = pools.entry(Pool::of(plan, job)).or_insert_with_key(|pool| IdealPool::new(pool, caps));
        let started = pool.start(ready_at);
        let (to_image, to_end) = durations.of(job);
        pool.free_at(started + to_end);
        end = end.max(started + to_end);
        for &dependent in dependents.get(&job).into_iter().flatten() {
            ready.push(Reverse((started + to_image, dependent)));
        }
    }
    end
}

/// The cap a job needs a slot of, as the loop's pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pool<'a> {
    Builds,
    CopiesInto(&'a Place),
}

impl<'a> Pool<'a> {
    fn of(plan: &'a Plan, job: JobId) -> Self {
        match job {
            JobId::Build(_) => Pool::Builds,
            JobId::Copy(index) => Pool::CopiesInto(&plan.copies[index].target),
        }
    }
}

/// A pool's slots over ideal time, and the request bucket its jobs start with (copies only).
struct IdealPool {
    /// When each slot is free again.
    slots: BinaryHeap<Reverse<Duration>>,
    bucket: Option<IdealBucket>,
}

impl IdealPool {
    fn new(pool: &Pool<'_>, caps: Caps) -> Self {
        let (slots, bucket) = match pool {
            Pool::Builds => (caps.builds, None),
            Pool::CopiesInto(_) => (caps.copies_per_region, Some(IdealBucket::new(caps.copy_bucket))),
        };
        IdealPool { slots: (0..slots.max(1)).map(|_| Reverse(Duration::ZERO)).collect(), bucket }
    }

    /// Takes the earliest free slot (and a token) for a job ready at `ready_at`: when the job starts.
    fn start(&mut self, ready_at: Duration) -> Duration {
        let Reverse(free_at) = self.slots.pop().expect("at least one slot");
        let wanted = ready_at.max(free_at);
        match &mut self.bucket {
            Some(bucket) => bucket.take_at(wanted),
            None => wanted,
        }
    }

    /// The slot taken last is free again at `at`.
    fn free_at(&mut self, at: Duration) {
        self.slots.push(Reverse(at));
    }
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
    use crate::plan::RunId;
    use chrono::{TimeZone, Utc};

    /// `[sim]` durations of 1, 2, 4, 8, 16, 32 and 64 s, so every sum tells which parts it holds.
    fn fleet(flavors: &str, regions: &str) -> Fleet {
        let text = format!(
            "[fleet]\nname = \"bound\"\n\n[defaults]\ninstance_type = \"t3.micro\"\nssh_username = \"u\"\n\n{flavors}\n\
             [regions]\n{regions}\n\n[sim]\nboot = \"1s\"\nssh_ready = \"2s\"\nprovision = \"4s\"\nstop = \"8s\"\n\
             create_image = \"16s\"\nterminate = \"32s\"\ncopy_image = \"64s\"\ntest = \"256s\"\n"
        );
        crate::config::parse(std::path::Path::new("fleet.toml"), &text).expect("the test fleet parses")
    }

    fn plan(fleet: &Fleet) -> Plan {
        let started = Utc.with_ymd_and_hms(2026, 12, 7, 2, 0, 0).unwrap();
        Plan::new(fleet, RunId::new(started, 1), started)
    }

    const FLAVORS: &str = "[[flavor]]\nname = \"plain\"\nsource_ami = { id = \"ami-1\" }\n\n\
        [[flavor]]\nname = \"provisioned\"\nsource_ami = { id = \"ami-1\" }\nprovisioners = [{ type = \"shell\", inline = [\"true\"] }]\n\n\
        [[flavor]]\nname = \"own-time\"\nsource_ami = { id = \"ami-1\" }\nsim_provision = \"128s\"\n\
        provisioners = [{ type = \"shell\", inline = [\"true\"] }]\n";

    #[test]
    fn simulated_durations_add_up_the_sim_table_per_flavor() {
        let fleet = fleet(FLAVORS, "us-west-2 = [\"us-east-1\", \"eu-west-1\"]");
        let plan = plan(&fleet);
        let durations = JobDurations::simulated(&plan, &fleet);
        let to_image: Vec<u64> = durations.builds.iter().map(|build| build.to_image.as_secs()).collect();
        // boot 1 + ssh 2 + stop 8 + create 16 = 27, plus the provisioning: none, the table's 4, the flavor's 128.
        assert_eq!(to_image, [27, 31, 155]);
        let cleaned: Vec<u64> = durations.builds.iter().map(|build| build.to_cleaned_up.as_secs()).collect();
        assert_eq!(cleaned, [59, 63, 187], "terminate (32 s) after the image");
        assert_eq!(durations.copies, vec![Duration::from_secs(64); 6]);
    }

    #[test]
    fn simulated_durations_count_a_flavor_s_image_tests() {
        let tested = format!(
            "{FLAVORS}\n[[flavor]]\nname = \"tested\"\nsource_ami = {{ id = \"ami-1\" }}\n\
             provisioners = [{{ type = \"shell\", inline = [\"true\"] }}]\n\
             tests = [{{ type = \"shell\", inline = [\"true\"] }}, {{ type = \"shell\", inline = [\"true\"] }}]\n"
        );
        let fleet = fleet(&tested, "us-west-2 = [\"us-east-1\"]");
        let plan = plan(&fleet);
        let durations = JobDurations::simulated(&plan, &fleet);
        let tested = durations.builds[3];
        // The build's 31 s, then an instance from the image booted (1) and reached (2), the tests' 256 s in all.
        assert_eq!(tested.to_image.as_secs(), 31 + 1 + 2 + 256);
        // Two instances terminated one after the other (32 s each).
        assert_eq!(tested.to_cleaned_up.as_secs(), 290 + 64);
        let untested: Vec<u64> = durations.builds[..3].iter().map(|build| build.to_image.as_secs()).collect();
        assert_eq!(untested, [27, 31, 155], "flavors without tests are as before");
    }

    #[test]
    fn measured_durations_are_spans_from_each_start() {
        let fleet = fleet(FLAVORS, "us-west-2 = [\"us-east-1\"]");
        let plan = plan(&fleet);
        let at = Duration::from_secs;
        let timings = BTreeMap::from([
            (JobId::Build(0), JobTiming { started: at(10), available: Some(at(40)), ended: Some(at(50)) }),
            // Never made its image (failed): its image time is its whole time.
            (JobId::Build(1), JobTiming { started: at(5), available: None, ended: Some(at(25)) }),
            (JobId::Copy(0), JobTiming { started: at(40), available: Some(at(90)), ended: Some(at(100)) }),
            // Copy 1 never ended; build 2 and copy 2 never ran.
            (JobId::Copy(1), JobTiming { started: at(41), available: None, ended: None }),
        ]);
        let durations = JobDurations::measured(&plan, &timings);
        let builds: Vec<(u64, u64)> =
            durations.builds.iter().map(|build| (build.to_image.as_secs(), build.to_cleaned_up.as_secs())).collect();
        assert_eq!(builds, [(30, 40), (20, 20), (0, 0)]);
        assert_eq!(durations.copies, [at(60), Duration::ZERO, Duration::ZERO]);
    }

    fn caps(builds: usize, copies_per_region: usize, burst: u32, per_second: f64) -> Caps {
        Caps { builds, copies_per_region, copy_bucket: Bucket { burst, per_second } }
    }

    fn uniform(plan: &Plan, to_image: u64, to_cleaned_up: u64, copy: u64) -> JobDurations {
        JobDurations {
            builds: vec![
                BuildDuration {
                    to_image: Duration::from_secs(to_image),
                    to_cleaned_up: Duration::from_secs(to_cleaned_up)
                };
                plan.builds.len()
            ],
            copies: vec![Duration::from_secs(copy); plan.copies.len()],
        }
    }

    #[test]
    fn builds_share_their_slots_and_copies_start_when_the_image_is_available() {
        let fleet = fleet(FLAVORS, "us-west-2 = [\"us-east-1\"]");
        let plan = plan(&fleet);
        let durations = uniform(&plan, 100, 130, 50);
        // Three builds in parallel: images at 100, copies end at 150; the slots free at 130.
        assert_eq!(critical_path(&plan, caps(3, 10, 100, 10.0), &durations).as_secs(), 150);
        // One slot: builds start at 0, 130, 260; the last image at 360, its copy ends at 410.
        assert_eq!(critical_path(&plan, caps(1, 10, 100, 10.0), &durations).as_secs(), 410);
        // Two slots: the third build starts at 130 when the first slot frees.
        assert_eq!(critical_path(&plan, caps(2, 10, 100, 10.0), &durations).as_secs(), 280);
        // Zero counts as one slot.
        assert_eq!(critical_path(&plan, caps(0, 0, 100, 10.0), &durations).as_secs(), 410);
    }

    #[test]
    fn a_build_that_outlasts_its_copies_ends_the_run() {
        let fleet = fleet(FLAVORS, "us-west-2 = [\"us-east-1\"]");
        let plan = plan(&fleet);
        assert_eq!(critical_path(&plan, caps(3, 10, 100, 10.0), &uniform(&plan, 10, 500, 50)).as_secs(), 500);
    }

    #[test]
    fn copies_into_one_region_wait_for_its_cap_and_its_bucket() {
        let fleet = fleet(FLAVORS, "us-west-2 = [\"us-east-1\", \"eu-west-1\"]");
        let plan = plan(&fleet);
        let durations = uniform(&plan, 100, 100, 50);
        // Cap 1 per region: each region's three copies run one after another from 100: 250.
        assert_eq!(critical_path(&plan, caps(3, 1, 100, 10.0), &durations).as_secs(), 250);
        // Cap 2: two at 100, the third at 150: 200.
        assert_eq!(critical_path(&plan, caps(3, 2, 100, 10.0), &durations).as_secs(), 200);
        // No cap, but a bucket of one token refilled every 20 s: starts at 100, 120, 140 in each region.
        assert_eq!(critical_path(&plan, caps(3, 10, 1, 0.05), &durations).as_secs(), 190);
    }

    #[test]
    fn a_build_from_another_build_s_image_starts_when_it_is_available() {
        let fleet = fleet(FLAVORS, "us-west-2 = [\"us-east-1\"]");
        let mut plan = plan(&fleet);
        plan.builds[2].source = crate::plan::BuildSource::ImageOf(JobId::Build(0));
        let durations = uniform(&plan, 100, 130, 50);
        // The third build waits for the first's image (100), not for a slot: its image at 200, its copy ends
        // at 250 (its slot frees at 230).
        assert_eq!(critical_path(&plan, caps(3, 10, 100, 10.0), &durations).as_secs(), 250);
        // One slot: the first build frees it at 130, the second at 260; the third then starts: its copy ends at
        // 260 + 100 + 50.
        assert_eq!(critical_path(&plan, caps(1, 10, 100, 10.0), &durations).as_secs(), 410);
    }

    #[test]
    fn a_plan_without_jobs_ends_at_once() {
        let fleet = fleet(FLAVORS, "us-west-2 = []");
        let mut plan = plan(&fleet);
        plan.builds.clear();
        assert_eq!(critical_path(&plan, caps(1, 1, 1, 1.0), &JobDurations::default()), Duration::ZERO);
    }

    #[test]
    fn bucket_refills_at_its_rate_between_takes() {
        // One token, half a token a second: taken at 0, then wanted at 1 s with half a token back: at 2 s.
        let mut bucket = IdealBucket::new(Bucket { burst: 1, per_second: 0.5 });
        assert_eq!(bucket.take_at(Duration::ZERO), Duration::ZERO);
        assert_eq!(bucket.take_at(Duration::from_secs(1)), Duration::from_secs(2));
        // Idle long enough to be full again (never more than its burst): at once, then 2 s apart.
        assert_eq!(bucket.take_at(Duration::from_secs(100)), Duration::from_secs(100));
        assert_eq!(bucket.take_at(Duration::from_secs(100)), Duration::from_secs(102));
    }

    #[test]
    fn bucket_spaces_takes_beyond_its_burst() {
        let mut bucket = IdealBucket::new(Bucket { burst: 2, per_second: 1.0 });
        let takes: Vec<u64> = (0..4).map(|_| bucket.take_at(Duration::ZERO).as_secs()).collect();
        assert_eq!(takes, [0, 0, 1, 2]);
        assert_eq!(bucket.take_at(Duration::from_secs(10)).as_secs(), 10);
    }
}
