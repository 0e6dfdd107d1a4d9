//! `[[distribution]]`: images copied into other accounts, each account owning its copies (CopyImage called in
//! the account, with a role assumed there, encrypted with the account's own key).
//!
//! Layer: `config`. What the file says, resolved: account ids (organizational units are kept as written, for
//! the preflight to resolve into accounts), the regions each account gets a copy in, the role to assume
//! (`{account}` replaced), each region's key and which flavors go.

use std::collections::BTreeMap;

use super::{Account, FlavorName, Fleet, Region};
use crate::util::glob::glob_matches;

/// The placeholder `role_arn` names the destination account with.
pub const ACCOUNT_PLACEHOLDER: &str = "{account}";

/// One `[[distribution]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Distribution {
    /// 12-digit account ids, in the order written.
    pub accounts: Vec<String>,
    /// `ou-…` ids written in `accounts`: resolved into accounts by the preflight (AWS Organizations).
    pub organizational_units: Vec<String>,
    /// Where each account gets its own copy.
    pub regions: Vec<Region>,
    /// The role assumed in each account, `{account}` standing for its id.
    pub role_arn: String,
    /// Each region's key in the destination account (`"*"`: any other region); `None` for a region: the
    /// account's default EBS encryption.
    pub kms_keys: BTreeMap<Region, String>,
    pub kms_fallback: Option<String>,
    /// Flavor globs (`ubuntu-*`); empty: every flavor.
    pub flavors: Vec<String>,
}

impl Distribution {
    /// The role assumed in `account`.
    pub fn role_for(&self, account: &str) -> String {
        self.role_arn.replace(ACCOUNT_PLACEHOLDER, account)
    }

    /// Whether `flavor` is distributed by this table.
    pub fn applies_to(&self, flavor: &FlavorName) -> bool {
        self.flavors.is_empty() || self.flavors.iter().any(|pattern| glob_matches(pattern, flavor.as_str()))
    }

    /// The key the account's copies in `region` are encrypted with.
    pub fn key_for(&self, region: &Region) -> Option<&str> {
        self.kms_keys.get(region).or(self.kms_fallback.as_ref()).map(String::as_str)
    }

    /// Every destination account of this table (resolved accounts only).
    pub fn account_places(&self) -> impl Iterator<Item = Account> + '_ {
        self.accounts.iter().map(|id| Account::Id(id.clone()))
    }
}

/// Every `[[distribution]]` of a fleet, with the lookups the rest of the run asks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Distributions(pub Vec<Distribution>);

impl Distributions {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Distribution> {
        self.0.iter()
    }

    /// The table that names `account` (validation refuses an account in two tables).
    pub fn for_account(&self, account: &str) -> Option<&Distribution> {
        self.0.iter().find(|distribution| distribution.accounts.iter().any(|id| id == account))
    }

    /// The role assumed in `account`, if any table names it.
    pub fn role_for(&self, account: &str) -> Option<String> {
        self.for_account(account).map(|distribution| distribution.role_for(account))
    }

    /// Every `ou-…` unit named, once each, in the order written.
    pub fn units(&self) -> Vec<String> {
        let mut units: Vec<String> = Vec::new();
        for unit in self.0.iter().flat_map(|distribution| distribution.organizational_units.iter()) {
            if !units.contains(unit) {
                units.push(unit.clone());
            }
        }
        units
    }

    /// The tables with each unit's accounts added to their `accounts`: an account already named (directly, or
    /// by an earlier unit) stays where it was, and `own` (the caller's account) is never a destination. The
    /// units stay listed, so the run can say which accounts came from which unit.
    pub fn with_units(&self, resolved: &UnitAccounts, own: &str) -> Distributions {
        let mut expanded = self.clone();
        let mut named: Vec<String> = self.accounts();
        for distribution in &mut expanded.0 {
            for unit in &distribution.organizational_units {
                for account in resolved.0.get(unit).into_iter().flatten() {
                    if account != own && !named.contains(account) {
                        named.push(account.clone());
                        distribution.accounts.push(account.clone());
                    }
                }
            }
        }
        expanded
    }

    /// Every destination account, once each, in the order written.
    pub fn accounts(&self) -> Vec<String> {
        let mut accounts: Vec<String> = Vec::new();
        for id in self.0.iter().flat_map(|distribution| distribution.accounts.iter()) {
            if !accounts.contains(id) {
                accounts.push(id.clone());
            }
        }
        accounts
    }
}

/// What the preflight found each `ou-…` unit to hold: its ACTIVE accounts, through its child units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitAccounts(pub BTreeMap<String, Vec<String>>);

impl Fleet {
    /// The fleet with its `[[distribution]]` units resolved into `resolved`'s accounts (see
    /// [`Distributions::with_units`]), each added account given its table's role.
    pub fn with_units(&self, resolved: &UnitAccounts, own: &str) -> Fleet {
        let mut fleet = self.clone();
        fleet.distributions = self.distributions.with_units(resolved, own);
        for account in fleet.distributions.accounts() {
            if let Some(role) = fleet.distributions.role_for(&account) {
                fleet.aws.distribution_roles.entry(account).or_insert(role);
            }
        }
        fleet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(accounts: &[&str], units: &[&str]) -> Distribution {
        Distribution {
            accounts: accounts.iter().map(|id| id.to_string()).collect(),
            organizational_units: units.iter().map(|id| id.to_string()).collect(),
            regions: vec![Region::new("us-east-1")],
            role_arn: "arn:aws:iam::{account}:role/image-distribution".into(),
            kms_keys: BTreeMap::new(),
            kms_fallback: None,
            flavors: Vec::new(),
        }
    }

    /// A unit's accounts join its table; the own account is left out; an account named directly (in any
    /// table) or by an earlier unit is one account, where it was first named.
    #[test]
    fn units_add_their_accounts_once_each_without_the_own_account() {
        let distributions = Distributions(vec![
            table(&["222233334444"], &["ou-ab12-aaaaaaaa"]),
            table(&["555566667777"], &["ou-ab12-bbbbbbbb"]),
        ]);
        let resolved = UnitAccounts(BTreeMap::from([
            ("ou-ab12-aaaaaaaa".to_string(), vec!["111111111111".into(), "555566667777".into(), "888899990000".into()]),
            ("ou-ab12-bbbbbbbb".to_string(), vec!["888899990000".into(), "123412341234".into()]),
        ]));
        let expanded = distributions.with_units(&resolved, "111111111111");
        assert_eq!(expanded.0[0].accounts, ["222233334444", "888899990000"]);
        assert_eq!(expanded.0[1].accounts, ["555566667777", "123412341234"]);
        assert_eq!(expanded.units(), ["ou-ab12-aaaaaaaa", "ou-ab12-bbbbbbbb"]);
        assert_eq!(
            expanded.role_for("123412341234").as_deref(),
            Some("arn:aws:iam::123412341234:role/image-distribution")
        );
        assert_eq!(distributions.with_units(&UnitAccounts::default(), "111111111111"), distributions);
    }
}
