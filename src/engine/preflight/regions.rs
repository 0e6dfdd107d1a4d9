//! Every region the run builds in or lands an image in is enabled for the account: DescribeRegions
//! (`AllRegions = true`) in the first build region, each region's `OptInStatus`. A region not enabled answers
//! EC2 calls with `AuthFailure`, which reads like bad credentials; the regions found are handed to
//! [`hints::note_regions_not_enabled`] so any such answer is hinted as the region. ("Enable or disable AWS
//! Regions in your account", AWS Account Management Reference Guide; DescribeRegions, EC2 API Reference.)

use std::collections::BTreeSet;

use super::{Outcome, Preflight};
use crate::cloud::{hints, Cloud};
use crate::config::Region;
use crate::plan::Plan;

pub async fn check(preflight: &mut Preflight, plan: &Plan, cloud: &dyn Cloud, home: &Region) {
    let mut used: BTreeSet<&Region> = plan.builds.iter().map(|build| &build.region).collect();
    used.extend(plan.copies.iter().filter(|copy| !copy.is_distribution()).map(|copy| copy.target_region()));
    let listed = match cloud.region(home).describe_regions().await {
        Ok(listed) => listed,
        Err(error) => {
            let hint = hints::hint(&error).map(|hint| format!("; {hint}")).unwrap_or_default();
            preflight.push(None, Outcome::Fail(format!("cannot list the account's regions: {error}{hint}")));
            return;
        }
    };
    let not_enabled: Vec<Region> = listed
        .iter()
        .filter(|region| !region.enabled() && used.contains(&region.region))
        .map(|region| region.region.clone())
        .collect();
    hints::note_regions_not_enabled(
        listed.iter().filter(|region| !region.enabled()).map(|region| region.region.clone()),
    );
    if not_enabled.is_empty() {
        preflight.push(None, Outcome::Ok(format!("all {} regions of the run are enabled for the account", used.len())));
    }
    for region in not_enabled {
        preflight.push(Some(&region), Outcome::Fail(hints::region_not_enabled(&region, "`not-opted-in`")));
    }
}
