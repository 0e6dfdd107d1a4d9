//! The plan: every build (flavor × build region) and every copy (build → target region), as plain data.
//!
//! [`Plan::new`] is pure: no clock, no network. `fleetbake plan` prints it; the scheduler executes it.
//!
//! Layer: `plan` owns the plan, its dependency queue ([`deps`]) and its critical-path bound ([`bound`]), all
//! pure functions of data. It imports `config` only.

pub mod bound;
pub mod deps;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

use crate::config::{FlavorName, Fleet, NameContext, Place, Region, Selection, SourceAmi, SshInterface, RUN_ID_LENGTH};
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

    /// A new run's id: a random suffix, drawn again while it would repeat an id this process has already made.
    /// Runs of one process can start within a second of each other (the simulated nights of a test, each
    /// taking Utc::now() as its start): a repeated id would make a later run's RunInstances token the earlier
    /// run's, which EC2 (and the sim) answers with the earlier run's (terminated) instance.
    pub fn generate(started_at: DateTime<Utc>) -> Self {
        static MADE: std::sync::Mutex<std::collections::BTreeSet<RunId>> =
            std::sync::Mutex::new(std::collections::BTreeSet::new());
        let mut made = MADE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let id = Self::new(started_at, fastrand::u32(..));
            if made.insert(id.clone()) {
                return id;
            }
        }
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

/// What a job waits for from the job it starts from (an edge of the job graph, [`deps::DependencyQueue`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Awaited {
    /// Its image, available where the job reads it (a copy's source region, a chained build's region). Room
    /// for more: a copy shared into another account, a parameter published.
    Image,
}

/// The plan's job graph as a queue: jobs, and the edges on which they wait.
pub type JobQueue = DependencyQueue<JobId, Awaited>;

/// Where a build's instance starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildSource {
    /// The flavor's `source_ami` (an id or a filter), looked up when the build starts; for `{ flavor = … }`
    /// whose parent this plan does not build (`--only child`), the parent's newest image in the region.
    Configured,
    /// The image another job of this plan makes (`source_ami = { flavor = … }`: the parent's build in this
    /// region, or its copy into it): the build waits for it.
    ImageOf(JobId),
}

/// Bake one flavor in one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildJob {
    pub index: usize,
    pub flavor: FlavorName,
    pub region: Region,
    pub source: BuildSource,
    pub image_name: String,
    /// Indexes into [`Plan::copies`].
    pub copies: Vec<usize>,
    /// How its instance is reached (the flavor's `interface`, else `[ssh] interface`).
    pub interface: SshInterface,
}

impl BuildJob {
    pub fn key(&self) -> JobKey {
        JobKey(format!("build:{}@{}", self.flavor, self.region))
    }
}

/// Copy one build's image to one more region, of the run's own account (`[regions]`) or of another account
/// (`[[distribution]]`: the account owns the copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyJob {
    pub index: usize,
    pub build: usize,
    pub flavor: FlavorName,
    pub source_region: Region,
    /// Where the copy lands: a region of the own account, or of a distribution account.
    pub target: Place,
    pub image_name: String,
}

impl CopyJob {
    /// `copy:flavor@source>target`, the target written as its place (`account/region` for another account's).
    pub fn key(&self) -> JobKey {
        JobKey(format!("copy:{}@{}>{}", self.flavor, self.source_region, self.target))
    }

    /// The region the copy lands in (of whichever account).
    pub fn target_region(&self) -> &Region {
        &self.target.region
    }

