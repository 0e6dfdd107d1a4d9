//! A copy into another account (`[[distribution]]`): the account owns its copy. The own account first lets
//! the account read the source image (in the source region: a launch permission on the image, a create-volume
//! permission on each of its snapshots, and a KMS grant on the key its snapshots are encrypted with, read from
//! EC2, when it is a customer managed one; an AWS-managed one fails the copy with the reason),
//! each grant journaled before anything depends on it; then the copy runs in the account's place, acting as
//! its role (see [`crate::steps::copy`]: encrypted with the account's key, tagged with where it came from,
//! finished without `[sharing]`); once the last copy of that source image into that account has ended, the
//! grants are taken back (each removal journaled). What is left (an interrupted run, a copy never started) is
//! taken back by the end-of-run sweep, `--resume` or `gc`, from the journal (grants carry no tags).
//!
//! A refusal in the account (a role that cannot be assumed, a key it cannot use) fails that copy only, with the
//! account and its role named.
//!
//! Layer: `steps`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::cloud::{CloudError, LaunchPermissions};
use crate::config::{Account, FlavorName, Region};
use crate::outcome::{Failure, JobLabel, Stage};
use crate::plan::{CopyJob, Plan, RunId};
use crate::steps::cleanup::{CleanupStack, UndoStep};
use crate::steps::copy::{self, CopyContext, CopyEnd};
use crate::steps::ledger::{Grantee, Resource, ResourceKind};

/// On a distribution copy: the image it was copied from (in the own account), and that image's region.
pub const DISTRIBUTED_FROM_TAG: &str = "fleetbake:distributed-from";
pub const DISTRIBUTED_FROM_REGION_TAG: &str = "fleetbake:distributed-from-region";

/// The grants a run gives other accounts on its own images: per source image and account, what was granted
/// and how many of the plan's copies of it into that account have not ended yet (the last one takes the grants
/// back). Copies of one source into one account (its regions) share the grants; a second waits while the
/// first grants.
#[derive(Debug, Default)]
pub struct DistributionGrants {
    sources: Mutex<BTreeMap<GrantKey, Arc<tokio::sync::Mutex<SourceGrants>>>>,
}

/// A source image (a flavor's build in a region) and an account it is distributed into.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GrantKey {
    flavor: FlavorName,
    source_region: Region,
    account: String,
}

impl GrantKey {
    fn of(job: &CopyJob, account: &str) -> Self {
        GrantKey { flavor: job.flavor.clone(), source_region: job.source_region.clone(), account: account.to_string() }
    }
}

#[derive(Debug, Default)]
struct SourceGrants {
    /// The plan's copies of this source into this account that have not ended.
    remaining: usize,
    /// What was granted (and journaled), not yet taken back.
    given: Vec<Resource>,
    /// Every grant the account needs was given: the next copy asks for none.
    complete: bool,
    /// When the KMS grant was made (none: the image is not encrypted): a copy within
    /// [`KMS_GRANT_WINDOW`](crate::cloud::retry::KMS_GRANT_WINDOW) of it waits out a refusal about the key.
    key_granted_at: Option<Instant>,
}

impl DistributionGrants {
    /// One count per distribution copy of `plan`.
    pub fn for_plan(plan: &Plan) -> Self {
        let mut sources = BTreeMap::new();
        for copy in &plan.copies {
            if let Account::Id(account) = &copy.target.account {
                let entry = sources.entry(GrantKey::of(copy, account)).or_insert_with(SourceGrants::default);
                entry.remaining += 1;
            }
        }
        let sources = sources.into_iter().map(|(key, grants)| (key, Arc::new(tokio::sync::Mutex::new(grants))));
        DistributionGrants { sources: Mutex::new(sources.collect()) }
    }

    /// A distribution copy this run will not make (an earlier attempt's image, or one `--changed-only` reuses):
    /// the grants of its source into its account are not kept for it. Called before any job runs.
    pub fn not_made(&self, job: &CopyJob) {
        let Account::Id(account) = &job.target.account else { return };
        let source = self.sources.lock().expect("not poisoned").get(&GrantKey::of(job, account)).cloned();
        let Some(source) = source else { return };
        // Before any job runs, nothing else holds it.
        if let Ok(mut grants) = source.try_lock() {
            grants.remaining = grants.remaining.saturating_sub(1);
        };
    }

