//! A spot build's instance taken back by EC2: after a phase on a spot instance fails (its connection dropped,
//! a provisioner cut off, CreateImage refused), DescribeInstances says whether EC2 interrupted it (the
//! StateReason `Server.SpotInstanceTermination`, "Spot instance termination": EC2 User Guide, "Spot Instance
//! interruptions" and the API Reference's `StateReason`). Such a failure is not the build's: [`super::run`]
//! unwinds the attempt and makes the build once more on demand.
//!
//! EC2 also warns two minutes ahead through instance metadata (`spot/instance-action`) and EventBridge; the build
//! does not read the warning: the interruption is seen when it happens, and the attempt's work is lost either way.
//!
//! Layer: `steps` (part of [`super`], the build).

use std::time::Duration;

use crate::cloud::consistency::Created;
use crate::cloud::InstanceId;
use crate::config::Market;
use crate::outcome::{BuiltOn, SpotInterruption};

use crate::steps::cleanup::CleanupStack;

use super::{BuildContext, StepError, Stopped};

/// EC2's StateReason code of a spot instance it took back.
pub(super) const SPOT_TERMINATION: &str = "Server.SpotInstanceTermination";

/// A failed phase of an attempt on a spot instance EC2 took back.
pub(super) struct Interrupted {
    pub instance: InstanceId,
    /// What the attempt's failure said (the connection that dropped, the refused call).
    pub error: StepError,
    pub attempt: SpotInterruption,
}

/// `error`, unless the attempt ran on spot and EC2 took its instance back: then the attempt is
/// [`Stopped::SpotInterrupted`]. Only a spot instance is asked about.
pub(super) async fn or_failure(
    context: &BuildContext,
    instance: &InstanceId,
    launched: Created,
    built_on: &BuiltOn,
    error: StepError,
) -> Stopped {
    if built_on.market != Market::Spot {
        return Stopped::Failed(error);
    }
    match context.cloud.describe_instances(std::slice::from_ref(instance)).await {
        Ok(described) if described.iter().any(|status| taken_back(status.state_reason.as_deref())) => {
            let ran_for = launched.at.elapsed();
            let attempt = SpotInterruption { instance_type: built_on.instance_type.clone(), ran_for };
            Stopped::SpotInterrupted(Box::new(Interrupted { instance: instance.clone(), error, attempt }))
        }
        // Still running, or the describe failed: the phase's own failure stands.
        _ => Stopped::Failed(error),
    }
}

/// A failed bring-up (waiting for it to run, connecting) of a spot attempt: an interruption if EC2 took back the
/// instance the stack holds; else, or with no instance launched yet, `error`.
pub(super) async fn of_bring_up(context: &BuildContext, stack: &CleanupStack, error: StepError) -> Stopped {
    if context.flavor.market != Market::Spot {
        return Stopped::Failed(error);
    }
    let Some((instance, fresh)) = stack.last_instance() else { return Stopped::Failed(error) };
    let launched = fresh.unwrap_or_else(|| Created::now(crate::cloud::consistency::NewKind::Instance));
    let built_on = BuiltOn { market: Market::Spot, instance_type: context.flavor.instance_type.clone() };
    let instance = instance.clone();
    or_failure(context, &instance, launched, &built_on, error).await
}

/// Whether EC2 took back the spot instance of this attempt (asked only of a spot flavor: one DescribeInstances);
/// a describe that fails says no.
pub(super) async fn was_taken_back(context: &BuildContext, instance: &InstanceId) -> bool {
    if context.flavor.market != Market::Spot {
        return false;
    }
    match context.cloud.describe_instances(std::slice::from_ref(instance)).await {
        Ok(described) => described.iter().any(|status| taken_back(status.state_reason.as_deref())),
        Err(_) => false,
    }
}

/// Whether an instance's StateReason says EC2 took its spot capacity back.
fn taken_back(reason: Option<&str>) -> bool {
    reason.is_some_and(|reason| reason.split(':').next().map(str::trim) == Some(SPOT_TERMINATION))
}

/// How the attempt is told in the build's events.
pub(super) fn told(interrupted: &Interrupted) -> String {
    let ran = humantime::format_duration(Duration::from_secs(interrupted.attempt.ran_for.as_secs()));
    format!(
        "spot instance {} ({}) was taken back by EC2 after {ran} ({SPOT_TERMINATION}; the attempt failed at {}: {}): building it again on demand, once",
        interrupted.instance, interrupted.attempt.instance_type, interrupted.error.stage, interrupted.error.message
    )
}

#[cfg(test)]
mod tests {
    use super::taken_back;

    #[test]
    fn only_ec2_s_spot_termination_reason_counts_as_taken_back() {
        assert!(taken_back(Some("Server.SpotInstanceTermination: Spot instance termination")));
        assert!(taken_back(Some("Server.SpotInstanceTermination")));
        assert!(!taken_back(Some("Client.UserInitiatedShutdown: User initiated shutdown")));
        assert!(!taken_back(Some("Server.InsufficientInstanceCapacity: Insufficient capacity")));
        assert!(!taken_back(None));
    }
}
