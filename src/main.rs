//! The `fleetbake` command line: subcommands, what they print and how each ended (an `Ending`, whose exit
//! code `engine::exit` decides); the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::Utc;
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;

use fleetbake::cloud::aws::AwsCloud;
use fleetbake::cloud::limiter::{ApiLimits, Pacing};
use fleetbake::cloud::retry::Policy;
use fleetbake::cloud::sim::SimCloud;
use fleetbake::cloud::{Cloud, ErrorKind};
use fleetbake::config;
use fleetbake::engine::exit::Ending;
use fleetbake::engine::preflight::units::{self, UnitsFrom};
use fleetbake::engine::preflight::Preflight;
use fleetbake::engine::run::{self, EventsTo, MatrixOptions, OutputOptions, RunOutcome, Strategy, View};
use fleetbake::engine::scheduler::Interrupt;
use fleetbake::plan::{Plan, RunId};
use fleetbake::report::Console;
use fleetbake::state::gc::GcAccount;

#[derive(Parser)]
#[command(name = "fleetbake", version, about = "Bake EBS-backed AMIs for a whole fleet in one run")]
struct Cli {
    /// More log detail on stderr (`-v` debug, `-vv` trace, for fleetbake's own code)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Print only failures and the end-of-run summary
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check a fleet file; no AWS calls
    Validate {
        fleet: PathBuf,
        #[command(flatten)]
        vars: VarArgs,
    },
    /// Print the builds and copies a fleet file expands to; no AWS calls
    Plan {
        fleet: PathBuf,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        vars: VarArgs,
        /// Say per build whether `--changed-only` would rebuild or reuse, and why (read-only AWS calls)
        #[arg(long)]
        changed_only: bool,
        #[command(flatten)]
        cloud: CloudArg,
    },
    /// Check, with read-only calls, everything a run would need (who it acts as, networks, source images,
    /// instance types, image names, regions), and report every problem at once; creates nothing
    Preflight {
        fleet: PathBuf,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        vars: VarArgs,
        #[command(flatten)]
        cloud: CloudArg,
    },
    /// Bake every flavor × build region, copy each image to its targets, write the manifest
    Matrix {
        fleet: PathBuf,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        vars: VarArgs,
        /// Start no new job after the first failure (running ones finish and clean up)
        #[arg(long)]
        fail_fast: bool,
        #[command(flatten)]
        cloud: CloudArg,
        /// Write run statistics (makespan, critical-path bound, API calls, throttling, jobs) as JSON here
        #[arg(long, value_name = "PATH")]
        summary_json: Option<PathBuf>,
        /// Finish the newest interrupted or killed run of this fleet (from its journal in `.fleetbake/`)
        /// instead of starting a new one: what it made is reused, copies in flight are waited for
        #[arg(long)]
        resume: bool,
        /// Skip the preflight checks the run otherwise makes before its first mutating call
        #[arg(long)]
        no_preflight: bool,
        /// Reuse the newest image whose fingerprint (source image, provisioners, image settings) matches,
        /// instead of building; copy it only where it is missing (as `[matrix] rebuild = "changed"`)
        #[arg(long)]
        changed_only: bool,
        /// Plain timestamped lines even on a terminal (the live view is drawn only when stderr is a TTY)
        #[arg(long)]
        plain: bool,
        /// Write every event as one JSON object per line here (`-` for stdout), flushed per line
        #[arg(long, value_name = "PATH")]
        events: Option<PathBuf>,
        /// Also write the run in Packer's manifest format here (over `[fleet] packer_manifest`)
        #[arg(long, value_name = "PATH")]
        packer_manifest: Option<PathBuf>,
        /// Keep a failed build's instance (with its key pair and security group) this long (`1h`, `30m`) to
        /// look at, and print how to log in; `fleetbake gc` removes it after (over `[matrix] keep_failed`)
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        keep_failed: Option<std::time::Duration>,
    },
    /// Read manifests: one image id for a script, or what changed between two runs
    Manifest {
        #[command(subcommand)]
        command: ManifestCommand,
    },
    /// Print a shell completion script (`fleetbake completions bash > /etc/bash_completion.d/fleetbake`)
    Completions { shell: clap_complete::Shell },
    /// Remove what fleetbake runs left: temporary instances, security groups and key pairs of runs not in
    /// progress, and images beyond `[retention] keep` (never one the current manifest names)
    Gc {
        fleet: PathBuf,
        #[command(flatten)]
        vars: VarArgs,
        /// Print what would be removed; remove nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        cloud: CloudArg,
    },
}

