//! What the run has done so far, as the events tell it: the jobs in flight and what each is doing, the images
//! made, the failures, the throttles. The plain lines' end-of-run summary and the live view both read it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::cloud::ImageId;
use crate::config::{Account, FlavorName, Market, Place};
use crate::outcome::{BuiltOn, Failure, JobLabel, Kept, RunStatus, Stage};
use crate::report::events::{JobKind, PlannedLanding, RunEvent, Stamped};

/// A job that has started and not ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub kind: JobKind,
    pub stage: Option<Stage>,
    /// What it last said it does (`waiting for SSH on …`).
    pub detail: String,
    pub since: DateTime<Utc>,
}

/// How long a finished job took, from its start to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Took {
    pub job: JobLabel,
    pub kind: JobKind,
    pub to_image: Option<Duration>,
    pub to_end: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub fleet: String,
    pub run_id: String,
    pub started_at: Option<DateTime<Utc>>,
    pub planned: Vec<PlannedLanding>,
    pub in_flight: BTreeMap<JobLabel, InFlight>,
    /// flavor → place (a region, or another account's region) → image.
    pub images: BTreeMap<FlavorName, BTreeMap<Place, ImageId>>,
    /// flavor → build region → the market and instance type its image was built on.
    pub built_on: BTreeMap<FlavorName, BTreeMap<Place, BuiltOn>>,
    pub failures: Vec<Failure>,
    pub throttles: u64,
    /// When each job that started made its image available.
    available_at: BTreeMap<JobLabel, DateTime<Utc>>,
    pub took: Vec<Took>,
    pub finished: Option<RunStatus>,
    /// The last event's time: "now" for a view of the run.
    pub now: Option<DateTime<Utc>>,
    /// `--keep-failed`: the failed builds' instances kept.
    pub kept: Vec<Kept>,
}

impl Tally {
    pub fn observe(&mut self, stamped: &Stamped) {
        let at = stamped.at;
        self.now = Some(at);
        match &stamped.event {
            RunEvent::RunStarted { fleet, run_id, started_at, planned, .. } => {
                self.fleet = fleet.clone();
                self.run_id = run_id.to_string();
                self.started_at = Some(*started_at);
                self.planned = planned.clone();
            }
            RunEvent::JobStarted { job, kind } => {
                let flight = InFlight { kind: *kind, stage: None, detail: "starting".into(), since: at };
                self.in_flight.insert(job.clone(), flight);
            }
            RunEvent::Progress { job, stage, detail } => {
                if let Some(flight) = self.in_flight.get_mut(job) {
                    flight.stage = Some(*stage);
                    flight.detail = detail.clone();
                }
            }
            RunEvent::ImageAvailable { job, artifact } => {
                self.images.entry(job.flavor.clone()).or_default().insert(job.place.clone(), artifact.image_id.clone());
                if let Some(built_on) = &artifact.settings.built_on {
                    self.built_on.entry(job.flavor.clone()).or_default().insert(job.place.clone(), built_on.clone());
                }
                self.available_at.insert(job.clone(), at);
            }
            RunEvent::JobFailed(failure) => {
                self.ended(&failure.label(), at);
                self.failures.push(failure.clone());
            }
            RunEvent::JobSucceeded { job } => self.ended(job, at),
            RunEvent::ImageInProgress(image) => self.ended(&image.label(), at),
            RunEvent::Throttled { .. } => self.throttles += 1,
            RunEvent::RunFinished { status, .. } => {
                self.finished = Some(*status);
                self.in_flight.clear();
            }
            RunEvent::Kept(kept) => self.kept.push(kept.clone()),
            RunEvent::Published { .. }
            | RunEvent::PreflightPassed { .. }
            | RunEvent::Output { .. }
            | RunEvent::Swept { .. }
            | RunEvent::CleanupFailed { .. }
            | RunEvent::Resuming { .. }
            | RunEvent::LocalLeftoversEnded(_)
            | RunEvent::ManifestSetAside { .. }
            | RunEvent::Interrupted { .. } => {}
        }
    }

    fn ended(&mut self, job: &JobLabel, at: DateTime<Utc>) {
        let Some(flight) = self.in_flight.remove(job) else { return };
        let span = |to: DateTime<Utc>| (to - flight.since).to_std().unwrap_or_default();
        let to_image = self.available_at.get(job).map(|&available| span(available));
        self.took.push(Took { job: job.clone(), kind: flight.kind, to_image, to_end: span(at) });
    }

    /// Builds and copies: (ended, planned).
    pub fn counts(&self, kind: JobKind) -> (usize, usize) {
        let planned: Vec<&PlannedLanding> = self.planned.iter().filter(|landing| landing.kind == kind).collect();
        let ended = planned
            .iter()
            .filter(|landing| {
                let made = self.image(&landing.job).is_some();
                let failed = self.failures.iter().any(|f| f.label() == landing.job);
                (made || failed) && !self.in_flight.contains_key(&landing.job)
            })
            .count();
        (ended, planned.len())
    }

