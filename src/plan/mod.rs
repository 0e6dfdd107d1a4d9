//! The plan: every build (flavor × build region) and every copy (build → target region), as plain data.
//!
//! [`Plan::new`] is pure: no clock, no network. `fleetbake plan` prints it; the scheduler executes it.
//!
//! Layer: `plan` owns the plan, its dependency queue ([`deps`]) and its critical-path bound ([`bound`]), all
//! pure functions of data. It imports `config` only.

pub mod bound;
pub mod deps;

use std::fmt;

use chrono::{DateTime, Utc};

use crate::config::{FlavorName, Fleet, NameContext, Region, Selection, RUN_ID_LENGTH};
use crate::plan::deps::DependencyQueue;

/// Identifies one run; stamped on every resource it creates (`fleetbake:run-id`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// `YYYYMMDD-hhmmss-xxxxx`: sortable by start time, unique across runs started in the same second.
    pub fn new(started_at: DateTime<Utc>, suffix: u32) -> Self {
        let id = format!("{}-{:05x}", started_at.format("%Y%m%d-%H%M%S"), suffix & 0xfffff);
        debug_assert_eq!(id.len(), RUN_ID_LENGTH);
        RunId(id)
    }

    pub fn generate(started_at: DateTime<Utc>) -> Self {
        Self::new(started_at, fastrand::u32(..))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A run id as found on a resource's `fleetbake:run-id` tag, if it has the shape fleetbake gives them.
    pub fn parse(text: &str) -> Option<RunId> {
        let id = RunId(text.to_string());
        let shaped = text.len() == RUN_ID_LENGTH
            && text.as_bytes().get(15) == Some(&b'-')
            && text[16..].chars().all(|c| c.is_ascii_hexdigit());
        (shaped && id.started_at().is_some()).then_some(id)
    }

    /// When the run started, from its id (to the second).
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_str(&format!("{} +0000", self.0.get(..15)?), "%Y%m%d-%H%M%S %z").ok().map(|at| at.to_utc())
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_newtype!(
    /// A job as the journal names it, the same in every process that runs the plan:
    /// `build:flavor@region` or `copy:flavor@source>target`.
    JobKey,
);

/// A job as the journal's header lists it: its key and the name of the image it makes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedJob {
    pub job: JobKey,
    pub image_name: String,
}

/// A job in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobId {
    Build(usize),
    Copy(usize),
}

/// Bake one flavor in one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildJob {
    pub index: usize,
    pub flavor: FlavorName,
    pub region: Region,
    pub image_name: String,
    /// Indexes into [`Plan::copies`].
    pub copies: Vec<usize>,
}

impl BuildJob {
    pub fn key(&self) -> JobKey {
        JobKey(format!("build:{}@{}", self.flavor, self.region))
    }
}

/// Copy one build's image to one more region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyJob {
    pub index: usize,
    pub build: usize,
    pub flavor: FlavorName,
    pub source_region: Region,
    pub target_region: Region,
    pub image_name: String,
}

impl CopyJob {
    pub fn key(&self) -> JobKey {
        JobKey(format!("copy:{}@{}>{}", self.flavor, self.source_region, self.target_region))
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub fleet: String,
    pub run_id: RunId,
    pub started_at: DateTime<Utc>,
    pub builds: Vec<BuildJob>,
    pub copies: Vec<CopyJob>,
    /// `--only` / `--except`: the plan has only these of the matrix's builds.
    pub selection: Selection,
}

impl Plan {
    pub fn new(fleet: &Fleet, run_id: RunId, started_at: DateTime<Utc>) -> Self {
        let date = started_at.format("%Y-%m-%d").to_string();
        let timestamp = started_at.format("%Y%m%dT%H%M%SZ").to_string();
        let mut builds = Vec::new();
        let mut copies = Vec::new();
        for (flavor, region) in fleet.selected_pairs() {
            let image_name = fleet.ami_name.render(&NameContext {
                flavor: flavor.name.as_str(),
                build_region: region.as_str(),
                date: &date,
                timestamp: &timestamp,
                run_id: run_id.as_str(),
            });
            let build_index = builds.len();
            let mut build_copies = Vec::new();
            for target in &fleet.regions[region] {
                build_copies.push(copies.len());
                copies.push(CopyJob {
                    index: copies.len(),
                    build: build_index,
                    flavor: flavor.name.clone(),
                    source_region: region.clone(),
                    target_region: target.clone(),
                    image_name: image_name.clone(),
                });
            }
            builds.push(BuildJob {
                index: build_index,
                flavor: flavor.name.clone(),
                region: region.clone(),
                image_name,
                copies: build_copies,
            });
        }
        Plan { fleet: fleet.name.clone(), run_id, started_at, builds, copies, selection: fleet.selection.clone() }
    }

    /// Builds first (in plan order), then each copy once its build's image is available.
    pub fn dependency_queue(&self) -> DependencyQueue<JobId> {
        let builds = self.builds.iter().map(|build| (JobId::Build(build.index), Vec::new()));
        let copies = self.copies.iter().map(|copy| (JobId::Copy(copy.index), vec![JobId::Build(copy.build)]));
        DependencyQueue::new(builds.chain(copies))
    }

    pub fn key(&self, job: JobId) -> JobKey {
        match job {
            JobId::Build(index) => self.builds[index].key(),
            JobId::Copy(index) => self.copies[index].key(),
        }
    }

    /// Every job and the name of the image it makes, in plan order.
    pub fn planned_jobs(&self) -> Vec<PlannedJob> {
        let builds = self.builds.iter().map(|build| (build.key(), &build.image_name));
        let copies = self.copies.iter().map(|copy| (copy.key(), &copy.image_name));
        builds.chain(copies).map(|(job, name)| PlannedJob { job, image_name: name.clone() }).collect()
    }

    /// Every job, in plan order.
    pub fn jobs(&self) -> impl Iterator<Item = JobId> + '_ {
        let builds = self.builds.iter().map(|build| JobId::Build(build.index));
        builds.chain(self.copies.iter().map(|copy| JobId::Copy(copy.index)))
    }

    pub fn job_count(&self) -> usize {
        self.builds.len() + self.copies.len()
    }

    /// The flavor and the region a job's image ends up in.
    pub fn placement(&self, job: JobId) -> (&FlavorName, &Region) {
        match job {
            JobId::Build(index) => (&self.builds[index].flavor, &self.builds[index].region),
            JobId::Copy(index) => (&self.copies[index].flavor, &self.copies[index].target_region),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fleet `{}`: {} builds, {} copies", self.fleet, self.builds.len(), self.copies.len())?;
        if !self.selection.is_everything() {
            writeln!(f, "selected: {}", self.selection)?;
        }
        for build in &self.builds {
            writeln!(f, "build {} in {} as `{}`", build.flavor, build.region, build.image_name)?;
            for &copy in &build.copies {
                writeln!(f, "  copy to {}", self.copies[copy].target_region)?;
            }
        }
        Ok(())
    }
}
