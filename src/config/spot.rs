//! Which market a flavor's build instances are bought on (issue 26): `market = "spot"` with `instance_types`
//! tried in order, `spot_fallback`; and the prices a run's cost estimate reads (`[prices]`, `[sim] prices`).

use std::collections::BTreeMap;
use std::time::Duration;

/// `market`: on-demand (the default) or spot (one-time spot requests through RunInstances).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    #[default]
    OnDemand,
    Spot,
}

impl std::fmt::Display for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Market::OnDemand => "on-demand",
            Market::Spot => "spot",
        })
    }
}

/// `spot_fallback`: what a spot build does when no type has spot capacity in any subnet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpotFallback {
    /// Launch on demand (the default).
    #[default]
    OnDemand,
    /// Fail the build (after `[limits] capacity_patience`).
    Fail,
}

/// Hourly prices in USD of an instance type.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Price {
    pub on_demand: Option<f64>,
    pub spot: Option<f64>,
}

/// `[prices]` (or `[sim] prices`): instance type → its hourly prices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prices(pub BTreeMap<String, Price>);

/// `[sim] spot`: where the simulated cloud has spot capacity, and when it takes it back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimSpot {
    /// Instance types with spot capacity (`"t3.micro"`, or `"t3.micro@us-east-1"` for one region); `None`:
    /// every type everywhere.
    pub available: Option<Vec<String>>,
    /// A spot instance is interrupted this long after it starts running; `None`: never.
    pub interrupt_after: Option<Duration>,
}
