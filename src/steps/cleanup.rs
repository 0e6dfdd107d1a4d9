//! The undo stack of a build: every temporary resource is pushed the moment it exists and undone in reverse
//! order on success, failure and interrupt alike. Each failed undo is reported, never hidden.
//!
//! A step knows whether its resource is fresh (created moments ago by this process): a NotFound about a fresh
//! resource is EC2's lag, not proof it is gone (the instance would go on running), so it is retried; about one
//! named in an old journal it means gone. Credentials that expire or fail to refresh mid-cleanup are retried
//! for [`CREDENTIALS_PATIENCE`](crate::cloud::retry::CREDENTIALS_PATIENCE) before the step is given up (the
//! run then names what is left and the gc command).

use std::future::Future;
use std::time::Duration;

use crate::cloud::consistency::{once_known, Created};
use crate::cloud::retry::{retry, GaveUp, Outcome, Policy};
use crate::cloud::wait::{poll_until, Poll, PollPolicy, WaitError};
use crate::cloud::watch::RegionWaits;
use crate::cloud::{
    CloudError, CloudResult, ErrorKind, ImageId, InstanceId, InstanceState, KeyPairName, KmsGrantId, LaunchPermissions,
    RegionCloud, SecurityGroupId, SessionId, SnapshotId,
};
use crate::config::Region;
use crate::outcome::{Failure, JobLabel, Stage};
use crate::plan::JobKey;
use crate::report::events::{EventSender, RunEvent};
use crate::steps::ledger::{Grantee, Ledger, Resource, ResourceKind};

/// One thing to undo.
#[derive(Debug)]
pub enum UndoStep {
    /// Terminate the build instance and wait until it is gone (its security group can't go before it).
    TerminateInstance {
        id: InstanceId,
        fresh: Option<Created>,
    },
    DeleteSecurityGroup {
        id: SecurityGroupId,
        fresh: Option<Created>,
    },
    /// EC2 answers DeleteKeyPair with success whether or not it knows the key pair yet, so freshness does not
    /// matter here: one deleted too soon outlives its build, and the end-of-run sweep removes it.
    DeleteKeyPair {
        name: KeyPairName,
    },
    /// A Session Manager session its connection did not end (a connect given up, a failed TerminateSession, a
    /// killed run's). TerminateSession is idempotent: one that already ended is fine.
    TerminateSession {
        id: SessionId,
    },
    /// Every session still active to a Session Manager build's instance (DescribeSessions), ended before the
    /// instance is terminated: one whose StartSession answer was lost (the call retried) has an id this run
    /// never learned, and the instance is this run's, so every session to it is too.
    EndSessionsTo {
        instance: InstanceId,
    },
    /// An image that ended `failed`: deregistered, its snapshots deleted.
    DiscardImage {
        id: ImageId,
        snapshots: Vec<SnapshotId>,
        fresh: Option<Created>,
    },
    /// A distribution copy's temporary launch permission for `account` on the own account's image, taken
    /// back (an image already deregistered has none left).
    RevokeLaunchPermission {
        image: ImageId,
        account: String,
    },
    /// A distribution copy's temporary create-volume permission for `account` on the image's snapshot.
    RevokeCreateVolumePermission {
        snapshot: SnapshotId,
        account: String,
    },
    /// A distribution copy's temporary KMS grant on the own account's key (RevokeGrant: one already gone is
    /// fine).
    RevokeKeyGrant {
        key: String,
        grant: KmsGrantId,
        account: String,
    },
    /// A KMS grant asked for whose id is not known (the run was killed before CreateGrant answered, or the
    /// answer was lost): CreateGrant again with its name, key and grantee answers the same grant (KMS API
    /// Reference, CreateGrant `Name`: "if the grant already exists, the original GrantId is returned without
    /// creating a new grant"), which is then revoked. One never made is made and revoked: nothing is left.
    RevokeRequestedKeyGrant {
        key: String,
        name: String,
        account: String,
    },
}

