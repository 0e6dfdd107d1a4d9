//! Spot capacity in the simulated cloud (`[sim] spot.available`): which instance types a one-time spot request
//! made through RunInstances finds capacity for, in which regions. EC2 answers a spot RunInstances it cannot
//! fulfil at once with `InsufficientInstanceCapacity`, "There is no Spot capacity available that matches your
//! request." (EC2 User Guide, "Troubleshoot Spot Instances" and "Spot request status": `capacity-not-available`;
//! a one-time request launched through RunInstances fails instead of waiting open). Nothing is created: no
//! instance and no spot request that outlives the answer, and the client token is not spent, so a repeat
//! with it asks again. An on-demand launch never asks here.

use super::{refuse, Refusal};
use crate::config::{Market, Region, SimSpot};

/// Whether a RunInstances of `instance_type` in `market` finds spot capacity in `region`: `Err` with EC2's
/// answer when it does not. Every type has it everywhere unless `[sim] spot.available` lists where it is
/// (`"t3.micro"`: in every region; `"t3.micro@us-east-1"`: in that region only).
pub(super) fn spot_capacity(
    spot: &SimSpot,
    market: Market,
    instance_type: &str,
    region: &Region,
) -> Result<(), Refusal> {
    let Some(available) = &spot.available else { return Ok(()) };
    if market != Market::Spot {
        return Ok(());
    }
    let has_capacity = available.iter().any(|entry| match entry.split_once('@') {
        Some((listed, only_in)) => listed == instance_type && only_in == region.as_str(),
        None => entry == instance_type,
    });
    if has_capacity {
        return Ok(());
    }
    refuse("InsufficientInstanceCapacity", "There is no Spot capacity available that matches your request.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spot_capacity_is_where_the_sim_table_lists_it_and_on_demand_never_asks() {
        let west = Region::new("us-west-2");
        let east = Region::new("us-east-1");
        let everywhere = SimSpot::default();
        assert!(spot_capacity(&everywhere, Market::Spot, "t3.micro", &west).is_ok());

        let listed = SimSpot { available: Some(vec!["t3a.micro".into(), "t3.micro@us-east-1".into()]), ..everywhere };
        assert!(spot_capacity(&listed, Market::Spot, "t3a.micro", &west).is_ok());
        assert!(spot_capacity(&listed, Market::Spot, "t3.micro", &east).is_ok());
        let refused = spot_capacity(&listed, Market::Spot, "t3.micro", &west).unwrap_err();
        assert_eq!(refused.code, "InsufficientInstanceCapacity");
        assert_eq!(refused.message, "There is no Spot capacity available that matches your request.");
        assert!(spot_capacity(&listed, Market::Spot, "m5.large", &east).is_err());
        assert!(spot_capacity(&listed, Market::OnDemand, "m5.large", &west).is_ok(), "on demand is not spot capacity");

        let none = SimSpot { available: Some(Vec::new()), ..SimSpot::default() };
        assert!(spot_capacity(&none, Market::Spot, "t3.micro", &west).is_err());
    }
}