    fn source(&self, key: GrantKey) -> Arc<tokio::sync::Mutex<SourceGrants>> {
        let mut sources = self.sources.lock().expect("not poisoned");
        Arc::clone(sources.entry(key).or_insert_with(|| {
            Arc::new(tokio::sync::Mutex::new(SourceGrants { remaining: 1, ..SourceGrants::default() }))
        }))
    }
}

/// A distribution copy: grants, the copy in the account, and the grants taken back after the last copy of the
/// source into the account.
pub async fn run(context: CopyContext, account: &str) -> CopyEnd {
    let label = copy::label(&context);
    let source = context.run.distribution.source(GrantKey::of(&context.job, account));
    let granted = {
        let mut grants = source.lock().await;
        if context.cancel.is_cancelled() {
            Err(Failure::new(&label, Stage::Interrupted, "not started: the run was interrupted"))
        } else if grants.complete {
            Ok(grants.key_granted_at)
        } else {
            let granted = grant(&context, &label, account, &mut grants.given).await;
            grants.complete = granted.is_ok();
            if let Ok(at) = granted {
                grants.key_granted_at = at;
            }
            granted
        }
    };
    let mut end = match granted {
        Ok(key_granted_at) => {
            let mut end = match key_granted_at {
                Some(at) => copy::copy_after_grant(&context, at).await,
                None => copy::copy(&context).await,
            };
            let role = context.run.fleet.distributions.role_for(account).unwrap_or_default();
            end.end.failures =
                end.end.failures.into_iter().map(|failure| in_account(failure, account, &role)).collect();
            end
        }
        Err(failure) => {
            CopyEnd { artifact: None, end: crate::outcome::JobEnd { failures: vec![failure], ..Default::default() } }
        }
    };
    let mut grants = source.lock().await;
    grants.remaining = grants.remaining.saturating_sub(1);
    if grants.remaining == 0 && !grants.given.is_empty() {
        grants.complete = false;
        let mut stack = CleanupStack::default();
        for resource in grants.given.drain(..) {
            stack.push(UndoStep::removing(&resource));
        }
        let run = &context.run;
        let cleanup =
            stack.unwind_for_job(&label, &*context.source_cloud, &context.source_waits, &*run.ledger, &context.events);
        end.end.failures.extend(cleanup.await);
    }
    end
}

/// What the account needs to copy the source: a launch permission on the image and a create-volume
/// permission on each snapshot (unless `[sharing]` gives them that account already: those are the fleet's,
/// never taken back), and a KMS grant on each key that encrypts its snapshots ([`source_keys`]). Each is
/// journaled before the call that makes it (a launch or create-volume permission is named before it exists;
/// taking back one never given is harmless), the KMS grant by its name (`KmsGrantRequested`), then by its id
/// once CreateGrant answers. Granting again what `given` holds is harmless (EC2 and KMS answer a repeat as the
/// first): a copy after a failed grant tries them all. Returns when the KMS grant was made, if one was.
async fn grant(
    context: &CopyContext,
    label: &JobLabel,
    account: &str,
    given: &mut Vec<Resource>,
) -> Result<Option<Instant>, Failure> {
    let run = &context.run;
    let cloud = &*context.source_cloud;
    let region = &context.job.source_region;
    let image = &context.source.image_id;
    let job = context.job.key();
    let refused = |what: &str, error: &CloudError| {
        let mut failure = Failure::from_cloud(label, Stage::Share, error);
        failure.error = format!("granting account {account} {what} in {region}: {}", failure.error);
        failure
    };
    let record = |given: &mut Vec<Resource>, resource: Resource| {
        if !given.contains(&resource) {
            run.ledger.created(&job, resource.clone());
            given.push(resource);
        }
    };
    let grantee = || Grantee { account: account.to_string(), key: None };
    // The keys first: an image encrypted with an AWS-managed key cannot be distributed, and nothing is granted.
    let keys = source_keys(context, label, account).await?;
    let sharing = &run.fleet.sharing;
    if !sharing.accounts.iter().any(|shared| shared == account) {
        record(given, Resource::grant(region.clone(), ResourceKind::LaunchPermission, image.0.clone(), grantee()));
        let with = LaunchPermissions { accounts: vec![account.to_string()], ..LaunchPermissions::default() };
        cloud
            .share_image(image, &with)
            .await
            .map_err(|error| refused(&format!("launch permission on {image}"), &error))?;
    }
    if !sharing.snapshot_accounts.iter().any(|shared| shared == account) {
        for snapshot in &context.source.snapshot_ids {
            let kind = ResourceKind::CreateVolumePermission;
            record(given, Resource::grant(region.clone(), kind, snapshot.0.clone(), grantee()));
            let accounts = [account.to_string()];
            cloud
                .share_snapshot(snapshot, &accounts)
                .await
                .map_err(|error| refused(&format!("create-volume permission on {snapshot}"), &error))?;
        }
    }
    let mut key_granted_at = None;
    for arn in keys {
        let principal = grantee_principal(account);
        let name = grant_name(&context.run.run_id, &context.flavor.name, account);
        let grantee = Grantee { account: account.to_string(), key: Some(arn.clone()) };
        // Journaled by name before it is asked for: killed before CreateGrant answers, or its answer lost, the
        // grant is still named (and taken back by asking for it again by name, then revoking it).
        let requested = Resource::grant(region.clone(), ResourceKind::KmsGrantRequested, name.clone(), grantee.clone());
        record(given, requested.clone());
        let grant = cloud
            .grant_key_use(&arn, &principal, &name)
            .await
            .map_err(|error| refused(&format!("the use of key {arn}"), &error))?;
        key_granted_at = Some(Instant::now());
        record(given, Resource::grant(region.clone(), ResourceKind::KmsGrant, grant.0, grantee));
        // Its id journaled, the request's record is done with.
        given.retain(|resource| resource != &requested);
        run.ledger.removed(requested);
    }
    context.events.progress(label, Stage::Share, format!("account {account} may copy {image} from {region}"));
    Ok(key_granted_at)
}