impl UndoStep {
    /// What the step removes, for messages.
    pub fn resource(&self) -> String {
        match self {
            UndoStep::TerminateInstance { id, .. } => format!("instance {id}"),
            UndoStep::DeleteSecurityGroup { id, .. } => format!("security group {id}"),
            UndoStep::DeleteKeyPair { name, .. } => format!("key pair {name}"),
            UndoStep::TerminateSession { id } => format!("session {id}"),
            UndoStep::EndSessionsTo { instance } => format!("Session Manager sessions to instance {instance}"),
            UndoStep::DiscardImage { id, .. } => format!("failed image {id}"),
            UndoStep::RevokeLaunchPermission { image, account } => {
                format!("launch permission on {image} for account {account}")
            }
            UndoStep::RevokeCreateVolumePermission { snapshot, account } => {
                format!("create-volume permission on {snapshot} for account {account}")
            }
            UndoStep::RevokeKeyGrant { key, grant, account } => {
                format!("KMS grant {grant} on {key} for account {account}")
            }
            UndoStep::RevokeRequestedKeyGrant { key, name, account } => {
                format!("KMS grant named {name} on {key} for account {account}")
            }
        }
    }

    /// The journal's name for what the step removes (none for images).
    pub fn journal_resource(&self, region: &Region) -> Option<Resource> {
        let (kind, id) = match self {
            UndoStep::TerminateInstance { id, .. } => (ResourceKind::Instance, id.to_string()),
            UndoStep::DeleteSecurityGroup { id, .. } => (ResourceKind::SecurityGroup, id.to_string()),
            UndoStep::DeleteKeyPair { name, .. } => (ResourceKind::KeyPair, name.to_string()),
            UndoStep::TerminateSession { id } => (ResourceKind::Session, id.to_string()),
            UndoStep::DiscardImage { .. } | UndoStep::EndSessionsTo { .. } => return None,
            UndoStep::RevokeLaunchPermission { image, account } => {
                let grantee = Grantee { account: account.clone(), key: None };
                return Some(Resource::grant(region.clone(), ResourceKind::LaunchPermission, image.0.clone(), grantee));
            }
            UndoStep::RevokeCreateVolumePermission { snapshot, account } => {
                let grantee = Grantee { account: account.clone(), key: None };
                let kind = ResourceKind::CreateVolumePermission;
                return Some(Resource::grant(region.clone(), kind, snapshot.0.clone(), grantee));
            }
            UndoStep::RevokeKeyGrant { key, grant, account } => {
                let grantee = Grantee { account: account.clone(), key: Some(key.clone()) };
                return Some(Resource::grant(region.clone(), ResourceKind::KmsGrant, grant.0.clone(), grantee));
            }
            UndoStep::RevokeRequestedKeyGrant { key, name, account } => {
                let grantee = Grantee { account: account.clone(), key: Some(key.clone()) };
                let kind = ResourceKind::KmsGrantRequested;
                return Some(Resource::grant(region.clone(), kind, name.clone(), grantee));
            }
        };
        Some(Resource::new(region.clone(), kind, id))
    }

    /// The step that removes a temporary resource named in the journal or found by its tags: not fresh, so a
    /// NotFound about it means it is gone.
    pub fn removing(resource: &Resource) -> UndoStep {
        match resource.kind {
            ResourceKind::Instance => UndoStep::TerminateInstance { id: InstanceId::new(&resource.id), fresh: None },
            ResourceKind::SecurityGroup => {
                UndoStep::DeleteSecurityGroup { id: SecurityGroupId::new(&resource.id), fresh: None }
            }
            ResourceKind::KeyPair => UndoStep::DeleteKeyPair { name: KeyPairName::new(&resource.id) },
            ResourceKind::Session => UndoStep::TerminateSession { id: SessionId::new(&resource.id) },
            ResourceKind::LaunchPermission => UndoStep::RevokeLaunchPermission {
                image: ImageId::new(&resource.id),
                account: resource.grantee_account().to_string(),
            },
            ResourceKind::CreateVolumePermission => UndoStep::RevokeCreateVolumePermission {
                snapshot: SnapshotId::new(&resource.id),
                account: resource.grantee_account().to_string(),
            },
            ResourceKind::KmsGrant => UndoStep::RevokeKeyGrant {
                key: resource.grant.as_ref().and_then(|grantee| grantee.key.clone()).unwrap_or_default(),
                grant: KmsGrantId::new(&resource.id),
                account: resource.grantee_account().to_string(),
            },
            ResourceKind::KmsGrantRequested => UndoStep::RevokeRequestedKeyGrant {
                key: resource.grant.as_ref().and_then(|grantee| grantee.key.clone()).unwrap_or_default(),
                name: resource.id.clone(),
                account: resource.grantee_account().to_string(),
            },
        }
    }

