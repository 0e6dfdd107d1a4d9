//! The loop under Tokio's paused clock, with a fake [`JobRunner`]: every job takes a set time to its image and
//! to its end, or fails, so what the loop decides (when each job starts, from what, what it skips) is read off
//! the virtual clock.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::future::BoxFuture;

use super::*;
use crate::cloud::limiter::Pacing;
use crate::cloud::retry::Policy;
use crate::cloud::sim::SimCloud;
use crate::cloud::watch::{WaitStyle, Waits};
use crate::cloud::ImageId;
use crate::config::{Fleet, Region};
use crate::engine::runner::Announcer;
use crate::outcome::ImageSettings;
use crate::plan::RunId;

/// Two flavors built in one region, each copied to two more.
fn fleet(limits: &str) -> Arc<Fleet> {
    let text = format!(
        "[fleet]\nname = \"loop\"\n\n[defaults]\ninstance_type = \"t3.micro\"\nssh_username = \"u\"\n\n\
         [[flavor]]\nname = \"a\"\nsource_ami = {{ id = \"ami-1\" }}\n\n\
         [[flavor]]\nname = \"b\"\nsource_ami = {{ id = \"ami-1\" }}\n\n\
         [regions]\nus-west-2 = [\"us-east-1\", \"eu-west-1\"]\n\n[limits]\n{limits}\n"
    );
    Arc::new(crate::config::parse(std::path::Path::new("fleet.toml"), &text).expect("the test fleet parses"))
}

/// How a fake job goes: seconds to its image (`None`: it fails then), then seconds more to its end.
#[derive(Clone, Copy)]
struct Script {
    to_image: Option<u64>,
    then: u64,
}

const NORMAL: Script = Script { to_image: Some(10), then: 5 };

/// Runs every job by its script; writes down when each started and from which image.
struct FakeRunner {
    clock: RunClock,
    scripts: BTreeMap<JobId, Script>,
    started: Mutex<Vec<(JobId, u64, Option<ImageId>)>>,
}

fn image_of(job: JobId) -> ImageId {
    ImageId::new(format!("ami-{job:?}"))
}

fn artifact(job: JobId) -> Artifact {
    Artifact {
        image_id: image_of(job),
        name: "image".to_string(),
        build_region: Region::new("us-west-2"),
        source_image_id: ImageId::new("ami-1"),
        snapshot_ids: Vec::new(),
        created_at: String::new(),
        fingerprint: None,
        reused_from: None,
        published: Vec::new(),
        parent: None,
        settings: Box::new(ImageSettings::default()),
    }
}

impl JobRunner for Arc<FakeRunner> {
    fn run(
        &self,
        job: JobId,
        input: Option<Artifact>,
        announce: Announcer,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, JobEnd> {
        let script = self.scripts.get(&job).copied().unwrap_or(NORMAL);
        self.started.lock().unwrap().push((job, self.clock.elapsed().as_secs(), input.map(|image| image.image_id)));
        let label = announce.label.clone();
        Box::pin(async move {
            let sleep = |seconds| tokio::time::sleep(Duration::from_secs(seconds));
            let Some(to_image) = script.to_image else {
                sleep(10).await;
                return JobEnd {
                    failures: vec![Failure::new(&label, Stage::Provision, "it broke")],
                    ..JobEnd::default()
                };
            };
            tokio::select! {
                () = sleep(to_image) => announce.image_available(&artifact(job)),
                () = cancel.cancelled() => {
                    return JobEnd {
                        failures: vec![Failure::new(&label, Stage::Interrupted, "cancelled")],
                        ..JobEnd::default()
                    };
                }
            }
            sleep(script.then).await;
            JobEnd::default()
        })
    }
}

struct Ran {
    summary: RunSummary,
    /// Job, second it started, the image it started from.
    started: Vec<(JobId, u64, Option<ImageId>)>,
}

/// Runs the plan of `fleet` with the fake runner; an interrupt is delivered at each of `interrupt_at` seconds.
async fn run(fleet: Arc<Fleet>, scripts: BTreeMap<JobId, Script>, slot: BuildSlotRelease, interrupt_at: &[u64]) -> Ran {
    run_with(fleet, scripts, slot, false, interrupt_at, |_| {}).await
}

async fn run_with(
    fleet: Arc<Fleet>,
    scripts: BTreeMap<JobId, Script>,
    build_slot: BuildSlotRelease,
    fail_fast: bool,
    interrupt_at: &[u64],
    reshape: fn(&mut Plan),
) -> Ran {
    let clock = RunClock::start();
    let started_at = Utc.with_ymd_and_hms(2026, 12, 7, 2, 0, 0).unwrap();
    let mut plan = Plan::new(&fleet, RunId::new(started_at, 1), started_at);
    reshape(&mut plan);
    let plan = Arc::new(plan);
    let journal = Arc::new(Journal::in_memory());
    let (events, mut receiver) = EventSender::channel(clock);
    let draining = tokio::spawn(async move { while receiver.recv().await.is_some() {} });
    let cloud: Arc<dyn crate::cloud::Cloud> = Arc::new(SimCloud::new(&fleet));
    let runner = Arc::new(FakeRunner { clock, scripts, started: Mutex::new(Vec::new()) });
    let scheduler = Scheduler {
        clock,
        journal: Arc::clone(&journal),
        plan,
        runner: Arc::new(Arc::clone(&runner)),
        publisher: Publisher {
            fleet: Arc::clone(&fleet),
            cloud: Arc::clone(&cloud),
            journal: Arc::clone(&journal),
            events: events.clone(),
        },
        sweeper: Sweeper {
            cloud: Arc::clone(&cloud),
            waits: Waits::new(Arc::clone(&cloud), WaitStyle::Batched),
            journal,
            events: events.clone(),
        },
        limits: Arc::new(RunLimits::new(&fleet.limits, Policy::THROTTLED, Pacing::Fixed)),
        events,
        fail_fast,
        build_slot,
        priors: BTreeMap::new(),
        reuse_failures: BTreeMap::new(),
        published: BTreeMap::new(),
        notes: Vec::new(),
    };
    let (interrupter, interrupts) = mpsc::unbounded_channel();
    for &at in interrupt_at {
        let interrupter = interrupter.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(at)).await;
            let _ = interrupter.send(Interrupt::SIGINT);
        });
    }
    let summary = scheduler.run(interrupts).await;
    draining.await.expect("the events drain");
    let started = runner.started.lock().unwrap().clone();
    Ran { summary, started }
}

