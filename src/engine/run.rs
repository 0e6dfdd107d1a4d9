//! `fleetbake matrix`: from a loaded fleet to a finished run. Makes the plan, settles the SSH source
//! addresses, connects the cloud (AWS, or the simulated one), starts the reporters, hands everything to the
//! scheduler and writes the run statistics.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::cloud::aws::AwsCloud;
use crate::cloud::limiter::Pacing;
use crate::cloud::retry::Policy;
use crate::cloud::sim::{SimCloud, SimReport};
use crate::cloud::watch::{WaitStyle, Waits, BATCH_INTERVAL};
use crate::cloud::Cloud;
use crate::config::Fleet;
use crate::engine::limits::RunLimits;
use crate::engine::preflight::{self, Preflight};
use crate::engine::publish::Publisher;
use crate::engine::runner::StepRunner;
use crate::engine::scheduler::{BuildSlotRelease, Interrupt, RunSummary, Scheduler};
use crate::engine::summary::RunStatistics;
use crate::engine::sweep::Sweeper;
use crate::outcome::JobLabel;
use crate::plan::{JobId, Plan, RunId};
use crate::remote::net::{self, DetectError};
use crate::remote::sim::SimCommunicator;
use crate::remote::{key_dirs, Communicator, SshCommunicator};
use crate::report::estimate::Estimator;
use crate::report::events::{EventSender, LocalLeftovers, RunEvent};
use crate::report::{self, JsonLinesReporter, LiveReporter, ReportError, Reporter, TerminalReporter};
use crate::state::journal::{Journal, JournalDir, JournalError, Replay, RunLock};
use crate::state::manifest::{check_existing, ExistingManifestError, ManifestWriter, SetAside};
use crate::state::packer::PackerManifestWriter;
use crate::steps::context::{RunContext, RunLogs};
use crate::steps::distribute::DistributionGrants;
use crate::steps::ledger::Ledger;
use crate::steps::network::SshSources;
use crate::util::clock::RunClock;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    DetectAddress(#[from] DetectError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("cannot write the run statistics `{path}`: {error}")]
    Statistics { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot resume: {0}")]
    Resume(#[from] crate::cloud::CloudError),
    #[error("preflight: {} of {} checks failed; nothing was created (`--no-preflight` skips it)", .0.failures().count(), .0.checks.len())]
    Preflight(Preflight),
    /// A `[[distribution]]` organizational unit could not be resolved into accounts: no plan can be made.
    #[error("preflight: {} of `[[distribution]]`'s organizational units could not be resolved into accounts; nothing was created", .0.failures().count())]
    Units(Preflight),
    #[error("cannot open `{path}` for the events: {error}")]
    Events { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Manifest(#[from] ExistingManifestError),
    /// `[sim] state` could not be read, or the account not kept.
    #[error(transparent)]
    SimState(#[from] crate::cloud::sim::SimStateError),
}

pub struct MatrixOptions {
    pub fail_fast: bool,
    /// Check everything before the first mutating call (`--no-preflight` turns it off).
    pub preflight: bool,
    /// Continue the newest interrupted or killed run of the fleet instead of starting one.
    pub resume: bool,
    /// Where to write the run statistics, if anywhere.
    pub summary_json: Option<PathBuf>,
    pub output: OutputOptions,
}

/// What the run shows a person, and what it writes for machines besides the manifest.
#[derive(Clone, Debug, Default)]
pub struct OutputOptions {
    pub view: View,
    /// `--events`: every event as a JSON line.
    pub events: Option<EventsTo>,
    /// `--packer-manifest`, over `[fleet] packer_manifest`.
    pub packer_manifest: Option<PathBuf>,
}

/// How the run shows itself on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// The live view (stderr is a terminal).
    Live,
    /// Timestamped lines (CI logs, `--plain`).
    #[default]
    Plain,
    /// Failures and the summary only (`-q`).
    Quiet,
}

/// Where `--events` goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventsTo {
    Stdout,
    File(PathBuf),
}

/// How a run waits and gives build slots back: fleetbake's way, or (for comparison in the benches) the way
/// most tools do it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strategy {
    pub waits: WaitStyle,
    pub build_slot: BuildSlotRelease,
    pub pacing: Pacing,
}

impl Strategy {
    pub const FLEETBAKE: Strategy =
        Strategy { waits: WaitStyle::Batched, build_slot: BuildSlotRelease::WhenCleanedUp, pacing: Pacing::Adaptive };
    /// A waiter per image polling every 15 s; a build's slot held until all of its copies end; EC2's rates
    /// whatever the throttles.
    pub const NAIVE: Strategy = Strategy {
        waits: WaitStyle::Alone { interval: Duration::from_secs(15) },
        build_slot: BuildSlotRelease::AfterItsCopies,
        pacing: Pacing::Fixed,
    };
    /// fleetbake's way, but sending at EC2's rates whatever the throttles: the benches' comparison for a
    /// shared account.
    pub const FIXED_PACING: Strategy = Strategy { pacing: Pacing::Fixed, ..Strategy::FLEETBAKE };
}

/// What a finished run hands back.
pub struct RunOutcome {
    pub summary: RunSummary,
    pub statistics: RunStatistics,
}

/// Runs the whole matrix against AWS (or whatever `[aws] endpoint_url` points at).
pub async fn matrix(
    fleet: Fleet,
    options: MatrixOptions,
    interrupts: mpsc::UnboundedReceiver<Interrupt>,
) -> Result<RunOutcome, RunError> {
    // One run of a fleet file at a time, then the journal: either stops the run before any AWS call.
    let run_lock = RunLock::acquire(&JournalDir::of(&fleet))?;
    // `[[distribution]]` units become accounts before any plan (a resumed one included) is made.
    let (mut fleet, _) =
        preflight::units::resolve(fleet, preflight::units::UnitsFrom::Aws).await.map_err(RunError::Units)?;
    // What runs killed outright left on this machine (ssh masters, key directories), whatever their fleet.
    let local_leftovers = key_dirs::end_leftovers(&std::env::temp_dir()).await;
    let start = if options.resume {
        let (replay, plan) = crate::state::resume::prepare(&mut fleet)?;
        Start::Resume { replay: Box::new(replay), plan }
    } else {
        Start::fresh(&fleet, Some(JournalDir::of(&fleet)))
    };
    // A manifest that cannot be read refuses a selective run here; a full run keeps it beside once it starts.
    let unreadable = check_existing(&fleet.manifest_path, !start.plan().selection.is_everything())?;
    let fleet = Arc::new(fleet);
    // This machine's address is detected only when a build is reached from outside its VPC.
    let ssh_sources = match &fleet.ssh.source_cidrs {
        Some(cidrs) => SshSources::Configured(cidrs.clone()),
        None if !fleet.needs_this_machines_address() => SshSources::InsideTheVpc,
        None => SshSources::ThisMachine(net::detect_public_cidr(&fleet.ssh.ip_detect_url).await?),
    };
    let limits = Arc::new(RunLimits::new(&fleet.limits, Policy::THROTTLED, Strategy::FLEETBAKE.pacing));
    let cloud: Arc<dyn Cloud> = Arc::new(
        AwsCloud::connect(&fleet.aws, &start.plan().run_id, home_region(&fleet), Arc::clone(limits.api())).await,
    );
    let runner = preflight::Runner::this_machine(Some(&ssh_sources));
    let preflight = preflight_unless_skipped(&fleet, start.plan(), &*cloud, &runner, options.preflight).await?;
    let manifest_set_aside = unreadable.map(|manifest| manifest.set_aside(start.plan().started_at)).transpose()?;
    let execution = Execution {
        fleet: Arc::clone(&fleet),
        ssh_sources,
        cloud,
        communicator: SshCommunicator::shared(start.plan().run_id.as_str()),
        limits: Arc::clone(&limits),
        strategy: Strategy::FLEETBAKE,
        fail_fast: options.fail_fast,
        reporters: standard_reporters(&fleet, start.plan(), Duration::ZERO, &options.output)?,
        run_lock: Some(run_lock),
        preflight,
        local_leftovers,
        manifest_set_aside,
    };
    let (plan, summary) = execution.run(start, interrupts).await?;
    let statistics = RunStatistics::new(&plan, &fleet, &summary, limits.stats(), None);
    finish(summary, statistics, options.summary_json)
}

/// Where a simulated run writes its manifest: beside the real one, never over it (`manifest.sim.json`).
pub fn simulated_manifest_path(fleet: &Fleet) -> PathBuf {
    fleet.manifest_path.with_extension("sim.json")
}

/// Any address will do in the simulated cloud: the security groups open port 22 to this one unless `ssh.source_cidrs` says.
const SIMULATED_BUILDER_CIDR: &str = "192.0.2.10/32";

/// Runs the whole matrix against the simulated cloud, in Tokio's clock (paused, for virtual time, by the caller).
pub async fn matrix_simulated(
    fleet: Fleet,
    options: MatrixOptions,
    strategy: Strategy,
    reporters: Option<Vec<Box<dyn Reporter>>>,
    interrupts: mpsc::UnboundedReceiver<Interrupt>,
) -> Result<RunOutcome, RunError> {
    let (mut fleet, _) =
        preflight::units::resolve(fleet, preflight::units::UnitsFrom::Simulated).await.map_err(RunError::Units)?;
    fleet.manifest_path = simulated_manifest_path(&fleet);
    fleet.packer_manifest_path = fleet.packer_manifest_path.map(|path| path.with_extension("sim.json"));
    let fleet = Arc::new(fleet);
    let ssh_sources = match &fleet.ssh.source_cidrs {
        Some(cidrs) => SshSources::Configured(cidrs.clone()),
        None if !fleet.needs_this_machines_address() => SshSources::InsideTheVpc,
        // The simulated runner's address, if the fleet models it (`[sim] runner_address`), is what "detection" finds.
        None => SshSources::ThisMachine(match fleet.sim.runner_address {
            Some(address) => ipnet::IpNet::from(address),
            None => SIMULATED_BUILDER_CIDR.parse().expect("a valid CIDR"),
        }),
    };
    // With `[sim] state`, the account an earlier run kept: its clock continues, and it is kept again at the end.
    // Locked from here to the process's end: another process saving it would overwrite this run's account.
    let sim = Arc::new(SimCloud::open_to_keep(&fleet)?);
    let limits = Arc::new(RunLimits::new(&fleet.limits, Policy::THROTTLED, strategy.pacing));
    let cloud: Arc<dyn Cloud> =
        Arc::new(crate::cloud::Limited::new(Arc::clone(&sim) as Arc<dyn Cloud>, Arc::clone(limits.api())));
    // The run's journal stays in memory (nothing resumes a simulated run); its clock is the account's.
    let start = Start::fresh_on(&fleet, None, sim.run_clock());
    let unreadable = check_existing(&fleet.manifest_path, !start.plan().selection.is_everything())?;
    let runner = preflight::Runner::simulated(&fleet.sim);
    let preflight = preflight_unless_skipped(&fleet, start.plan(), &*cloud, &runner, options.preflight).await?;
    let manifest_set_aside = unreadable.map(|manifest| manifest.set_aside(start.plan().started_at)).transpose()?;
    let execution = Execution {
        fleet: Arc::clone(&fleet),
        ssh_sources,
        cloud,
        communicator: Arc::new(SimCommunicator::new(Arc::clone(&sim), Arc::clone(&fleet))) as Arc<dyn Communicator>,
        limits: Arc::clone(&limits),
        strategy,
        fail_fast: options.fail_fast,
        // A virtual night makes thousands of events; the manifest is rewritten at most every simulated minute.
        reporters: match reporters {
            Some(reporters) => reporters,
            None => standard_reporters(&fleet, start.plan(), Duration::from_secs(60), &options.output)?,
        },
        // The simulated account is this process's own, or its `[sim] state` file's lock is held (`sim` above).
        run_lock: None,
        preflight,
        local_leftovers: Vec::new(),
        manifest_set_aside,
    };
    let ran = execution.run(start, interrupts).await;
    // Kept whatever the run came to (a failure, an interrupt): nothing it made is lost. A save that fails is
    // said, and the run still ends as it came to (its summary, what it left), failed at least.
    let unsaved = sim.save().err().map(|error| {
        eprintln!("error: {error}");
        error.to_string()
    });
    let (plan, summary) = ran?;
    let report: SimReport = sim.report(BATCH_INTERVAL);
    let mut statistics = RunStatistics::new(&plan, &fleet, &summary, limits.stats(), Some(report));
    statistics.sim_state_unsaved = unsaved;
    finish(summary, statistics, options.summary_json)
}

/// The region STS is asked in when the environment names none: the first build region.
pub fn home_region(fleet: &Fleet) -> &crate::config::Region {
    fleet.regions.keys().next().expect("validated: at least one build region")
}

/// The preflight of the run, unless `--no-preflight`: a failed one stops the run, nothing created (unless all
/// its failures are `[[distribution]]` accounts', whose copies then fail alone).
async fn preflight_unless_skipped(
    fleet: &Fleet,
    plan: &Plan,
    cloud: &dyn Cloud,
    runner: &preflight::Runner,
    wanted: bool,
) -> Result<Option<Preflight>, RunError> {
    if !wanted {
        return Ok(None);
    }
    let report = preflight::check(fleet, plan, cloud, runner).await;
    if report.blocking_failures().next().is_none() {
        // A `[[distribution]]` account's failure fails only its copies: the account named, and the run goes
        // on (its copies then say why, each; `fleetbake preflight` lists the checks).
        let mut accounts: Vec<&str> = report.failures().filter_map(|check| check.account.as_deref()).collect();
        accounts.dedup();
        for account in accounts {
            tracing::warn!(
                "preflight: account {account} failed its checks (`fleetbake preflight` says which): only its copies will fail"
            );
        }
        Ok(Some(report))
    } else {
        Err(RunError::Preflight(report))
    }
}

fn finish(
    summary: RunSummary,
    statistics: RunStatistics,
    summary_json: Option<PathBuf>,
) -> Result<RunOutcome, RunError> {
    if let Some(path) = summary_json {
        statistics.write(&path).map_err(|error| RunError::Statistics { path, error })?;
    }
    Ok(RunOutcome { summary, statistics })
}

/// The view on stderr, the manifest writer, and what `output` asks for besides: the events as JSON lines, the
/// Packer-format manifest.
pub fn standard_reporters(
    fleet: &Fleet,
    plan: &Plan,
    manifest_interval: Duration,
    output: &OutputOptions,
) -> Result<Vec<Box<dyn Reporter>>, RunError> {
    let mut reporters: Vec<Box<dyn Reporter>> = vec![match output.view {
        View::Live => Box::new(LiveReporter::new(Some(estimator(fleet, plan)))),
        View::Plain => Box::new(TerminalReporter::stderr(false)),
        View::Quiet => Box::new(TerminalReporter::stderr(true)),
    }];
    reporters.push(Box::new(ManifestWriter::new(fleet.manifest_path.clone(), manifest_interval)));
    match &output.events {
        Some(EventsTo::Stdout) => {
            reporters.push(Box::new(JsonLinesReporter::new(Box::new(std::io::stdout()), "stdout")))
        }
        Some(EventsTo::File(path)) => {
            let file = std::fs::File::create(path).map_err(|error| RunError::Events { path: path.clone(), error })?;
            let target = path.display().to_string();
            reporters.push(Box::new(JsonLinesReporter::new(Box::new(std::io::LineWriter::new(file)), target)));
        }
        None => {}
    }
    if let Some(path) = output.packer_manifest.clone().or_else(|| fleet.packer_manifest_path.clone()) {
        reporters.push(Box::new(PackerManifestWriter::new(path)));
    }
    Ok(reporters)
}

/// The live view's estimate of the finish: the plan's critical path with this run's durations, before any
/// measured, the previous run's (from its journal), else the `[sim]` table's.
/// (The preflight's credentials check compares their end with the same estimate.)
fn estimator(fleet: &Fleet, plan: &Plan) -> Estimator {
    Estimator::new(
        plan.clone(),
        preflight::credentials::estimate_caps(fleet),
        preflight::credentials::expected_durations(fleet, plan),
    )
}

/// How long an abandoned run gives its reporters to write the manifest's last state.
const ABANDONED_REPORTING: Duration = Duration::from_secs(2);

/// A new run, or the resumption of one.
pub enum Start {
    /// A new run, planned, its clock started; journaled in this directory (`None`: in memory only, for the
    /// simulated cloud).
    Fresh { journal: Option<JournalDir>, plan: Plan, clock: RunClock },
    /// The run a journal describes, re-planned from the fleet file (see [`crate::state::resume::prepare`]).
    Resume { replay: Box<Replay>, plan: Plan },
}

impl Start {
    /// A new run of `fleet`, starting now.
    pub fn fresh(fleet: &Fleet, journal: Option<JournalDir>) -> Start {
        Start::fresh_on(fleet, journal, RunClock::start())
    }

    /// A new run of `fleet` on `clock` (a simulated account's): also the clock its lines are stamped with.
    pub fn fresh_on(fleet: &Fleet, journal: Option<JournalDir>, clock: RunClock) -> Start {
        let clock = clock.stamping_lines();
        let plan = Plan::new(fleet, RunId::generate(clock.started_at()), clock.started_at());
        Start::Fresh { journal, plan, clock }
    }

    /// The plan the run executes.
    pub fn plan(&self) -> &Plan {
        match self {
            Start::Fresh { plan, .. } | Start::Resume { plan, .. } => plan,
        }
    }
}

/// Everything a run executes with.
pub struct Execution {
    pub fleet: Arc<Fleet>,
    /// Who may reach the build instances' SSH port, as settled when the run starts.
    pub ssh_sources: SshSources,
    /// Every call it makes goes through `limits`.
    pub cloud: Arc<dyn Cloud>,
    pub communicator: Arc<dyn Communicator>,
    pub limits: Arc<RunLimits>,
    pub strategy: Strategy,
    pub fail_fast: bool,
    pub reporters: Vec<Box<dyn Reporter>>,
    /// The fleet file's run lock, held until the run ends (`None` for the simulated cloud).
    pub run_lock: Option<RunLock>,
    /// The preflight the run passed, told to the reporters (`None`: skipped).
    pub preflight: Option<Preflight>,
    /// What runs killed outright had left on this machine, ended as this one started; told to the reporters.
    pub local_leftovers: Vec<LocalLeftovers>,
    /// The unreadable manifest the run kept beside before it started, told to the reporters.
    pub manifest_set_aside: Option<SetAside>,
}

impl Execution {
    /// Plans (or takes the resumed run's plan), journals and executes; the plan and how the run ended.
    pub async fn run(
        self,
        start: Start,
        interrupts: mpsc::UnboundedReceiver<Interrupt>,
    ) -> Result<(Arc<Plan>, RunSummary), RunError> {
        // Where the journal is (none in the sim): `--keep-failed` writes its keys beside it.
        let journals = match &start {
            Start::Fresh { journal, .. } => journal.as_ref().map(|dir| dir.path.clone()),
            Start::Resume { replay, .. } => replay.path.parent().map(std::path::Path::to_path_buf),
        };
        let (plan, journal, replay, clock) = match start {
            Start::Fresh { journal, plan, clock } => {
                let journal = match journal {
                    Some(dir) => Journal::create(&dir, &plan)?,
                    None => Journal::in_memory(),
                };
                (plan, journal, None, clock)
            }
            Start::Resume { replay, plan } => (plan, Journal::resume(&replay)?, Some(replay), RunClock::start_run()),
        };
        let kept_keys = journals.map(|journals| crate::state::leftovers::kept_keys_dir(&journals, &plan.run_id));
        // Held to the end of this function: the run ends with it.
        let run_lock = self.run_lock;
        if let Some(lock) = &run_lock {
            lock.name_run(&plan.run_id);
        }
        let attempt = journal.attempt();
        let plan = Arc::new(plan);
        let journal = Arc::new(journal);
        let run = Arc::new(RunContext {
            fleet: Arc::clone(&self.fleet),
            run_id: plan.run_id.clone(),
            ssh_sources: self.ssh_sources,
            clock,
            ledger: Arc::clone(&journal) as Arc<dyn Ledger>,
            attempt,
            distribution: DistributionGrants::for_plan(&plan),
            // Beside the journal (also for the simulated cloud, whose journal stays in memory: its logs are files).
            logs: RunLogs { folder: JournalDir::of(&self.fleet).logs_path(&plan.run_id) },
            kept_keys,
        });

        let (events, receiver) = EventSender::channel(clock);
        let throttles = events.downgrade();
        self.limits.stats().observe_throttles(Box::new(move |place, action| {
            throttles.send(RunEvent::Throttled { place: place.clone(), action: action.to_string() });
        }));
        let reporting = tokio::spawn(report::pump(receiver, self.reporters));
        for leftovers in self.local_leftovers {
            events.send(RunEvent::LocalLeftoversEnded(leftovers));
        }
        if let Some(preflight) = &self.preflight {
            // The checks that passed (a `[[distribution]]` account's failures, if any, were said as warnings).
            events.send(RunEvent::PreflightPassed { checks: preflight.checks.len() - preflight.failures().count() });
        }
        if let Some(SetAside { path, kept_as, why }) = self.manifest_set_aside {
            events.send(RunEvent::ManifestSetAside { path, kept_as, why });
        }
        let waits = Waits::new(Arc::clone(&self.cloud), self.strategy.waits);
        let mut notes = Vec::new();
        let mut reuse_failures = std::collections::BTreeMap::new();
        let resumed = match &replay {
            Some(replay) => {
                events.send(RunEvent::Resuming { run_id: plan.run_id.clone(), attempt, journal: replay.path.clone() });
                if let Some(line) = replay.torn_line {
                    tracing::warn!("{}:{line}: dropped a torn last record", replay.path.display());
                }
                crate::state::resume::reconcile(&run.fleet, &plan, replay, &*self.cloud, &waits, &journal, &events)
                    .await?
            }
            // `--changed-only`: builds whose fingerprint matches an image of the fleet start with it.
            None if run.fleet.matrix.changed_only => {
                let changes = crate::engine::changed::decide(&run.fleet, &plan, &*self.cloud, &clock, true).await;
                notes = changes
                    .decisions
                    .iter()
                    .filter(|decision| decision.reuse.is_none())
                    .map(|decision| {
                        let build = &plan.builds[decision.build];
                        let label = JobLabel::new(build.flavor.clone(), build.region.clone());
                        (label, format!("rebuilding: {}", decision.why.join("; ")))
                    })
                    .collect();
                notes.extend(changes.notes);
                reuse_failures = changes.failures;
                crate::state::resume::Resumed { priors: changes.priors, ..Default::default() }
            }
            None => Default::default(),
        };
        // A distribution copy an earlier attempt (or an earlier night, `--changed-only`) made is not waited for
        // before its source's grants into its account are taken back.
        for (job, prior) in &resumed.priors {
            if let (JobId::Copy(index), crate::state::resume::Prior::Available(_)) = (job, prior) {
                run.distribution.not_made(&plan.copies[*index]);
            }
        }
        let runner = StepRunner {
            run: Arc::clone(&run),
            plan: Arc::clone(&plan),
            cloud: Arc::clone(&self.cloud),
            communicator: self.communicator,
            waits: Arc::clone(&waits),
            events: events.clone(),
            priors: resumed.priors.clone(),
            generations: resumed.generations,
            published: resumed.published.clone(),
        };
        let publisher = Publisher {
            fleet: Arc::clone(&run.fleet),
            cloud: Arc::clone(&self.cloud),
            journal: Arc::clone(&journal),
            events: events.clone(),
        };
        let sweeper = Sweeper { cloud: self.cloud, waits, journal: Arc::clone(&journal), events: events.clone() };
        let scheduler = Scheduler {
            clock: run.clock,
            journal: Arc::clone(&journal),
            plan: Arc::clone(&plan),
            runner: Arc::new(runner),
            publisher,
            sweeper,
            limits: self.limits,
            events,
            fail_fast: self.fail_fast,
            build_slot: self.strategy.build_slot,
            priors: resumed.priors,
            published: resumed.published,
            notes,
            reuse_failures,
        };
        let summary = scheduler.run(interrupts).await;
        if summary.abandoned {
            // Jobs were aborted mid-flight; their event senders go away as the runtime drops them, and the
            // reporters finish the manifest. Not waited for beyond a moment: a second signal means now.
            let _ = tokio::time::timeout(ABANDONED_REPORTING, reporting).await;
            return Ok((plan, summary));
        }
        reporting.await.expect("the reporter task does not panic")?;
        if let Some(error) = journal.write_error() {
            tracing::error!("{error}: a resume of this run relies on the account's tags alone");
        }
        Ok((plan, summary))
    }
}
