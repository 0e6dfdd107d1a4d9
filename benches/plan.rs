//! What the pure front of the pipeline costs at fleet scale: parsing and validating fleet.toml, expanding
//! the plan, and draining its dependency queue the way the scheduler does. Prints figures; asserts nothing.
//!
//! `cargo bench --bench plan`

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use fleetbake::config;
use fleetbake::plan::{JobId, Plan, RunId};

/// A fleet of `flavors` flavors built in `build_regions` regions, each copied to `targets` of the others.
fn synthetic_fleet(flavors: usize, build_regions: usize, targets: usize) -> String {
    let mut text = String::from(
        "[fleet]\nname = \"bench\"\nami_name = \"{flavor}-{build_region}-{timestamp}\"\n\n\
         [defaults]\ninstance_type = \"t3.small\"\nssh_username = \"ubuntu\"\ntags = { ManagedBy = \"fleetbake\" }\n\n",
    );
    for flavor in 0..flavors {
        text.push_str(&format!(
            "[[flavor]]\nname = \"flavor-{flavor}\"\n\
             source_ami = {{ owners = [\"amazon\"], name = \"al2023-ami-2023.*-kernel-6.1-x86_64\" }}\n\
             provisioners = [{{ type = \"shell\", inline = [\"echo {flavor}\"] }}]\n\n"
        ));
    }
    text.push_str("[regions]\n");
    let region = |index: usize| format!("zz-bench-{index}");
    for build in 0..build_regions {
        let copies: Vec<String> =
            (1..=targets).map(|offset| format!("\"{}\"", region(build_regions + build * targets + offset))).collect();
        text.push_str(&format!("{} = [{}]\n", region(build), copies.join(", ")));
    }
    text
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

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
