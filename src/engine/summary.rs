//! How a run ended ([`RunSummary`], made by the loop), and the run statistics (`--summary-json`): how long the
//! run took against its critical-path bound, what it asked of EC2, how often it was throttled, how its jobs
//! ended (and, for copies into other accounts, how each account's ended) and, in the simulated cloud, what was
//! left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::cloud::limiter::ApiStats;
use crate::cloud::sim::SimReport;
use crate::cloud::ImageId;
use crate::config::{Account, FlavorName, Fleet, Market, Region};
use crate::engine::cost::{self, CostEstimate, InstanceHours};
use crate::engine::exit::Interrupt;
use crate::outcome::{BuiltOn, RunStatus, SpotInterruption};
use crate::plan::bound::{self, Caps, JobDurations, JobTiming};
use crate::plan::{JobId, Plan};

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub status: RunStatus,
    pub succeeded: usize,
    pub failed: usize,
    /// Images left being made in AWS when an interrupt stopped the run.
    pub in_progress: usize,
    /// Jobs whose image an earlier attempt of the run had already made.
    pub reused: usize,
    pub interrupted: Option<Interrupt>,
    /// A second interrupt: the loop stopped waiting for cleanup.
    pub abandoned: bool,
    /// A job met credentials AWS refused as expired (`ExpiredToken`): nothing new was started after it.
    pub credentials_expired: bool,
    /// The temporary resources the journal says were created and not removed: after a second interrupt
    /// (cleanup abandoned), or when cleanup and the sweep could not remove them.
    pub left_behind: Vec<String>,
    /// From the start of the run to the end of the loop.
    pub makespan: Duration,
    /// When each job that started started, had its image, and ended.
    pub timings: BTreeMap<JobId, JobTiming>,
    /// The image each job made (or found made), failed or not.
    pub images: BTreeMap<JobId, ImageId>,
    /// The jobs that failed (a failure after the image was made included) or never started.
    pub failed_jobs: BTreeSet<JobId>,
    /// The market and type each image made in this run was built on (builds only).
    pub built_on: BTreeMap<JobId, BuiltOn>,
    /// Builds made again on demand after EC2 took their spot instance back: the attempts lost.
    pub spot_interruptions: BTreeMap<JobId, Vec<SpotInterruption>>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RunStatistics {
    pub run_id: String,
    /// `aws` or `sim`.
    pub cloud: &'static str,
    pub makespan_seconds: f64,
    /// The ideal makespan of this plan (see [`crate::plan::bound`]): under the `[sim]` durations in the simulated
    /// cloud, under the measured job durations in a real run.
    pub critical_path_seconds: f64,
    pub makespan_over_bound: f64,
    /// region → action → calls (retries included).
    pub api_calls: BTreeMap<Region, BTreeMap<String, u64>>,
    /// EC2 request class → calls, all regions.
    pub api_calls_by_class: BTreeMap<&'static str, u64>,
    /// Throttling answers received (each was retried; none reached a job unless retries ran out).
    pub throttled_responses: u64,
    pub retries: u64,
    pub jobs: JobCounts,
    /// Copies into other accounts (`[[distribution]]`), by account: absent without any.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub accounts: BTreeMap<String, AccountJobs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaked_resources: Option<Vec<String>>,
    /// Why the simulated account could not be kept in its `[sim] state` file, if it could not: the run fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sim_state_unsaved: Option<String>,
    /// What the build instances of the images made in this run cost (USD), per market, and the same hours on
    /// demand ([`crate::engine::cost`]): absent when the run made no image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_cost: Option<CostEstimate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sim: Option<SimReport>,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct JobCounts {
    pub succeeded: usize,
    pub failed: usize,
    /// Left being made in AWS by an interrupt.
    pub in_progress: usize,
    /// Of the succeeded, made by an earlier attempt (`--resume`).
    pub reused: usize,
    /// Builds made again on demand after EC2 took their spot instance back.
    pub rebuilt_on_demand: usize,
}

/// How one other account's copies ended.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct AccountJobs {
    pub planned: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// flavor → region → the copy the account owns.
    pub images: BTreeMap<FlavorName, BTreeMap<Region, ImageId>>,
}

impl AccountJobs {
    /// Each other account's copies in `plan`, as `summary` says they ended.
    fn of(plan: &Plan, summary: &RunSummary) -> BTreeMap<String, AccountJobs> {
        let mut accounts: BTreeMap<String, AccountJobs> = BTreeMap::new();
        for copy in &plan.copies {
            let Account::Id(id) = &copy.target.account else { continue };
            let job = JobId::Copy(copy.index);
            let account = accounts.entry(id.clone()).or_default();
            account.planned += 1;
            if summary.failed_jobs.contains(&job) {
                account.failed += 1;
            } else if summary.images.contains_key(&job) {
                account.succeeded += 1;
            }
            if let Some(image) = summary.images.get(&job) {
                let regions = account.images.entry(copy.flavor.clone()).or_default();
                regions.insert(copy.target.region.clone(), image.clone());
            }
        }
        accounts
    }
}

