//! The undo stack of a build: every temporary resource is pushed the moment it exists and undone in reverse
//! order on success, failure and interrupt alike. Each failed undo is reported, never hidden.

use std::time::Duration;

use crate::cloud::wait::{poll_until, Poll, PollPolicy, WaitError};
use crate::cloud::watch::{RegionWaits, WaitKind};
use crate::cloud::{CloudError, ErrorKind, InstanceId, KeyPairName, RegionCloud, SecurityGroupId};
use crate::config::Region;
use crate::steps::ledger::{Ledger, Resource, ResourceKind};

/// One thing to undo.
#[derive(Debug)]
pub enum UndoStep {
    /// Terminate the build instance and wait until it is gone (its security group can't go before it).
    TerminateInstance(InstanceId),
    DeleteSecurityGroup(SecurityGroupId),
    DeleteKeyPair(KeyPairName),
    /// The private key file and the SSH control sockets.
    RemoveLocalDir(tempfile::TempDir),
}

impl UndoStep {
    /// What the step removes, for messages.
    pub fn resource(&self) -> String {
        match self {
            UndoStep::TerminateInstance(id) => format!("instance {id}"),
            UndoStep::DeleteSecurityGroup(id) => format!("security group {id}"),
            UndoStep::DeleteKeyPair(name) => format!("key pair {name}"),
            UndoStep::RemoveLocalDir(dir) => format!("local directory {}", dir.path().display()),
        }
    }

    /// The journal's name for what the step removes (none for local files).
    pub fn journal_resource(&self, region: &Region) -> Option<Resource> {
        let (kind, id) = match self {
            UndoStep::TerminateInstance(id) => (ResourceKind::Instance, id.to_string()),
            UndoStep::DeleteSecurityGroup(id) => (ResourceKind::SecurityGroup, id.to_string()),
            UndoStep::DeleteKeyPair(name) => (ResourceKind::KeyPair, name.to_string()),
            UndoStep::RemoveLocalDir(_) => return None,
        };
        Some(Resource { region: region.clone(), kind, id })
    }

    /// The step that removes a temporary resource named in the journal or found by its tags.
    pub fn removing(resource: &Resource) -> UndoStep {
        match resource.kind {
            ResourceKind::Instance => UndoStep::TerminateInstance(InstanceId::new(&resource.id)),
            ResourceKind::SecurityGroup => UndoStep::DeleteSecurityGroup(SecurityGroupId::new(&resource.id)),
            ResourceKind::KeyPair => UndoStep::DeleteKeyPair(KeyPairName::new(&resource.id)),
        }
    }
}

/// A security group stays in use for a while after its instance terminates (its network interface detaches).
const SECURITY_GROUP_RELEASE: PollPolicy =
    PollPolicy::new(Duration::from_secs(5), Duration::from_secs(15), Duration::from_secs(5 * 60));

#[derive(Debug, Default)]
pub struct CleanupStack {
    steps: Vec<UndoStep>,
}

/// An undo step that failed: what may be left, and why.
#[derive(Debug)]
pub struct UndoFailure {
    pub resource: String,
    /// The journal's name for it (none for local files).
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

async fn undo(cloud: &dyn RegionCloud, waits: &RegionWaits, step: UndoStep) -> Result<(), UndoError> {
    match step {
        UndoStep::TerminateInstance(id) => {
            gone_is_fine(cloud.terminate_instance(&id).await)?;
            waits.instance(&id, WaitKind::InstanceTerminated).await?;
            Ok(())
        }
        UndoStep::DeleteSecurityGroup(id) => {
            poll_until(SECURITY_GROUP_RELEASE, &format!("security group {id} to be released"), || async {
                match gone_is_fine(cloud.delete_security_group(&id).await) {
                    Ok(()) => Ok(Poll::Ready(())),
                    Err(error) if error.code.as_deref() == Some("DependencyViolation") => Ok(Poll::NotYet),
                    Err(error) => Err(error),
                }
            })
            .await?;
            Ok(())
        }
        UndoStep::DeleteKeyPair(name) => Ok(gone_is_fine(cloud.delete_key_pair(&name).await)?),
        UndoStep::RemoveLocalDir(dir) => {
            let path = dir.path().display().to_string();
            dir.close().map_err(|error| UndoError { code: None, message: format!("cannot remove `{path}`: {error}") })
        }
    }
}