/// Whom a KMS grant lets in: the account (its root principal; the account's role uses the grant through it).
pub fn grantee_principal(account: &str) -> String {
    format!("arn:aws:iam::{account}:root")
}

/// The keys that encrypt the source image's snapshots, by ARN, as EC2 says (DescribeSnapshots `KmsKeyId`),
/// not as `[encryption]` would have them: without it, EBS encryption by default encrypts them with `aws/ebs` or
/// the account's default key, and an alias may point at another key than when the image was made (a
/// `--changed-only` reuse). Empty: unencrypted, no grant needed. An AWS-managed key (DescribeKey `KeyManager =
/// AWS`) fails the copy with the reason: no other account can use it.
async fn source_keys(context: &CopyContext, label: &JobLabel, account: &str) -> Result<Vec<String>, Failure> {
    let cloud = &*context.source_cloud;
    let region = &context.job.source_region;
    let image = &context.source.image_id;
    let refused = |error: &CloudError| {
        let mut failure = Failure::from_cloud(label, Stage::Share, error);
        failure.error = format!("reading the key of {image} in {region} for account {account}: {}", failure.error);
        failure
    };
    let mut snapshots = context.source.snapshot_ids.clone();
    if snapshots.is_empty() {
        let described = cloud.describe_images(std::slice::from_ref(image)).await.map_err(|error| refused(&error))?;
        snapshots = described.into_iter().flat_map(|status| status.snapshot_ids).collect();
    }
    let mut keys: Vec<String> = Vec::new();
    for snapshot in cloud.snapshot_keys(&snapshots).await.map_err(|error| refused(&error))? {
        if !snapshot.encrypted {
            continue;
        }
        let Some(key) = snapshot.kms_key else {
            let message = format!(
                "the snapshot {} of {image} in {region} is encrypted with a key EC2 does not name: cannot grant \
                 account {account} its use",
                snapshot.snapshot
            );
            return Err(Failure::new(label, Stage::Share, message));
        };
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut arns = Vec::with_capacity(keys.len());
    for key in keys {
        match cloud.describe_key(&key).await {
            Ok(Some(found)) if found.aws_managed => {
                return Err(Failure::new(
                    label,
                    Stage::Share,
                    format!(
                        "the image {image} in {region} is encrypted with `{key}`, an AWS-managed key (as EBS \
                         encryption by default does with `aws/ebs`), which no other account can use: account \
                         {account} cannot copy it (encrypt with a customer managed key, in `[encryption]` or as the \
                         account's default EBS key, to distribute)"
                    ),
                ));
            }
            Ok(Some(found)) => arns.push(found.arn),
            Ok(None) => {
                let message = format!(
                    "the key `{key}` that encrypts {image} in {region} was not found: cannot grant account {account} \
                     its use"
                );
                return Err(Failure::new(label, Stage::Share, message));
            }
            Err(error) => return Err(refused(&error)),
        }
    }
    Ok(arns)
}

/// The KMS grant's name: the run, flavor and account (KMS answers a CreateGrant repeated with the same name and
/// parameters with the same grant, so a retry makes no second one), in the characters KMS allows
/// (`[a-zA-Z0-9:/_-]`, at most 256).
fn grant_name(run_id: &RunId, flavor: &FlavorName, account: &str) -> String {
    let name = format!("fleetbake-{run_id}-{flavor}-{account}");
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '_' | '-') { c } else { '-' })
        .take(256)
        .collect()
}

