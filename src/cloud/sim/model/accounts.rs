//! Several accounts in one simulated model: the own account (`SIMULATED_ACCOUNT`) and `[sim] accounts`, each
//! with its own places (images, snapshots, keys, buckets, copy caps per account and region), and what lets
//! one account use another's: KMS grants on a key (kept per key, in the key's place).
//!
//! As KMS answers (read 2026-12-07):
//! - CreateGrant takes the key by id or key ARN (not an alias); the same `Name` with the same key, grantee
//!   and operations answers the grant made before rather than a new one ("Grant tokens and idempotency",
//!   KMS Developer Guide; CreateGrant API Reference, `Name`).
//! - RevokeGrant of a grant KMS does not have answers `NotFoundException` (the port takes it as done).

use std::collections::BTreeMap;

use super::synthesized;
use crate::cloud::sim::SIMULATED_ACCOUNT;
use crate::cloud::KmsGrantId;
use crate::config::{Account, Region};

/// The 12-digit id of a simulated account.
pub fn account_id(account: &Account) -> &str {
    match account {
        Account::Own => SIMULATED_ACCOUNT,
        Account::Id(id) => id,
    }
}

/// The ARN of a simulated KMS key of `account` in `region`, named by id, key ARN, alias or alias ARN: a key
/// ARN is itself; an alias ARN is its alias's key; an id or alias names a key synthesized from it (every key
/// the model is asked about exists, as `describe_key` answers).
pub fn key_arn(account: &Account, region: &Region, key: &str) -> String {
    if key.starts_with("arn:") && key.contains(":key/") {
        return key.to_string();
    }
    let name = match key.split_once(":alias/") {
        Some((_, alias)) if key.starts_with("arn:") => format!("alias/{alias}"),
        _ => key.to_string(),
    };
    format!("arn:aws:kms:{region}:{}:key/{}", account_id(account), synthesized("k", &name))
}

/// The account a principal ARN names (`arn:aws:iam::222233334444:root`, a role of it, …), or a bare id.
pub fn account_of_principal(principal: &str) -> Option<&str> {
    match principal.split(':').nth(4) {
        Some(account) if principal.starts_with("arn:") => Some(account),
        _ => (principal.len() == 12 && principal.chars().all(|c| c.is_ascii_digit())).then_some(principal),
    }
}

/// A grant on a key: who may use it, made under which name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsGrant {
    pub key_arn: String,
    pub grantee: String,
    pub name: String,
}

/// The grants on the keys of one place (their ARNs name it).
#[derive(Default)]
pub struct KmsGrants {
    grants: BTreeMap<KmsGrantId, KmsGrant>,
    /// Grants made (a repeat of one by name not counted).
    pub created: u64,
    /// Grants revoked.
    pub revoked: u64,
}

impl KmsGrants {
    /// CreateGrant: the grant made before under this name for this key and grantee, else a new one with the id
    /// `mint` gives.
    pub fn grant(&mut self, key_arn: String, grantee: &str, name: &str, mint: impl FnOnce() -> String) -> KmsGrantId {
        let wanted = KmsGrant { key_arn, grantee: grantee.to_string(), name: name.to_string() };
        if let Some((id, _)) = self.grants.iter().find(|(_, grant)| **grant == wanted) {
            return id.clone();
        }
        let id = KmsGrantId::new(mint());
        self.grants.insert(id.clone(), wanted);
        self.created += 1;
        id
    }

    /// RevokeGrant: whether the key had the grant (it has it no longer).
    pub fn revoke(&mut self, key_arn: &str, grant: &KmsGrantId) -> bool {
        let had = self.grants.get(grant).is_some_and(|found| found.key_arn == key_arn);
        if had {
            self.grants.remove(grant);
            self.revoked += 1;
        }
        had
    }

    /// Every grant still in place.
    pub fn all(&self) -> impl Iterator<Item = (&KmsGrantId, &KmsGrant)> {
        self.grants.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Model, SimRegion};
    use crate::cloud::sim::SimCloud;
    use crate::cloud::RegionCloud;
    use crate::config::{Place, Region, SimSettings};

    const DESTINATION: &str = "arn:aws:iam::222233334444:root";

    fn own_region(model: &Arc<Model>) -> SimRegion {
        SimRegion::new(model, &Place::own(Region::new("us-west-2")))
    }

    /// CreateGrant by alias lands on the key's ARN; the same name answers the same grant; RevokeGrant takes
    /// it back, and again is no error; a grant left in place is a leak in the report.
    #[tokio::test(start_paused = true)]
    async fn a_grant_is_made_once_per_name_and_revoked_idempotently() {
        let model = Model::new(SimSettings::default());
        let region = own_region(&model);
        let arn = region.describe_key("alias/images").await.unwrap().unwrap().arn;
        let first = region.grant_key_use("alias/images", DESTINATION, "fleetbake-copy-1").await.unwrap();
        let again = region.grant_key_use(&arn, DESTINATION, "fleetbake-copy-1").await.unwrap();
        assert_eq!(first, again, "the same name, key and grantee: the same grant");
        let other = region.grant_key_use("alias/images", DESTINATION, "fleetbake-copy-2").await.unwrap();
        assert_ne!(first, other);
        assert_eq!(first.as_str().len(), 64);
        let cloud = SimCloud { model: Arc::clone(&model) };
        let leaks = cloud.report(std::time::Duration::from_secs(5)).leaked_resources;
        assert_eq!(leaks.iter().filter(|leak| leak.starts_with("KMS grant")).count(), 2, "{leaks:?}");

        region.revoke_key_grant("alias/images", &first).await.unwrap();
        region.revoke_key_grant(&arn, &first).await.unwrap();
        region.revoke_key_grant("alias/images", &other).await.unwrap();
        let state = region.state.state.lock().unwrap();
        assert_eq!((state.kms_grants.created, state.kms_grants.revoked), (2, 2));
        assert_eq!(state.kms_grants.all().count(), 0);
    }

    /// AWS-managed keys take no grant for another account; a grantee must be a principal.
    #[tokio::test(start_paused = true)]
    async fn an_aws_managed_key_takes_no_grant() {
        let model = Model::new(SimSettings::default());
        let region = own_region(&model);
        let refused = region.grant_key_use("alias/aws/ebs", DESTINATION, "fleetbake-copy").await.unwrap_err();
        assert_eq!(refused.code.as_deref(), Some("AccessDeniedException"));
        let refused = region.grant_key_use("alias/images", "someone", "fleetbake-copy").await.unwrap_err();
        assert_eq!(refused.code.as_deref(), Some("InvalidArnException"));
    }
}
