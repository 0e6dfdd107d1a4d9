//! Every problem a run would meet, found before anything is created: `fleetbake preflight`, and the check
//! `fleetbake matrix` makes before its first mutating call. Read-only calls only; all checks are made and
//! reported at once, one line each, `ok` or `FAIL` with what to change.
//!
//! Checked: with Session Manager builds, the `session-manager-plugin` (found, and its version); who the run acts as;
//! whether its credentials last the run's estimated length, and `[aws] role_arn` within role chaining's 1-hour
//! cap ([`credentials`]); that every region of the run is enabled for the account ([`regions`]); in each build region, where each flavor's builds would go (subnets, VPC, or
//! the default VPC), each flavor's source image, and each of its instance types offered in the region and in
//! the zones of its subnets ([`instance_types`]); in every region an image lands in, that the region answers and that no image
//! there already holds a name this run would give one, and that its `[encryption]` key exists, is enabled, and
//! (when the images are shared) is not AWS-managed; with `[publish]`, each SSM parameter and launch template
//! an image will be published to ([`publish`]); with `[sharing] public`, that each such region lets images be
//! made public (`sharing`); and, for builds reached over SSH at an address, where that SSH comes from and whether
//! the temporary security group will admit it ([`admission`]); with `[[distribution]]`, each destination
//! account's role, regions, keys and names, and that the source regions' keys are customer managed
//! ([`distribution`]).

mod admission;
mod distribution;
mod instance_types;
mod publish;
mod sharing;

pub mod credentials;
mod regions;
pub mod units;

pub use admission::Runner;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::cloud::{hints, Cloud, ErrorKind, ImageQuery};
use crate::config::{Account, Flavor, FlavorName, Fleet, Place, Region};
use crate::plan::Plan;
use crate::remote::session_manager;
use crate::steps::context::RUN_ID_TAG;
use crate::steps::network;
use crate::steps::source::{self, SourceError};

/// One check, and how it came out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The region it is about (`None`: the account).
    pub region: Option<Region>,
    pub outcome: Outcome,
    /// The `[[distribution]]` account it is about, if any: a failure there fails only that account's copies,
    /// so `matrix` goes on (`fleetbake preflight` still exits 1).
    pub account: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// What was found.
    Ok(String),
    /// What is wrong, and what to change.
    Fail(String),
    /// What may be wrong but cannot be told from here (an address a NAT or a container may translate): said,
    /// not a failure.
    Warn(String),
}

/// Every check of a fleet's run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preflight {
    pub checks: Vec<Check>,
}

impl Preflight {
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|check| matches!(check.outcome, Outcome::Fail(_)))
    }

    /// The failures that stop a run: all but those of a `[[distribution]]` account (whose copies fail alone).
    pub fn blocking_failures(&self) -> impl Iterator<Item = &Check> {
        self.failures().filter(|check| check.account.is_none())
    }

    fn push(&mut self, region: Option<&Region>, outcome: Outcome) {
        self.checks.push(Check { region: region.cloned(), outcome, account: None });
    }

    /// A check of a place: of the own account, as [`Preflight::push`]; of a `[[distribution]]` account, as that
    /// account's (its failure fails only that account's copies).
    fn push_in(&mut self, place: &Place, outcome: Outcome) {
        match &place.account {
            Account::Own => self.push(Some(&place.region), outcome),
            Account::Id(id) => self.push_for_account(id, Some(&place.region), outcome),
        }
    }

    /// A check of a `[[distribution]]` account.
    fn push_for_account(&mut self, account: &str, region: Option<&Region>, outcome: Outcome) {
        self.checks.push(Check { region: region.cloned(), outcome, account: Some(account.to_string()) });
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verdict, text) = match &self.outcome {
            Outcome::Ok(text) => ("ok  ", text),
            Outcome::Fail(text) => ("FAIL", text),
            Outcome::Warn(text) => ("WARN", text),
        };
        match &self.region {
            Some(region) => write!(f, "{verdict} {region}: {text}"),
            None => write!(f, "{verdict} {text}"),
        }
    }
}

impl fmt::Display for Preflight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(f, "{check}")?;
        }
        Ok(())
    }
}

