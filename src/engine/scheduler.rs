//! The one loop that executes a plan: ready jobs wait in plan order for a slot of their pool
//! ([`crate::engine::slots`]) and start as tasks holding it, from the image of their input, through the
//! [`JobRunner`] port; every source (an image became available, a job ended, an interrupt) becomes one
//! [`LoopEvent`], handled in one place. Any job's image satisfies the jobs that wait on it: the plan's graph
//! ([`Plan::input`]) says who, the loop never assumes builds-then-copies. When every job has ended, complete
//! flavors are published ([`crate::engine::publish`]) and the run's leftovers swept ([`crate::engine::sweep`]).
//!
//! A failure never stops the loop: it is recorded, dependents are skipped, unrelated jobs go on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::engine::limits::RunLimits;
use crate::engine::publish::{Images, Publisher};
use crate::engine::runner::{publish_available, Announcer, JobRunner};
use crate::engine::slots::{HeldSlots, SlotPool, SlotPools};
use crate::engine::sweep::Sweeper;
use crate::outcome::{
    Artifact, Failure, InProgress, JobEnd, JobLabel, Publication, RunStatus, SpotInterruption, Stage,
};
use crate::plan::bound::JobTiming;
use crate::plan::{Awaited, JobId, JobQueue, Plan};
use crate::report::events::{EventSender, JobKind, PlannedLanding, RunEvent};
use crate::state::journal::{Journal, Record};
use crate::state::resume::Prior;
use crate::util::clock::RunClock;

pub use crate::engine::exit::Interrupt;
pub use crate::engine::slots::BuildSlotRelease;
pub use crate::engine::summary::RunSummary;

/// Everything the loop hears, from its jobs and from outside.
pub(crate) enum LoopEvent {
    ImageAvailable { job: JobId, artifact: Artifact },
    JobDone { job: JobId, end: JobEnd, slot: Option<OwnedSemaphorePermit> },
    Interrupt(Interrupt),
}

/// What a job's task hands back: how it ended, and its slot.
type TaskOutcome = (JobId, JobEnd, OwnedSemaphorePermit);

pub struct Scheduler {
    /// The run's time: when jobs start, make their image and end.
    pub clock: RunClock,
    /// The run's journal: the steps write to it through `run.ledger`, the loop directly (images available,
    /// failures, the end).
    pub journal: Arc<Journal>,
    pub plan: Arc<Plan>,
    /// Runs each job once it has its slot and its input.
    pub runner: Arc<dyn JobRunner>,
    pub publisher: Publisher,
    pub sweeper: Sweeper,
    pub limits: Arc<RunLimits>,
    pub events: EventSender,
    /// Stop starting new jobs after the first failure.
    pub fail_fast: bool,
    pub build_slot: BuildSlotRelease,
    /// Resuming or `--changed-only`: what earlier attempts or runs left, per job (an available image is reused).
    pub priors: BTreeMap<JobId, Prior>,
    /// Resuming: what each job's image was already published to.
    pub published: BTreeMap<JobId, Vec<Publication>>,
    /// Said of a job right after the run starts (`--changed-only`: why it is rebuilt).
    pub notes: Vec<(JobLabel, String)>,
    /// `--changed-only`: what could not be applied again to a reused image, its job's failures.
    pub reuse_failures: BTreeMap<JobId, Vec<Failure>>,
}

