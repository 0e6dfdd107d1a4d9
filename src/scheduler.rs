//! The one loop that executes a plan: ready jobs wait in plan order for a slot of their pool (builds, or
//! copies into one region) and start as tasks holding it; every source (an image became available, a job
//! ended, an interrupt) becomes one [`LoopEvent`], handled in one place.
//!
//! A failure never stops the loop: it is recorded, dependents are skipped, unrelated jobs go on.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::build::{self, BuildContext};
use crate::cloud::Cloud;
use crate::communicator::Communicator;
use crate::config::Region;
use crate::copy::{self, CopyContext};
use crate::deps::DependencyQueue;
use crate::events::{Artifact, EventSender, Failure, JobLabel, RunEvent, RunStatus, Stage};
use crate::limiter::RunLimits;
use crate::plan::{JobId, Plan};
use crate::run::RunContext;
use crate::watch::Waits;

/// An interrupt delivered to the loop (SIGINT, SIGTERM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    pub signal: &'static str,
    pub exit_code: i32,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub status: RunStatus,
    pub succeeded: usize,
    pub failed: usize,
    pub interrupted: Option<Interrupt>,
    /// A second interrupt: the loop stopped waiting for cleanup; these may be left behind.
    pub abandoned: bool,
    /// From the start of the run to the end of the loop.
    pub makespan: Duration,
    /// When each job that started started, had its image, and ended.
    pub timings: BTreeMap<JobId, JobTiming>,
}

/// When a job started, made its image available and ended, measured from the start of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JobTiming {
    pub started: Duration,
    pub available: Option<Duration>,
    pub ended: Option<Duration>,
}

/// When a build gives its slot back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildSlotRelease {
    /// Once it has cleaned up; its copies go on without it (fleetbake's way).
    WhenCleanedUp,
    /// Only when all of its copies have ended: how most tools do it. The benches compare the two.
    AfterItsCopies,
}

enum LoopEvent {
    ImageAvailable { job: JobId, artifact: Artifact },
    JobDone { job: JobId, failures: Vec<Failure>, slot: Option<OwnedSemaphorePermit> },
    Interrupt(Interrupt),
}

/// What a job's task hands back: its failures, and its slot.
type TaskOutcome = (JobId, Vec<Failure>, OwnedSemaphorePermit);

pub struct Scheduler {
    pub run: Arc<RunContext>,
    pub plan: Arc<Plan>,
    pub cloud: Arc<dyn Cloud>,
    pub communicator: Arc<dyn Communicator>,
    pub waits: Arc<Waits>,
    pub limits: Arc<RunLimits>,
    pub events: EventSender,
    /// Stop starting new jobs after the first failure.
    pub fail_fast: bool,
    pub build_slot: BuildSlotRelease,
}

/// What the loop knows while it runs.
struct LoopState {
    build_images: HashMap<usize, Artifact>,
    images: usize,
    succeeded: usize,
    failed: usize,
    interrupted: Option<Interrupt>,
    /// Nothing new starts (interrupt or fail-fast).
    stopping: bool,
    /// In-flight jobs give up their waits and clean up (interrupt only).
    cancel: CancellationToken,
    /// Ready jobs waiting for a slot, per pool, in plan order.
    waiting: BTreeMap<SlotPool, VecDeque<JobId>>,
    timings: BTreeMap<JobId, JobTiming>,
    /// Build slots held until the build's copies end ([`BuildSlotRelease::AfterItsCopies`]).
    held_build_slots: HashMap<usize, OwnedSemaphorePermit>,
    /// Per build, how many of its copies have not ended (or been skipped).
    copies_to_end: HashMap<usize, usize>,
}

/// The concurrency cap a job needs a slot of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SlotPool {
    Builds,
    CopiesInto(Region),
}

