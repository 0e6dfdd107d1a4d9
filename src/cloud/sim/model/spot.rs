//! Spot instances in the simulated cloud: when a one-time spot instance is interrupted (`[sim] spot
//! interrupt_after` after it runs), how it ends (shutting-down, then terminated with the StateReason
//! `Server.SpotInstanceTermination`), that it cannot be stopped, and what CreateImage with reboot costs.
//!
//! From EC2's documentation:
//! - "Spot Instance interruptions" (EC2 User Guide): the interruption behavior of a one-time request is
//!   terminate; the instance goes `shutting-down`, then `terminated`. EC2 gives a two-minute warning through
//!   instance metadata (`spot/instance-action`) and EventBridge first: not modelled, the build does not read it.
//! - "State transition reasons" / `StateReason` (EC2 API Reference): `Server.SpotInstanceTermination`, "A Spot
//!   Instance was terminated due to an increase in the Spot price" (or capacity); its message is "Spot instance
//!   termination".
//! - "Stop a Spot Instance" (EC2 User Guide): only a spot instance of a persistent request (or a fleet with
//!   `maintain`) can be stopped; StopInstances on one of a one-time request answers `UnsupportedOperation`.
//! - CreateImage (EC2 API Reference), `NoReboot`: false by default: EC2 shuts the running instance down,
//!   snapshots its volumes and starts it again, so the image waits for that stop and boot.

use std::time::Duration;

use tokio::time::Instant;

use super::{refuse, Refusal};
use crate::cloud::{InstanceId, InstanceState};
use crate::config::{Market, SimSpot};

/// EC2's StateReason of an interrupted spot instance, code and message as DescribeInstances gives them.
pub const SPOT_TERMINATION_REASON: &str = "Server.SpotInstanceTermination: Spot instance termination";

/// A simulated instance's market, and when EC2 takes a spot instance back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpotLife {
    /// `shutting-down` from here.
    pub interrupted_at: Instant,
    /// `terminated` from here.
    pub terminated_at: Instant,
}

/// The instance's market as the model keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimMarket {
    OnDemand,
    /// A one-time spot instance, and its interruption if `[sim] spot.interrupt_after` says.
    Spot(Option<SpotLife>),
}

impl SimMarket {
    /// The market it was bought on.
    pub fn bought(&self) -> Market {
        match self {
            SimMarket::OnDemand => Market::OnDemand,
            SimMarket::Spot(_) => Market::Spot,
        }
    }

    /// What a launch of `market` running from `running_at` comes to under `[sim] spot`.
    pub fn launched(market: Market, running_at: Instant, spot: &SimSpot, terminate: Duration) -> Self {
        match market {
            Market::OnDemand => SimMarket::OnDemand,
            Market::Spot => SimMarket::Spot(spot.interrupt_after.map(|after| {
                let interrupted_at = running_at + after;
                SpotLife { interrupted_at, terminated_at: interrupted_at + terminate }
            })),
        }
    }

    /// The interruption, if it applies: not when the instance was terminated by its user before EC2 took it
    /// back (`user_terminated_at`: when that termination completes).
    fn interruption(&self, user_terminated_at: Option<Instant>) -> Option<SpotLife> {
        match self {
            SimMarket::Spot(Some(life)) if user_terminated_at.is_none_or(|at| at > life.terminated_at) => Some(*life),
            _ => None,
        }
    }

    /// The instance's state from its interruption on (`None`: not interrupted by `now`).
    pub fn interrupted_state(&self, now: Instant, user_terminated_at: Option<Instant>) -> Option<InstanceState> {
        let life = self.interruption(user_terminated_at)?;
        match now {
            now if now >= life.terminated_at => Some(InstanceState::Terminated),
            now if now >= life.interrupted_at => Some(InstanceState::ShuttingDown),
            _ => None,
        }
    }

    /// When EC2 takes it back, if it will.
    pub fn interrupted_at(&self, user_terminated_at: Option<Instant>) -> Option<Instant> {
        self.interruption(user_terminated_at).map(|life| life.interrupted_at)
    }

    /// StopInstances on it: a one-time spot instance is refused.
    pub fn stop(&self, id: &InstanceId) -> Result<(), Refusal> {
        match self {
            SimMarket::OnDemand => Ok(()),
            SimMarket::Spot(_) => refuse(
                "UnsupportedOperation",
                format!(
                    "You can't stop the Spot Instance '{id}' because it is associated with a one-time Spot Instance request. You can only stop Spot Instances associated with persistent Spot Instance requests."
                ),
            ),
        }
    }
}

/// How much longer CreateImage with reboot of a running instance takes than of a stopped one: EC2 stops the
/// instance (its shutdown) and starts it again before the image is made.
pub fn reboot_delay(stop: Duration, boot: Duration) -> Duration {
    stop + boot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spot(after: Option<Duration>) -> SimSpot {
        SimSpot { available: None, interrupt_after: after }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spot_instance_is_interrupted_after_its_time_and_then_terminated() {
        let running = Instant::now();
        let market =
            SimMarket::launched(Market::Spot, running, &spot(Some(Duration::from_secs(300))), Duration::from_secs(30));
        assert_eq!(market.interrupted_state(running + Duration::from_secs(299), None), None);
        assert_eq!(
            market.interrupted_state(running + Duration::from_secs(300), None),
            Some(InstanceState::ShuttingDown)
        );
        assert_eq!(market.interrupted_state(running + Duration::from_secs(330), None), Some(InstanceState::Terminated));
    }

    #[tokio::test(start_paused = true)]
    async fn terminated_by_its_user_first_it_is_never_interrupted() {
        let running = Instant::now();
        let market =
            SimMarket::launched(Market::Spot, running, &spot(Some(Duration::from_secs(300))), Duration::from_secs(30));
        let user_terminated = Some(running + Duration::from_secs(100));
        assert_eq!(market.interrupted_state(running + Duration::from_secs(400), user_terminated), None);
        assert_eq!(market.interrupted_at(user_terminated), None);
    }

    #[tokio::test(start_paused = true)]
    async fn on_demand_and_uninterrupted_spot_instances_run_on_and_only_spot_cannot_stop() {
        let running = Instant::now();
        let on_demand =
            SimMarket::launched(Market::OnDemand, running, &spot(Some(Duration::from_secs(1))), Duration::ZERO);
        let spot_forever = SimMarket::launched(Market::Spot, running, &spot(None), Duration::ZERO);
        let later = running + Duration::from_secs(86_400);
        assert_eq!(on_demand.interrupted_state(later, None), None);
        assert_eq!(spot_forever.interrupted_state(later, None), None);
        let id = InstanceId::new("i-1");
        assert!(on_demand.stop(&id).is_ok());
        let refused = spot_forever.stop(&id).expect_err("a one-time spot instance cannot be stopped");
        assert_eq!(refused.code, "UnsupportedOperation");
    }
}
