//! A quiet night: the 20 × 4 × 3 matrix built once, then again with nothing changed, on one simulated account
//! (virtual time): with `--changed-only` the second night makes no instance and no copy. Prints the calls made,
//! the simulated makespan and the wall time of both nights, and of a full rebuild for comparison. Asserts
//! nothing.
//!
//! `cargo bench --bench changed`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetbake::cloud::limiter::RetryPolicy;
use fleetbake::cloud::sim::SimCloud;
use fleetbake::cloud::{Action, Cloud, Limited};
use fleetbake::config::{self, Fleet};
use fleetbake::engine::limits::RunLimits;
use fleetbake::engine::run::{Execution, Start, Strategy};
use fleetbake::report::{Reporter, TerminalReporter};

mod common;
use common::{peak_rss_mib, reset_peak_rss, synthetic_fleet};

struct Night {
    calls: BTreeMap<Action, u64>,
    simulated: Duration,
    wall: Duration,
    failed: usize,
}

/// One run of `fleet` against `sim`, in the paused runtime's virtual time.
async fn night(sim: &Arc<SimCloud>, fleet: &Fleet) -> Night {
    let fleet = Arc::new(fleet.clone());
    let limits = Arc::new(RunLimits::new(&fleet.limits, RetryPolicy::default(), Strategy::FLEETBAKE.pacing));
    let reporters: Vec<Box<dyn Reporter>> = vec![
        Box::new(TerminalReporter::new(std::io::sink(), false)),
        Box::new(fleetbake::state::manifest::ManifestWriter::new(fleet.manifest_path.clone(), Duration::from_secs(60))),
    ];
    let execution = Execution {
        fleet: Arc::clone(&fleet),
        ssh_sources: fleetbake::steps::network::SshSources::Configured(vec!["203.0.113.5/32".parse().unwrap()]),
        cloud: Arc::new(Limited::new(Arc::clone(sim) as Arc<dyn Cloud>, Arc::clone(limits.api()))),
        communicator: Arc::new(fleetbake::remote::sim::SimCommunicator::new(Arc::clone(sim), Arc::clone(&fleet))),
        limits: Arc::clone(&limits),
        strategy: Strategy::FLEETBAKE,
        fail_fast: false,
        reporters,
        run_lock: None,
        preflight: None,
    };
    let (_interrupt, interrupts) = tokio::sync::mpsc::unbounded_channel();
    let (started, wall) = (tokio::time::Instant::now(), Instant::now());
    let summary = execution.run(Start::fresh(&fleet, None), interrupts).await.expect("the night ends").1;
    let mut calls = BTreeMap::new();
    for ((_, action), count) in limits.stats().calls() {
        *calls.entry(action).or_default() += count;
    }
    Night { calls, simulated: started.elapsed(), wall: wall.elapsed(), failed: summary.failed }
}

fn clock(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!("{}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

fn row(name: &str, night: &Night) {
    let total: u64 = night.calls.values().sum();
    let count = |action| night.calls.get(&action).copied().unwrap_or(0);
    println!(
        "{name:<34} {total:>6} {:>13} {:>10} {:>12} {:>10} {:>9.2?} {:>6}",
        count(Action::RunInstances),
        count(Action::CopyImage),
        count(Action::CreateImage),
        clock(night.simulated),
        night.wall,
        night.failed
    );
}

fn main() {
    let workdir = tempfile::tempdir().expect("a temporary directory");
    let text = synthetic_fleet(20, 4, 3);
    let fleet: Fleet = config::parse(&workdir.path().join("fleet.toml"), &text).expect("the synthetic fleet is valid");
    let mut changed_only = fleet.clone();
    changed_only.matrix.changed_only = true;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a Tokio runtime starts");
    reset_peak_rss();
    let sim = Arc::new(SimCloud::new(&fleet));
    let (first, quiet, rebuild) = runtime.block_on(async {
        let first = night(&sim, &fleet).await;
        // The next night, an hour later; nothing changed.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let quiet = night(&sim, &changed_only).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let rebuild = night(&sim, &fleet).await;
        (first, quiet, rebuild)
    });
    println!("20 × 4 × 3 (80 builds, 240 copies), one simulated account, night after night");
    println!(
        "{:<34} {:>6} {:>13} {:>10} {:>12} {:>10} {:>9} {:>6}",
        "night", "calls", "RunInstances", "CopyImage", "CreateImage", "simulated", "wall", "failed"
    );
    row("first (everything built)", &first);
    row("nothing changed, --changed-only", &quiet);
    row("nothing changed, full rebuild", &rebuild);
    println!("peak RSS over the three nights: {:.0} MiB", peak_rss_mib());
}