    fn image(&self, job: &JobLabel) -> Option<&ImageId> {
        self.images.get(&job.flavor).and_then(|places| places.get(&job.place))
    }

    /// The end-of-run summary: a headline (and, when a build ran on spot, how many builds ran on which market),
    /// then per flavor the regions it holds an image in (of those planned; another account's as
    /// `account/region`), their ids (a build's with the market and type it was built on), and where it failed.
    pub fn summary(&self) -> Vec<String> {
        let made: usize = self.images.values().map(BTreeMap::len).sum();
        let mut lines = vec![format!(
            "==> summary: {made} of {} images, {} failures, {} throttles absorbed",
            self.planned.len(),
            self.failures.len(),
            self.throttles
        )];
        lines.extend(self.market_line());
        // Each flavor's planned places, flavors in the order they are first planned: one pass over the plan
        // (10,000 landings of 500 flavors in a big night), not one per flavor.
        let mut flavors: Vec<(&FlavorName, Vec<&Place>)> = Vec::new();
        let mut position: HashMap<&FlavorName, usize> = HashMap::new();
        for landing in &self.planned {
            let at = *position.entry(&landing.job.flavor).or_insert_with(|| {
                flavors.push((&landing.job.flavor, Vec::new()));
                flavors.len() - 1
            });
            flavors[at].1.push(&landing.job.place);
        }
        for (flavor, places) in flavors {
            let images: Vec<String> = places
                .iter()
                .filter_map(|place| {
                    let image = self.images.get(flavor)?.get(*place)?;
                    match self.built_on.get(flavor).and_then(|built| built.get(*place)) {
                        Some(BuiltOn { market, instance_type }) => {
                            Some(format!("{place} {image} ({market} {instance_type})"))
                        }
                        None => Some(format!("{place} {image}")),
                    }
                })
                .collect();
            let failed: Vec<String> = self
                .failures
                .iter()
                .filter(|failure| &failure.flavor == flavor && failure.stage != Stage::Cleanup)
                .map(|failure| format!("{} ({})", failure.label().place, failure.stage))
                .collect();
            let mut line = format!("    {flavor}: {}/{} regions", images.len(), places.len());
            if !images.is_empty() {
                line.push_str(&format!(": {}", images.join(", ")));
            }
            if !failed.is_empty() {
                line.push_str(&format!("; failed: {}", failed.join(", ")));
            }
            lines.push(line);
        }
        lines.extend(self.account_lines());
        if let Some(last) = self.kept.iter().map(|kept| kept.until).max() {
            let last = last.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let instances: Vec<String> = self
                .kept
                .iter()
                .map(|kept| match &kept.job {
                    Some(job) => format!("{} ({job}, {})", kept.instance, kept.state),
                    None => format!("{} ({})", kept.instance, kept.state),
                })
                .collect();
            lines.push(format!(
                "    kept: {} failed build instances until {last} at the latest: {} (`fleetbake gc` removes them after)",
                self.kept.len(),
                instances.join(", ")
            ));
        }
        lines
    }

    /// When any build ran on spot: how many builds ran on spot and how many on demand (a spot flavor's build that
    /// found no spot capacity counts on demand).
    fn market_line(&self) -> Option<String> {
        let markets: Vec<Market> =
            self.built_on.values().flat_map(BTreeMap::values).map(|built| built.market).collect();
        let on_spot = markets.iter().filter(|market| **market == Market::Spot).count();
        (on_spot > 0).then(|| format!("    builds: {on_spot} on spot, {} on demand", markets.len() - on_spot))
    }