/// When the last job ended (the run's makespan adds the end-of-run sweep, which the simulated cloud answers).
fn last_end(ran: &Ran) -> Duration {
    ran.summary.timings.values().filter_map(|timing| timing.ended).max().unwrap_or_default()
}

fn starts(ran: &Ran) -> Vec<(JobId, u64)> {
    ran.started.iter().map(|(job, at, _)| (*job, *at)).collect()
}

use JobId::{Build, Copy};

#[tokio::test(start_paused = true)]
async fn jobs_start_when_their_input_image_is_available_and_from_it() {
    let ran = run(fleet(""), BTreeMap::new(), BuildSlotRelease::WhenCleanedUp, &[]).await;
    // Both builds at once; each build's copies the moment its image is available (10 s), not when it ends.
    assert_eq!(
        starts(&ran),
        [(Build(0), 0), (Build(1), 0), (Copy(0), 10), (Copy(1), 10), (Copy(2), 10), (Copy(3), 10)]
    );
    let inputs: Vec<Option<ImageId>> = ran.started.iter().map(|(_, _, input)| input.clone()).collect();
    let build = |index| Some(image_of(Build(index)));
    assert_eq!(inputs, [None, None, build(0), build(0), build(1), build(1)], "a copy starts from its build's image");
    assert_eq!((ran.summary.succeeded, ran.summary.failed), (6, 0));
    assert_eq!(ran.summary.status, RunStatus::Complete);
    assert_eq!(last_end(&ran), Duration::from_secs(25));
}

#[tokio::test(start_paused = true)]
async fn a_failed_input_skips_its_dependents_and_nothing_else() {
    let scripts = BTreeMap::from([(Build(0), Script { to_image: None, then: 0 })]);
    let ran = run(fleet(""), scripts, BuildSlotRelease::WhenCleanedUp, &[]).await;
    assert_eq!(starts(&ran), [(Build(0), 0), (Build(1), 0), (Copy(2), 10), (Copy(3), 10)]);
    // The failed build and its two copies, never started.
    assert_eq!((ran.summary.succeeded, ran.summary.failed), (3, 3));
    assert_eq!(ran.summary.status, RunStatus::Partial);
}

#[tokio::test(start_paused = true)]
async fn builds_wait_for_a_build_slot_and_copies_for_their_region_s_cap() {
    let fleet = fleet("max_parallel_builds = 1\nmax_parallel_copies_per_region = 1\n");
    let ran = run(fleet, BTreeMap::new(), BuildSlotRelease::WhenCleanedUp, &[]).await;
    // One build slot: the second build starts when the first has ended (15 s). One copy per destination:
    // the second build's copies wait for the first build's (10 → 25) and start when those end.
    assert_eq!(
        starts(&ran),
        [(Build(0), 0), (Copy(0), 10), (Copy(1), 10), (Build(1), 15), (Copy(2), 25), (Copy(3), 25)]
    );
    assert_eq!(last_end(&ran), Duration::from_secs(40));
}

