//! A quiet night: the 20 × 4 × 3 matrix built once, then again with nothing changed, on one simulated account
//! (virtual time): with `--changed-only` the second night makes no instance and no copy. Prints the calls made,
//! the simulated makespan and the wall time of both nights, and of a full rebuild for comparison. Then fails
//! (exit status 1) if a night had a failed job or left a resource in the account, a full night made other than
//! an instance and an image per build and a copy per target, or the quiet night made any or took other than
//! its pinned calls and simulated time.
//!
//! `cargo bench --bench changed`: the 20 × 4 × 3 matrix. `cargo test --locked --bench changed` (CI): 2 × 2 × 2.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetbake::cloud::retry::Policy;
use fleetbake::cloud::sim::SimCloud;
use fleetbake::cloud::{Action, Cloud, Limited};
use fleetbake::config::{self, Fleet};
use fleetbake::engine::limits::RunLimits;
use fleetbake::engine::run::{Execution, Start, Strategy};
use fleetbake::report::{Reporter, TerminalReporter};

mod common;
use common::{full_run, peak_rss_mib, reset_peak_rss, synthetic_fleet, Checks};

struct Night {
    calls: BTreeMap<Action, u64>,
    simulated: Duration,
    wall: Duration,
    failed: usize,
    /// What the account holds after the night that it should not (the model's leak list).
    leaked: Vec<String>,
}

/// A matrix run three nights, and what its quiet night (`--changed-only`, nothing changed) must cost: the
/// same in every run under the paused clock.
struct Matrix {
    flavors: usize,
    build_regions: usize,
    targets: usize,
    quiet_calls: u64,
    /// Simulated seconds.
    quiet_simulated: u64,
}

/// `cargo bench`: the matrix the figures in docs/how-fast.md are of.
const FULL: Matrix = Matrix { flavors: 20, build_regions: 4, targets: 3, quiet_calls: 732, quiet_simulated: 57 };
/// `cargo test` (CI).
const SMALL: Matrix = Matrix { flavors: 2, build_regions: 2, targets: 2, quiet_calls: 34, quiet_simulated: 2 };

/// Every night ends with no failed job and nothing left; a full night makes an instance and an image per
/// build and a copy per target; the quiet night makes none and costs its pinned calls and simulated time.
fn check_nights(checks: &mut Checks, matrix: &Matrix, [first, quiet, rebuild]: [(&str, &Night); 3]) {
    let builds = (matrix.flavors * matrix.build_regions) as u64;
    let copies = builds * matrix.targets as u64;
    let made = |night: &Night| {
        let count = |action| night.calls.get(&action).copied().unwrap_or(0);
        [count(Action::RunInstances), count(Action::CopyImage), count(Action::CreateImage)]
    };
    for (name, night) in [first, quiet, rebuild] {
        checks.equal(format_args!("{name}: failed jobs"), night.failed, 0);
        checks.nothing_leaked(name, &night.leaked);
    }
    for (name, night) in [first, rebuild] {
        checks.equal(
            format_args!("{name}: RunInstances, CopyImage, CreateImage"),
            made(night),
            [builds, copies, builds],
        );
    }
    let (name, night) = quiet;
    checks.equal(format_args!("{name}: RunInstances, CopyImage, CreateImage"), made(night), [0, 0, 0]);
    checks.equal(format_args!("{name}: calls"), night.calls.values().sum::<u64>(), matrix.quiet_calls);
    checks.equal(format_args!("{name}: simulated seconds"), night.simulated.as_secs(), matrix.quiet_simulated);
}

/// One run of `fleet` against `sim`, in the paused runtime's virtual time.
async fn night(sim: &Arc<SimCloud>, fleet: &Fleet) -> Night {
    let fleet = Arc::new(fleet.clone());
    let limits = Arc::new(RunLimits::new(&fleet.limits, Policy::THROTTLED, Strategy::FLEETBAKE.pacing));
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
        local_leftovers: Vec::new(),
        manifest_set_aside: None,
    };
    let (_interrupt, interrupts) = tokio::sync::mpsc::unbounded_channel();
    let (started, wall) = (tokio::time::Instant::now(), Instant::now());
    let summary = execution.run(Start::fresh(&fleet, None), interrupts).await.expect("the night ends").1;
    let mut calls = BTreeMap::new();
    for ((_, action), count) in limits.stats().calls() {
        *calls.entry(action).or_default() += count;
    }
    let leaked = sim.report(Duration::from_secs(2)).leaked_resources;
    Night { calls, simulated: started.elapsed(), wall: wall.elapsed(), failed: summary.failed, leaked }
}

/// Waits, in real time, for the wall clock's next second. A night names its images by the wall-clock second
/// it starts in (`{timestamp}` in the default `ami_name`), and the account refuses a second image of a name
/// (as EC2 does): nights an hour apart in virtual time are milliseconds apart on the wall clock, and a rebuild
/// in the first night's second would fail every build.
fn next_wall_second() {
    let into_second = chrono::Utc::now().timestamp_subsec_nanos().min(999_999_999);
    std::thread::sleep(Duration::from_nanos(u64::from(1_000_000_000 - into_second)));
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
    let matrix = if full_run() { FULL } else { SMALL };
    let workdir = tempfile::tempdir().expect("a temporary directory");
    let text = synthetic_fleet(matrix.flavors, matrix.build_regions, matrix.targets);
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
        next_wall_second();
        let rebuild = night(&sim, &fleet).await;
        (first, quiet, rebuild)
    });
    let builds = matrix.flavors * matrix.build_regions;
    println!(
        "{} × {} × {} ({builds} builds, {} copies), one simulated account, night after night",
        matrix.flavors,
        matrix.build_regions,
        matrix.targets,
        builds * matrix.targets
    );
    println!(
        "{:<34} {:>6} {:>13} {:>10} {:>12} {:>10} {:>9} {:>6}",
        "night", "calls", "RunInstances", "CopyImage", "CreateImage", "simulated", "wall", "failed"
    );
    let nights = [
        ("first (everything built)", &first),
        ("nothing changed, --changed-only", &quiet),
        ("nothing changed, full rebuild", &rebuild),
    ];
    for (name, night) in nights {
        row(name, night);
    }
    println!("peak RSS over the three nights: {:.0} MiB", peak_rss_mib());
    let mut checks = Checks::default();
    check_nights(&mut checks, &matrix, nights);
    checks.finish();
}