    /// Whether the copy goes into another account (`[[distribution]]`).
    pub fn is_distribution(&self) -> bool {
        !self.target.account.is_own()
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
    /// Each `[variables]` value's digest, salted with the run id: the journal keeps them, `--resume` compares.
    pub variables: crate::config::variables::VariableDigests,
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
                    target: Place::own(target.clone()),
                    image_name: image_name.clone(),
                });
            }
            builds.push(BuildJob {
                index: build_index,
                flavor: flavor.name.clone(),
                region: region.clone(),
                source: BuildSource::Configured,
                image_name,
                copies: build_copies,
                interface: flavor.interface,
            });
        }
        distribute(fleet, &mut builds, &mut copies);
        let variables = fleet.variables.digests(run_id.as_str());
        let mut plan = Plan {
            fleet: fleet.name.clone(),
            run_id,
            started_at,
            builds,
            copies,
            selection: fleet.selection.clone(),
            variables,
        };
        plan.link_layers(fleet);
        plan
    }

    /// `source_ami = { flavor = … }`: each child build starts from the job that lands its parent's image in its
    /// region (the parent's build there, else the first copy of it there), when this plan has one.
    fn link_layers(&mut self, fleet: &Fleet) {
        for index in 0..self.builds.len() {
            let flavor = fleet.flavor(&self.builds[index].flavor).expect("planned from the fleet");
            let SourceAmi::Flavor(parent) = &flavor.source_ami else { continue };
            if let Some(landing) = self.landing_of(parent, &self.builds[index].region) {
                self.builds[index].source = BuildSource::ImageOf(landing);
            }
        }
    }

    /// The job of this plan that lands `flavor`'s image in `region`: its build there, else a copy there.
    pub fn landing_of(&self, flavor: &FlavorName, region: &Region) -> Option<JobId> {
        let build = self.builds.iter().find(|build| &build.flavor == flavor && &build.region == region);
        let copy =
            || self.copies.iter().find(|copy| &copy.flavor == flavor && copy.target == Place::own(region.clone()));
        build.map(|build| JobId::Build(build.index)).or_else(|| copy().map(|copy| JobId::Copy(copy.index)))
    }

    /// Every job in plan order, each waiting for the image of its input (if any): builds from their configured
    /// source start first, every other job once the image it starts from is available; ready jobs ranked by
    /// how many jobs wait on them.
    pub fn dependency_queue(&self) -> JobQueue {
        DependencyQueue::new(
            self.jobs().map(|job| (job, self.input(job).map(|input| (input, Awaited::Image)).into_iter().collect())),
        )
    }

    /// The job whose image `job` starts from: a copy's build, or the job a build's source names; `None` for a
    /// build from its configured source.
    pub fn input(&self, job: JobId) -> Option<JobId> {
        match job {
            JobId::Build(index) => match self.builds[index].source {
                BuildSource::Configured => None,
                BuildSource::ImageOf(input) => Some(input),
            },
            JobId::Copy(index) => Some(JobId::Build(self.copies[index].build)),
        }
    }

    /// How many jobs start from each job's image (jobs nothing starts from are left out).
    pub fn dependent_counts(&self) -> BTreeMap<JobId, usize> {
        let mut counts = BTreeMap::new();
        for input in self.jobs().filter_map(|job| self.input(job)) {
            *counts.entry(input).or_default() += 1;
        }
        counts
    }

    /// Why `skipped` never starts: `failed`, which it waits on (itself or through other jobs), failed. A build
    /// from another flavor's image names its parent's job that failed (`parent base/us-west-2 failed`: its build
    /// there, or its copy to there), or, further up the chain, the parent and what failed.
    pub fn why_skipped(&self, skipped: JobId, failed: JobId) -> String {
        if let (JobId::Build(_), Some(input)) = (skipped, self.input(skipped)) {
            let (parent, region) = self.placement(input);
            let (failed_flavor, failed_region) = self.placement(failed);
            if failed_flavor == parent {
                return format!("parent {failed_flavor}/{failed_region} failed");
            }
            return format!("parent {parent}/{region} not made: {failed_flavor}/{failed_region} failed");
        }
        let not = match skipped {
            JobId::Build(_) => "not built",
            JobId::Copy(_) => "not copied",
        };
        match failed {
            JobId::Build(index) => {
                let build = &self.builds[index];
                format!("{not}: the build of {} in {} failed", build.flavor, build.region)
            }
            JobId::Copy(index) => {
                let copy = &self.copies[index];
                format!("{not}: the copy of {} to {} failed", copy.flavor, copy.target)
            }
        }
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

    /// Where a job's image lands: its build region, or its copy's target (another account's region for a
    /// `[[distribution]]` copy; [`Plan::placement`] gives the region alone).
    pub fn place_of(&self, job: JobId) -> Place {
        match job {
            JobId::Build(index) => Place::own(self.builds[index].region.clone()),
            JobId::Copy(index) => self.copies[index].target.clone(),
        }
    }

    /// The flavor and the region a job's image ends up in.
    pub fn placement(&self, job: JobId) -> (&FlavorName, &Region) {
        match job {
            JobId::Build(index) => (&self.builds[index].flavor, &self.builds[index].region),
            JobId::Copy(index) => (&self.copies[index].flavor, self.copies[index].target_region()),
        }
    }
}