#[tokio::test(start_paused = true)]
async fn a_build_slot_held_after_its_copies_frees_only_when_they_end() {
    let fleet = fleet("max_parallel_builds = 1\n");
    let ran = run(fleet, BTreeMap::new(), BuildSlotRelease::AfterItsCopies, &[]).await;
    // The first build's copies end at 10 + 15 = 25: only then does the second build start.
    assert_eq!(
        starts(&ran),
        [(Build(0), 0), (Copy(0), 10), (Copy(1), 10), (Build(1), 25), (Copy(2), 35), (Copy(3), 35)]
    );
}

#[tokio::test(start_paused = true)]
async fn an_interrupt_starts_nothing_more_and_drains_what_runs() {
    let fleet = fleet("max_parallel_builds = 1\n");
    let ran = run(fleet, BTreeMap::new(), BuildSlotRelease::WhenCleanedUp, &[5]).await;
    assert_eq!(starts(&ran), [(Build(0), 0)], "the second build and every copy never start");
    assert_eq!(ran.summary.interrupted, Some(Interrupt::SIGINT));
    assert!(!ran.summary.abandoned, "one interrupt lets the running build clean up");
    // The running build, cancelled at 5 s, and the five jobs that never started.
    assert_eq!((ran.summary.succeeded, ran.summary.failed), (0, 6));
    assert_eq!(last_end(&ran), Duration::from_secs(5));
    assert_eq!(ran.summary.status, RunStatus::Partial);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_stops_starting_after_the_first_failure() {
    let fleet = fleet("max_parallel_builds = 1\n");
    let scripts = BTreeMap::from([(Build(0), Script { to_image: None, then: 0 })]);
    let ran = run_with(fleet, scripts, BuildSlotRelease::WhenCleanedUp, true, &[], |_| {}).await;
    assert_eq!(starts(&ran), [(Build(0), 0)]);
    assert_eq!((ran.summary.succeeded, ran.summary.failed), (0, 6));
    assert_eq!(ran.summary.status, RunStatus::Failed);
}

/// The second build starts from the first build's image (what `source_ami = { flavor = … }` will plan).
fn chained(plan: &mut Plan) {
    plan.builds[1].source = crate::plan::BuildSource::ImageOf(Build(0));
}

#[tokio::test(start_paused = true)]
async fn a_build_from_another_build_s_image_starts_when_it_is_available_and_from_it() {
    let ran = run_with(fleet(""), BTreeMap::new(), BuildSlotRelease::WhenCleanedUp, false, &[], chained).await;
    assert_eq!(
        starts(&ran),
        [(Build(0), 0), (Build(1), 10), (Copy(0), 10), (Copy(1), 10), (Copy(2), 20), (Copy(3), 20)]
    );
    let input_of =
        |job| ran.started.iter().find(|(started, _, _)| *started == job).and_then(|(_, _, input)| input.clone());
    assert_eq!(input_of(Build(1)), Some(image_of(Build(0))));
    assert_eq!(input_of(Copy(2)), Some(image_of(Build(1))));
    assert_eq!((ran.summary.succeeded, ran.summary.failed), (6, 0));
}

#[tokio::test(start_paused = true)]
async fn a_failed_build_skips_the_builds_from_its_image_and_their_copies() {
    let scripts = BTreeMap::from([(Build(0), Script { to_image: None, then: 0 })]);
    let ran = run_with(fleet(""), scripts, BuildSlotRelease::WhenCleanedUp, false, &[], chained).await;
    assert_eq!(starts(&ran), [(Build(0), 0)]);
    assert_eq!((ran.summary.succeeded, ran.summary.failed), (0, 6));
    assert_eq!(ran.summary.status, RunStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn a_held_build_slot_is_never_held_for_a_build_that_needs_it() {
    let fleet = fleet("max_parallel_builds = 1\n");
    let ran = run_with(fleet, BTreeMap::new(), BuildSlotRelease::AfterItsCopies, false, &[], chained).await;
    // The first build holds its slot for its copies (until 25), not for the second build: no deadlock.
    assert_eq!(
        starts(&ran),
        [(Build(0), 0), (Copy(0), 10), (Copy(1), 10), (Build(1), 25), (Copy(2), 35), (Copy(3), 35)]
    );
}
