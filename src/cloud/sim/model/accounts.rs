//! Several accounts in one simulated model: the own account (`SIMULATED_ACCOUNT`) and `[sim] accounts`, each
//! with its own places (images, snapshots, keys, buckets, copy caps per account and region: the model is keyed
//! by place), who may reach each (its role assumed, `[sim] account_faults`), what one account sees of
//! another's images, and what lets one account copy another's image: launch permission, create-volume
//! permission on its snapshots and, for a customer key, a KMS grant (kept per key, in the key's place).
//!
//! As AWS answers (read 2026-12-07):
//! - STS refusing AssumeRole (the role's trust policy does not name the caller, or the role does not exist):
//!   `AccessDenied`, "User: ARN is not authorized to perform: sts:AssumeRole on resource: ROLE" (IAM User
//!   Guide, "Troubleshooting IAM roles"). The SDK's AssumeRoleProvider fails every call of that client; the
//!   model answers each call in the account with STS's refusal, a permanent one (kind `Permanent`, not
//!   `Credentials`: the run's own credentials are fine, one account's role is not, and its copies fail at once
//!   with the role named rather than wait out a credentials retry or stop the night).
//! - An image another account has not shared with the caller is invisible to it: DescribeImages leaves it out
//!   and CopyImage answers `InvalidAMIID.NotFound`, as for an image that does not exist (EC2 User Guide,
//!   "Share an AMI with specific AWS accounts": an account sees a private image only once granted launch
//!   permission).
//! - Copying a shared image needs read access to its snapshots too: "the owner of the source AMI must grant
//!   you read permissions for the storage that backs the AMI" (EC2 User Guide, "Copy an AMI", cross-account
//!   copying) — `createVolumePermission` on each snapshot; and for encrypted snapshots the use of the source
//!   key (`kms:Decrypt`, `kms:DescribeKey`, `kms:CreateGrant`, `kms:ReEncrypt*`), by its key policy or a grant
//!   ("Share an AMI with specific AWS accounts", encrypted AMIs). Images encrypted with an AWS-managed key
//!   cannot be shared at all. Real EC2 may accept such a copy and fail it later (the copy ends `failed`,
//!   hashicorp/packer#6599); the model refuses it at the call (`InvalidRequest`), so the copy fails at once
//!   with the reason.
//! - A copy encrypted with a key the copying account cannot use: the model answers `InvalidKMSKey.InvalidState`
//!   (EC2's code for a key in an unusable state, as in an instance's `Client.InvalidKMSKey.InvalidState`).
//! - A cross-account copy of an encrypted image without `KmsKeyId` is encrypted with the copying account's
//!   default EBS key (`alias/aws/ebs`): the source account's key is never the copy's.
//! - KMS CreateGrant takes the key by id or key ARN (not an alias); the same `Name` with the same key, grantee
//!   and operations answers the grant made before rather than a new one (CreateGrant API Reference, `Name`).
//!   A grant's name is 1 to 256 of letters, digits and `:/_-` (else `ValidationException`). RevokeGrant of a
//!   grant KMS does not have answers `NotFoundException` (the port takes it as done).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::{refuse, synthesized, ImageAttributes, Refusal};
use crate::cloud::sim::SIMULATED_ACCOUNT;
use crate::cloud::{ImageId, ImageState, KmsGrantId, SnapshotId};
use crate::config::{Account, AccountFault, Region, SimSettings};

/// A destination role's session, as an AssumeRoleProvider asks for it (STS's default `DurationSeconds`).
const ROLE_SESSION: Duration = Duration::from_secs(3600);

/// An AssumeRoleProvider asks for a new session this long before the current one ends.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// The other accounts of the simulated cloud: which exist, what goes wrong in each, the role assumed in each,
/// and the AssumeRole calls made for them.
pub struct SimAccounts {
    /// `[sim] accounts`.
    listed: BTreeSet<String>,
    faults: BTreeMap<String, AccountFault>,
    /// The role `[[distribution]]` names for each account (set once, when the cloud is made).
    roles: OnceLock<BTreeMap<String, String>>,
    /// Per account: when its role's current session ends, and the AssumeRole calls made.
    sessions: Mutex<BTreeMap<String, (Instant, u64)>>,
}

