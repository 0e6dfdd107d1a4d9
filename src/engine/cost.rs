//! The run's estimated cost (`estimated_cost` in `--summary-json`, and the line after the run): each build
//! instance's hours × the hourly price of its type on its market, from `[prices]` (else, in the simulated cloud,
//! `[sim] prices`), beside what the same hours would have cost on demand. A type without the price it needs is
//! named, never guessed: its hours are left out of both sums. Pure.
//!
//! The hours are what the run measured: a build job's time from its start to its end (the instance is launched
//! near the start and terminated in its cleanup at the end; the test instance's time falls within), less its
//! attempts EC2 took back, which count on their own on spot. Only images made in this run count: a failed build
//! or a reused image has no `built_on`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::config::{Market, Price, Prices};

/// One instance's time on one market.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceHours {
    pub market: Market,
    pub instance_type: String,
    pub ran_for: Duration,
}

/// What the run's build instances cost, estimated (USD).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CostEstimate {
    /// market (`spot`, `on-demand`) → USD, the instances whose prices are known.
    pub by_market: BTreeMap<String, f64>,
    /// The sum of `by_market`.
    pub total: f64,
    /// The same instance hours, every one on demand.
    pub all_on_demand: f64,
    /// Hours on each market (priced or not).
    pub hours_by_market: BTreeMap<String, f64>,
    /// Instance types used without the price their market needs (or without an on-demand price to compare):
    /// their hours are in neither sum.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub unpriced_types: BTreeSet<String>,
}

/// The prices a run reads: `[prices]` for a type it lists, else (in the simulated cloud) `[sim] prices`.
pub fn prices_for_run(fleet_prices: &Prices, simulated: Option<&Prices>) -> Prices {
    let mut prices = simulated.cloned().unwrap_or_default();
    prices.0.extend(fleet_prices.0.iter().map(|(name, price)| (name.clone(), *price)));
    prices
}

/// The estimate of `uses` under `prices`.
pub fn estimate(uses: &[InstanceHours], prices: &Prices) -> CostEstimate {
    let mut estimate = CostEstimate::default();
    for used in uses {
        let hours = used.ran_for.as_secs_f64() / 3600.0;
        *estimate.hours_by_market.entry(used.market.to_string()).or_default() += hours;
        let price = prices.0.get(&used.instance_type).copied().unwrap_or_default();
        let (Some(paid), Some(on_demand)) = (price_on(&price, used.market), price.on_demand) else {
            estimate.unpriced_types.insert(used.instance_type.clone());
            continue;
        };
        *estimate.by_market.entry(used.market.to_string()).or_default() += hours * paid;
        estimate.all_on_demand += hours * on_demand;
    }
    estimate.total = estimate.by_market.values().sum();
    estimate.total = cents_of_cents(estimate.total);
    estimate.all_on_demand = cents_of_cents(estimate.all_on_demand);
    for value in estimate.by_market.values_mut().chain(estimate.hours_by_market.values_mut()) {
        *value = cents_of_cents(*value);
    }
    estimate
}

fn price_on(price: &Price, market: Market) -> Option<f64> {
    match market {
        Market::OnDemand => price.on_demand,
        Market::Spot => price.spot,
    }
}

/// Rounded to a hundredth of a cent (four decimals): what the JSON carries.
fn cents_of_cents(value: f64) -> f64 {
    (value * 1e4).round() / 1e4
}