impl Scheduler {
    pub async fn run(self, mut interrupts: mpsc::UnboundedReceiver<Interrupt>) -> RunSummary {
        let plan = Arc::clone(&self.plan);
        self.events.send(RunEvent::RunStarted {
            fleet: plan.fleet.clone(),
            run_id: plan.run_id.clone(),
            started_at: plan.started_at,
            builds: plan.builds.len(),
            copies: plan.copies.len(),
        });
        let (loop_sender, mut loop_events) = mpsc::unbounded_channel::<LoopEvent>();
        let mut queue = plan.dependency_queue();
        let mut tasks: JoinSet<TaskOutcome> = JoinSet::new();
        let mut task_jobs = HashMap::new();
        let mut state = LoopState {
            build_images: HashMap::new(),
            images: 0,
            succeeded: 0,
            failed: 0,
            interrupted: None,
            stopping: false,
            cancel: CancellationToken::new(),
            waiting: BTreeMap::new(),
            timings: BTreeMap::new(),
            held_build_slots: HashMap::new(),
            copies_to_end: plan.builds.iter().map(|build| (build.index, build.copies.len())).collect(),
        };

        loop {
            if !state.stopping {
                while let Some(job) = queue.pop_ready() {
                    state.waiting.entry(self.pool(job)).or_default().push_back(job);
                }
                self.start_what_fits(&mut state, &loop_sender, &mut tasks, &mut task_jobs);
            }
            if tasks.is_empty() {
                debug_assert!(state.stopping || state.waiting.values().all(VecDeque::is_empty));
                break;
            }
            let event = tokio::select! {
                biased;
                Some(interrupt) = interrupts.recv() => LoopEvent::Interrupt(interrupt),
                Some(event) = loop_events.recv() => event,
                Some(joined) = tasks.join_next_with_id() => match joined {
                    Ok((task, (job, failures, slot))) => {
                        task_jobs.remove(&task);
                        LoopEvent::JobDone { job, failures, slot: Some(slot) }
                    }
                    Err(error) => {
                        let job = task_jobs.remove(&error.id()).expect("every task is a job");
                        let (flavor, region) = plan.placement(job);
                        let label = JobLabel { flavor: flavor.clone(), region: region.clone() };
                        let failures = vec![Failure::new(&label, Stage::Cleanup, format!("the job crashed: {error}"))];
                        LoopEvent::JobDone { job, failures, slot: None }
                    }
                },
            };
            // An image is announced before its job ends: handle announcements first.
            let mut pending = Vec::new();
            if matches!(event, LoopEvent::JobDone { .. }) {
                while let Ok(earlier) = loop_events.try_recv() {
                    pending.push(earlier);
                }
            }
            pending.push(event);
            for event in pending {
                if let ControlFlow::Abandon = self.handle(event, &mut state, &mut queue) {
                    tasks.abort_all();
                    return self.finish(&state, true);
                }
            }
        }
        self.finish(&state, false)
    }

    fn handle(&self, event: LoopEvent, state: &mut LoopState, queue: &mut DependencyQueue<JobId>) -> ControlFlow {
        match event {
            LoopEvent::ImageAvailable { job, artifact } => {
                state.timings.entry(job).or_default().available = Some(self.run.clock.elapsed());
                state.images += 1;
                if let JobId::Build(index) = job {
                    state.build_images.insert(index, artifact);
                    queue.satisfied(&job);
                }
            }
            LoopEvent::JobDone { job, failures, slot } => {
                state.timings.entry(job).or_default().ended = Some(self.run.clock.elapsed());
                self.release(job, slot, state);
                if failures.is_empty() {
                    state.succeeded += 1;
                    return ControlFlow::Continue;
                }
                state.failed += 1;
                for failure in failures {
                    self.events.send(RunEvent::JobFailed(failure));
                }
                let why = match job {
                    JobId::Build(index) => {
                        let build = &self.plan.builds[index];
                        format!("not copied: the build of {} in {} failed", build.flavor, build.region)
                    }
                    JobId::Copy(_) => String::new(),
                };
                for skipped in queue.failed(&job) {
                    self.record_not_started(skipped, Stage::Skipped, &why, state);
                }
                if self.fail_fast && !state.stopping {
                    state.stopping = true;
                    for skipped in Self::drain_not_started(queue, state) {
                        self.record_not_started(
                            skipped,
                            Stage::Skipped,
                            "not started: --fail-fast stopped the run after a failure",
                            state,
                        );
                    }
                }
            }
            LoopEvent::Interrupt(interrupt) => {
                if state.interrupted.is_some() {
                    return ControlFlow::Abandon;
                }
                state.interrupted = Some(interrupt);
                self.events.send(RunEvent::Interrupted { signal: interrupt.signal });
                state.stopping = true;
                state.cancel.cancel();
                for skipped in Self::drain_not_started(queue, state) {
                    self.record_not_started(skipped, Stage::Interrupted, "not started: the run was interrupted", state);
                }
            }
        }
        ControlFlow::Continue
    }

