//! What the run journal costs: appending a record (written and flushed to disk with `sync_data` before the run
//! goes on) and replaying a whole run's journal for `--resume`. Prints figures, then fails (exit status 1) if
//! the file does not hold every record on its own line, or its replay does not give back every job's image and
//! no temporary resource left, the run finished.
//!
//! `cargo bench --bench journal` (the append figure is the disk's flush latency: run it where runs run): three
//! fleets. `cargo test --locked --bench journal` (CI): the smallest only.

use std::path::Path;
use std::time::Instant;

use chrono::Utc;
use fleetbake::cloud::{ImageId, SnapshotId};
use fleetbake::config;
use fleetbake::outcome::{Artifact, RunStatus};
use fleetbake::plan::{Plan, RunId};
use fleetbake::state::journal::{Journal, JournalDir, Record, Replay};
use fleetbake::steps::ledger::{Resource, ResourceKind};

mod common;
use common::{full_run, peak_rss_mib, reset_peak_rss, synthetic_fleet, Checks};

/// The fleet CI runs (`cargo test`).
const SMALL: (usize, usize, usize) = (2, 2, 2);

/// The journal holds the header, the attempt and each record on a line of its own, and replays to what the
/// run recorded: the plan's jobs, an image for each, nothing outstanding, finished complete, one attempt.
fn check_journal(checks: &mut Checks, name: &str, plan: &Plan, records: usize, path: &Path, replay: &Replay) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    checks.equal(format_args!("{name}: journal lines (header, attempt, records)"), text.lines().count(), records + 2);
    checks.equal(format_args!("{name}: replayed jobs"), &replay.header.jobs, &plan.planned_jobs());
    checks.equal(format_args!("{name}: jobs with an image"), replay.available.len(), plan.job_count());
    checks.equal(format_args!("{name}: jobs with an image requested"), replay.requested.len(), plan.job_count());
    checks.check(replay.outstanding.is_empty(), || {
        format!("{name}: {} temporary resources outstanding after replay", replay.outstanding.len())
    });
    checks.equal(format_args!("{name}: finished"), replay.finished, Some((RunStatus::Complete, false)));
    checks.equal(format_args!("{name}: attempts"), replay.attempts, 1);
    checks.equal(format_args!("{name}: torn line"), replay.torn_line, None);
}

fn main() {
    println!(
        "{:<28} {:>7} {:>9} {:>14} {:>12} {:>11} {:>10}",
        "fleet", "jobs", "records", "append/record", "replay", "file", "peak RSS"
    );
    let fleets = if full_run() { vec![SMALL, (20, 4, 3), (100, 10, 9)] } else { vec![SMALL] };
    let mut checks = Checks::default();
    for (flavors, build_regions, targets) in fleets {
        reset_peak_rss();
        let text = synthetic_fleet(flavors, build_regions, targets);
        let fleet = config::parse(Path::new("/bench/fleet.toml"), &text).expect("the synthetic fleet is valid");
        let plan = Plan::new(&fleet, RunId::generate(Utc::now()), Utc::now());
        let directory = tempfile::tempdir().expect("a temporary directory");
        let dir = JournalDir { path: directory.path().to_path_buf() };

        // What a whole run records: per build three resources created and removed, its image requested and
        // available; per copy its image requested and available; then the end.
        let journal = Journal::create(&dir, &plan).expect("the journal opens");
        let started = Instant::now();
        let mut records = 0usize;
        let mut record = |record: Record| {
            journal.record(record);
            records += 1;
        };
        for build in &plan.builds {
            let key = build.key();
            let resources = [ResourceKind::KeyPair, ResourceKind::SecurityGroup, ResourceKind::Instance]
                .map(|kind| Resource::new(build.region.clone(), kind, format!("{kind:?}-{}", build.index)));
            for resource in &resources {
                record(Record::Created { job: key.clone(), resource: resource.clone() });
            }
            let image = ImageId::new(format!("ami-{:017x}", build.index));
            record(Record::ImageRequested { job: key.clone(), image_id: image.clone() });
            record(Record::ImageAvailable { job: key.clone(), artifact: artifact(&image, build.region.as_str()) });
            for resource in resources {
                record(Record::Removed { resource });
            }
        }
        for copy in &plan.copies {
            let image = ImageId::new(format!("ami-c{:016x}", copy.index));
            record(Record::ImageRequested { job: copy.key(), image_id: image.clone() });
            let artifact = artifact(&image, copy.source_region.as_str());
            record(Record::ImageAvailable { job: copy.key(), artifact });
        }
        record(Record::Finished { status: RunStatus::Complete, interrupted: false });
        let per_record = started.elapsed() / records as u32;
        let name = format!("{flavors} × {build_regions} × {targets}");
        checks.equal(format_args!("{name}: journal write error"), journal.write_error(), None);
        checks.equal(format_args!("{name}: outstanding before replay"), journal.outstanding(), Vec::new());
        drop(journal);

        let path = dir.journal_path(&plan.run_id);
        let started = Instant::now();
        let replay = Replay::read(&path).expect("the journal replays");
        let replay_time = started.elapsed();
        let size = std::fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
        println!(
            "{:<28} {:>7} {:>9} {:>11.1} µs {:>9.2} ms {:>8.1} KiB {:>7.1}MiB",
            name,
            plan.job_count(),
            records,
            per_record.as_secs_f64() * 1e6,
            replay_time.as_secs_f64() * 1e3,
            size as f64 / 1024.0,
            peak_rss_mib(),
        );
        check_journal(&mut checks, &name, &plan, records, &path, &replay);
    }
    checks.finish();
}

fn artifact(image: &ImageId, region: &str) -> Artifact {
    Artifact {
        image_id: image.clone(),
        name: format!("bench-{image}"),
        build_region: config::Region::new(region),
        source_image_id: ImageId::new("ami-0123456789abcdef0"),
        snapshot_ids: vec![SnapshotId::new(format!("snap-{image}"))],
        created_at: "2026-11-26T12:00:00Z".into(),
        fingerprint: None,
        reused_from: None,
        published: Vec::new(),
        parent: None,
        settings: Default::default(),
    }
}