/// Makes every check of `plan` (the run's, so the image names are the ones it would give); `runner` is who
/// SSH comes from.
pub async fn check(fleet: &Fleet, plan: &Plan, cloud: &dyn Cloud, runner: &Runner) -> Preflight {
    let mut preflight = Preflight::default();
    if fleet.uses_session_manager() {
        check_plugin(&mut preflight, &fleet.ssh.session_manager_plugin).await;
    }
    match cloud.caller_identity().await {
        Ok(identity) => {
            preflight.push(None, Outcome::Ok(format!("acting as {} (account {})", identity.arn, identity.account)));
            // The own account as a destination: its "copies" would be the builder's own images, kept and
            // collected twice (as the own account's and as a distribution account's).
            if fleet.distributions.accounts().contains(&identity.account) {
                preflight.push(
                    None,
                    Outcome::Fail(format!(
                        "`[[distribution]] accounts` names {}, the account the run acts as: the own account holds the builds and their `[regions]` copies already; remove it",
                        identity.account
                    )),
                );
            }
        }
        Err(error) => {
            let no_credentials = error.kind == ErrorKind::Credentials;
            preflight.push(
                None,
                Outcome::Fail(format!(
                    "cannot tell who the credentials are: {error}; the credentials in use: {}{}",
                    hints::credential_source(),
                    fleet
                        .aws
                        .role
                        .as_ref()
                        .map(|role| format!("; and that they may assume {}", role.arn))
                        .unwrap_or_default()
                )),
            );
            // Every other check would fail the same way.
            if no_credentials {
                preflight.push(None, Outcome::Fail("the other checks need credentials: not made".to_string()));
                return preflight;
            }
        }
    }
    credentials::check(&mut preflight, fleet, plan, cloud).await;
    regions::check(&mut preflight, plan, cloud, crate::engine::run::home_region(fleet)).await;
    let flavors_by_region = builds_by_region(fleet, plan);
    for (region, flavors) in &flavors_by_region {
        check_build_region(&mut preflight, cloud, region, fleet, flavors).await;
        admission::check(&mut preflight, fleet, cloud, runner, region, flavors).await;
    }
    for (region, names) in names_by_region(plan) {
        check_names(&mut preflight, cloud, plan, &region, &names).await;
        if let Some(key) = fleet.kms_key(&region) {
            check_key(&mut preflight, cloud, &region, key, fleet.sharing.any()).await;
        }
    }
    publish::check_publish_targets(&mut preflight, fleet, plan, cloud).await;
    sharing::check(&mut preflight, fleet, plan, cloud).await;
    distribution::check(&mut preflight, fleet, plan, cloud).await;
    preflight
}

/// With Session Manager builds: the `session-manager-plugin` is found and runs (`--version`). The instance
/// profile's existence is not checked (that is IAM's GetInstanceProfile, and fleetbake has no IAM client): a
/// missing one fails the launch.
async fn check_plugin(preflight: &mut Preflight, plugin: &std::path::Path) {
    let outcome = match session_manager::find_plugin(plugin) {
        None => Outcome::Fail(format!(
            "`{}` is not found{}, and Session Manager builds need it; {}",
            plugin.display(),
            if plugin.components().count() > 1 { "" } else { " on `PATH`" },
            session_manager::PLUGIN_HINT
        )),
        Some(found) => match session_manager::plugin_version(&found).await {
            Ok(version) => Outcome::Ok(format!("session-manager-plugin `{}`: version {version}", found.display())),
            Err(why) => Outcome::Fail(format!("session-manager-plugin `{}` does not run: {why}", found.display())),
        },
    };
    preflight.push(None, outcome);
}

/// The region's `[encryption]` key exists and is enabled; an AWS-managed key cannot encrypt shared images.
async fn check_key(preflight: &mut Preflight, cloud: &dyn Cloud, region: &Region, key: &str, shared: bool) {
    let outcome = match cloud.region(region).describe_key(key).await {
        Ok(None) => Outcome::Fail(format!(
            "KMS key `{key}` is not found in {region}; create it there or name another in `[encryption] kms_keys`"
        )),
        Ok(Some(found)) if !found.enabled => {
            Outcome::Fail(format!("KMS key `{key}` ({}) is disabled; enable it or name another", found.arn))
        }
        Ok(Some(found)) if found.aws_managed && shared => Outcome::Fail(format!(
            "KMS key `{key}` ({}) is AWS-managed: images encrypted with it cannot be shared; use a customer-managed key",
            found.arn
        )),
        Ok(Some(found)) => Outcome::Ok(format!("KMS key `{key}`: {}", found.arn)),
        Err(error) => Outcome::Fail(format!("cannot describe KMS key `{key}`: {error}")),
    };
    preflight.push(Some(region), outcome);
}

/// The flavors each build region builds, in plan order.
fn builds_by_region<'a>(fleet: &'a Fleet, plan: &Plan) -> BTreeMap<Region, Vec<&'a Flavor>> {
    let mut by_region: BTreeMap<Region, Vec<&Flavor>> = BTreeMap::new();
    for build in &plan.builds {
        if let Some(flavor) = fleet.flavor(&build.flavor) {
            by_region.entry(build.region.clone()).or_default().push(flavor);
        }
    }
    by_region
}

/// The image names the run would give, per region of the own account they land in (`distribution` checks the
/// other accounts').
fn names_by_region(plan: &Plan) -> BTreeMap<Region, BTreeSet<String>> {
    let mut by_region: BTreeMap<Region, BTreeSet<String>> = BTreeMap::new();
    for build in &plan.builds {
        by_region.entry(build.region.clone()).or_default().insert(build.image_name.clone());
    }
    for copy in plan.copies.iter().filter(|copy| !copy.is_distribution()) {
        by_region.entry(copy.target_region().clone()).or_default().insert(copy.image_name.clone());
    }
    by_region
}

