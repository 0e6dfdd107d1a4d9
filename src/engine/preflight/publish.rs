//! The preflight's `[publish]` checks: in every region a flavor's image lands in, the SSM parameter it will
//! be published to (its data type, how many versions it has, and whether the oldest of 100 carries a label
//! fleetbake will not remove, so the next put would be refused) and the launch template (it must exist:
//! fleetbake adds versions to templates, it does not make them). Read-only: GetParameterHistory and
//! DescribeLaunchTemplates. Another account's copies (`[publish] accounts`) are checked in that account.

use std::collections::BTreeSet;

use super::{Outcome, Preflight};
use crate::cloud::{Cloud, RegionCloud, IMAGE_DATA_TYPE};
use crate::config::{Account, Fleet, Place, Publish};
use crate::plan::Plan;
use crate::steps::publish::is_run_label;

/// SSM keeps this many versions of a parameter (a put past it drops the oldest, unless it is labelled).
const SSM_MAX_VERSIONS: usize = 100;

/// Checks each publish target of `plan`, once per region and name.
pub async fn check_publish_targets(preflight: &mut Preflight, fleet: &Fleet, plan: &Plan, cloud: &dyn Cloud) {
    let Some(publish) = fleet.publish.as_ref() else {
        return;
    };
    let mut parameters: BTreeSet<(Place, String)> = BTreeSet::new();
    let mut templates: BTreeSet<(Place, String)> = BTreeSet::new();
    for job in plan.jobs() {
        let (flavor, place) = (plan.placement(job).0, plan.place_of(job));
        if !publish.accounts.covers(&place.account) {
            continue;
        }
        if let Some(template) = &publish.ssm_parameter {
            parameters.insert((place.clone(), Publish::render(template, &fleet.name, flavor)));
        }
        if let Some(template) = &publish.launch_template {
            templates.insert((place, Publish::render(template, &fleet.name, flavor)));
        }
    }
    for (place, name) in parameters {
        let outcome = check_parameter(&*cloud.place(&place), &name).await;
        preflight.push_in(&place, in_account(&place, outcome));
    }
    for (place, name) in templates {
        let region = &place.region;
        let outcome = match cloud.place(&place).launch_template_id(&name).await {
            Ok(Some(id)) => Outcome::Ok(format!("launch template `{name}` ({id}) exists")),
            Ok(None) => Outcome::Fail(format!(
                "launch template `{name}` does not exist: fleetbake adds versions to a template, it does not make one; create it in {region} (or change `[publish] launch_template`)"
            )),
            Err(error) => Outcome::Fail(format!("cannot read launch template `{name}`: {error}")),
        };
        preflight.push_in(&place, in_account(&place, outcome));
    }
}

/// A check of another account's place names the account (the own account's read as before).
fn in_account(place: &Place, outcome: Outcome) -> Outcome {
    let Account::Id(id) = &place.account else { return outcome };
    let named = |text: String| format!("account {id}: {text}");
    match outcome {
        Outcome::Ok(text) => Outcome::Ok(named(text)),
        Outcome::Fail(text) => Outcome::Fail(named(text)),
        Outcome::Warn(text) => Outcome::Warn(named(text)),
    }
}

/// One SSM parameter: absent (the first put makes it), of another data type (every put is refused), or at
/// SSM's 100 versions with a label fleetbake does not remove on the oldest (the next put is refused).
async fn check_parameter(cloud: &dyn RegionCloud, name: &str) -> Outcome {
    let history = match cloud.parameter_history(name).await {
        Ok(Some(history)) => history,
        Ok(None) => {
            return Outcome::Ok(format!("SSM parameter `{name}` does not exist yet: the first publish makes it"))
        }
        Err(error) => return Outcome::Fail(format!("cannot read SSM parameter `{name}`: {error}")),
    };
    if history.data_type != IMAGE_DATA_TYPE {
        return Outcome::Fail(format!(
            "SSM parameter `{name}` has data type `{}`, and SSM never changes a parameter's data type to `{IMAGE_DATA_TYPE}`: every publish to it would fail; delete it, or publish to another name",
            history.data_type
        ));
    }
    let count = history.versions.len();
    if count >= SSM_MAX_VERSIONS {
        if let Some(oldest) = history.versions.first() {
            let foreign: Vec<&String> = oldest.labels.iter().filter(|label| !is_run_label(label)).collect();
            if !foreign.is_empty() {
                let labels: Vec<String> = foreign.iter().map(|label| format!("`{label}`")).collect();
                return Outcome::Fail(format!(
                    "SSM parameter `{name}` has {count} versions and its oldest (version {}) carries {} that fleetbake does not remove: SSM refuses the next put (`ParameterMaxVersionLimitExceeded`) until the label is moved to a newer version",
                    oldest.version,
                    labels.join(", ")
                ));
            }
        }
    }
    Outcome::Ok(format!("SSM parameter `{name}`: data type `{IMAGE_DATA_TYPE}`, {count} versions"))
}