/// Which cloud a command talks to: one definition for every command that talks to AWS.
#[derive(clap::Args, Clone, Copy, Debug)]
struct CloudArg {
    /// `aws`, or `sim`: the simulated account `[sim]` describes, in-process and in virtual time (no AWS
    /// account, no servers; with `[sim] state` it is kept in a file between runs)
    #[arg(long, value_enum, default_value_t = CloudChoice::Aws)]
    cloud: CloudChoice,
}

#[derive(Subcommand)]
enum ManifestCommand {
    /// Print the image id of a flavor in a region; exit 1 if the manifest has none
    Get {
        flavor: String,
        region: String,
        /// The copy this account owns (`[[distribution]]`); default: the image of the account the run acts as
        #[arg(long, value_name = "ID")]
        account: Option<String>,
        #[arg(long, default_value = "manifest.json")]
        manifest: PathBuf,
    },
    /// Print what changed from OLD to NEW: flavors added or removed, regions gained or lost (in every account),
    /// new image ids
    Diff { old: PathBuf, new: PathBuf },
}

/// Which builds of the fleet: `flavor` or `flavor/build-region`, `*` globs; a selected build keeps its copies.
#[derive(clap::Args, Clone, Debug, Default)]
struct Select {
    /// Only builds matching this pattern (repeatable)
    #[arg(long, value_name = "PATTERN")]
    only: Vec<String>,
    /// Not the builds matching this pattern (repeatable)
    #[arg(long, value_name = "PATTERN")]
    except: Vec<String>,
}

/// Values for the fleet file's `[variables]`: `--var` over `--var-file` over `FLEETBAKE_VAR_<name>` over the
/// default.
#[derive(clap::Args, Clone, Debug, Default)]
struct VarArgs {
    /// Set a variable of `[variables]` (repeatable; wins over `--var-file` and the environment). A sensitive
    /// value here is visible in `ps`: give those through `FLEETBAKE_VAR_<name>` or `--var-file`
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// A TOML file of `name = "value"` for `[variables]` (repeatable; a later file wins; wins over the
    /// environment)
    #[arg(long = "var-file", value_name = "PATH")]
    var_files: Vec<PathBuf>,
}

impl VarArgs {
    fn inputs(&self) -> config::VariableInputs {
        config::VariableInputs::new(self.vars.clone(), self.var_files.clone())
    }
}

/// Reads the fleet file with `vars`; a sensitive variable set by `--var` is warned about (it is in this
/// process's command line, which any local user can read).
fn load_fleet(path: &std::path::Path, vars: &VarArgs) -> Result<config::Fleet, config::ConfigErrors> {
    let fleet = config::load_with(path, &vars.inputs())?;
    for flag in &vars.vars {
        let name = flag.split('=').next().unwrap_or_default();
        if fleet.variables.get(name).is_some_and(|variable| variable.sensitive) {
            console().warning(format_args!(
                "`--var {name}=…`: `{name}` is sensitive and a command line is visible to other local users (`ps`); set `{}{name}` or use `--var-file` instead",
                config::variables::ENV_PREFIX
            ));
        }
    }
    Ok(fleet)
}

impl Select {
    fn is_empty(&self) -> bool {
        self.only.is_empty() && self.except.is_empty()
    }
}