impl SimAccounts {
    pub fn new(settings: &SimSettings) -> Self {
        SimAccounts {
            listed: settings.accounts.clone(),
            faults: settings.account_faults.clone(),
            roles: OnceLock::new(),
            sessions: Mutex::new(BTreeMap::new()),
        }
    }

    /// The roles assumed in each account (`[[distribution]]`'s, by account id).
    pub fn set_roles(&self, roles: BTreeMap<String, String>) {
        let _ = self.roles.set(roles);
    }

    fn role_of(&self, account: &str) -> String {
        self.roles
            .get()
            .and_then(|roles| roles.get(account).cloned())
            .unwrap_or_else(|| format!("arn:aws:iam::{account}:role/(no role named)"))
    }

    /// The refusal of a call in `account` before it reaches the place: STS refusing its role (an account not
    /// listed, or with a `role` fault). Otherwise the role is assumed as an AssumeRoleProvider would, a session
    /// when there is none or the current one is about to end (each counted). `caller`: who assumes it.
    pub(in crate::cloud::sim) fn refusal(&self, account: &Account, caller: &str, now: Instant) -> Option<Refusal> {
        let Account::Id(id) = account else { return None };
        let mut sessions = self.sessions.lock().expect("not poisoned");
        let (until, calls) = sessions.entry(id.clone()).or_insert((now, 0));
        let renew = now + RENEW_BEFORE >= *until;
        if renew {
            *calls += 1;
        }
        if !self.listed.contains(id) || self.faults.get(id) == Some(&AccountFault::Role) {
            let role = self.role_of(id);
            return refuse::<()>(
                "AccessDenied",
                format!("User: {caller} is not authorized to perform: sts:AssumeRole on resource: {role}"),
            )
            .err();
        }
        if renew {
            *until = now + ROLE_SESSION;
        }
        None
    }

    /// Whether `account`'s KMS keys can be used (no `key` fault).
    pub fn keys_usable(&self, account: &Account) -> bool {
        match account {
            Account::Own => true,
            Account::Id(id) => self.faults.get(id) != Some(&AccountFault::Key),
        }
    }

    /// AssumeRole calls made per account (refused ones included: STS was asked).
    pub fn assume_role_calls(&self) -> BTreeMap<String, u64> {
        let sessions = self.sessions.lock().expect("not poisoned");
        sessions.iter().map(|(account, (_, calls))| (account.clone(), *calls)).collect()
    }
}

/// An image as another account sees it, with what a copy of it checks.
#[derive(Clone, Debug)]
pub struct ForeignImage {
    pub state: ImageState,
    pub snapshot: SnapshotId,
    pub attributes: ImageAttributes,
}

impl ForeignImage {
    /// Whether `account` may see it (DescribeImages) and launch or copy it: launch permission for the account,
    /// or public.
    pub fn launchable_by(&self, account: &str) -> bool {
        self.attributes.launch_permissions.iter().any(|grant| grant == account || grant == "all")
    }

