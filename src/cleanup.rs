//! The undo stack of a build: every temporary resource is pushed the moment it exists and undone in reverse
//! order on success, failure and interrupt alike. Each failed undo is reported, never hidden.

use std::time::Duration;

use crate::cloud::{CloudError, ErrorKind, InstanceId, KeyPairName, RegionCloud, SecurityGroupId};
use crate::wait::{poll_until, Poll, PollPolicy, WaitError};
use crate::watch::{RegionWaits, WaitKind};

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

    /// Undoes every step, most recent first, continuing past failures; returns the failures.
    pub async fn unwind(mut self, cloud: &dyn RegionCloud, waits: &RegionWaits) -> Vec<UndoFailure> {
        let mut failures = Vec::new();
        while let Some(step) = self.steps.pop() {
            let resource = step.resource();
            if let Err(error) = undo(cloud, waits, step).await {
                failures.push(UndoFailure { resource, error });
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

async fn undo(cloud: &dyn RegionCloud, waits: &RegionWaits, step: UndoStep) -> Result<(), String> {
    match step {
        UndoStep::TerminateInstance(id) => {
            gone_is_fine(cloud.terminate_instance(&id).await).map_err(|error| error.to_string())?;
            waits.instance(&id, WaitKind::InstanceTerminated).await.map(drop).map_err(|error| error.to_string())
        }
        UndoStep::DeleteSecurityGroup(id) => {
            poll_until(SECURITY_GROUP_RELEASE, &format!("security group {id} to be released"), || async {
                match gone_is_fine(cloud.delete_security_group(&id).await) {
                    Ok(()) => Ok(Poll::Ready(())),
                    Err(error) if error.code.as_deref() == Some("DependencyViolation") => Ok(Poll::NotYet),
                    Err(error) => Err(error),
                }
            })
            .await
            .map_err(|error: WaitError| error.to_string())
        }
        UndoStep::DeleteKeyPair(name) => {
            gone_is_fine(cloud.delete_key_pair(&name).await).map_err(|error| error.to_string())
        }
        UndoStep::RemoveLocalDir(dir) => {
            let path = dir.path().display().to_string();
            dir.close().map_err(|error| format!("cannot remove `{path}`: {error}"))
        }
    }
}
