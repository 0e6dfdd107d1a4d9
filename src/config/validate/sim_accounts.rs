//! `[sim] accounts` and `[sim] account_faults`: the other accounts of the simulated cloud, and what goes wrong
//! in each, checked with the key's place in the file.

use super::distribution::is_ou_id;
use super::{is_account_id, schema, Checker, KeyPath};
use crate::config::{AccountFault, OrganizationsFault, SimSettings, SIMULATED_OWN_ACCOUNT};

pub(super) fn resolve_sim_accounts(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    raw: &schema::SimSection,
    sim: &mut SimSettings,
) {
    for (index, id) in raw.accounts.iter().flatten().enumerate() {
        let at = path.key("accounts").index(index);
        if !is_account_id(id) {
            checker.problem(at, format!("`{id}` is not an AWS account id (12 digits)"));
        } else if id == SIMULATED_OWN_ACCOUNT {
            checker.problem(at, format!("`{id}` is the simulated own account: list only the others"));
        } else if !sim.accounts.insert(id.clone()) {
            checker.problem(at, format!("account `{id}` is listed twice"));
        }
    }
    for (id, fault) in raw.account_faults.iter().flatten() {
        let at = path.key("account_faults").key(id);
        let fault = match fault.as_str() {
            "role" => AccountFault::Role,
            "key" => AccountFault::Key,
            other => {
                checker.problem(
                    at,
                    format!(
                        "`{other}` is not an account fault: `\"role\"` (its role cannot be assumed) or `\"key\"` (its KMS keys cannot be used)"
                    ),
                );
                continue;
            }
        };
        if !sim.accounts.contains(id) {
            checker.problem(
                at,
                format!("account `{id}` is not in `[sim] accounts`: an account not listed cannot be reached at all"),
            );
            continue;
        }
        sim.account_faults.insert(id.clone(), fault);
    }
    resolve_sim_units(checker, path, raw, sim);
}

/// `[sim] organizational_units`: each unit's id shaped, and its members accounts the simulated cloud has (the
/// own account, or one in `[sim] accounts`) or other units declared here.
fn resolve_sim_units(checker: &mut Checker<'_>, path: &KeyPath, raw: &schema::SimSection, sim: &mut SimSettings) {
    let units = raw.organizational_units.clone().unwrap_or_default();
    for (unit, members) in &units {
        let at = path.key("organizational_units").key(unit);
        if !is_ou_id(unit) {
            checker.problem(at, format!("`{unit}` is not an organizational unit id like `ou-ab12-cd34ef56`"));
            continue;
        }
        for (index, member) in members.iter().enumerate() {
            let known = member == SIMULATED_OWN_ACCOUNT
                || sim.accounts.contains(member)
                || (is_ou_id(member) && units.contains_key(member) && member != unit);
            if !known {
                checker.problem(
                    at.index(index),
                    format!("`{member}` is neither an account in `[sim] accounts` nor another unit of `[sim] organizational_units`"),
                );
            }
        }
        sim.organizational_units.insert(unit.clone(), members.clone());
    }
    sim.organizations_fault = match raw.organizations_fault.as_deref() {
        None => None,
        Some("access-denied") => Some(OrganizationsFault::AccessDenied),
        Some("not-in-use") => Some(OrganizationsFault::NotInUse),
        Some(other) => {
            checker.problem(
                path.key("organizations_fault"),
                format!("`{other}` is not an Organizations fault: `\"access-denied\"` (not the management account nor a delegated administrator) or `\"not-in-use\"` (in no organization)"),
            );
            None
        }
    };
}