    /// CopyImage of it into `account` (the copier's own place in the destination region), given whether a
    /// grant on its key lets `account` use it: the refusal, if any, or the key the copy is encrypted with when
    /// the copy names none (`alias/aws/ebs` of the copier for an encrypted source; `None`: unencrypted).
    pub fn copy_by(&self, id: &ImageId, account: &str, granted: bool) -> Result<Option<String>, Refusal> {
        if !self.launchable_by(account) {
            return refuse("InvalidAMIID.NotFound", format!("The image id '[{id}]' does not exist"));
        }
        if !self.attributes.snapshot_permissions.iter().any(|grantee| grantee == account) {
            return refuse(
                "InvalidRequest",
                format!(
                    "You do not have permission to access the storage of this AMI: snapshot {} of {id} does not grant account {account} createVolumePermission",
                    self.snapshot
                ),
            );
        }
        let Some(key) = &self.attributes.kms_key else { return Ok(None) };
        if super::is_aws_managed_key(key) {
            return refuse(
                "InvalidRequest",
                format!("Snapshots encrypted with the AWS Managed CMK can't be shared ({id}, {key})"),
            );
        }
        if !granted {
            return refuse(
                "InvalidRequest",
                format!(
                    "The KMS key {key} that encrypts the snapshots of {id} is not accessible to account {account}: no grant or key policy lets it use the key (kms:Decrypt, kms:CreateGrant, kms:ReEncrypt*)"
                ),
            );
        }
        Ok(Some("alias/aws/ebs".to_string()))
    }
}

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
    let prefix = if name.starts_with(crate::config::AWS_MANAGED_KEY_ALIASES) { "aws-managed" } else { "k" };
    format!("arn:aws:kms:{region}:{}:key/{}", account_id(account), synthesized(prefix, &name))
}

/// How the model's synthesized id of an AWS-managed key (`alias/aws/ebs`'s) begins: its ARN says whose it is.
pub const AWS_MANAGED_KEY_ID: &str = "key/aws-managed-";

/// Whether KMS takes `name` as a grant's name: 1 to 256 of letters, digits and `:/_-` (CreateGrant API
/// Reference, `Name`: pattern `^[a-zA-Z0-9:/_-]+$`). A job's key (`copy:web@us-west-2>…`) is not one.
pub fn is_grant_name(name: &str) -> bool {
    (1..=256).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || ":/_-".contains(c))
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
    /// When each grant was made: usable by another account only `[sim] grant_lag` later ([`KmsGrants::allow`]).
    made_at: BTreeMap<KmsGrantId, Instant>,
    /// Grants made (a repeat of one by name not counted).
    pub created: u64,
    /// Grants revoked.
    pub revoked: u64,
}

impl KmsGrants {
    /// CreateGrant: the grant made before under this name for this key and grantee, else a new one with the id
    /// `mint` gives.
    pub fn grant(
        &mut self,
        key_arn: String,
        grantee: &str,
        name: &str,
        now: Instant,
        mint: impl FnOnce() -> String,
    ) -> KmsGrantId {
        let wanted = KmsGrant { key_arn, grantee: grantee.to_string(), name: name.to_string() };
        if let Some((id, _)) = self.grants.iter().find(|(_, grant)| **grant == wanted) {
            return id.clone();
        }
        let id = KmsGrantId::new(mint());
        self.grants.insert(id.clone(), wanted);
        self.made_at.insert(id.clone(), now);
        self.created += 1;
        id
    }

    /// RevokeGrant: whether the key had the grant (it has it no longer).
    pub fn revoke(&mut self, key_arn: &str, grant: &KmsGrantId) -> bool {
        let had = self.grants.get(grant).is_some_and(|found| found.key_arn == key_arn);
        if had {
            self.grants.remove(grant);
            self.made_at.remove(grant);
            self.revoked += 1;
        }
        had
    }

    /// Whether some grant on `key_arn` lets `account` use it `now`: made at least `lag` ago. KMS grants are
    /// eventually consistent: "it can take up to five minutes for the grant to be available throughout AWS KMS"
    /// (KMS Developer Guide, "Grants in AWS KMS", eventual consistency); a grant token makes one usable at once,
    /// but CopyImage takes none, so a cross-account copy right after the grant can be refused.
    pub fn allow(&self, key_arn: &str, account: &str, now: Instant, lag: Duration) -> bool {
        self.grants.iter().any(|(id, grant)| {
            let settled = self.made_at.get(id).is_none_or(|made| *made + lag <= now);
            grant.key_arn == key_arn && account_of_principal(&grant.grantee) == Some(account) && settled
        })
    }

