//! `[[distribution]] accounts` naming organizational units (`ou-…`): each resolved into its ACTIVE accounts,
//! through its child units (AWS Organizations `ListAccountsForParent`, `ListChildren`), before the plan is
//! made, since the plan has a copy job per account. Every command that plans a fleet (`plan`, `preflight`,
//! `matrix`, `--resume`, `gc`) calls [`resolve`]; a fleet without units makes no call.

use std::sync::Arc;

use super::{Outcome, Preflight};
use crate::cloud::limiter::{ApiLimits, Pacing};
use crate::cloud::retry::Policy;
use crate::cloud::{aws::AwsCloud, sim::SimCloud, Cloud, ErrorKind, Limited};
use crate::config::{Fleet, PublishAccounts, UnitAccounts};
use crate::plan::RunId;

/// Which cloud answers for the units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitsFrom {
    Aws,
    /// `--cloud sim`: `[sim] organizational_units`.
    Simulated,
}

/// The fleet with its units' accounts added to their `[[distribution]]` tables, and one check per unit (to
/// show with the preflight's); `Err`: the checks, one of them a failure: no plan can be made.
pub async fn resolve(fleet: Fleet, from: UnitsFrom) -> Result<(Fleet, Preflight), Preflight> {
    if fleet.distributions.units().is_empty() {
        return Ok((fleet, Preflight::default()));
    }
    let limits = Arc::new(ApiLimits::new(&fleet.limits.api, Policy::THROTTLED, Pacing::Adaptive));
    let cloud: Arc<dyn Cloud> = match from {
        UnitsFrom::Aws => {
            let run_id = RunId::generate(chrono::Utc::now());
            let home = crate::engine::run::home_region(&fleet);
            Arc::new(AwsCloud::connect(&fleet.aws, &run_id, home, limits).await)
        }
        UnitsFrom::Simulated => Arc::new(Limited::new(Arc::new(SimCloud::new(&fleet)), limits)),
    };
    resolve_with(fleet, &*cloud).await
}

/// [`resolve`] with `cloud` (the own account's credentials: Organizations is asked as the run itself).
pub async fn resolve_with(fleet: Fleet, cloud: &dyn Cloud) -> Result<(Fleet, Preflight), Preflight> {
    let mut checks = Preflight::default();
    let units = fleet.distributions.units();
    if units.is_empty() {
        return Ok((fleet, checks));
    }
    let own = match cloud.caller_identity().await {
        Ok(identity) => identity.account,
        Err(error) => {
            checks.push(
                None,
                Outcome::Fail(format!(
                    "cannot tell who the credentials are, so `[[distribution]]`'s organizational units cannot be resolved into accounts: {error}"
                )),
            );
            return Err(checks);
        }
    };
    let mut resolved = UnitAccounts::default();
    for unit in units {
        let table = fleet
            .distributions
            .iter()
            .position(|distribution| distribution.organizational_units.contains(&unit))
            .map_or(0, |index| index + 1);
        match cloud.organization_unit_accounts(&unit).await {
            Ok(accounts) => {
                let others: Vec<&String> = accounts.iter().filter(|account| **account != own).collect();
                let listed = if others.is_empty() {
                    "no account besides the own: it adds no copy".to_string()
                } else {
                    others.iter().map(|account| account.as_str()).collect::<Vec<_>>().join(", ")
                };
                checks.push(
                    None,
                    Outcome::Ok(format!("organizational unit {unit} ([[distribution]] {table}): {listed}")),
                );
                resolved.0.insert(unit, accounts);
            }
            Err(error) => checks.push(None, Outcome::Fail(unit_refused(&unit, table, &error))),
        }
    }
    if !checks.passed() {
        return Err(checks);
    }
    let expanded = fleet.with_units(&resolved, &own);
    // `[publish] accounts` may list a unit's accounts: each must now be one a `[[distribution]]` copies into.
    if let Some(PublishAccounts::Listed(listed)) = expanded.publish.as_ref().map(|publish| &publish.accounts) {
        let distributed = expanded.distributions.accounts();
        for id in listed.iter().filter(|id| !distributed.contains(id)) {
            checks.push(
                None,
                Outcome::Fail(format!(
                    "`[publish] accounts` lists `{id}`, which no `[[distribution]]` copies into (named or in its units): list those accounts, or `true` for all of them"
                )),
            );
        }
        if !checks.passed() {
            return Err(checks);
        }
    }
    Ok((expanded, checks))
}

/// Why a unit could not be resolved, and what to change.
fn unit_refused(unit: &str, table: usize, error: &crate::cloud::CloudError) -> String {
    let code = error.code.as_deref().unwrap_or_default();
    let change = match code {
        "ParentNotFoundException" => {
            "no such unit in the organization: correct the `ou-…` id (AWS Organizations console, or `aws organizations list-organizational-units-for-parent`)".to_string()
        }
        "AWSOrganizationsNotInUseException" => "the run's account is in no organization: list the accounts' ids instead".to_string(),
        _ if code == "AccessDeniedException" || code == "AccessDenied" || error.kind == ErrorKind::Credentials => {
            "only the organization's management account or a delegated administrator for AWS Organizations may list a unit's accounts: run with such an account's credentials (allowed organizations:ListChildren and organizations:ListAccountsForParent), or list the accounts' ids instead".to_string()
        }
        _ => "the run's identity must be the organization's management account or a delegated administrator, allowed organizations:ListChildren and organizations:ListAccountsForParent".to_string(),
    };
    format!(
        "organizational unit `{unit}` of [[distribution]] {table} cannot be resolved into accounts: {error}; {change}"
    )
}