    /// Gives a finished job's slot back, or keeps a build's until its copies end.
    fn release(&self, job: JobId, slot: Option<OwnedSemaphorePermit>, state: &mut LoopState) {
        match job {
            JobId::Build(index) => {
                let copies_left = state.copies_to_end.get(&index).copied().unwrap_or(0);
                if let (BuildSlotRelease::AfterItsCopies, Some(slot), 1..) = (self.build_slot, slot, copies_left) {
                    state.held_build_slots.insert(index, slot);
                }
            }
            JobId::Copy(index) => self.copy_ended(index, state),
        }
    }

    /// A copy ended or will never start: its build's held slot may be free now.
    fn copy_ended(&self, index: usize, state: &mut LoopState) {
        let build = self.plan.copies[index].build;
        let left = state.copies_to_end.entry(build).or_default();
        *left = left.saturating_sub(1);
        if *left == 0 {
            state.held_build_slots.remove(&build);
        }
    }

    fn record_not_started(&self, job: JobId, stage: Stage, why: &str, state: &mut LoopState) {
        if let JobId::Copy(index) = job {
            self.copy_ended(index, state);
        }
        let (flavor, region) = self.plan.placement(job);
        let label = JobLabel { flavor: flavor.clone(), region: region.clone() };
        state.failed += 1;
        self.events.send(RunEvent::JobFailed(Failure::new(&label, stage, why)));
    }

    /// Every job that has not started: waiting for a slot first (in plan order), then the rest of the queue.
    fn drain_not_started(queue: &mut DependencyQueue<JobId>, state: &mut LoopState) -> Vec<JobId> {
        let mut jobs: Vec<JobId> = std::mem::take(&mut state.waiting).into_values().flatten().collect();
        jobs.extend(queue.drain());
        jobs
    }

    fn pool(&self, job: JobId) -> SlotPool {
        match job {
            JobId::Build(_) => SlotPool::Builds,
            JobId::Copy(index) => SlotPool::CopiesInto(self.plan.copies[index].target_region.clone()),
        }
    }

    /// Starts waiting jobs, in plan order, for as long as their pool has a free slot.
    fn start_what_fits(
        &self,
        state: &mut LoopState,
        loop_sender: &mpsc::UnboundedSender<LoopEvent>,
        tasks: &mut JoinSet<TaskOutcome>,
        task_jobs: &mut HashMap<tokio::task::Id, JobId>,
    ) {
        let pools: Vec<SlotPool> = state.waiting.keys().cloned().collect();
        for pool in pools {
            let slots = match &pool {
                SlotPool::Builds => self.limits.builds(),
                SlotPool::CopiesInto(region) => self.limits.copies_into(region),
            };
            while state.waiting.get(&pool).is_some_and(|jobs| !jobs.is_empty()) {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { break };
                let job = state.waiting.get_mut(&pool).and_then(VecDeque::pop_front).expect("checked non-empty");
                state.timings.insert(job, JobTiming { started: self.run.clock.elapsed(), ..JobTiming::default() });
                let task = self.spawn(job, slot, state, loop_sender, tasks);
                task_jobs.insert(task, job);
            }
        }
    }