/// Loads the fleet file and narrows it to `select`; every problem printed, refused.
fn load(path: &std::path::Path, select: &Select, vars: &VarArgs) -> Result<config::Fleet, Ending> {
    let mut fleet = load_fleet(path, vars).map_err(bad_input)?;
    let parse = |texts: &[String]| -> Result<Vec<config::JobPattern>, Vec<String>> {
        let parsed: Vec<_> = texts.iter().map(|text| config::JobPattern::parse(text)).collect();
        let problems: Vec<String> = parsed.iter().filter_map(|result| result.clone().err()).collect();
        if problems.is_empty() {
            Ok(parsed.into_iter().map(Result::unwrap).collect())
        } else {
            Err(problems)
        }
    };
    let selection = match (parse(&select.only), parse(&select.except)) {
        (Ok(only), Ok(except)) => config::Selection { only, except },
        (only, except) => {
            for problem in only.err().into_iter().flatten().chain(except.err().into_iter().flatten()) {
                console().error(problem);
            }
            return Err(Ending::Refused);
        }
    };
    if let Err(problems) = fleet.select(selection) {
        for problem in problems {
            console().error(problem);
        }
        return Err(Ending::Refused);
    }
    Ok(fleet)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CloudChoice {
    Aws,
    Sim,
}

/// How this process prints its own lines (see [`Console`]): set once, from the command line, before anything
/// is printed.
static CONSOLE: std::sync::OnceLock<Console> = std::sync::OnceLock::new();

fn console() -> Console {
    CONSOLE.get().copied().unwrap_or(Console::AS_WRITTEN)
}

/// How `matrix` shows itself on stderr: the live view on a terminal, else plain lines (`--plain` forces them).
fn view(quiet: bool, plain: bool) -> View {
    if quiet {
        View::Quiet
    } else if !plain && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        View::Live
    } else {
        View::Plain
    }
}

impl Cli {
    /// Whether every line the command prints starts with the stamp: a run in plain lines (or `-q`), whose
    /// reporter stamps its own.
    fn console(&self) -> Console {
        match &self.command {
            Command::Matrix { plain, .. } if view(self.quiet, *plain) != View::Live => Console::STAMPED,
            _ => Console::AS_WRITTEN,
        }
    }
}

