//! When the run will end: the critical-path bound ([`crate::plan::bound`]) of what is left, with the durations
//! this run has measured so far (a flavor's finished builds for its other builds, copies into a region for
//! that region's other copies), and before any, the fallback (the previous run's, else the `[sim]` table's).
//! A job in flight counts with what is left of its estimate.

use std::collections::HashMap;
use std::time::Duration;

use crate::outcome::JobLabel;
use crate::plan::bound::{critical_path, BuildDuration, Caps, JobDurations};
use crate::plan::{JobId, Plan};
use crate::report::events::JobKind;
use crate::report::tally::Tally;

pub struct Estimator {
    plan: Plan,
    caps: Caps,
    fallback: JobDurations,
    jobs: HashMap<JobLabel, JobId>,
}

impl Estimator {
    pub fn new(plan: Plan, caps: Caps, fallback: JobDurations) -> Self {
        let jobs = plan
            .jobs()
            .map(|job| (JobLabel { flavor: plan.placement(job).0.clone(), place: plan.place_of(job) }, job))
            .collect();
        Estimator { plan, caps, fallback, jobs }
    }

    /// How long until the run ends, from the tally's last event.
    pub fn remaining(&self, tally: &Tally) -> Duration {
        let now = tally.now.unwrap_or_default();
        let ended: HashMap<&JobLabel, ()> = tally.took.iter().map(|took| (&took.job, ())).collect();
        let failed_before_start = |label: &JobLabel| {
            tally.failures.iter().any(|f| &f.label() == label) && !tally.in_flight.contains_key(label)
        };
        let mean = |durations: Vec<Duration>| -> Option<Duration> {
            (!durations.is_empty()).then(|| durations.iter().sum::<Duration>() / durations.len() as u32)
        };
        let mut durations = JobDurations::default();
        for build in &self.plan.builds {
            let label = JobLabel::new(build.flavor.clone(), build.region.clone());
            let measured = |same_flavor: bool| {
                let took = tally
                    .took
                    .iter()
                    .filter(|took| took.kind == JobKind::Build && (!same_flavor || took.job.flavor == build.flavor));
                let took: Vec<_> = took.collect();
                let to_image = mean(took.iter().map(|took| took.to_image.unwrap_or(took.to_end)).collect());
                let to_end = mean(took.iter().map(|took| took.to_end).collect());
                Some(BuildDuration { to_image: to_image?, to_cleaned_up: to_end? })
            };
            let estimate = measured(true).or_else(|| measured(false)).unwrap_or(self.fallback.builds[build.index]);
            let duration = if ended.contains_key(&label) || failed_before_start(&label) {
                BuildDuration::default()
            } else if let Some(flight) = tally.in_flight.get(&label) {
                let elapsed = (now - flight.since).to_std().unwrap_or_default();
                let to_image = match tally.images.get(&label.flavor).and_then(|images| images.get(&label.place)) {
                    Some(_) => Duration::ZERO,
                    None => estimate.to_image.saturating_sub(elapsed),
                };
                BuildDuration { to_image, to_cleaned_up: estimate.to_cleaned_up.saturating_sub(elapsed).max(to_image) }
            } else {
                estimate
            };
            durations.builds.push(duration);
        }
        for copy in &self.plan.copies {
            let label = JobLabel { flavor: copy.flavor.clone(), place: copy.target.clone() };
            let measured = |same_region: bool| {
                let took = tally
                    .took
                    .iter()
                    .filter(|took| took.kind == JobKind::Copy && (!same_region || took.job.place == copy.target));
                mean(took.map(|took| took.to_end).collect())
            };
            let estimate = measured(true).or_else(|| measured(false)).unwrap_or(self.fallback.copies[copy.index]);
            let duration = if ended.contains_key(&label) || failed_before_start(&label) {
                Duration::ZERO
            } else if let Some(flight) = tally.in_flight.get(&label) {
                estimate.saturating_sub((now - flight.since).to_std().unwrap_or_default())
            } else {
                estimate
            };
            durations.copies.push(duration);
        }
        critical_path(&self.plan, self.caps, &durations)
    }

    /// The job of a label, if the plan has it.
    pub fn job(&self, label: &JobLabel) -> Option<JobId> {
        self.jobs.get(label).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bucket, FlavorName, Region};
    use crate::plan::{BuildJob, BuildSource, RunId};
    use crate::report::events::{PlannedLanding, RunEvent, Stamped};

    fn at(minute: i64) -> chrono::DateTime<chrono::Utc> {
        "2026-11-27T02:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap() + chrono::TimeDelta::minutes(minute)
    }

    #[test]
    fn what_is_left_is_estimated_from_what_this_run_measured() {
        let run_id = RunId::new(at(0), 1);
        let build = |index: usize, flavor: &str, region: &str| BuildJob {
            index,
            flavor: FlavorName::new(flavor),
            region: Region::new(region),
            source: BuildSource::Configured,
            image_name: format!("{flavor}-{index}"),
            copies: Vec::new(),
            interface: Default::default(),
        };
        let plan = Plan {
            fleet: "unit".into(),
            run_id: run_id.clone(),
            started_at: at(0),
            builds: vec![build(0, "a", "us-west-2"), build(1, "a", "eu-central-1"), build(2, "b", "us-west-2")],
            copies: Vec::new(),
            selection: Default::default(),
            variables: Default::default(),
        };
        let caps = Caps { builds: 1, copies_per_region: 1, copy_bucket: Bucket { burst: 1, per_second: 1.0 } };
        // The fallback says 60 minutes a build.
        let hour = BuildDuration { to_image: Duration::from_secs(3600), to_cleaned_up: Duration::from_secs(3600) };
        let fallback = JobDurations { builds: vec![hour; 3], copies: Vec::new() };
        let estimator = Estimator::new(plan.clone(), caps, fallback);
        let label = |index: usize| JobLabel::new(plan.builds[index].flavor.clone(), plan.builds[index].region.clone());
        let mut tally = Tally::default();
        let see = |tally: &mut Tally, minute: i64, event: RunEvent| tally.observe(&Stamped { at: at(minute), event });
        let planned = (0..3).map(|index| PlannedLanding {
            job: label(index),
            kind: JobKind::Build,
            build_region: Region::new("us-west-2"),
        });
        see(
            &mut tally,
            0,
            RunEvent::RunStarted {
                fleet: "unit".into(),
                run_id,
                started_at: at(0),
                builds: 3,
                copies: 0,
                planned: planned.collect(),
                selective: false,
            },
        );
        see(&mut tally, 0, RunEvent::JobStarted { job: label(0), kind: JobKind::Build });
        assert_eq!(estimator.remaining(&tally), Duration::from_secs(3 * 3600), "nothing measured: the fallback");
        see(&mut tally, 10, RunEvent::JobSucceeded { job: label(0) });
        see(&mut tally, 10, RunEvent::JobStarted { job: label(1), kind: JobKind::Build });
        see(
            &mut tally,
            14,
            RunEvent::Progress { job: label(1), stage: crate::outcome::Stage::Provision, detail: "…".into() },
        );
        // `a` took 10 minutes: the second `a` has 6 left; `b` has no measure of its own, so all builds' mean.
        assert_eq!(estimator.remaining(&tally), Duration::from_secs((6 + 10) * 60));
    }
}
