//! `[sim] accounts` and `[sim] account_faults`: the other accounts of the simulated cloud, and what goes wrong
//! in each, checked with the key's place in the file.

use super::{is_account_id, schema, Checker, KeyPath};
use crate::config::{AccountFault, SimSettings, SIMULATED_OWN_ACCOUNT};

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
}
