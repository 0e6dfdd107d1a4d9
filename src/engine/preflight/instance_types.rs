//! Each instance type a build may launch (every one of a flavor's `instance_types`, tried in order) is offered in
//! its build region and in the zones of the flavor's subnets: DescribeInstanceTypeOfferings, each type once per
//! region. A type offered nowhere the flavor builds would only ever answer `Unsupported`; the failure names the
//! fleet file's key of each flavor that lists it (`flavor[i].instance_types[j]`).

use std::collections::{BTreeMap, BTreeSet};

use super::{listed, Outcome, Preflight};
use crate::cloud::RegionCloud;
use crate::config::{Flavor, FlavorName, Fleet, Region};

/// Who asks for one instance type in a region: the flavors, the keys they list it at, the zones of their subnets.
#[derive(Default)]
struct Wanted<'a> {
    flavors: Vec<&'a FlavorName>,
    keys: Vec<String>,
    zones: BTreeSet<String>,
}

/// The key of a flavor's `index`-th instance type in the fleet file: `flavor[i].instance_types[j]`, or
/// `flavor[i].instance_type` when it has one.
fn key_of(fleet: &Fleet, flavor: &Flavor, index: usize) -> String {
    let position = fleet.flavors.iter().position(|listed| listed.name == flavor.name).unwrap_or_default();
    if flavor.instance_types.len() > 1 {
        format!("flavor[{position}].instance_types[{index}]")
    } else {
        format!("flavor[{position}].instance_type")
    }
}

/// Every instance type of `flavors` (building in `region`) offered there and in the zones of their subnets.
pub(super) async fn check(
    preflight: &mut Preflight,
    cloud: &dyn RegionCloud,
    region: &Region,
    fleet: &Fleet,
    flavors: &[&Flavor],
    zones_of: &BTreeMap<FlavorName, Vec<String>>,
) {
    let mut types: BTreeMap<&str, Wanted> = BTreeMap::new();
    for flavor in flavors {
        let own = std::slice::from_ref(&flavor.instance_type);
        let listed_types = if flavor.instance_types.is_empty() { own } else { &flavor.instance_types[..] };
        for (index, instance_type) in listed_types.iter().enumerate() {
            let wanted = types.entry(instance_type).or_default();
            if !wanted.flavors.contains(&&flavor.name) {
                wanted.flavors.push(&flavor.name);
            }
            wanted.keys.push(format!("`{}`", key_of(fleet, flavor, index)));
            wanted.zones.extend(zones_of.get(&flavor.name).into_iter().flatten().cloned());
        }
    }
    for (instance_type, wanted) in types {
        let of = listed(&wanted.flavors);
        let keys = wanted.keys.join(", ");
        let zones = &wanted.zones;
        let outcome = match cloud.instance_type_offered(instance_type, None).await {
            Ok(false) => Outcome::Fail(format!(
                "{instance_type} ({of}) is not offered in {region}; change {keys}, or leave {region} out of these flavors' `[matrix]`"
            )),
            Err(error) => Outcome::Fail(format!("cannot tell whether {instance_type} is offered: {error}")),
            Ok(true) => {
                let mut missing = Vec::new();
                let mut failed = None;
                for zone in zones {
                    match cloud.instance_type_offered(instance_type, Some(zone)).await {
                        Ok(true) => {}
                        Ok(false) => missing.push(zone.clone()),
                        Err(error) => failed = Some(error),
                    }
                }
                match (failed, missing.is_empty()) {
                    (Some(error), _) => Outcome::Fail(format!("cannot tell whether {instance_type} is offered: {error}")),
                    (None, true) if zones.is_empty() => Outcome::Ok(format!("{instance_type} ({of}) is offered")),
                    (None, true) => Outcome::Ok(format!(
                        "{instance_type} ({of}) is offered, in {} too",
                        zones.iter().cloned().collect::<Vec<_>>().join(", ")
                    )),
                    (None, false) if missing.len() == zones.len() => Outcome::Fail(format!(
                        "{instance_type} ({of}) is not offered in the zones of their subnets ({}); choose subnets in other zones or change {keys}",
                        missing.join(", ")
                    )),
                    (None, false) => Outcome::Ok(format!(
                        "{instance_type} ({of}) is offered, but not in {}: builds there move to their other subnets",
                        missing.join(", ")
                    )),
                }
            }
        };
        preflight.push(Some(region), outcome);
    }
}
