//! What the pure front of the pipeline costs at fleet scale: parsing and validating fleet.toml, expanding
//! the plan, and draining its dependency queue the way the scheduler does. Prints figures, then fails (exit
//! status 1) if a plan has other than its builds and copies, or its queue starts a copy before its build.
//!
//! `cargo bench --bench plan`: three fleets. `cargo test --locked --bench plan` (CI): the smallest only, whose
//! queue order is also pinned job by job.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use fleetbake::config;
use fleetbake::plan::{Awaited, JobId, Plan, RunId};

mod common;
use common::{full_run, peak_rss_mib, reset_peak_rss, synthetic_fleet, Checks};

/// The smallest fleet's queue, wave by wave: its four builds in plan order, then, once they are satisfied,
/// each build's two copies.
const SMALL_WAVES: [&[&str]; 2] = [
    &[
        "build:flavor-0@zz-bench-0",
        "build:flavor-0@zz-bench-1",
        "build:flavor-1@zz-bench-0",
        "build:flavor-1@zz-bench-1",
    ],
    &[
        "copy:flavor-0@zz-bench-0>zz-bench-3",
        "copy:flavor-0@zz-bench-0>zz-bench-4",
        "copy:flavor-0@zz-bench-1>zz-bench-5",
        "copy:flavor-0@zz-bench-1>zz-bench-6",
        "copy:flavor-1@zz-bench-0>zz-bench-3",
        "copy:flavor-1@zz-bench-0>zz-bench-4",
        "copy:flavor-1@zz-bench-1>zz-bench-5",
        "copy:flavor-1@zz-bench-1>zz-bench-6",
    ],
];

/// The queue drained a wave at a time: every job ready, then every build of that wave satisfied.
fn waves(plan: &Plan) -> Vec<Vec<JobId>> {
    let mut queue = plan.dependency_queue();
    let mut waves = Vec::new();
    loop {
        let wave: Vec<JobId> = std::iter::from_fn(|| queue.pop_ready()).collect();
        if wave.is_empty() {
            break;
        }
        for job in wave.iter().filter(|job| matches!(job, JobId::Build(_))) {
            queue.satisfied(job, &Awaited::Image);
        }
        waves.push(wave);
    }
    waves
}

/// The plan has one build per flavor and build region and one copy per flavor and target, and its queue
/// starts every build at once and every copy only after its build; the smallest fleet's order is pinned.
fn check_plan(checks: &mut Checks, plan: &Plan, (flavors, build_regions, targets): (usize, usize, usize)) {
    let name = format!("{flavors} flavors × {build_regions} × {targets}");
    checks.equal(format_args!("{name}: builds"), plan.builds.len(), flavors * build_regions);
    checks.equal(format_args!("{name}: copies"), plan.copies.len(), flavors * build_regions * targets);
    let waves = waves(plan);
    let keys: Vec<Vec<String>> =
        waves.iter().map(|wave| wave.iter().map(|job| plan.key(*job).to_string()).collect()).collect();
    let builds: Vec<JobId> = (0..plan.builds.len()).map(JobId::Build).collect();
    let copies: Vec<JobId> = (0..plan.copies.len()).map(JobId::Copy).collect();
    checks.equal(format_args!("{name}: the first wave"), waves.first(), Some(&builds));
    checks.equal(format_args!("{name}: the second wave, once the builds are satisfied"), waves.get(1), Some(&copies));
    checks.equal(format_args!("{name}: waves"), waves.len(), 2);
    if (flavors, build_regions, targets) == SMALL {
        let expected: Vec<Vec<String>> =
            SMALL_WAVES.iter().map(|wave| wave.iter().map(|key| key.to_string()).collect()).collect();
        checks.equal(format_args!("{name}: the queue's order"), keys, expected);
    }
}

/// The fleet CI runs (`cargo test`).
const SMALL: (usize, usize, usize) = (2, 2, 2);

/// The best of `rounds` timings of `work`.
fn best_of<T>(rounds: usize, mut work: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..rounds {
        let started = Instant::now();
        let value = work();
        best = best.min(started.elapsed());
        last = Some(value);
    }
    (best, last.expect("at least one round"))
}

fn main() {
    println!(
        "{:<28} {:>7} {:>12} {:>12} {:>12} {:>10}",
        "fleet", "jobs", "parse+check", "plan", "queue drain", "peak RSS"
    );
    let fleets = if full_run() { vec![SMALL, (20, 4, 3), (100, 10, 9)] } else { vec![SMALL] };
    let mut checks = Checks::default();
    for (flavors, build_regions, targets) in fleets {
        reset_peak_rss();
        let text = synthetic_fleet(flavors, build_regions, targets);
        let path = Path::new("/bench/fleet.toml");
        let (parse_time, fleet) = best_of(5, || {
            config::parse(path, &text).unwrap_or_else(|errors| panic!("the synthetic fleet is valid: {errors}"))
        });
        let now = Utc::now();
        let (plan_time, plan) = best_of(5, || Plan::new(&fleet, RunId::new(now, 1), now));
        let (drain_time, started) = best_of(5, || {
            let mut queue = plan.dependency_queue();
            let mut started = 0;
            while let Some(job) = queue.pop_ready() {
                started += 1;
                if let JobId::Build(_) = job {
                    queue.satisfied(&job, &Awaited::Image);
                }
            }
            started
        });
        assert_eq!(started, plan.job_count());
        println!(
            "{:<28} {:>7} {:>10.2}ms {:>10.2}ms {:>10.2}ms {:>8.1}MiB",
            format!("{flavors} flavors × {build_regions} × {targets}"),
            plan.job_count(),
            parse_time.as_secs_f64() * 1e3,
            plan_time.as_secs_f64() * 1e3,
            drain_time.as_secs_f64() * 1e3,
            peak_rss_mib()
        );
        check_plan(&mut checks, &plan, (flavors, build_regions, targets));
    }
    checks.finish();
}
