//! `[[distribution]]`: images copied into other accounts, each account owning its copies (CopyImage called in
//! the account, with a role assumed there, encrypted with the account's own key).
//!
//! Layer: `config`. What the file says, resolved: account ids (organizational units are kept as written, for
//! the preflight to resolve into accounts), the regions each account gets a copy in, the role to assume
//! (`{account}` replaced), each region's key and which flavors go.

use std::collections::BTreeMap;

use super::{Account, FlavorName, Region};
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