/// What the loop knows while it runs.
struct LoopState {
    /// Every job's image, once available: what the jobs waiting on it start from.
    artifacts: BTreeMap<JobId, Artifact>,
    /// Jobs that failed, or never started.
    failed_jobs: BTreeSet<JobId>,
    images: usize,
    succeeded: usize,
    failed: usize,
    in_progress: usize,
    reused: usize,
    interrupted: Option<Interrupt>,
    /// Nothing new starts (interrupt, fail-fast, or credentials that expired).
    stopping: bool,
    /// A job met credentials AWS refused as expired: nothing new started after it.
    credentials_expired: bool,
    /// In-flight jobs give up their waits and clean up (interrupt only).
    cancel: CancellationToken,
    /// Ready jobs waiting for a slot, per pool, in plan order, with the pool's slots.
    waiting: SlotPools,
    timings: BTreeMap<JobId, JobTiming>,
    /// Build slots held until their copies end ([`BuildSlotRelease::AfterItsCopies`]).
    held_slots: HeldSlots,
    /// Builds made again on demand after EC2 took their spot instance back: the attempts lost.
    spot_interruptions: BTreeMap<JobId, Vec<SpotInterruption>>,
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
            planned: plan.jobs().map(|job| self.landing(job)).collect(),
            selective: !plan.selection.is_everything(),
        });
        for (job, note) in &self.notes {
            self.events.progress(job, Stage::SourceAmi, note.clone());
        }
        let (loop_sender, mut loop_events) = mpsc::unbounded_channel::<LoopEvent>();
        let mut queue = plan.dependency_queue();
        let mut tasks: JoinSet<TaskOutcome> = JoinSet::new();
        let mut task_jobs = HashMap::new();
        let mut state = LoopState {
            artifacts: BTreeMap::new(),
            failed_jobs: BTreeSet::new(),
            images: 0,
            succeeded: 0,
            failed: 0,
            in_progress: 0,
            reused: 0,
            interrupted: None,
            stopping: false,
            credentials_expired: false,
            cancel: CancellationToken::new(),
            waiting: SlotPools::new(Arc::clone(&self.limits)),
            timings: BTreeMap::new(),
            held_slots: HeldSlots::new(&plan),
            spot_interruptions: BTreeMap::new(),
        };
        loop {
            if !state.stopping {
                while let Some(job) = queue.pop_ready() {
                    match self.priors.get(&job) {
                        Some(Prior::Available(artifact)) => self.reuse(job, artifact, &mut state, &mut queue),
                        _ => state.waiting.push(SlotPool::of(&self.plan, job), job),
                    }
                }
                self.start_what_fits(&mut state, &loop_sender, &mut tasks, &mut task_jobs);
            }
            if tasks.is_empty() {
                debug_assert!(state.stopping || state.waiting.is_empty());
                break;
            }
            let event = tokio::select! {
                biased;
                Some(interrupt) = interrupts.recv() => LoopEvent::Interrupt(interrupt),
                Some(event) = loop_events.recv() => event,
                Some(joined) = tasks.join_next_with_id() => match joined {
                    Ok((task, (job, end, slot))) => {
                        task_jobs.remove(&task);
                        LoopEvent::JobDone { job, end, slot: Some(slot) }
                    }
                    Err(error) => {
                        let job = task_jobs.remove(&error.id()).expect("every task is a job");
                        let label = self.label(job);
                        let failures = vec![Failure::new(&label, Stage::Cleanup, format!("the job crashed: {error}"))];
                        LoopEvent::JobDone { job, end: JobEnd { failures, ..JobEnd::default() }, slot: None }
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
        if state.interrupted.is_none() {
            self.publish_complete_flavors(&mut state).await;
        }
        if let ControlFlow::Abandon = self.sweep(&mut state, &mut interrupts, &mut queue).await {
            return self.finish(&state, true);
        }
        self.finish(&state, false)
    }

    /// A job an earlier attempt finished: announced and done without a task.
    fn reuse(&self, job: JobId, artifact: &Artifact, state: &mut LoopState, queue: &mut JobQueue) {
        // With what earlier attempts published of it: journaled apart from the image when a flavor is
        // published at the end of a run, and not published again.
        let mut artifact = artifact.clone();
        for publication in self.published.get(&job).into_iter().flatten() {
            if !artifact.published.contains(publication) {
                artifact.published.push(publication.clone());
            }
        }
        let artifact = &artifact;
        let label = self.label(job);
        let detail = match &artifact.reused_from {
            Some(run) => format!("reusing {} of run {run}: nothing changed", artifact.image_id),
            None => format!("{} is available from an earlier attempt", artifact.image_id),
        };
        self.events.progress(&label, Stage::Reused, detail);
        publish_available(&self.journal, &self.events, self.plan.key(job), label, artifact);
        state.reused += 1;
        self.handle(LoopEvent::ImageAvailable { job, artifact: artifact.clone() }, state, queue);
        let failures = self.reuse_failures.get(&job).cloned().unwrap_or_default();
        let end = JobEnd { failures, ..JobEnd::default() };
        self.handle(LoopEvent::JobDone { job, end, slot: None }, state, queue);
    }

    /// Once every job has ended: the sweep ([`crate::engine::sweep`]). A first interrupt now changes nothing
    /// (there is nothing left to start); a second abandons the sweep.
    async fn sweep(
        &self,
        state: &mut LoopState,
        interrupts: &mut mpsc::UnboundedReceiver<Interrupt>,
        queue: &mut JobQueue,
    ) -> ControlFlow {
        let sweeping = self.sweeper.sweep(&self.plan);
        tokio::pin!(sweeping);
        loop {
            tokio::select! {
                biased;
                Some(interrupt) = interrupts.recv() => {
                    if let ControlFlow::Abandon = self.handle(LoopEvent::Interrupt(interrupt), state, queue) {
                        return ControlFlow::Abandon;
                    }
                }
                problems = &mut sweeping => {
                    state.failed += problems;
                    return ControlFlow::Continue;
                }
            }
        }
    }

    fn handle(&self, event: LoopEvent, state: &mut LoopState, queue: &mut JobQueue) -> ControlFlow {
        match event {
            LoopEvent::ImageAvailable { job, artifact } => {
                state.timings.entry(job).or_default().available = Some(self.clock.elapsed());
                state.images += 1;
                state.artifacts.insert(job, artifact);
                queue.satisfied(&job, &Awaited::Image);
            }
            LoopEvent::JobDone { job, end, slot } => {
                let timing = state.timings.entry(job).or_default();
                let ended = self.clock.elapsed();
                timing.ended = Some(ended);
                // A job that ran as a task (not reused, not crashed): its durations teach the next estimate.
                if slot.is_some() {
                    let since = |at: std::time::Duration| at.saturating_sub(timing.started).as_secs_f64();
                    let to_image = timing.available.map(since);
                    self.journal.record(Record::JobTimed { job: self.plan.key(job), to_image, to_end: since(ended) });
                }
                self.release(job, slot, state);
                if !end.spot_interruptions.is_empty() {
                    state.spot_interruptions.insert(job, end.spot_interruptions);
                }
                let left_in_progress = end.in_progress.is_some();
                if let Some(image_id) = end.in_progress {
                    state.in_progress += 1;
                    self.events.send(RunEvent::ImageInProgress(InProgress::new(&self.label(job), image_id)));
                }
                let failures = end.failures;
                let expired = failures.iter().any(Failure::credentials_expired);
                if failures.is_empty() {
                    if !left_in_progress {
                        state.succeeded += 1;
                        self.events.send(RunEvent::JobSucceeded { job: self.label(job) });
                    }
                    return ControlFlow::Continue;
                }
                state.failed += 1;
                state.failed_jobs.insert(job);
                for failure in failures {
                    self.report_failure(job, failure);
                }
                // After its failures, so the manifest's failure entry lists it.
                if let Some(kept) = end.kept {
                    self.events.send(RunEvent::Kept(kept));
                }
                for skipped in queue.failed(&job) {
                    self.record_not_started(skipped, Stage::Skipped, &self.plan.why_skipped(skipped, job), state);
                }
                // Static credentials past their end refuse every call from now on: starting more work would
                // only make more to clean up that cannot be (docs/reliability.md "Credentials over a long run").
                if expired && !state.credentials_expired {
                    state.credentials_expired = true;
                    state.stopping = true;
                    for skipped in Self::drain_not_started(queue, state) {
                        self.record_not_started(
                            skipped,
                            Stage::Skipped,
                            "not started: the credentials expired (AWS answered `ExpiredToken`)",
                            state,
                        );
                    }
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

    /// The flavor and the place (account and region) a job's image lands in.
    fn label(&self, job: JobId) -> JobLabel {
        JobLabel { flavor: self.plan.placement(job).0.clone(), place: self.plan.place_of(job) }
    }

    /// A job as reporters know it.
    fn landing(&self, job: JobId) -> PlannedLanding {
        let (kind, build_region) = match job {
            JobId::Build(index) => (JobKind::Build, self.plan.builds[index].region.clone()),
            JobId::Copy(index) => (JobKind::Copy, self.plan.copies[index].source_region.clone()),
        };
        PlannedLanding { job: self.label(job), kind, build_region }
    }

    /// Gives a finished job's slot back, or keeps a build's until the jobs it holds it for end.
    fn release(&self, job: JobId, slot: Option<OwnedSemaphorePermit>, state: &mut LoopState) {
        state.held_slots.ended(&self.plan, job);
        let holds =
            self.build_slot == BuildSlotRelease::AfterItsCopies && SlotPool::of(&self.plan, job) == SlotPool::Builds;
        if let (true, Some(slot)) = (holds, slot) {
            state.held_slots.keep(job, slot);
        }
    }

    fn record_not_started(&self, job: JobId, stage: Stage, why: &str, state: &mut LoopState) {
        state.held_slots.ended(&self.plan, job);
        let label = self.label(job);
        state.failed += 1;
        state.failed_jobs.insert(job);
        self.report_failure(job, Failure::new(&label, stage, why));
    }

    /// `[publish] when = "flavor_complete"` ([`crate::engine::publish`]): a publish failure makes its job a
    /// failure.
    async fn publish_complete_flavors(&self, state: &mut LoopState) {
        // Which flavors are complete is settled before anything is published.
        let (artifacts, failed_jobs) = (state.artifacts.clone(), state.failed_jobs.clone());
        let images = Images { artifacts: &artifacts, failed_jobs: &failed_jobs, published_before: &self.published };
        let failed = |job: JobId, failure: Failure| {
            if state.failed_jobs.insert(job) {
                state.failed += 1;
                state.succeeded = state.succeeded.saturating_sub(1);
            }
            self.report_failure(job, failure);
        };
        self.publisher.publish_complete_flavors(&self.plan, images, failed).await;
    }

    /// A job's failure: journaled, then told to the reporters.
    fn report_failure(&self, job: JobId, failure: Failure) {
        self.journal.record(Record::JobFailed { job: self.plan.key(job), failure: failure.clone() });
        self.events.send(RunEvent::JobFailed(failure));
    }

    /// Every job that has not started: waiting for a slot first (in plan order), then the rest of the queue.
    fn drain_not_started(queue: &mut JobQueue, state: &mut LoopState) -> Vec<JobId> {
        let mut jobs = state.waiting.drain();
        jobs.extend(queue.drain());
        jobs
    }

    /// Starts waiting jobs, in plan order, for as long as their pool has a free slot.
    fn start_what_fits(
        &self,
        state: &mut LoopState,
        loop_sender: &mpsc::UnboundedSender<LoopEvent>,
        tasks: &mut JoinSet<TaskOutcome>,
        task_jobs: &mut HashMap<tokio::task::Id, JobId>,
    ) {
        for (job, slot) in state.waiting.take_what_fits() {
            state.timings.insert(job, JobTiming { started: self.clock.elapsed(), ..JobTiming::default() });
            let PlannedLanding { job: label, kind, .. } = self.landing(job);
            self.events.send(RunEvent::JobStarted { job: label, kind });
            let task = self.spawn(job, slot, state, loop_sender, tasks);
            task_jobs.insert(task, job);
        }
    }

    /// Starts a job as a task holding its slot until it ends, from the image it waits on.
    fn spawn(
        &self,
        job: JobId,
        slot: OwnedSemaphorePermit,
        state: &LoopState,
        loop_sender: &mpsc::UnboundedSender<LoopEvent>,
        tasks: &mut JoinSet<TaskOutcome>,
    ) -> tokio::task::Id {
        let announce = Announcer {
            job,
            key: self.plan.key(job),
            label: self.label(job),
            events: self.events.clone(),
            scheduler: loop_sender.clone(),
            journal: Arc::clone(&self.journal),
        };
        let input = self.plan.input(job).map(|input| state.artifacts[&input].clone());
        let running = self.runner.run(job, input, announce, state.cancel.clone());
        tasks.spawn(async move { (job, running.await, slot) }).id()
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
        let interrupted = state.interrupted.is_some() || abandoned;
        self.journal.record(Record::Finished { status, interrupted });
        self.events.send(RunEvent::RunFinished {
            status,
            finished_at: self.clock.now(),
            succeeded: state.succeeded,
            failed: state.failed,
            in_progress: state.in_progress,
        });
        // What the journal says was created and never removed: by the cleanup and sweep that an abandoned run
        // skipped, or that failed (credentials gone for good, a refused delete).
        let left_behind = self.journal.outstanding().iter().map(ToString::to_string).collect();
        RunSummary {
            status,
            succeeded: state.succeeded,
            failed: state.failed,
            in_progress: state.in_progress,
            reused: state.reused,
            interrupted: state.interrupted,
            abandoned,
            credentials_expired: state.credentials_expired,
            left_behind,
            makespan: self.clock.elapsed(),
            timings: state.timings.clone(),
            images: state.artifacts.iter().map(|(job, artifact)| (*job, artifact.image_id.clone())).collect(),
            failed_jobs: state.failed_jobs.clone(),
            built_on: state
                .artifacts
                .iter()
                .filter(|(job, artifact)| matches!(job, JobId::Build(_)) && artifact.reused_from.is_none())
                .filter_map(|(job, artifact)| Some((*job, artifact.settings.built_on.clone()?)))
                .collect(),
            spot_interruptions: state.spot_interruptions.clone(),
        }
    }
}

enum ControlFlow {
    Continue,
    Abandon,
}

#[cfg(test)]
mod tests;
