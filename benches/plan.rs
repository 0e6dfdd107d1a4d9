//! What the pure front of the pipeline costs at fleet scale: parsing and validating fleet.toml, expanding
//! the plan, and draining its dependency queue the way the scheduler does. Prints figures; asserts nothing.
//!
//! `cargo bench --bench plan`

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use fleetbake::config;
use fleetbake::plan::{JobId, Plan, RunId};

mod common;
use common::{peak_rss_mib, reset_peak_rss, synthetic_fleet};

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
    for (flavors, build_regions, targets) in [(2, 2, 2), (20, 4, 3), (100, 10, 9)] {
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
                    queue.satisfied(&job);
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
    }
}
