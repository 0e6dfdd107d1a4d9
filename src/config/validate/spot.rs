//! `market`, `instance_types`, `spot_fallback` (per flavor, else `[defaults]`), `[prices]`, `[sim] spot` and
//! `[sim] prices`.

use super::*;

/// A flavor's market, its instance types in the order they are tried, and its spot fallback.
pub(super) fn resolve_market(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    flavor: &schema::FlavorSection,
    defaults: &schema::DefaultsSection,
) -> (Market, Vec<String>, SpotFallback) {
    let (market, at) = inherited(path, "market", &flavor.market, &defaults.market);
    let market = match market.map(String::as_str) {
        None | Some("on-demand") => Market::OnDemand,
        Some("spot") => Market::Spot,
        Some(other) => {
            checker.problem(at, format!("`{other}`: `on-demand` (the default) or `spot`"));
            Market::OnDemand
        }
    };
    let (fallback, at) = inherited(path, "spot_fallback", &flavor.spot_fallback, &defaults.spot_fallback);
    let fallback = match fallback.map(String::as_str) {
        None | Some("on-demand") => SpotFallback::OnDemand,
        Some("fail") => SpotFallback::Fail,
        Some(other) => {
            checker.problem(at, format!("`{other}`: `on-demand` (the default) or `fail`"));
            SpotFallback::OnDemand
        }
    };
    let types = instance_types(checker, path, flavor, defaults);
    (market, types, fallback)
}

/// The instance types in the order they are tried: the flavor's own `instance_types` or `instance_type`, else
/// `[defaults]`' (one of the two at each level); never empty when the file is valid.
fn instance_types(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    flavor: &schema::FlavorSection,
    defaults: &schema::DefaultsSection,
) -> Vec<String> {
    let levels = [
        (path.clone(), &flavor.instance_types, &flavor.instance_type),
        (KeyPath::root().key("defaults"), &defaults.instance_types, &defaults.instance_type),
    ];
    for (at, list, single) in levels {
        match (list, single) {
            (Some(_), Some(_)) => {
                checker.problem(
                    at.key("instance_type"),
                    "set `instance_type` or `instance_types` (tried in order), not both",
                );
                return Vec::new();
            }
            (Some(types), None) => {
                let at = at.key("instance_types");
                if types.is_empty() {
                    checker.problem(at.clone(), "lists no instance type");
                }
                let mut seen = BTreeSet::new();
                for (index, name) in types.iter().enumerate() {
                    checker.name(at.index(index), "instance type", name);
                    if !seen.insert(name) {
                        checker.problem(at.index(index), format!("`{name}` is listed twice"));
                    }
                }
                return types.clone();
            }
            (None, Some(single)) if single.trim().is_empty() => {
                checker.problem(at.key("instance_type"), "must not be empty");
                return Vec::new();
            }
            (None, Some(single)) => return vec![single.clone()],
            (None, None) => {}
        }
    }
    checker.problem(
        path.clone(),
        "`instance_type` (or `instance_types`) is required: set it in the flavor or in `[defaults]`",
    );
    Vec::new()
}

/// A flavor's own value, else `[defaults]`', with the key path it was read at.
fn inherited<'a, T>(path: &KeyPath, key: &str, own: &'a Option<T>, default: &'a Option<T>) -> (Option<&'a T>, KeyPath) {
    match (own, default) {
        (Some(value), _) => (Some(value), path.key(key)),
        (None, Some(value)) => (Some(value), KeyPath::root().key("defaults").key(key)),
        (None, None) => (None, path.key(key)),
    }
}

/// `[prices]` or `[sim] prices`: non-negative, finite hourly prices.
pub(super) fn resolve_prices(
    checker: &mut Checker<'_>,
    path: KeyPath,
    raw: &BTreeMap<String, schema::PriceSection>,
) -> Prices {
    let mut prices = BTreeMap::new();
    for (instance_type, price) in raw {
        let at = path.key(instance_type);
        for (key, value) in [("on_demand", price.on_demand), ("spot", price.spot)] {
            if value.is_some_and(|value| !value.is_finite() || value < 0.0) {
                checker.problem(at.key(key), "must be a price in USD per hour, 0 or more");
            }
        }
        prices.insert(instance_type.clone(), Price { on_demand: price.on_demand, spot: price.spot });
    }
    Prices(prices)
}

/// `[sim] spot`.
pub(super) fn resolve_sim_spot(checker: &mut Checker<'_>, raw: Option<&schema::SimSpotSection>) -> SimSpot {
    let Some(raw) = raw else { return SimSpot::default() };
    let path = KeyPath::root().key("sim").key("spot");
    if let Some(available) = &raw.available {
        for (index, entry) in available.iter().enumerate() {
            let (instance_type, region) = entry.split_once('@').unwrap_or((entry, ""));
            checker.name(path.key("available").index(index), "instance type", instance_type);
            if !region.is_empty() {
                checker.region(path.key("available").index(index), region);
            }
        }
    }
    SimSpot {
        available: raw.available.clone(),
        interrupt_after: raw
            .interrupt_after
            .as_deref()
            .and_then(|text| checker.duration(path.key("interrupt_after"), text)),
    }
}
