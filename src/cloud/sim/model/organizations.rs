//! AWS Organizations in the simulated cloud: `[sim] organizational_units`, each unit's member accounts and
//! child units, answered as `ListAccountsForParent` and `ListChildren` would be, walked through the whole tree.

use super::{refuse, Model, Refusal};
use crate::config::OrganizationsFault;

impl Model {
    /// The accounts of `unit` and of its child units, each once, in the order declared. A unit not declared
    /// answers as Organizations does for a parent it cannot find (Organizations API Reference,
    /// ListAccountsForParent: `ParentNotFoundException`, "We can't find a root or OU with the ParentId that you
    /// specified").
    pub(in crate::cloud::sim) fn unit_accounts(&self, unit: &str) -> Result<Vec<String>, Refusal> {
        // Organizations API Reference, Common Errors: `AccessDeniedException` ("You don't have permissions to
        // access this resource": only the management account or a delegated administrator may list), and
        // `AWSOrganizationsNotInUseException` ("Your account is not a member of an organization").
        match self.settings.organizations_fault {
            Some(OrganizationsFault::AccessDenied) => {
                return refuse("AccessDeniedException", "You don't have permissions to access this resource.")
            }
            Some(OrganizationsFault::NotInUse) => {
                return refuse("AWSOrganizationsNotInUseException", "Your account is not a member of an organization.")
            }
            None => {}
        }
        let units = &self.settings.organizational_units;
        if !units.contains_key(unit) {
            return refuse(
                "ParentNotFoundException",
                format!("We can't find a root or OU with the ParentId that you specified: {unit}"),
            );
        }
        let mut accounts: Vec<String> = Vec::new();
        let mut pending = vec![unit.to_string()];
        let mut seen: Vec<String> = Vec::new();
        while let Some(parent) = pending.pop() {
            if seen.contains(&parent) {
                continue;
            }
            seen.push(parent.clone());
            let members = units.get(&parent).map(Vec::as_slice).unwrap_or_default();
            // Children after the unit's own accounts, in the order declared.
            for member in members.iter().rev().filter(|member| member.starts_with("ou-")) {
                pending.push(member.clone());
            }
            for account in members.iter().filter(|member| !member.starts_with("ou-")) {
                if !accounts.contains(account) {
                    accounts.push(account.clone());
                }
            }
        }
        Ok(accounts)
    }
}