    /// The step that discards a job's image that ended `failed`: its snapshots looked up now, and the discard
    /// recorded first (so the job's next CopyImage takes a new client token, whatever happens after).
    pub async fn discard_failed(
        cloud: &dyn RegionCloud,
        ledger: &dyn Ledger,
        job: &JobKey,
        image: &ImageId,
        requested: Option<Created>,
    ) -> UndoStep {
        let snapshots = match cloud.describe_images(std::slice::from_ref(image)).await {
            Ok(found) => found.into_iter().flat_map(|status| status.snapshot_ids).collect(),
            Err(error) => {
                tracing::warn!("cannot list the snapshots of failed image {image}: {error}");
                Vec::new()
            }
        };
        ledger.image_discarded(job, image);
        UndoStep::DiscardImage { id: image.clone(), snapshots, fresh: requested }
    }
}

/// A security group stays in use for a while after its instance terminates (its network interface detaches).
const SECURITY_GROUP_RELEASE: PollPolicy =
    PollPolicy::new(Duration::from_secs(5), Duration::from_secs(15), Duration::from_secs(5 * 60));

#[derive(Debug, Default)]
pub struct CleanupStack {
    steps: Vec<UndoStep>,
}

/// What [`CleanupStack::keep`] took off the stack: the instance, and the key pair and security group it was
/// launched with (each `None` if it was not on the stack).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptSteps {
    pub instance: Option<InstanceId>,
    pub key_pair: Option<KeyPairName>,
    pub security_group: Option<SecurityGroupId>,
}

impl KeptSteps {
    /// The journal's names of what is kept, in `region`.
    pub fn resources(&self, region: &Region) -> Vec<Resource> {
        let instance = self.instance.iter().map(|id| (ResourceKind::Instance, id.to_string()));
        let group = self.security_group.iter().map(|id| (ResourceKind::SecurityGroup, id.to_string()));
        let key_pair = self.key_pair.iter().map(|name| (ResourceKind::KeyPair, name.to_string()));
        instance.chain(group).chain(key_pair).map(|(kind, id)| Resource::new(region.clone(), kind, id)).collect()
    }
}

/// An undo step that failed: what may be left, and why.
#[derive(Debug)]
pub struct UndoFailure {
    pub resource: String,
    /// The journal's name for it (none for images).
    pub journal_resource: Option<Resource>,
    /// The AWS error code, where the cause was an AWS error.
    pub code: Option<String>,
    pub error: String,
}