    /// With copies into other accounts (`[[distribution]]`), a line per account: how many of its copies it
    /// owns, and which failed (so an account whose role could not be assumed is named once, with all it lost).
    fn account_lines(&self) -> Vec<String> {
        let mut accounts: Vec<&Account> = Vec::new();
        for landing in &self.planned {
            if !landing.job.place.account.is_own() && !accounts.contains(&&landing.job.place.account) {
                accounts.push(&landing.job.place.account);
            }
        }
        accounts
            .into_iter()
            .map(|account| {
                let planned: Vec<&JobLabel> = self
                    .planned
                    .iter()
                    .map(|landing| &landing.job)
                    .filter(|job| &job.place.account == account)
                    .collect();
                let made = planned.iter().filter(|job| self.image(job).is_some()).count();
                // In plan order (flavor, then region), whatever order the copies failed in.
                let failed: Vec<String> = planned
                    .iter()
                    .flat_map(|job| {
                        self.failures.iter().filter(move |failure| {
                            failure.stage != Stage::Cleanup
                                && failure.flavor == job.flavor
                                && failure.account == job.place.account
                                && failure.region == job.place.region
                        })
                    })
                    .map(|failure| format!("{}/{} ({})", failure.flavor, failure.region, failure.stage))
                    .collect();
                let mut line = format!("    account {account}: {made}/{} copies", planned.len());
                if !failed.is_empty() {
                    line.push_str(&format!("; failed: {}", failed.join(", ")));
                }
                line
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Region;

    /// Each other account gets a line of its own, naming what it lost; a fleet without one prints none.
    #[test]
    fn the_summary_names_each_other_account_with_its_copies_and_failures() {
        let at: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        let own = JobLabel::new(FlavorName::new("base"), Region::new("us-east-1"));
        let elsewhere = |account: &str, region: &str| JobLabel {
            place: Place { account: Account::Id(account.into()), region: Region::new(region) },
            ..own.clone()
        };
        let landing =
            |job: &JobLabel, kind| PlannedLanding { job: job.clone(), kind, build_region: Region::new("us-east-1") };
        let mut tally = Tally::default();
        let planned = vec![
            landing(&own, JobKind::Build),
            landing(&elsewhere("222233334444", "us-east-1"), JobKind::Copy),
            landing(&elsewhere("222233334444", "eu-west-1"), JobKind::Copy),
            landing(&elsewhere("555566667777", "us-east-1"), JobKind::Copy),
        ];
        let see = |tally: &mut Tally, event| tally.observe(&Stamped { at, event });
        see(
            &mut tally,
            RunEvent::RunStarted {
                fleet: "f".into(),
                run_id: crate::plan::RunId::new(at, 1),
                started_at: at,
                builds: 1,
                copies: 3,
                planned,
                selective: false,
            },
        );
        let artifact = |image: &str| crate::outcome::Artifact::sample(image, "us-east-1", "t");
        see(&mut tally, RunEvent::ImageAvailable { job: own.clone(), artifact: artifact("ami-1") });
        see(
            &mut tally,
            RunEvent::ImageAvailable { job: elsewhere("222233334444", "us-east-1"), artifact: artifact("ami-2") },
        );
        see(
            &mut tally,
            RunEvent::ImageAvailable { job: elsewhere("222233334444", "eu-west-1"), artifact: artifact("ami-3") },
        );
        let refused = Failure::new(&elsewhere("555566667777", "us-east-1"), Stage::Copy, "the role cannot be assumed");
        see(&mut tally, RunEvent::JobFailed(refused));
        let summary = tally.summary();
        assert_eq!(
            summary[1..],
            [
                "    base: 3/4 regions: us-east-1 ami-1, 222233334444/us-east-1 ami-2, 222233334444/eu-west-1 ami-3; failed: 555566667777/us-east-1 (copy)",
                "    account 222233334444: 2/2 copies",
                "    account 555566667777: 0/1 copies; failed: base/us-east-1 (copy)",
            ]
        );
        let mut own_only = Tally::default();
        see(
            &mut own_only,
            RunEvent::RunStarted {
                fleet: "f".into(),
                run_id: crate::plan::RunId::new(at, 1),
                started_at: at,
                builds: 1,
                copies: 0,
                planned: vec![landing(&own, JobKind::Build)],
                selective: false,
            },
        );
        assert_eq!(own_only.summary().len(), 2, "a headline and the flavor: {:?}", own_only.summary());
    }
    /// A build's image names the market and type it was built on, and a run with spot builds counts them.
    #[test]
    fn the_summary_says_which_market_and_type_each_build_ran_on() {
        let at: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        let job = |region: &str| JobLabel::new(FlavorName::new("base"), Region::new(region));
        let landing =
            |region: &str| PlannedLanding { job: job(region), kind: JobKind::Build, build_region: Region::new(region) };
        let mut tally = Tally::default();
        let mut see = |event| tally.observe(&Stamped { at, event });
        see(RunEvent::RunStarted {
            fleet: "f".into(),
            run_id: crate::plan::RunId::new(at, 1),
            started_at: at,
            builds: 2,
            copies: 0,
            planned: vec![landing("us-east-1"), landing("us-west-2")],
            selective: false,
        });
        let built = |image: &str, region: &str, market, instance_type: &str| {
            let mut artifact = crate::outcome::Artifact::sample(image, region, "t");
            artifact.settings.built_on = Some(BuiltOn { market, instance_type: instance_type.into() });
            RunEvent::ImageAvailable { job: job(region), artifact }
        };
        see(built("ami-1", "us-east-1", Market::Spot, "t3a.micro"));
        see(built("ami-2", "us-west-2", Market::OnDemand, "t3.micro"));
        assert_eq!(
            tally.summary()[1..],
            [
                "    builds: 1 on spot, 1 on demand",
                "    base: 2/2 regions: us-east-1 ami-1 (spot t3a.micro), us-west-2 ami-2 (on-demand t3.micro)",
            ]
        );
    }
}