impl CostEstimate {
    /// `estimated cost $0.42 (spot), $1.31 on demand`; with both markets, each one's share; types without a
    /// price named.
    pub fn line(&self) -> String {
        let dollars = |value: f64| format!("${value:.2}");
        let markets: Vec<String> =
            self.by_market.iter().map(|(market, cost)| format!("{market} {}", dollars(*cost))).collect();
        let mut line = match markets.len() {
            0 => "estimated cost unknown".to_string(),
            1 => format!(
                "estimated cost {} ({})",
                dollars(self.total),
                self.by_market.keys().next().expect("one market")
            ),
            _ => format!("estimated cost {} ({})", dollars(self.total), markets.join(", ")),
        };
        if !markets.is_empty() {
            line.push_str(&format!(", {} on demand", dollars(self.all_on_demand)));
        }
        if !self.unpriced_types.is_empty() {
            let types: Vec<&str> = self.unpriced_types.iter().map(String::as_str).collect();
            line.push_str(&format!("; no price for `{}` (`[prices]`): left out", types.join("`, `")));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices() -> Prices {
        Prices(BTreeMap::from([
            ("t3.micro".to_string(), Price { on_demand: Some(0.0104), spot: Some(0.0031) }),
            ("m5.large".to_string(), Price { on_demand: Some(0.096), spot: None }),
        ]))
    }

    fn hours(market: Market, instance_type: &str, minutes: u64) -> InstanceHours {
        InstanceHours { market, instance_type: instance_type.into(), ran_for: Duration::from_secs(minutes * 60) }
    }

    #[test]
    fn spot_hours_cost_the_spot_price_and_are_compared_with_the_same_hours_on_demand() {
        let estimate = estimate(&[hours(Market::Spot, "t3.micro", 600)], &prices());
        assert_eq!(estimate.by_market, BTreeMap::from([("spot".to_string(), 0.031)]));
        assert_eq!(estimate.total, 0.031);
        assert_eq!(estimate.all_on_demand, 0.104);
        assert_eq!(estimate.line(), "estimated cost $0.03 (spot), $0.10 on demand");
    }

    #[test]
    fn on_demand_hours_cost_the_same_either_way() {
        let estimate = estimate(&[hours(Market::OnDemand, "m5.large", 30)], &prices());
        assert_eq!(estimate.total, 0.048);
        assert_eq!(estimate.all_on_demand, 0.048);
        assert!(estimate.unpriced_types.is_empty());
    }

    #[test]
    fn both_markets_are_each_summed_and_said() {
        let uses = [hours(Market::Spot, "t3.micro", 60), hours(Market::OnDemand, "t3.micro", 60)];
        let estimate = estimate(&uses, &prices());
        assert_eq!(estimate.by_market["spot"], 0.0031);
        assert_eq!(estimate.by_market["on-demand"], 0.0104);
        assert_eq!(estimate.total, 0.0135);
        assert_eq!(estimate.all_on_demand, 0.0208);
        assert_eq!(estimate.hours_by_market["spot"], 1.0);
        assert_eq!(estimate.line(), "estimated cost $0.01 (on-demand $0.01, spot $0.00), $0.02 on demand");
    }

    #[test]
    fn a_type_without_the_price_its_market_needs_is_named_and_left_out_of_both_sums() {
        let uses = [hours(Market::Spot, "m5.large", 60), hours(Market::OnDemand, "c7g.large", 60)];
        let estimate = estimate(&uses, &prices());
        assert_eq!(estimate.total, 0.0);
        assert_eq!(estimate.all_on_demand, 0.0);
        assert_eq!(estimate.unpriced_types, BTreeSet::from(["c7g.large".to_string(), "m5.large".to_string()]));
        assert_eq!(estimate.hours_by_market["spot"], 1.0);
        assert_eq!(
            estimate.line(),
            "estimated cost unknown; no price for `c7g.large`, `m5.large` (`[prices]`): left out"
        );
    }

    #[test]
    fn the_fleet_s_prices_win_over_the_simulated_ones_type_by_type() {
        let fleet = Prices(BTreeMap::from([("t3.micro".to_string(), Price { on_demand: Some(1.0), spot: None })]));
        let merged = prices_for_run(&fleet, Some(&prices()));
        assert_eq!(merged.0["t3.micro"], Price { on_demand: Some(1.0), spot: None });
        assert_eq!(merged.0["m5.large"].on_demand, Some(0.096));
        assert_eq!(prices_for_run(&fleet, None).0.len(), 1);
    }
}