impl RunStatistics {
    pub fn new(plan: &Plan, fleet: &Fleet, summary: &RunSummary, api: &ApiStats, sim: Option<SimReport>) -> Self {
        let durations = match sim {
            Some(_) => JobDurations::simulated(plan, fleet),
            None => JobDurations::measured(plan, &summary.timings),
        };
        let copies_per_region = match sim {
            Some(_) => fleet.limits.max_parallel_copies_per_region.min(fleet.sim.copy_concurrency),
            None => fleet.limits.max_parallel_copies_per_region,
        };
        let caps = Caps {
            builds: fleet.limits.max_parallel_builds,
            copies_per_region,
            copy_bucket: fleet.limits.api.copy_image,
        };
        let bound = bound::critical_path(plan, caps, &durations);
        let mut api_calls: BTreeMap<Region, BTreeMap<String, u64>> = BTreeMap::new();
        let mut api_calls_by_class: BTreeMap<&'static str, u64> = BTreeMap::new();
        for ((region, action), calls) in api.calls() {
            *api_calls.entry(region).or_default().entry(action.to_string()).or_default() += calls;
            *api_calls_by_class.entry(action.class().key()).or_default() += calls;
        }
        let makespan = summary.makespan.as_secs_f64();
        RunStatistics {
            run_id: plan.run_id.to_string(),
            cloud: if sim.is_some() { "sim" } else { "aws" },
            makespan_seconds: round_ms(makespan),
            critical_path_seconds: round_ms(bound.as_secs_f64()),
            makespan_over_bound: if bound.is_zero() {
                1.0
            } else {
                (makespan / bound.as_secs_f64() * 1e4).round() / 1e4
            },
            api_calls,
            api_calls_by_class,
            throttled_responses: api.throttled_responses(),
            retries: api.retries(),
            jobs: JobCounts {
                succeeded: summary.succeeded,
                failed: summary.failed,
                in_progress: summary.in_progress,
                reused: summary.reused,
                rebuilt_on_demand: summary.spot_interruptions.len(),
            },
            accounts: AccountJobs::of(plan, summary),
            leaked_resources: sim.as_ref().map(|report| report.leaked_resources.clone()),
            sim_state_unsaved: None,
            estimated_cost: estimated_cost(fleet, summary, sim.is_some()),
            sim,
        }
    }

    /// When the run ended: its start (read from its id) and its makespan, on the run's clock.
    pub fn ended_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let started = crate::plan::RunId::parse(&self.run_id)?.started_at()?;
        Some(started + chrono::Duration::milliseconds((self.makespan_seconds * 1000.0) as i64))
    }

    /// What the run's last lines say besides the reporters' summary: builds made again on demand, the cost.
    pub fn closing_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let rebuilt = self.jobs.rebuilt_on_demand;
        if rebuilt > 0 {
            lines.push(format!("==> {rebuilt} build(s) made again on demand after EC2 took their spot instance back"));
        }
        if let Some(cost) = &self.estimated_cost {
            lines.push(format!("==> {}", cost.line()));
        }
        lines
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(path, text)
    }
}

/// The cost of the build instances of the images this run made: each build's time (its job's start to end, less
/// its interrupted spot attempts, which count apart) on the market and type it was built on.
fn estimated_cost(fleet: &Fleet, summary: &RunSummary, simulated: bool) -> Option<CostEstimate> {
    let mut uses = Vec::new();
    for (job, built_on) in &summary.built_on {
        let Some(JobTiming { started, ended: Some(ended), .. }) = summary.timings.get(job) else { continue };
        let interrupted = summary.spot_interruptions.get(job).map(Vec::as_slice).unwrap_or_default();
        let lost: Duration = interrupted.iter().map(|attempt| attempt.ran_for).sum();
        uses.push(InstanceHours {
            market: built_on.market,
            instance_type: built_on.instance_type.clone(),
            ran_for: ended.saturating_sub(*started).saturating_sub(lost),
        });
        uses.extend(interrupted.iter().map(|attempt| InstanceHours {
            market: Market::Spot,
            instance_type: attempt.instance_type.clone(),
            ran_for: attempt.ran_for,
        }));
    }
    if uses.is_empty() {
        return None;
    }
    let prices = cost::prices_for_run(&fleet.prices, simulated.then_some(&fleet.sim.prices));
    Some(cost::estimate(&uses, &prices))
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}