/// A failure in the account's place: says which account, and a refusal (an action or key not allowed, the
/// role's credentials) is hinted with the role and what it needs, not with the run's own policy (whose hint
/// names `docs/iam-policy.json`); a hint that is already about the account's role (STS refused it:
/// `hints::role_refused`) is kept. A role that cannot be assumed is not the run's credentials expiring: the
/// other accounts' and the own account's jobs go on.
fn in_account(mut failure: Failure, account: &str, role: &str) -> Failure {
    failure.error = format!("in account {account}: {}", failure.error);
    let expired = failure.credentials_expired();
    let refused_by_code = failure.code.as_deref().is_some_and(|code| {
        matches!(code, "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" | "AuthFailure")
            || code.starts_with("KMS.")
            || code.starts_with("InvalidKMSKey")
    });
    let runs_own_policy = failure.hint.as_deref().is_some_and(|hint| hint.contains("docs/iam-policy.json"));
    if expired || runs_own_policy || (refused_by_code && failure.hint.is_none()) {
        failure.hint = Some(role_hint(account, role));
    }
    if expired {
        // The role's credentials, not the run's: the code stays in the message.
        let code = failure.code.take().unwrap_or_default();
        failure.error = format!("{} ({code})", failure.error);
    }
    failure
}

/// What to check when a copy in `account` is refused.
pub fn role_hint(account: &str, role: &str) -> String {
    format!(
        "account {account} is reached through the role `{role}`: its trust policy must let the run's identity call \
         sts:AssumeRole, and its policy allow what a copy does there (ec2:CopyImage, ec2:CreateTags, \
         ec2:DescribeImages, ec2:ModifyImageAttribute, ec2:EnableImageDeprecation, and kms:CreateGrant, \
         kms:Decrypt, kms:DescribeKey, kms:GenerateDataKeyWithoutPlaintext, kms:ReEncrypt* on the account's key): \
         see docs/sharing.md \"Distributing into accounts\""
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Action, ErrorKind};

    fn label() -> JobLabel {
        JobLabel::new(FlavorName::new("web"), Region::new("eu-west-1"))
    }

    #[test]
    fn a_role_not_assumed_names_the_account_and_is_not_the_runs_credentials() {
        let error = CloudError {
            action: Action::CopyImage,
            region: Region::new("eu-west-1"),
            kind: ErrorKind::Credentials,
            code: Some("ExpiredToken".into()),
            message: "the role cannot be assumed".into(),
        };
        let failure = Failure::from_cloud(&label(), Stage::Copy, &error);
        assert!(failure.credentials_expired());
        let failure = in_account(failure, "222233334444", "arn:aws:iam::222233334444:role/images");
        assert!(!failure.credentials_expired(), "would stop every other job of the run");
        assert!(failure.error.starts_with("in account 222233334444: "), "{}", failure.error);
        assert!(failure.error.contains("ExpiredToken"), "{}", failure.error);
        assert!(failure.hint.unwrap().contains("arn:aws:iam::222233334444:role/images"));
    }

    /// Two flavors built in two regions, into two accounts' three regions: each account's copies of one source
    /// share its grants (one count per copy), the own account's copies none.
    #[test]
    fn the_grants_are_counted_per_source_and_account_from_the_plan() {
        let text = "[fleet]\nname = \"d\"\n\n[defaults]\ninstance_type = \"t3.micro\"\nssh_username = \"u\"\n\n\
                    [[flavor]]\nname = \"a\"\nsource_ami = { owners = [\"amazon\"], name = \"al2023-*\" }\n\n\
                    [[flavor]]\nname = \"b\"\nsource_ami = { owners = [\"amazon\"], name = \"al2023-*\" }\n\n\
                    [regions]\nus-west-2 = [\"us-east-1\"]\neu-west-1 = []\n\n\
                    [[distribution]]\naccounts = [\"222233334444\", \"555566667777\"]\n\
                    regions = [\"us-west-2\", \"ap-south-1\", \"sa-east-1\"]\nrole_arn = \"arn:aws:iam::{account}:role/r\"\n";
        let fleet = crate::config::parse(std::path::Path::new("fleet.toml"), text).expect("the test fleet parses");
        let started = chrono::Utc::now();
        let plan = Plan::new(&fleet, RunId::new(started, 1), started);
        let grants = DistributionGrants::for_plan(&plan);
        let sources = grants.sources.lock().unwrap();
        let count = |flavor: &str, region: &str, account: &str| {
            let key = GrantKey {
                flavor: FlavorName::new(flavor),
                source_region: Region::new(region),
                account: account.to_string(),
            };
            sources.get(&key).map(|source| source.try_lock().unwrap().remaining)
        };
        // us-west-2's copy from us-west-2's build; ap-south-1's and sa-east-1's from the first build region's
        // (eu-west-1): those two share one set of grants, taken back after the second ends.
        assert_eq!(count("a", "us-west-2", "222233334444"), Some(1));
        assert_eq!(count("a", "eu-west-1", "222233334444"), Some(2));
        assert_eq!(count("b", "eu-west-1", "555566667777"), Some(2));
        assert_eq!(sources.len(), 2 * 2 * 2, "per flavor, source region and account");
        assert_eq!(sources.values().map(|source| source.try_lock().unwrap().remaining).sum::<usize>(), 2 * 2 * 3);
        drop(sources);
        // A copy an earlier attempt made is not waited for; an own account's copy counts nowhere.
        let made_before = plan.copies.iter().find(|copy| copy.target.region.as_str() == "sa-east-1").unwrap();
        grants.not_made(made_before);
        grants.not_made(plan.copies.iter().find(|copy| !copy.is_distribution()).unwrap());
        let sources = grants.sources.lock().unwrap();
        assert_eq!(sources.values().map(|source| source.try_lock().unwrap().remaining).sum::<usize>(), 2 * 2 * 3 - 1);
    }

    #[test]
    fn a_grant_is_named_after_the_run_flavor_and_account_in_kms_characters() {
        let run_id = RunId::new("2026-11-26T12:00:01Z".parse().unwrap(), 1);
        let name = grant_name(&run_id, &FlavorName::new("web.v2+x"), "222233334444");
        assert!(name.starts_with("fleetbake-") && name.ends_with("-web-v2-x-222233334444"), "{name}");
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '_' | '-');
        assert!(name.chars().all(allowed), "{name}");
        assert_eq!(name, grant_name(&run_id, &FlavorName::new("web.v2+x"), "222233334444"), "the same on a retry");
        let long = grant_name(&run_id, &FlavorName::new("f".repeat(300)), "222233334444");
        assert_eq!(long.len(), 256);
    }

    #[test]
    fn a_refusal_hinted_with_the_runs_own_policy_is_hinted_with_the_role_and_a_role_refusal_keeps_its_hint() {
        let role = "arn:aws:iam::222233334444:role/images";
        let error = |code: &str, message: String| CloudError {
            action: Action::CopyImage,
            region: Region::new("eu-west-1"),
            kind: ErrorKind::Permanent,
            code: Some(code.into()),
            message,
        };
        let denied = error("UnauthorizedOperation", "You are not authorized to perform this operation.".into());
        let policy = Failure::from_cloud(&label(), Stage::Copy, &denied);
        assert!(policy.hint.as_deref().unwrap().contains("docs/iam-policy.json"), "{policy:?}");
        let hint = in_account(policy, "222233334444", role).hint.unwrap();
        assert!(hint.contains(role) && !hint.contains("docs/iam-policy.json"), "{hint}");
        let sts =
            error("AccessDenied", format!("User: x is not authorized to perform: sts:AssumeRole on resource: {role}"));
        let refused = Failure::from_cloud(&label(), Stage::Copy, &sts);
        let said = refused.hint.clone();
        assert_eq!(in_account(refused, "222233334444", role).hint, said, "STS's refusal is already about the role");
    }

    #[test]
    fn a_failure_not_refused_keeps_its_hint_empty() {
        let failure = in_account(Failure::new(&label(), Stage::WaitCopy, "the copy ended `failed`"), "1", "r");
        assert_eq!(failure.error, "in account 1: the copy ended `failed`");
        assert_eq!(failure.hint, None);
    }
}