    /// Starts a job as a task holding its slot until it ends.
    fn spawn(
        &self,
        job: JobId,
        slot: OwnedSemaphorePermit,
        state: &LoopState,
        loop_sender: &mpsc::UnboundedSender<LoopEvent>,
        tasks: &mut JoinSet<TaskOutcome>,
    ) -> tokio::task::Id {
        let (flavor_name, region) = self.plan.placement(job);
        let label = JobLabel { flavor: flavor_name.clone(), region: region.clone() };
        let flavor = self
            .run
            .fleet
            .flavors
            .iter()
            .find(|flavor| &flavor.name == flavor_name)
            .expect("the plan names only configured flavors")
            .clone();
        let announce = Announcer { job, label, events: self.events.clone(), scheduler: loop_sender.clone() };
        match job {
            JobId::Build(index) => {
                let build_job = self.plan.builds[index].clone();
                let context = BuildContext {
                    run: Arc::clone(&self.run),
                    cloud: self.cloud.region(&build_job.region),
                    waits: self.waits.region(&build_job.region),
                    communicator: Arc::clone(&self.communicator),
                    flavor,
                    job: build_job,
                    events: self.events.clone(),
                    cancel: state.cancel.clone(),
                };
                tasks
                    .spawn(async move {
                        let failures = build::run(context, |artifact| announce.image_available(artifact)).await;
                        (job, failures, slot)
                    })
                    .id()
            }
            JobId::Copy(index) => {
                let copy_job = self.plan.copies[index].clone();
                let source = state.build_images.get(&copy_job.build).expect("a copy starts after its image").clone();
                let context = CopyContext {
                    run: Arc::clone(&self.run),
                    cloud: self.cloud.region(&copy_job.target_region),
                    waits: self.waits.region(&copy_job.target_region),
                    flavor,
                    job: copy_job,
                    source,
                    events: self.events.clone(),
                    cancel: state.cancel.clone(),
                };
                tasks
                    .spawn(async move {
                        match copy::run(context).await {
                            Ok(artifact) => {
                                announce.image_available(&artifact);
                                (job, Vec::new(), slot)
                            }
                            Err(failure) => (job, vec![failure], slot),
                        }
                    })
                    .id()
            }
        }
    }

    fn finish(&self, state: &LoopState, abandoned: bool) -> RunSummary {
        let status = if state.interrupted.is_some() || abandoned {
            RunStatus::Partial
        } else if state.failed == 0 {
            RunStatus::Complete
        } else if state.images == 0 {
            RunStatus::Failed
        } else {
            RunStatus::Partial
        };
        self.events.send(RunEvent::RunFinished {
            status,
            finished_at: self.run.clock.now(),
            succeeded: state.succeeded,
            failed: state.failed,
        });
        RunSummary {
            status,
            succeeded: state.succeeded,
            failed: state.failed,
            interrupted: state.interrupted,
            abandoned,
            makespan: self.run.clock.elapsed(),
            timings: state.timings.clone(),
        }
    }
}

/// Tells the reporters (in order with the job's other events) and the loop that a job's image is available.
struct Announcer {
    job: JobId,
    label: JobLabel,
    events: EventSender,
    scheduler: mpsc::UnboundedSender<LoopEvent>,
}

impl Announcer {
    fn image_available(&self, artifact: &Artifact) {
        self.events.send(RunEvent::ImageAvailable { job: self.label.clone(), artifact: artifact.clone() });
        // The loop outlives its jobs; a closed channel means the run was abandoned.
        let _ = self.scheduler.send(LoopEvent::ImageAvailable { job: self.job, artifact: artifact.clone() });
    }
}

enum ControlFlow {
    Continue,
    Abandon,
}