impl CloudChoice {
    /// The runtime a command on this cloud runs in: the simulated account's in virtual time (the clock jumps
    /// to the next timer whenever every task waits), AWS's on threads.
    fn runtime(self) -> tokio::runtime::Runtime {
        match self {
            CloudChoice::Aws => tokio::runtime::Runtime::new().expect("a Tokio runtime starts"),
            CloudChoice::Sim => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("a Tokio runtime starts"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let console = CONSOLE.get_or_init(|| cli.console());
    init_logging(cli.verbose, *console);
    ExitCode::from(command(cli).exit())
}

/// Runs the command: it prints what it has to say and returns how it ended.
fn command(cli: Cli) -> Ending {
    match cli.command {
        Command::Validate { fleet, vars } => match load_fleet(&fleet, &vars) {
            Ok(loaded) => {
                for warning in config::warnings(&fleet, &loaded) {
                    eprintln!("warning: {warning}");
                }
                let plan = Plan::new(&loaded, RunId::generate(Utc::now()), Utc::now());
                let units = loaded.distributions.units().len();
                println!(
                    "{}: ok: {} flavors, {} build regions, {} builds, {} copies{}",
                    fleet.display(),
                    loaded.flavors.len(),
                    loaded.regions.len(),
                    plan.builds.len(),
                    plan.copies.len(),
                    match units {
                        0 => String::new(),
                        _ => format!(
                            ", and the copies into the accounts of {units} organizational units (resolved by `fleetbake plan` and the preflight)"
                        ),
                    }
                );
                Ending::Done
            }
            Err(errors) => bad_input(errors),
        },
        Command::Plan { fleet, select, vars, changed_only, cloud: CloudArg { cloud } } => {
            let loaded = match load(&fleet, &select, &vars) {
                Ok(loaded) => loaded,
                Err(refused) => return refused,
            };
            if let Err(stopped) = credentials_before_units(&loaded, cloud) {
                return stopped;
            }
            match loaded {
                loaded if changed_only => cloud.runtime().block_on(changed_plan(loaded, cloud)),
                loaded => {
                    let loaded = match with_units(loaded, units_from(cloud)) {
                        Ok((loaded, _)) => loaded,
                        Err(refused) => return refused,
                    };
                    print!("{}", Plan::new(&loaded, RunId::generate(Utc::now()), Utc::now()));
                    Ending::Done
                }
            }
        }
        Command::Manifest { command } => manifest(command),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "fleetbake",
                &mut std::io::stdout(),
            );
            Ending::Done
        }
        Command::Gc { fleet, vars, dry_run, cloud: CloudArg { cloud } } => {
            let loaded = match load_fleet(&fleet, &vars) {
                Ok(loaded) => loaded,
                Err(errors) => return bad_input(errors),
            };
            for warning in config::warnings(&fleet, &loaded) {
                eprintln!("warning: {warning}");
            }
            if let Err(stopped) = credentials_before_units(&loaded, cloud) {
                return stopped;
            }
            let loaded = match with_units(loaded, units_from(cloud)) {
                Ok((loaded, _)) => loaded,
                Err(refused) => return refused,
            };
            cloud.runtime().block_on(gc(loaded, &fleet, dry_run, cloud))
        }
        Command::Preflight { fleet, select, vars, cloud: CloudArg { cloud } } => {
            let loaded = match load(&fleet, &select, &vars) {
                Ok(loaded) => loaded,
                Err(refused) => return refused,
            };
            let (loaded, units) = match with_units(loaded, units_from(cloud)) {
                Ok(resolved) => resolved,
                Err(refused) => return refused,
            };
            cloud.runtime().block_on(preflight(loaded, units, cloud))
        }
        Command::Matrix {
            fleet,
            select,
            vars,
            fail_fast,
            cloud: CloudArg { cloud },
            summary_json,
            resume,
            no_preflight,
            changed_only,
            plain,
            events,
            packer_manifest,
            keep_failed,
        } => {
            if resume && !select.is_empty() {
                console().error("--resume makes the interrupted run's own selection; leave out --only and --except");
                return Ending::Refused;
            }
            let mut loaded = match load(&fleet, &select, &vars) {
                Ok(loaded) => loaded,
                Err(refused) => return refused,
            };
            loaded.matrix.changed_only |= changed_only;
            if let Some(for_) = keep_failed {
                if let Some(problem) = config::KeepFailed::problem(for_) {
                    console().error(format_args!("--keep-failed: {problem}"));
                    return Ending::Refused;
                }
                let state = loaded.matrix.keep_failed_state;
                loaded.matrix.keep_failed = Some(config::KeepFailed { for_, state });
            }
            if resume && cloud == CloudChoice::Sim {
                console().error(
                    "--resume: a simulated run keeps no journal, so there is nothing to resume; with `[sim] state` the account keeps what an interrupted run made, and `matrix --changed-only --cloud sim` reuses it",
                );
                return Ending::Refused;
            }
            // Without the preflight (whose check names missing credentials), the one error and its hint.
            if no_preflight && cloud == CloudChoice::Aws {
                if let Err(stopped) = aws_credentials_or_stop(&loaded) {
                    return stopped;
                }
            }
            let view = view(cli.quiet, plain);
            let events =
                events.map(|path| if path.as_os_str() == "-" { EventsTo::Stdout } else { EventsTo::File(path) });
            let output = OutputOptions { view, events, packer_manifest };
            let options = MatrixOptions { fail_fast, summary_json, resume, preflight: !no_preflight, output };
            cloud.runtime().block_on(matrix(loaded, options, cloud))
        }
    }
}

/// Where a command's `[[distribution]]` units are resolved: AWS Organizations, or `[sim] organizational_units`.
fn units_from(cloud: CloudChoice) -> UnitsFrom {
    match cloud {
        CloudChoice::Aws => UnitsFrom::Aws,
        CloudChoice::Sim => UnitsFrom::Simulated,
    }
}

/// The fleet with its `[[distribution]]` organizational units resolved into accounts (no call without units),
/// and the units' checks; a unit that cannot be resolved ends the command, its checks printed.
fn with_units(fleet: config::Fleet, from: UnitsFrom) -> Result<(config::Fleet, Preflight), Ending> {
    if fleet.distributions.units().is_empty() {
        return Ok((fleet, Preflight::default()));
    }
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime starts");
    runtime.block_on(units::resolve(fleet, from)).map_err(|checks| units_refused(&checks))
}

/// On AWS, with `[[distribution]]` units to resolve (Organizations' calls come first), whether the credentials
/// can be loaded at all, asked before them (`credentials_or_stop`); nothing without units or on the simulated
/// account, where the command's own check comes before its first call.
fn credentials_before_units(fleet: &config::Fleet, cloud: CloudChoice) -> Result<(), Ending> {
    if cloud == CloudChoice::Sim || fleet.distributions.units().is_empty() {
        return Ok(());
    }
    aws_credentials_or_stop(fleet)
}

/// [`credentials_or_stop`] on AWS with the fleet's credentials, in a runtime of its own.
fn aws_credentials_or_stop(fleet: &config::Fleet) -> Result<(), Ending> {
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime starts");
    runtime.block_on(async { credentials_or_stop(&aws(fleet, &RunId::generate(Utc::now())).await).await })
}

/// The units' checks on stdout (as `fleetbake preflight` prints checks), and how many failed.
fn units_refused(checks: &Preflight) -> Ending {
    console().print(checks);
    let failed = checks.failures().count();
    console().error(format_args!(
        "{failed} of `[[distribution]]`'s organizational units could not be resolved into accounts"
    ));
    Ending::Checked { failed }
}

/// AWS for a command other than `matrix` (gc, preflight, `plan --changed-only`): the fleet's credentials and
/// request buckets; `run_id` names an assumed role's session.
async fn aws(fleet: &config::Fleet, run_id: &RunId) -> AwsCloud {
    let limits = Arc::new(ApiLimits::new(&fleet.limits.api, Policy::THROTTLED, Pacing::Adaptive));
    AwsCloud::connect(&fleet.aws, run_id, run::home_region(fleet), limits).await
}

/// The simulated account of a command other than `matrix` (gc, preflight, `plan --changed-only`), behind the
/// fleet's request buckets: with `[sim] state`, the one earlier runs kept. An unreadable state file ends the
/// command, named.
fn simulated(fleet: &config::Fleet, to_keep: bool) -> Result<(Arc<SimCloud>, Arc<dyn Cloud>), Ending> {
    let opened = if to_keep { SimCloud::open_to_keep(fleet) } else { SimCloud::open(fleet) };
    let sim = Arc::new(opened.map_err(|error| {
        console().error(&error);
        Ending::SimStateUnreadable
    })?);
    let limits = Arc::new(ApiLimits::new(&fleet.limits.api, Policy::THROTTLED, Pacing::Adaptive));
    let cloud = Arc::new(fleetbake::cloud::Limited::new(Arc::clone(&sim) as Arc<dyn Cloud>, limits));
    Ok((sim, cloud))
}

/// Whether AWS's credentials can be loaded at all, asked before a command's first call: when the provider chain
/// finds none, the command ends with one error and where the credentials come from (the SDK's own account of
/// every provider it tried is logged under `-v`).
async fn credentials_or_stop(cloud: &dyn Cloud) -> Result<(), Ending> {
    match cloud.credentials().await {
        Err(error) if error.kind == ErrorKind::Credentials => {
            tracing::debug!("loading credentials: {}", error.message);
            let first = error.message.lines().next().unwrap_or_default();
            eprintln!("error: AWS credentials could not be loaded: {}", first.trim_end_matches(" Attempted:"));
            eprintln!("hint: {}", fleetbake::cloud::hints::no_credentials());
            Err(Ending::NoCredentials)
        }
        _ => Ok(()),
    }
}

async fn gc(fleet: config::Fleet, file: &std::path::Path, dry_run: bool, cloud: CloudChoice) -> Ending {
    let mut fleet = fleet;
    let (cloud, account, sim) = match cloud {
        CloudChoice::Aws => {
            let cloud: Arc<dyn Cloud> = Arc::new(aws(&fleet, &RunId::generate(Utc::now())).await);
            if let Err(stopped) = credentials_or_stop(&*cloud).await {
                return stopped;
            }
            (cloud, GcAccount::Real, None)
        }
        CloudChoice::Sim => {
            // The simulated runs' manifest is the one whose images gc keeps.
            fleet.manifest_path = run::simulated_manifest_path(&fleet);
            // Locked from here to the save; a dry run saves nothing, so it takes no lock.
            match simulated(&fleet, !dry_run) {
                Ok((sim, cloud)) => (cloud, GcAccount::Simulated { now: sim.run_clock().now() }, Some(sim)),
                Err(stopped) => return stopped,
            }
        }
    };
    // On this machine: what runs killed outright left (ssh masters, key directories); never a live run's. Real
    // runs' only: a simulated account's gc leaves them.
    let tmp = std::env::temp_dir();
    if sim.is_none() && dry_run {
        for leftovers in fleetbake::remote::key_dirs::find_leftovers(&tmp) {
            println!("gc: {}", leftovers.would_end());
        }
    } else if sim.is_none() {
        for leftovers in fleetbake::remote::key_dirs::end_leftovers(&tmp).await {
            println!("gc: {leftovers}");
        }
    }
    let collected = fleetbake::state::gc::gc_in(&fleet, cloud, dry_run, account).await;
    // What gc removed from a simulated account is gone from its `[sim] state` too (a dry run changes nothing).
    if let Some(Err(error)) = sim.filter(|_| !dry_run).map(|sim| sim.save()) {
        eprintln!("error: {error}");
        return Ending::SimStateUnreadable;
    }
    match collected {
        Ok((plan, outcome)) => {
            for line in outcome.lines.iter().chain(&plan.notes) {
                println!("{line}");
            }
            if dry_run {
                println!(
                    "gc {}: would remove {} temporary resources and deregister {} images",
                    file.display(),
                    plan.remove.len(),
                    plan.deregister.len()
                );
            } else {
                println!(
                    "gc {}: removed {} temporary resources, deregistered {} images and deleted {} snapshots; {} failed",
                    file.display(),
                    outcome.removed,
                    outcome.deregistered,
                    outcome.snapshots,
                    outcome.failures
                );
            }
            Ending::Collected { failures: outcome.failures }
        }
        Err(error) => {
            eprintln!("error: {error}");
            Ending::GcStopped(error)
        }
    }
}

/// `fleetbake plan --changed-only`: per build, rebuild or reuse, and why; read-only.
async fn changed_plan(fleet: config::Fleet, cloud: CloudChoice) -> Ending {
    let mut fleet = match units::resolve(fleet, units_from(cloud)).await {
        Ok((fleet, _)) => fleet,
        Err(checks) => return units_refused(&checks),
    };
    let (cloud, clock): (Arc<dyn Cloud>, _) = match cloud {
        CloudChoice::Aws => {
            let clock = fleetbake::util::clock::RunClock::start();
            let cloud = Arc::new(aws(&fleet, &RunId::generate(clock.started_at())).await);
            if let Err(stopped) = credentials_or_stop(&*cloud).await {
                return stopped;
            }
            (cloud, clock)
        }
        // Read-only: the account is not saved again. The images reused are the simulated runs' manifest's.
        CloudChoice::Sim => match simulated(&fleet, false) {
            Ok((sim, cloud)) => {
                fleet.manifest_path = run::simulated_manifest_path(&fleet);
                (cloud, sim.run_clock())
            }
            Err(stopped) => return stopped,
        },
    };
    let plan = Plan::new(&fleet, RunId::generate(clock.started_at()), clock.started_at());
    let changes = fleetbake::engine::changed::decide(&fleet, &plan, &*cloud, &clock, false).await;
    print!("{}", fleetbake::engine::changed::ChangedPlan { plan: &plan, changes: &changes });
    Ending::Done
}

/// `fleetbake preflight`: the checks of a new run of the fleet, one line each on stdout, and how many failed.
async fn preflight(fleet: config::Fleet, units: Preflight, cloud: CloudChoice) -> Ending {
    let plan = Plan::new(&fleet, RunId::generate(Utc::now()), Utc::now());
    let runner = match cloud {
        CloudChoice::Aws => fleetbake::engine::preflight::Runner::this_machine(None),
        CloudChoice::Sim => fleetbake::engine::preflight::Runner::simulated(&fleet.sim),
    };
    let cloud: Arc<dyn Cloud> = match cloud {
        CloudChoice::Aws => Arc::new(aws(&fleet, &plan.run_id).await),
        // Read-only: the account is not saved again.
        CloudChoice::Sim => match simulated(&fleet, false) {
            Ok((_, cloud)) => cloud,
            Err(stopped) => return stopped,
        },
    };
    let mut report = units;
    report.checks.extend(fleetbake::engine::preflight::check(&fleet, &plan, &*cloud, &runner).await.checks);
    print!("{report}");
    let failed = report.failures().count();
    if failed == 0 {
        println!("preflight {}: all {} checks passed", fleet.file.display(), report.checks.len());
    } else {
        println!("preflight {}: {failed} of {} checks failed", fleet.file.display(), report.checks.len());
    }
    Ending::Checked { failed }
}

async fn matrix(fleet: config::Fleet, options: MatrixOptions, cloud: CloudChoice) -> Ending {
    let fleet_file = fleet.file.clone();
    let view = options.output.view;
    let interrupts = forward_interrupts();
    let outcome = match cloud {
        CloudChoice::Aws => run::matrix(fleet, options, interrupts).await,
        CloudChoice::Sim => {
            let manifest = run::simulated_manifest_path(&fleet);
            let outcome = run::matrix_simulated(fleet, options, Strategy::FLEETBAKE, None, interrupts).await;
            if outcome.is_ok() {
                console().eprint(format_args!("simulated run: manifest written to `{}`", manifest.display()));
            }
            outcome
        }
    };
    match outcome {
        Ok(RunOutcome { summary, statistics }) => {
            // After the reporters' summary, in their form: off a terminal, stamped with the run's time.
            if view != View::Quiet {
                for line in statistics.closing_lines() {
                    console().eprint(line);
                }
            }
            // What an earlier night left in a `[sim] state` account: said, not this run's failure.
            let earlier = statistics.sim.as_ref().map_or(0, |sim| sim.left_by_earlier_runs.len());
            if earlier > 0 && view != View::Quiet {
                console().eprint(format_args!(
                    "==> {earlier} resource(s) an earlier run left are still in the simulated account (not this run's; listed in the summary's `sim.left_by_earlier_runs`): remove them with: fleetbake gc --cloud sim {}",
                    fleet_file.display()
                ));
            }
            let leaked = statistics.leaked_resources.unwrap_or_default();
            // Expired credentials leave what they could not remove: named below with the gc command, no bug.
            if !leaked.is_empty() && !summary.credentials_expired {
                console().error("the run left resources in the simulated cloud (a fleetbake bug):");
                for resource in &leaked {
                    console().eprint(format_args!("  {resource}"));
                }
            }
            if summary.abandoned || summary.credentials_expired || !summary.left_behind.is_empty() {
                if summary.credentials_expired && summary.left_behind.is_empty() {
                    console().error(
                        "the credentials expired mid-run (AWS answered `ExpiredToken`): nothing new was started; cleanup removed what the journal recorded",
                    );
                } else if summary.credentials_expired {
                    console().error(
                        "the credentials expired mid-run (AWS answered `ExpiredToken`): nothing new was started, and cleanup could not remove these; they may be left in the account:",
                    );
                } else if summary.abandoned {
                    console().error("exited without waiting for cleanup; these may be left in the account:");
                } else {
                    console().error("cleanup could not remove these; they may be left in the account:");
                }
                for resource in &summary.left_behind {
                    console().eprint(format_args!("  {resource}"));
                }
                console().eprint(format_args!(
                    "  and anything else tagged `fleetbake:run-id={}`; remove them with: fleetbake gc {}{}",
                    statistics.run_id,
                    fleet_file.display(),
                    if summary.credentials_expired { " (with fresh credentials)" } else { "" }
                ));
            }
            let unsaved = statistics.sim_state_unsaved.is_some();
            Ending::Ran { summary: Box::new(summary), leaked: leaked.len(), unsaved }
        }
        Err(error) => {
            if let run::RunError::Preflight(report) | run::RunError::Units(report) = &error {
                console().eprint(report);
            }
            console().error(&error);
            Ending::RunStopped(error)
        }
    }
}

/// `fleetbake manifest get|diff`.
fn manifest(command: ManifestCommand) -> Ending {
    use fleetbake::state::manifest::Manifest;
    let read = |path: &std::path::Path| {
        Manifest::read(path).map_err(|error| {
            eprintln!("error: cannot read the manifest `{}`: {error}", path.display());
            Ending::ManifestUnreadable
        })
    };
    match command {
        ManifestCommand::Get { flavor, region, account, manifest } => {
            let manifest = match read(&manifest) {
                Ok(manifest) => manifest,
                Err(unreadable) => return unreadable,
            };
            let account = account.map_or(config::Account::Own, config::Account::Id);
            let place = config::Place { account, region: config::Region::new(region) };
            match manifest.image_in(&config::FlavorName::new(&flavor), &place) {
                Some(image) => {
                    println!("{}", image.image_id);
                    Ending::Done
                }
                None if place.account.is_own() => {
                    eprintln!("error: the manifest has no image of `{flavor}` in {}", place.region);
                    Ending::NoSuchImage
                }
                None => {
                    eprintln!(
                        "error: the manifest has no image of `{flavor}` owned by account {} in {}",
                        place.account, place.region
                    );
                    Ending::NoSuchImage
                }
            }
        }
        ManifestCommand::Diff { old, new } => {
            let (old, new) = match (read(&old), read(&new)) {
                (Ok(old), Ok(new)) => (old, new),
                (Err(unreadable), _) | (_, Err(unreadable)) => return unreadable,
            };
            let changes = fleetbake::state::manifest::diff(&old, &new);
            if changes.is_empty() {
                println!("no change: the same images in the same regions");
            }
            for change in changes {
                println!("{change}");
            }
            Ending::Done
        }
    }
}

fn bad_input(errors: config::ConfigErrors) -> Ending {
    for error in &errors.0 {
        console().error(error);
    }
    Ending::Refused
}

/// SIGINT and SIGTERM, delivered to the scheduler as [`Interrupt`]s.
fn forward_interrupts() -> mpsc::UnboundedReceiver<Interrupt> {
    use tokio::signal::unix::{signal, SignalKind};
    let (sender, receiver) = mpsc::unbounded_channel();
    for (kind, interrupt) in
        [(SignalKind::interrupt(), Interrupt::SIGINT), (SignalKind::terminate(), Interrupt::SIGTERM)]
    {
        let sender = sender.clone();
        let mut stream = signal(kind).expect("signal handlers install");
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if sender.send(interrupt).is_err() {
                    break;
                }
            }
        });
    }
    receiver
}

/// Logs go to stderr. The AWS SDK says nothing without `-v`, and stays at `warn` unless RUST_LOG says otherwise: its trace output can
/// carry response bodies, and a CreateKeyPair response holds a private key.
/// A stamped console's log lines start with its stamp ([`fleetbake::report::plain::LineStamp`]).
fn init_logging(verbose: u8, console: Console) {
    // The SDK's own lines (aws-config, aws-smithy: a profile file not found, a provider's debug structs) only
    // under `-v`: without it, what went wrong is fleetbake's one error and its hint.
    let default = match verbose {
        0 => "warn,aws=off",
        1 => "warn,fleetbake=debug",
        _ => "warn,fleetbake=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A stamped line starts with its stamp, never with a colour code: stamped logs (`--plain`, `-q` on a
    // terminal) are plain.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none()
        && console != Console::STAMPED;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false);
    if console == Console::STAMPED {
        logs.with_timer(fleetbake::report::plain::LineStamp).init();
    } else {
        logs.init();
    }
}