    /// Every grant still in place.
    pub fn all(&self) -> impl Iterator<Item = (&KmsGrantId, &KmsGrant)> {
        self.grants.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::super::{ImageAttributes, Model, SimImage, SimRegion};
    use crate::cloud::sim::{SimCloud, SIMULATED_ACCOUNT};
    use crate::cloud::{CopySpec, ErrorKind, ImageId, ImageState, LaunchPermissions, RegionCloud, SnapshotId};
    use crate::config::{Account, AccountFault, Place, Region, SimSettings, Tags};

    /// A destination account, reachable.
    const B: &str = "222233334444";
    /// One whose role cannot be assumed.
    const ROLE_FAULT: &str = "555566667777";
    /// One whose keys cannot be used.
    const KEY_FAULT: &str = "666677778888";
    const DESTINATION: &str = "arn:aws:iam::222233334444:root";

    fn settings() -> SimSettings {
        SimSettings {
            consistency_lag: Duration::ZERO,
            accounts: [B, ROLE_FAULT, KEY_FAULT].into_iter().map(String::from).collect(),
            account_faults: [(ROLE_FAULT.to_string(), AccountFault::Role), (KEY_FAULT.to_string(), AccountFault::Key)]
                .into_iter()
                .collect(),
            ..SimSettings::default()
        }
    }

    fn west() -> Region {
        Region::new("us-west-2")
    }

    fn at(model: &Arc<Model>, account: &str, region: Region) -> SimRegion {
        let account = if account == SIMULATED_ACCOUNT { Account::Own } else { Account::Id(account.into()) };
        SimRegion::new(model, &Place { account, region })
    }

    fn own_region(model: &Arc<Model>) -> SimRegion {
        at(model, SIMULATED_ACCOUNT, west())
    }

    /// An available image of the own account in us-west-2, its snapshot encrypted with `key` (as a build with
    /// `[encryption]` makes it).
    fn own_image(model: &Arc<Model>, key: Option<&str>) -> (ImageId, SnapshotId) {
        let place = model.region(&west());
        let mut state = place.state.lock().unwrap();
        let id = ImageId::new(model.id("ami"));
        let snapshot = SnapshotId::new(model.id("snap"));
        let now = Instant::now();
        state.insert_image(
            id.clone(),
            SimImage {
                name: format!("web-{id}"),
                created_at: now,
                restored_creation: None,
                available_at: now,
                snapshot: snapshot.clone(),
                copied: false,
                fails: None,
                attributes: ImageAttributes { kms_key: key.map(String::from), ..ImageAttributes::default() },
            },
        );
        (id, snapshot)
    }

    fn copy_of(image: &ImageId, name: &str, key: Option<&str>) -> CopySpec {
        CopySpec {
            source_region: west(),
            source_image: image.clone(),
            name: name.into(),
            description: None,
            client_token: format!("token-{name}"),
            tags: Tags::new(),
            snapshot_tags: Tags::new(),
            kms_key: key.map(String::from),
        }
    }

    fn code(error: crate::cloud::CloudError) -> String {
        error.code.unwrap_or_default()
    }

    /// An account's image is not found by id in another account until it grants that account launch
    /// permission.
    #[tokio::test(start_paused = true)]
    async fn another_accounts_image_is_invisible_until_it_is_shared() {
        let model = Model::new(settings());
        let (image, _) = own_image(&model, None);
        let theirs = at(&model, B, west());
        assert!(theirs.describe_images(std::slice::from_ref(&image)).await.unwrap().is_empty());
        let launch = LaunchPermissions { accounts: vec![B.into()], ..LaunchPermissions::default() };
        own_region(&model).share_image(&image, &launch).await.unwrap();
        let found = theirs.describe_images(std::slice::from_ref(&image)).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].state, ImageState::Available);
        // Still invisible to an account it was not shared with.
        let other = at(&model, KEY_FAULT, west());
        assert!(other.describe_images(std::slice::from_ref(&image)).await.unwrap().is_empty());
    }

    /// A copy into another account of an image encrypted with a customer key: refused without launch
    /// permission, then without create-volume permission on its snapshot, then without a grant on its key;
    /// with all three, the copy is the destination's, encrypted with the destination's key. A grant revoked
    /// refuses the next copy again.
    #[tokio::test(start_paused = true)]
    async fn a_copy_into_another_account_needs_launch_snapshot_and_key_permission() {
        let model = Model::new(settings());
        let (image, snapshot) = own_image(&model, Some("alias/images"));
        let own = own_region(&model);
        let theirs = at(&model, B, Region::new("us-east-1"));
        let spec = copy_of(&image, "web-copy", Some("alias/their-images"));

        let refused = theirs.copy_image(&spec).await.unwrap_err();
        assert_eq!(code(refused), "InvalidAMIID.NotFound", "no launch permission: as if it did not exist");
        own.share_image(&image, &LaunchPermissions { accounts: vec![B.into()], ..LaunchPermissions::default() })
            .await
            .unwrap();
        let refused = theirs.copy_image(&spec).await.unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Permanent);
        assert!(refused.message.contains("createVolumePermission"), "{refused}");
        own.share_snapshot(&snapshot, &[B.to_string()]).await.unwrap();
        let refused = theirs.copy_image(&spec).await.unwrap_err();
        assert_eq!(refused.code.as_deref(), Some("InvalidRequest"));
        assert!(refused.message.contains("alias/images") && refused.message.contains(B), "{refused}");

        // A grant for another account does not do.
        own.grant_key_use("alias/images", "arn:aws:iam::666677778888:root", "other").await.unwrap();
        assert_eq!(code(theirs.copy_image(&spec).await.unwrap_err()), "InvalidRequest");
        let grant = own.grant_key_use("alias/images", DESTINATION, "fleetbake-web-copy").await.unwrap();
        let copy = theirs.copy_image(&spec).await.unwrap();

        tokio::time::sleep(model.settings.copy_image + Duration::from_secs(1)).await;
        let cloud = SimCloud { model: Arc::clone(&model), _lock: None };
        let report = cloud.report(Duration::from_secs(5));
        let copied = report.images.iter().find(|found| found.id == copy.as_str()).expect("the copy is in the model");
        assert_eq!((copied.account.as_str(), copied.region.as_str()), (B, "us-east-1"));
        assert!(copied.available);
        assert_eq!(copied.attributes.kms_key.as_deref(), Some("alias/their-images"), "the destination's own key");
        let their_key = copied.kms_key_arn.as_deref().unwrap();
        assert!(their_key.starts_with(&format!("arn:aws:kms:us-east-1:{B}:key/")), "{their_key}");
        let source = report.images.iter().find(|found| found.id == image.as_str()).unwrap();
        assert_eq!(source.account, SIMULATED_ACCOUNT);
        let own_key = source.kms_key_arn.as_deref().unwrap();
        assert!(own_key.starts_with(&format!("arn:aws:kms:us-west-2:{SIMULATED_ACCOUNT}:key/")), "{own_key}");
        // The copy is B's alone: the own account does not find it.
        let own_east = at(&model, SIMULATED_ACCOUNT, Region::new("us-east-1"));
        assert!(own_east.describe_images(std::slice::from_ref(&copy)).await.unwrap().is_empty());
        assert_eq!(theirs.describe_images(std::slice::from_ref(&copy)).await.unwrap()[0].state, ImageState::Available);

        own.revoke_key_grant("alias/images", &grant).await.unwrap();
        let again = copy_of(&image, "web-copy-2", Some("alias/their-images"));
        assert_eq!(code(theirs.copy_image(&again).await.unwrap_err()), "InvalidRequest", "the grant is gone");
    }

    /// An unencrypted image needs no grant; a copy of an encrypted one that names no key is encrypted with the
    /// destination's default EBS key, never the source's.
    #[tokio::test(start_paused = true)]
    async fn an_unencrypted_image_needs_no_grant_and_an_encrypted_one_never_keeps_the_source_key() {
        let model = Model::new(settings());
        let own = own_region(&model);
        let theirs = at(&model, B, west());
        let launch = LaunchPermissions { accounts: vec![B.into()], ..LaunchPermissions::default() };
        let (plain, plain_snapshot) = own_image(&model, None);
        own.share_image(&plain, &launch).await.unwrap();
        own.share_snapshot(&plain_snapshot, &[B.to_string()]).await.unwrap();
        theirs.copy_image(&copy_of(&plain, "plain", None)).await.unwrap();

        let (sealed, sealed_snapshot) = own_image(&model, Some("alias/images"));
        own.share_image(&sealed, &launch).await.unwrap();
        own.share_snapshot(&sealed_snapshot, &[B.to_string()]).await.unwrap();
        own.grant_key_use("alias/images", DESTINATION, "sealed").await.unwrap();
        let copy = theirs.copy_image(&copy_of(&sealed, "sealed", None)).await.unwrap();
        let place = model.place(&Place { account: Account::Id(B.into()), region: west() });
        let state = place.state.lock().unwrap();
        assert_eq!(state.images[&copy].attributes.kms_key.as_deref(), Some("alias/aws/ebs"));
    }

    /// Images encrypted with an AWS-managed key cannot be copied into another account, whatever it was given.
    #[tokio::test(start_paused = true)]
    async fn an_image_under_an_aws_managed_key_is_never_copied_across() {
        let model = Model::new(settings());
        let (image, _) = own_image(&model, Some("alias/aws/ebs"));
        {
            // As if permissions had been given (EC2 refuses to give them: see `share_image`).
            let place = model.region(&west());
            let mut state = place.state.lock().unwrap();
            let attributes = &mut state.images.get_mut(&image).unwrap().attributes;
            attributes.launch_permissions.push(B.into());
            attributes.snapshot_permissions.push(B.into());
        }
        let refused = at(&model, B, west()).copy_image(&copy_of(&image, "managed", None)).await.unwrap_err();
        assert_eq!(refused.code.as_deref(), Some("InvalidRequest"));
        assert!(refused.message.contains("AWS Managed"), "{refused}");
    }

    /// An account not in `[sim] accounts`, and one whose role has a fault, answer every call as STS refuses
    /// AssumeRole, naming the role: permanent (the copy fails at once), and counted per account.
    #[tokio::test(start_paused = true)]
    async fn an_account_whose_role_cannot_be_assumed_refuses_every_call() {
        let model = Model::new(settings());
        let role = format!("arn:aws:iam::{ROLE_FAULT}:role/image-distribution");
        model.accounts.set_roles([(ROLE_FAULT.to_string(), role.clone())].into_iter().collect());
        let (image, _) = own_image(&model, None);
        for (account, role) in
            [(ROLE_FAULT, role.as_str()), ("999988887777", "arn:aws:iam::999988887777:role/(no role named)")]
        {
            let unreachable = at(&model, account, west());
            let refused = unreachable.copy_image(&copy_of(&image, account, None)).await.unwrap_err();
            assert_eq!((refused.code.as_deref(), refused.kind), (Some("AccessDenied"), ErrorKind::Permanent));
            assert!(refused.message.contains("is not authorized to perform: sts:AssumeRole on resource:"));
            assert!(refused.message.ends_with(role), "{refused}");
            assert_eq!(code(unreachable.describe_key("alias/images").await.unwrap_err()), "AccessDenied");
        }
        // A reachable account: one session for many calls.
        let theirs = at(&model, B, west());
        for _ in 0..3 {
            theirs.describe_key("alias/images").await.unwrap();
        }
        let calls = model.accounts.assume_role_calls();
        assert_eq!(calls[B], 1, "{calls:?}");
        assert_eq!(calls[ROLE_FAULT], 2, "each call asked STS again: {calls:?}");
        // A session is renewed 5 minutes before its hour ends.
        tokio::time::sleep(Duration::from_secs(56 * 60)).await;
        theirs.describe_key("alias/images").await.unwrap();
        assert_eq!(model.accounts.assume_role_calls()[B], 2);
        // The own account is never assumed into.
        assert!(!model.accounts.assume_role_calls().contains_key(SIMULATED_ACCOUNT));
    }

    /// An account's `key` fault: DescribeKey says its key is disabled, and a copy encrypted with it is refused.
    #[tokio::test(start_paused = true)]
    async fn an_account_whose_keys_cannot_be_used() {
        let model = Model::new(settings());
        let broken = at(&model, KEY_FAULT, west());
        let key = broken.describe_key("alias/images").await.unwrap().unwrap();
        assert!(!key.enabled);
        assert!(key.arn.contains(&format!(":{KEY_FAULT}:key/")), "{}", key.arn);
        assert!(at(&model, B, west()).describe_key("alias/images").await.unwrap().unwrap().enabled);

        let (image, snapshot) = own_image(&model, None);
        let own = own_region(&model);
        own.share_image(
            &image,
            &LaunchPermissions { accounts: vec![KEY_FAULT.into()], ..LaunchPermissions::default() },
        )
        .await
        .unwrap();
        own.share_snapshot(&snapshot, &[KEY_FAULT.to_string()]).await.unwrap();
        let refused = broken.copy_image(&copy_of(&image, "broken", Some("alias/images"))).await.unwrap_err();
        assert_eq!(refused.code.as_deref(), Some("InvalidKMSKey.InvalidState"));
        assert_eq!(refused.kind, ErrorKind::Permanent);
    }

    /// Each account's keys are its own (their ARNs name the account), and each (account, region) has its own
    /// copy cap.
    #[tokio::test(start_paused = true)]
    async fn keys_and_copy_caps_are_per_account_and_region() {
        let model = Model::new(SimSettings { copy_concurrency: 1, ..settings() });
        let own = own_region(&model);
        let theirs = at(&model, B, west());
        let own_key = own.describe_key("alias/images").await.unwrap().unwrap().arn;
        let their_key = theirs.describe_key("alias/images").await.unwrap().unwrap().arn;
        assert_ne!(own_key, their_key);
        assert!(own_key.contains(&format!(":{SIMULATED_ACCOUNT}:key/")), "{own_key}");

        let (image, snapshot) = own_image(&model, None);
        own.share_image(&image, &LaunchPermissions { accounts: vec![B.into()], ..LaunchPermissions::default() })
            .await
            .unwrap();
        own.share_snapshot(&snapshot, &[B.to_string()]).await.unwrap();
        own.copy_image(&copy_of(&image, "own-copy", None)).await.unwrap();
        theirs.copy_image(&copy_of(&image, "their-copy", None)).await.unwrap();
        let full = theirs.copy_image(&copy_of(&image, "their-second", None)).await.unwrap_err();
        assert_eq!(full.code.as_deref(), Some("ResourceLimitExceeded"));
        let report = SimCloud { model: Arc::clone(&model), _lock: None }.report(Duration::from_secs(5));
        assert_eq!(report.peak_copies_in_flight[&west()], 1);
        assert_eq!(report.peak_copies_in_flight_elsewhere[&format!("{B}/us-west-2")], 1);
    }

    /// A new grant lets the account copy only `[sim] grant_lag` after it is made (KMS's eventual consistency);
    /// DescribeSnapshots names the snapshot's key by ARN, and an AWS-managed key's ARN is described as one.
    #[tokio::test(start_paused = true)]
    async fn a_new_grant_is_usable_after_the_lag_and_a_snapshots_key_is_named_by_arn() {
        let model = Model::new(SimSettings { grant_lag: Duration::from_secs(60), ..settings() });
        let (image, snapshot) = own_image(&model, Some("alias/images"));
        let own = own_region(&model);
        let theirs = at(&model, B, Region::new("us-east-1"));
        own.share_image(&image, &LaunchPermissions { accounts: vec![B.into()], ..LaunchPermissions::default() })
            .await
            .unwrap();
        own.share_snapshot(&snapshot, &[B.to_string()]).await.unwrap();
        let keys = own.snapshot_keys(std::slice::from_ref(&snapshot)).await.unwrap();
        assert_eq!(keys.len(), 1);
        let arn = keys[0].kms_key.clone().unwrap();
        assert!(keys[0].encrypted && arn.contains(":key/") && arn.contains(SIMULATED_ACCOUNT), "{arn}");
        assert_eq!(own.describe_key(&arn).await.unwrap().unwrap().arn, arn);
        own.grant_key_use(&arn, DESTINATION, "fleetbake-lag").await.unwrap();
        let spec = copy_of(&image, "web-copy", Some("alias/their-images"));
        let refused = theirs.copy_image(&spec).await.unwrap_err();
        assert!(refused.message.contains("KMS key"), "{refused:?}");
        tokio::time::sleep(Duration::from_secs(60)).await;
        theirs.copy_image(&spec).await.unwrap();

        let (managed_image, managed_snapshot) = own_image(&model, Some("alias/aws/ebs"));
        let keys = own.snapshot_keys(&[managed_snapshot]).await.unwrap();
        let managed = keys[0].kms_key.clone().unwrap();
        assert!(own.describe_key(&managed).await.unwrap().unwrap().aws_managed, "{managed} of {managed_image}");
        let (_, plain) = own_image(&model, None);
        assert!(!own.snapshot_keys(&[plain]).await.unwrap()[0].encrypted);
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
        let cloud = SimCloud { model: Arc::clone(&model), _lock: None };
        let leaks = cloud.report(Duration::from_secs(5)).leaked_resources;
        assert_eq!(leaks.iter().filter(|leak| leak.starts_with("KMS grant")).count(), 2, "{leaks:?}");

        region.revoke_key_grant("alias/images", &first).await.unwrap();
        region.revoke_key_grant(&arn, &first).await.unwrap();
        region.revoke_key_grant("alias/images", &other).await.unwrap();
        let report = cloud.report(Duration::from_secs(5));
        assert_eq!((report.kms_grants_created, report.kms_grants_revoked), (2, 2));
        assert!(report.leaked_resources.is_empty(), "{:?}", report.leaked_resources);
    }

    /// AWS-managed keys take no grant for another account; a grantee must be a principal; a name must be one
    /// KMS takes.
    #[tokio::test(start_paused = true)]
    async fn an_aws_managed_key_takes_no_grant() {
        let model = Model::new(SimSettings::default());
        let region = own_region(&model);
        let refused = region.grant_key_use("alias/aws/ebs", DESTINATION, "fleetbake-copy").await.unwrap_err();
        assert_eq!(refused.code.as_deref(), Some("AccessDeniedException"));
        let refused = region.grant_key_use("alias/images", "someone", "fleetbake-copy").await.unwrap_err();
        assert_eq!(refused.code.as_deref(), Some("InvalidArnException"));
        // KMS's pattern for a grant's name: a job's key, with `@` and `>`, is refused.
        let refused = region.grant_key_use("alias/images", DESTINATION, "copy:web@us-west-2>222233334444/us-east-1");
        assert_eq!(refused.await.unwrap_err().code.as_deref(), Some("ValidationException"));
        region
            .grant_key_use("alias/images", DESTINATION, "fleetbake:web/us-west-2_222233334444-us-east-1")
            .await
            .unwrap();
    }
}