/// `[[distribution]]`: for each distributed flavor, account and region, a copy into that account, from the
/// flavor's build in the same region if the matrix builds it there (a copy within a region is the quickest),
/// else from its first build in the matrix. The source is chosen from the whole matrix, not the selection, so
/// `--only` never moves an account's copy to another build: a copy whose source build is not selected is not
/// planned. Appended after the own account's copies, so their order (and their keys) do not change.
fn distribute(fleet: &Fleet, builds: &mut [BuildJob], copies: &mut Vec<CopyJob>) {
    let matrix = fleet.matrix_pairs();
    for distribution in fleet.distributions.iter() {
        let mut flavors: Vec<&FlavorName> = Vec::new();
        for build in builds.iter().filter(|build| distribution.applies_to(&build.flavor)) {
            if !flavors.contains(&&build.flavor) {
                flavors.push(&build.flavor);
            }
        }
        let flavors: Vec<FlavorName> = flavors.into_iter().cloned().collect();
        for flavor in &flavors {
            let built_in: Vec<&Region> =
                matrix.iter().filter(|(each, _)| &each.name == flavor).map(|(_, region)| *region).collect();
            for account in distribution.account_places() {
                for region in &distribution.regions {
                    let Some(&source_region) = built_in.iter().find(|&&built| built == region).or(built_in.first())
                    else {
                        continue;
                    };
                    let Some(source) =
                        builds.iter().position(|build| &build.flavor == flavor && &build.region == source_region)
                    else {
                        continue;
                    };
                    let build = &mut builds[source];
                    build.copies.push(copies.len());
                    copies.push(CopyJob {
                        index: copies.len(),
                        build: source,
                        flavor: flavor.clone(),
                        source_region: build.region.clone(),
                        target: Place { account: account.clone(), region: region.clone() },
                        image_name: build.image_name.clone(),
                    });
                }
            }
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
            let through = if build.interface.is_session_manager() { ", through Session Manager" } else { "" };
            let from = match build.source {
                BuildSource::Configured => String::new(),
                BuildSource::ImageOf(input) => {
                    let (parent, region) = self.placement(input);
                    format!(" from {parent}/{region}")
                }
            };
            writeln!(f, "build {} in {} as `{}`{from}{through}", build.flavor, build.region, build.image_name)?;
            for &copy in &build.copies {
                writeln!(f, "  copy to {}", self.copies[copy].target)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_generated_run_id_never_repeats_one_this_process_made() {
        let at = Utc.with_ymd_and_hms(2031, 5, 4, 3, 2, 1).unwrap();
        fastrand::seed(27);
        let first = RunId::generate(at);
        fastrand::seed(27);
        let second = RunId::generate(at);
        assert_ne!(first, second, "the same second, the same draw");
        assert_eq!(first.started_at(), second.started_at());
    }

    /// Two flavors built in us-west-2, each copied to us-east-1; the second built from the first's image.
    fn chained() -> Plan {
        let text = "[fleet]\nname = \"chain\"\n\n[defaults]\ninstance_type = \"t3.micro\"\nssh_username = \"u\"\n\n\
                    [[flavor]]\nname = \"base\"\nsource_ami = { id = \"ami-1\" }\n\n\
                    [[flavor]]\nname = \"app\"\nsource_ami = { flavor = \"base\" }\n\n\
                    [regions]\nus-west-2 = [\"us-east-1\"]\n";
        plan_of(text)
    }

    fn plan_of(text: &str) -> Plan {
        let fleet = crate::config::parse(std::path::Path::new("fleet.toml"), text).expect("the test fleet parses");
        let started = Utc.with_ymd_and_hms(2026, 12, 7, 2, 0, 0).unwrap();
        Plan::new(&fleet, RunId::new(started, 1), started)
    }

    /// A distribution copy comes from the flavor's build in its region, else its first build in the matrix,
    /// whatever `--only` selects: a copy whose source build is not selected is not planned (never moved to
    /// another build).
    #[test]
    fn a_distribution_copy_keeps_its_source_build_under_only() {
        let text = "[fleet]\nname = \"dist\"\n\n[defaults]\ninstance_type = \"t3.micro\"\nssh_username = \"u\"\n\n\
                    [[flavor]]\nname = \"web\"\nsource_ami = { owners = [\"amazon\"], name = \"al2023-*\" }\n\n\
                    [regions]\neu-central-1 = []\nus-west-2 = []\n\n\
                    [[distribution]]\naccounts = [\"222233334444\"]\nregions = [\"us-west-2\", \"us-east-1\"]\n\
                    role_arn = \"arn:aws:iam::{account}:role/d\"\n";
        let targets = |plan: &Plan| -> Vec<String> {
            plan.copies.iter().map(|copy| format!("{}>{}", copy.source_region, copy.target)).collect()
        };
        assert_eq!(
            targets(&plan_of(text)),
            ["us-west-2>222233334444/us-west-2", "eu-central-1>222233334444/us-east-1"],
            "the same region's build, else the first"
        );
        let mut fleet = crate::config::parse(std::path::Path::new("fleet.toml"), text).unwrap();
        let only = crate::config::JobPattern::parse("web/eu-central-1").unwrap();
        fleet.select(Selection { only: vec![only], except: Vec::new() }).unwrap();
        let started = Utc.with_ymd_and_hms(2026, 12, 7, 2, 0, 0).unwrap();
        let plan = Plan::new(&fleet, RunId::new(started, 1), started);
        assert_eq!(targets(&plan), ["eu-central-1>222233334444/us-east-1"], "us-west-2's copy is not moved");
    }

    #[test]
    fn a_child_built_where_its_parent_is_copied_starts_from_that_copy_and_grandchildren_chain() {
        // base builds in us-west-2 only and is copied to eu-central-1, where mid and leaf build (only there: a
        // flavor holds one image per region, and us-west-2 copies what it builds to eu-central-1).
        let plan = plan_of(
            "[fleet]\nname = \"layers\"\n\n[defaults]\ninstance_type = \"t3.micro\"\nssh_username = \"u\"\n\n\
             [[flavor]]\nname = \"leaf\"\nsource_ami = { flavor = \"mid\" }\n\n\
             [[flavor]]\nname = \"base\"\nsource_ami = { owners = [\"amazon\"], name = \"al2023-*\" }\n\n\
             [[flavor]]\nname = \"mid\"\nsource_ami = { flavor = \"base\" }\n\n\
             [regions]\neu-central-1 = []\nus-west-2 = [\"eu-central-1\"]\n\n\
             [matrix]\nexclude = [{ flavor = \"base\", region = \"eu-central-1\" }, { flavor = \"mid\", region = \"us-west-2\" }, \
             { flavor = \"leaf\", region = \"us-west-2\" }]\n",
        );
        let source_of = |flavor: &str, region: &str| {
            let build = plan.builds.iter().find(|b| b.flavor.as_str() == flavor && b.region.as_str() == region);
            build.unwrap().source
        };
        let base_copy = plan.copies.iter().find(|copy| copy.flavor.as_str() == "base").unwrap().index;
        assert_eq!(source_of("mid", "eu-central-1"), BuildSource::ImageOf(JobId::Copy(base_copy)));
        let base_build = plan.builds.iter().find(|b| b.flavor.as_str() == "base").unwrap().index;
        let mid_east = plan.landing_of(&FlavorName::new("mid"), &Region::new("eu-central-1")).unwrap();
        assert_eq!(source_of("leaf", "eu-central-1"), BuildSource::ImageOf(mid_east), "the leaf waits on mid there");
        assert_eq!(source_of("base", "us-west-2"), BuildSource::Configured);
        assert!(plan.to_string().contains("build mid in eu-central-1 as `mid-"), "{plan}");
        assert!(plan.to_string().contains(" from base/eu-central-1"), "{plan}");
        let mut queue = plan.dependency_queue();
        let leaf_east = plan.landing_of(&FlavorName::new("leaf"), &Region::new("eu-central-1")).unwrap();
        queue.pop_ready();
        let mut skipped = queue.failed(&JobId::Build(base_build));
        skipped.sort();
        assert_eq!(
            skipped,
            [mid_east, leaf_east, JobId::Copy(base_copy)]
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert_eq!(
            plan.why_skipped(leaf_east, JobId::Build(base_build)),
            "parent mid/eu-central-1 not made: base/us-west-2 failed"
        );
        assert_eq!(plan.why_skipped(mid_east, JobId::Copy(base_copy)), "parent base/eu-central-1 failed");
        assert_eq!(plan.why_skipped(mid_east, JobId::Build(base_build)), "parent base/us-west-2 failed");
    }

    #[test]
    fn every_job_but_a_configured_build_names_the_job_whose_image_it_starts_from() {
        let plan = chained();
        let inputs: Vec<Option<JobId>> = plan.jobs().map(|job| plan.input(job)).collect();
        assert_eq!(inputs, [None, Some(JobId::Build(0)), Some(JobId::Build(0)), Some(JobId::Build(1))]);
        assert_eq!(plan.dependent_counts(), BTreeMap::from([(JobId::Build(0), 2), (JobId::Build(1), 1)]));
    }

    #[test]
    fn a_build_from_another_job_s_image_waits_for_it_like_a_copy() {
        let plan = chained();
        let mut queue = plan.dependency_queue();
        assert_eq!(queue.pop_ready(), Some(JobId::Build(0)));
        assert_eq!(queue.pop_ready(), None, "the second build waits for the first's image");
        queue.satisfied(&JobId::Build(0), &Awaited::Image);
        assert_eq!(queue.pop_ready(), Some(JobId::Build(1)));
        assert_eq!(queue.pop_ready(), Some(JobId::Copy(0)));
        queue.satisfied(&JobId::Build(1), &Awaited::Image);
        assert_eq!(queue.pop_ready(), Some(JobId::Copy(1)));
    }

    #[test]
    fn a_skipped_job_says_which_job_failed_and_what_it_would_have_done() {
        let plan = chained();
        let mut queue = plan.dependency_queue();
        queue.pop_ready();
        let skipped = queue.failed(&JobId::Build(0));
        assert_eq!(skipped.len(), 3, "the second build, the first's copy, and through the second build its copy");
        let why: Vec<String> = skipped.iter().map(|&job| plan.why_skipped(job, JobId::Build(0))).collect();
        assert!(why.contains(&"parent base/us-west-2 failed".to_string()), "{why:?}");
        assert!(why.contains(&"not copied: the build of base in us-west-2 failed".to_string()), "{why:?}");
        assert_eq!(
            plan.why_skipped(JobId::Copy(0), JobId::Build(0)),
            "not copied: the build of base in us-west-2 failed"
        );
    }
}