impl CleanupStack {
    pub fn push(&mut self, step: UndoStep) {
        self.steps.push(step);
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// What is still to undo, most recent first.
    pub fn pending(&self) -> Vec<String> {
        self.steps.iter().rev().map(UndoStep::resource).collect()
    }

    /// `--keep-failed`: takes the most recently launched instance off the stack, with the key pair and security
    /// group its launch named (the last of each pushed before it: a build's way in pushes them, then the launch
    /// pushes the instance), and returns them; nothing else is touched (sessions, a failed image and any other
    /// instance unwind as usual). `None`, and the stack unchanged, when no instance is on it.
    /// The instance launched last (still on the stack), and when, if this process launched it.
    pub fn last_instance(&self) -> Option<(&InstanceId, Option<Created>)> {
        self.steps.iter().rev().find_map(|step| match step {
            UndoStep::TerminateInstance { id, fresh } => Some((id, *fresh)),
            _ => None,
        })
    }

    pub fn keep(&mut self) -> Option<KeptSteps> {
        let at = self.steps.iter().rposition(|step| matches!(step, UndoStep::TerminateInstance { .. }))?;
        let before = &self.steps[..at];
        let key_pair = before.iter().rposition(|step| matches!(step, UndoStep::DeleteKeyPair { .. }));
        let group = before.iter().rposition(|step| matches!(step, UndoStep::DeleteSecurityGroup { .. }));
        // Removed from the highest index down, so the lower ones stay where they are.
        let mut indices: Vec<usize> = [Some(at), key_pair, group].into_iter().flatten().collect();
        indices.sort_unstable_by(|a, b| b.cmp(a));
        let mut kept = KeptSteps::default();
        for index in indices {
            match self.steps.remove(index) {
                UndoStep::TerminateInstance { id, .. } => kept.instance = Some(id),
                UndoStep::DeleteKeyPair { name } => kept.key_pair = Some(name),
                UndoStep::DeleteSecurityGroup { id, .. } => kept.security_group = Some(id),
                other => unreachable!("only the three looked up are removed, not {other:?}"),
            }
        }
        Some(kept)
    }

    /// Undoes every step like [`unwind`](Self::unwind), tells the reporters of each step that failed, and
    /// returns those as the job's `cleanup` failures.
    pub async fn unwind_for_job(
        self,
        job: &JobLabel,
        cloud: &dyn RegionCloud,
        waits: &RegionWaits,
        ledger: &dyn Ledger,
        events: &EventSender,
    ) -> Vec<Failure> {
        let mut failures = Vec::new();
        for failure in self.unwind(cloud, waits, ledger).await {
            events.send(RunEvent::CleanupFailed {
                job: job.clone(),
                resource: failure.resource.clone(),
                error: failure.error.clone(),
            });
            let message = format!("cleanup of {} failed: {}", failure.resource, failure.error);
            failures.push(Failure { code: failure.code, ..Failure::new(job, Stage::Cleanup, message) });
        }
        failures
    }

    /// Undoes every step, most recent first, continuing past failures; journals each removal; returns the
    /// failures.
    pub async fn unwind(
        mut self,
        cloud: &dyn RegionCloud,
        waits: &RegionWaits,
        ledger: &dyn Ledger,
    ) -> Vec<UndoFailure> {
        let mut failures = Vec::new();
        while let Some(step) = self.steps.pop() {
            let resource = step.resource();
            let record = step.journal_resource(cloud.region());
            match undo(cloud, waits, step).await {
                Ok(()) => {
                    if let Some(resource) = record {
                        ledger.removed(resource);
                    }
                }
                Err(error) => failures.push(UndoFailure {
                    resource,
                    journal_resource: record,
                    code: error.code,
                    error: error.message,
                }),
            }
        }
        failures
    }
}

fn gone_is_fine(result: Result<(), CloudError>) -> Result<(), CloudError> {
    match result {
        Err(error) if error.kind == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Calls `call` until its credentials work or
/// [`CREDENTIALS_PATIENCE`](crate::cloud::retry::CREDENTIALS_PATIENCE) has passed ([`Policy::CREDENTIALS`]); any
/// other answer at once.
async fn with_credentials<T, Call, Answer>(mut call: Call) -> CloudResult<T>
where
    Call: FnMut() -> Answer,
    Answer: Future<Output = CloudResult<T>>,
{
    retry(
        Policy::CREDENTIALS.start(),
        |_| {
            let answer = call();
            async move {
                match answer.await {
                    Err(error) if error.kind == ErrorKind::Credentials => Outcome::Again(error),
                    answer => Outcome::Done(answer),
                }
            }
        },
        |error, pause| tracing::warn!("{error}; cleanup tries again in {pause:?} (credentials may be refreshed)"),
    )
    .await
    .map_err(GaveUp::into_error)
}

/// Why an undo step failed: the AWS error code, where there is one, and the message.
struct UndoError {
    code: Option<String>,
    message: String,
}

impl From<CloudError> for UndoError {
    fn from(error: CloudError) -> Self {
        UndoError { code: error.code.clone(), message: error.to_string() }
    }
}

impl From<WaitError> for UndoError {
    fn from(error: WaitError) -> Self {
        match error {
            WaitError::Cloud(error) => error.into(),
            other => UndoError { code: None, message: other.to_string() },
        }
    }
}

/// TerminateInstances. A NotFound answer does not prove the instance is gone (EC2's documentation on eventual
/// consistency): it is believed only when a describe agrees — the instance is not listed (and not one this
/// process launched moments ago), or listed as shutting down or terminated. While EC2 still lists it alive,
/// the terminate is tried again, for as long as the consistency window.
async fn terminate(cloud: &dyn RegionCloud, id: &InstanceId, fresh: Option<Created>) -> Result<(), CloudError> {
    retry(
        Policy::NEW_RESOURCE_LAG.start(),
        |_| async move {
            let error = match with_credentials(|| cloud.terminate_instance(id)).await {
                Err(error) if error.kind == ErrorKind::NotFound => error,
                answer => return Outcome::Done(answer),
            };
            let listed = match cloud.describe_instances(std::slice::from_ref(id)).await {
                Ok(listed) => listed.into_iter().next(),
                Err(error) => return Outcome::Done(Err(error)),
            };
            let gone = match listed.map(|status| status.state) {
                None => !fresh.is_some_and(|created| created.is_recent()),
                Some(state) => matches!(state, InstanceState::ShuttingDown | InstanceState::Terminated),
            };
            if gone {
                Outcome::Done(Ok(()))
            } else {
                Outcome::Again(error)
            }
        },
        |error, pause| tracing::debug!("{error}, but EC2 still lists it: terminating again in {pause:?}"),
    )
    .await
    .map_err(GaveUp::into_error)
}

/// DeleteSnapshot of a deregistered image's snapshot: EC2 answers `InvalidSnapshot.InUse` for a while after
/// DeregisterImage (the image is still being removed), which is waited out on [`Policy::SNAPSHOT_IN_USE`]; any
/// other answer at once (credentials as [`with_credentials`] says).
pub async fn delete_released_snapshot(cloud: &dyn RegionCloud, snapshot: &SnapshotId) -> Result<(), CloudError> {
    retry(
        Policy::SNAPSHOT_IN_USE.start(),
        |_| async move {
            match with_credentials(|| cloud.delete_snapshot(snapshot)).await {
                Err(error) if error.code.as_deref() == Some("InvalidSnapshot.InUse") => Outcome::Again(error),
                answer => Outcome::Done(answer),
            }
        },
        |error, pause| tracing::debug!("{error}: deleting it again in {pause:?}"),
    )
    .await
    .map_err(GaveUp::into_error)
}

async fn undo(cloud: &dyn RegionCloud, waits: &RegionWaits, step: UndoStep) -> Result<(), UndoError> {
    match step {
        UndoStep::TerminateInstance { id, fresh } => {
            terminate(cloud, &id, fresh).await?;
            // Then wait until EC2 says `terminated` (an instance this process just launched that EC2 does not
            // list yet is waited for, not taken as gone).
            waits.instance_terminated(&id, fresh).await?;
            Ok(())
        }
        UndoStep::DeleteSecurityGroup { id, fresh } => {
            poll_until(SECURITY_GROUP_RELEASE, &format!("security group {id} to be released"), || async {
                match with_credentials(|| cloud.delete_security_group(&id)).await {
                    Ok(()) => Ok(Poll::Ready(())),
                    Err(error) if error.code.as_deref() == Some("DependencyViolation") => Ok(Poll::NotYet),
                    Err(error) if fresh.is_some_and(|created| created.lags(&error)) => Ok(Poll::NotYet),
                    Err(error) if error.kind == ErrorKind::NotFound => Ok(Poll::Ready(())),
                    Err(error) => Err(error),
                }
            })
            .await?;
            Ok(())
        }
        UndoStep::DeleteKeyPair { name } => Ok(gone_is_fine(with_credentials(|| cloud.delete_key_pair(&name)).await)?),
        UndoStep::TerminateSession { id } => Ok(with_credentials(|| cloud.terminate_session(&id)).await?),
        UndoStep::EndSessionsTo { instance } => {
            for id in with_credentials(|| cloud.active_sessions(&instance)).await? {
                with_credentials(|| cloud.terminate_session(&id)).await?;
            }
            Ok(())
        }
        UndoStep::RevokeLaunchPermission { image, account } => {
            let from = LaunchPermissions { accounts: vec![account], ..LaunchPermissions::default() };
            Ok(gone_is_fine(with_credentials(|| cloud.unshare_image(&image, &from)).await)?)
        }
        UndoStep::RevokeCreateVolumePermission { snapshot, account } => {
            let accounts = [account];
            Ok(gone_is_fine(with_credentials(|| cloud.unshare_snapshot(&snapshot, &accounts)).await)?)
        }
        UndoStep::RevokeKeyGrant { key, grant, .. } => {
            Ok(gone_is_fine(with_credentials(|| cloud.revoke_key_grant(&key, &grant)).await)?)
        }
        UndoStep::RevokeRequestedKeyGrant { key, name, account } => {
            let grantee = crate::steps::distribute::grantee_principal(&account);
            // A key that is gone holds no grant.
            let grant = match with_credentials(|| cloud.grant_key_use(&key, &grantee, &name)).await {
                Err(error) if error.kind == ErrorKind::NotFound => return Ok(()),
                grant => grant?,
            };
            Ok(gone_is_fine(with_credentials(|| cloud.revoke_key_grant(&key, &grant)).await)?)
        }
        UndoStep::DiscardImage { id, snapshots, fresh } => {
            let fresh: Vec<Created> = fresh.into_iter().collect();
            gone_is_fine(once_known(&fresh, || with_credentials(|| cloud.deregister_image(&id))).await)?;
            for snapshot in &snapshots {
                gone_is_fine(delete_released_snapshot(cloud, snapshot).await)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::retry::CREDENTIALS_PATIENCE;
    use crate::cloud::Action;
    use std::cell::Cell;
    use tokio::time::Instant;

    fn refusal(code: &str) -> CloudError {
        CloudError {
            action: Action::DeleteKeyPair,
            region: Region::new("us-west-2"),
            kind: ErrorKind::of_code(code),
            code: Some(code.into()),
            message: "refused".into(),
        }
    }

    fn build_stack(instance: &str, key_pair: &str, group: &str) -> Vec<UndoStep> {
        vec![
            UndoStep::DeleteKeyPair { name: KeyPairName::new(key_pair) },
            UndoStep::DeleteSecurityGroup { id: SecurityGroupId::new(group), fresh: None },
            UndoStep::TerminateInstance { id: InstanceId::new(instance), fresh: None },
            UndoStep::EndSessionsTo { instance: InstanceId::new(instance) },
        ]
    }

    #[test]
    fn keep_takes_the_last_instance_and_what_it_was_launched_with_and_leaves_the_rest() {
        let mut stack = CleanupStack::default();
        for step in build_stack("i-build", "k-build", "sg-build") {
            stack.push(step);
        }
        stack.push(UndoStep::DiscardImage { id: ImageId::new("ami-1"), snapshots: Vec::new(), fresh: None });
        for step in build_stack("i-test", "k-test", "sg-test") {
            stack.push(step);
        }
        stack.push(UndoStep::TerminateSession { id: SessionId::new("s-1") });

        let kept = stack.keep().expect("an instance is on the stack");
        assert_eq!(
            kept,
            KeptSteps {
                instance: Some(InstanceId::new("i-test")),
                key_pair: Some(KeyPairName::new("k-test")),
                security_group: Some(SecurityGroupId::new("sg-test")),
            }
        );
        assert_eq!(
            stack.pending(),
            [
                "session s-1",
                "Session Manager sessions to instance i-test",
                "failed image ami-1",
                "Session Manager sessions to instance i-build",
                "instance i-build",
                "security group sg-build",
                "key pair k-build",
            ],
            "sessions, the failed image and the other instance still unwind"
        );
        let region = Region::new("us-west-2");
        let names: Vec<String> = kept.resources(&region).iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            ["instance i-test in us-west-2", "security group sg-test in us-west-2", "key pair k-test in us-west-2"]
        );

        let again = stack.keep().expect("the build instance is still on it");
        assert_eq!(again.instance, Some(InstanceId::new("i-build")));
        assert_eq!(
            stack.pending(),
            [
                "session s-1",
                "Session Manager sessions to instance i-test",
                "failed image ami-1",
                "Session Manager sessions to instance i-build"
            ]
        );
    }

    #[test]
    fn keep_with_no_instance_on_the_stack_changes_nothing() {
        let mut stack = CleanupStack::default();
        stack.push(UndoStep::DeleteKeyPair { name: KeyPairName::new("k") });
        stack.push(UndoStep::DeleteSecurityGroup { id: SecurityGroupId::new("sg-1"), fresh: None });
        assert_eq!(stack.keep(), None);
        assert_eq!(stack.pending(), ["security group sg-1", "key pair k"]);
        assert_eq!(CleanupStack::default().keep(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn credentials_are_retried_until_the_patience_ends_with_a_last_try_there() {
        let started = Instant::now();
        let tried_at = std::cell::RefCell::new(Vec::new());
        let answer: CloudResult<()> = with_credentials(|| async {
            tried_at.borrow_mut().push(started.elapsed().as_secs());
            Err(refusal("ExpiredToken"))
        })
        .await;
        assert_eq!(answer.unwrap_err().code.as_deref(), Some("ExpiredToken"));
        // 5 s doubling to a minute; the last pause shortened to end at the 3 minutes.
        assert_eq!(*tried_at.borrow(), [0, 5, 15, 35, 75, 135, 180]);
        assert_eq!(started.elapsed(), CREDENTIALS_PATIENCE);

        let tries = Cell::new(0);
        let answer: CloudResult<()> = with_credentials(|| async {
            tries.set(tries.get() + 1);
            Err(refusal("UnauthorizedOperation"))
        })
        .await;
        assert!(answer.is_err());
        assert_eq!(tries.get(), 1, "any other answer at once");
    }
}