async fn check_build_region(
    preflight: &mut Preflight,
    cloud: &dyn Cloud,
    region: &Region,
    fleet: &Fleet,
    flavors: &[&Flavor],
) {
    let region_cloud = cloud.region(region);
    let cloud = &*region_cloud;
    // Where the builds go: one check per distinct subnet choice.
    let mut zones_of: BTreeMap<FlavorName, Vec<String>> = BTreeMap::new();
    let mut choices: Vec<(Option<&crate::config::SubnetChoice>, Vec<&FlavorName>)> = Vec::new();
    for flavor in flavors {
        match choices.iter_mut().find(|(choice, _)| *choice == flavor.subnet.as_ref()) {
            Some((_, names)) => names.push(&flavor.name),
            None => choices.push((flavor.subnet.as_ref(), vec![&flavor.name])),
        }
    }
    for (_, names) in &choices {
        let flavor = flavors.iter().find(|flavor| &&flavor.name == names.first().expect("one flavor")).expect("listed");
        let of = listed(names);
        match network::subnets(cloud, flavor, region).await {
            Ok((subnets, vpc)) if subnets.is_empty() => {
                preflight.push(Some(region), Outcome::Ok(format!("{of} build in the default VPC {vpc}")))
            }
            Ok((subnets, vpc)) => {
                let zones: Vec<String> = subnets.iter().map(|subnet| subnet.availability_zone.clone()).collect();
                let found: Vec<String> =
                    subnets.iter().map(|subnet| format!("{} ({})", subnet.id, subnet.availability_zone)).collect();
                preflight.push(Some(region), Outcome::Ok(format!("{of} build in {} of {vpc}", found.join(", "))));
                for name in names {
                    zones_of.insert((*name).clone(), zones.clone());
                }
            }
            Err(error) => preflight.push(Some(region), Outcome::Fail(format!("{of}: {}", error.message))),
        }
    }
    for flavor in flavors {
        if let crate::config::SourceAmi::Flavor(parent) = &flavor.source_ami {
            let from = format!("source image of `{}`: the image of `{parent}` this run lands here", flavor.name);
            preflight.push(Some(region), Outcome::Ok(from));
            continue;
        }
        match source::resolve(cloud, &flavor.source_ami, region)
            .await
            .map(|resolved| (resolved.image, resolved.parameter))
        {
            Ok((image, Some(read))) => preflight.push(
                Some(region),
                Outcome::Ok(format!(
                    "source image of `{}`: {} from SSM parameter `{}` version {}",
                    flavor.name, image.id, read.name, read.version
                )),
            ),
            Ok((image, None)) if image.name.is_empty() => {
                preflight.push(Some(region), Outcome::Ok(format!("source image of `{}`: {}", flavor.name, image.id)))
            }
            Ok((image, None)) => preflight.push(
                Some(region),
                Outcome::Ok(format!(
                    "source image of `{}`: {} `{}` ({})",
                    flavor.name, image.id, image.name, image.creation_date
                )),
            ),
            Err(SourceError::Missing(message)) => preflight.push(
                Some(region),
                Outcome::Fail(format!("source image of `{}`: {message}; check its `source_ami`", flavor.name)),
            ),
            Err(SourceError::Cloud(error)) => {
                preflight.push(Some(region), Outcome::Fail(format!("source image of `{}`: {error}", flavor.name)))
            }
        }
    }
    instance_types::check(preflight, cloud, region, fleet, flavors, &zones_of).await;
}

/// The region answers, and no image there holds a name the run would give (unless the run made it).
async fn check_names(
    preflight: &mut Preflight,
    cloud: &dyn Cloud,
    plan: &Plan,
    region: &Region,
    names: &BTreeSet<String>,
) {
    let query = ImageQuery::Named(names.iter().cloned().collect());
    let outcome = match cloud.region(region).find_owned_images(&query).await {
        // What to do, as a failed run would say it.
        Err(error) if error.code.as_deref() == Some("OptInRequired") => {
            Outcome::Fail(hints::hint(&error).expect("OptInRequired has a hint"))
        }
        Err(error) => Outcome::Fail(format!(
            "cannot reach {region}: {error}{}",
            hints::hint(&error).map(|hint| format!("; {hint}")).unwrap_or_default()
        )),
        Ok(found) => {
            let taken: Vec<String> = found
                .iter()
                .filter(|image| names.contains(&image.name))
                .filter(|image| image.tags.get(RUN_ID_TAG).is_none_or(|run| run != plan.run_id.as_str()))
                .map(|image| format!("`{}` ({})", image.name, image.id))
                .collect();
            if taken.is_empty() {
                Outcome::Ok(format!("reachable; none of the run's {} image names is taken", names.len()))
            } else {
                Outcome::Fail(format!(
                    "already taken: {}; AMI names are unique per region: put `{{timestamp}}` or `{{run_id}}` in `ami_name`, or deregister them",
                    taken.join(", ")
                ))
            }
        }
    };
    preflight.push(Some(region), outcome);
}

fn listed(names: &[&FlavorName]) -> String {
    names.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ")
}
