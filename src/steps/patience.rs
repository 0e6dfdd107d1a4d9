//! Waiting out EC2's "not now": which answers are not failures but a lack of room, retried after a pause
//! measured in minutes instead of failing the job — capacity and quotas (`InsufficientInstanceCapacity`,
//! `Unsupported`, `VcpuLimitExceeded`, `InstanceLimitExceeded`, CopyImage's `ResourceLimitExceeded`, up to
//! `[limits] capacity_patience`: [`no_room`]), and CreateImage refused right after the instance stopped (up to
//! [`CREATE_IMAGE_PATIENCE`], as the Packer amazon plugin does: [`image_not_ready`]).
//!
//! The pauses and budgets are `cloud::retry`'s ([`Policy::capacity`], [`Policy::IMAGE_NOT_READY`]). A launch
//! first tries its other instance types, placements (subnets, zones) and, from spot, on demand before it pauses:
//! see [`LaunchOrder`]. Spot's own capacity answers (`InsufficientCapacity`, `UnfulfillableCapacity`,
//! `MaxSpotInstanceCountExceeded`, `SpotMaxPriceTooLow`) are capacity answers too.
//!
//! [`CREATE_IMAGE_PATIENCE`]: crate::cloud::retry::CREATE_IMAGE_PATIENCE
//! [`Policy::capacity`]: crate::cloud::retry::Policy::capacity
//! [`Policy::IMAGE_NOT_READY`]: crate::cloud::retry::Policy::IMAGE_NOT_READY

use crate::cloud::{CloudError, ErrorKind};
use crate::config::{Market, SpotFallback};

/// Whether CreateImage refused because the instance is not yet in a state to be imaged.
pub fn image_not_ready(error: &CloudError) -> bool {
    match error.code.as_deref() {
        Some("IncorrectInstanceState") => true,
        Some("InvalidParameterValue") => error.message.contains("not in state"),
        _ => false,
    }
}

/// Whether a CopyImage into another account was refused about the source image's KMS key: the account may
/// not use it yet (a new grant is eventually consistent, [`Policy::NEW_KMS_GRANT`]). EC2's words vary ("Given
/// key ID is not accessible", a `KMS.*` code, a message naming KMS), so: a refusal that names KMS or a key not
/// accessible, but not `InvalidKMSKey.*`, EC2's code about the key the copy names (the account's own).
///
/// [`Policy::NEW_KMS_GRANT`]: crate::cloud::retry::Policy::NEW_KMS_GRANT
pub fn key_grant_not_usable_yet(error: &CloudError) -> bool {
    let code = error.code.as_deref().unwrap_or_default();
    if error.kind != ErrorKind::Permanent || code.starts_with("InvalidKMSKey") {
        return false;
    }
    let message = error.message.to_ascii_lowercase();
    code.starts_with("KMS.") || message.contains("kms") || message.contains("key id is not accessible")
}

/// Whether EC2 said there is no room for it now.
pub fn no_room(error: &CloudError) -> bool {
    error.kind == ErrorKind::Capacity
}

/// One try of a launch: the market, which of the flavor's `instance_types` (an index), and which of its
/// placements (subnets in different zones; an index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchTry {
    pub market: Market,
    pub instance_type: usize,
    pub placement: usize,
}

/// What a launch does after a capacity answer to its current try ([`LaunchOrder::no_room`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextTry {
    /// The next instance type, in the same market and placement: at once.
    NextType(LaunchTry),
    /// Every type was tried in this placement: the next placement, from the first type, at once.
    NextPlacement(LaunchTry),
    /// No spot capacity for any type in any placement (`spot_fallback = "on-demand"`): on demand, from the
    /// first type and placement, at once.
    OnDemand(LaunchTry),
    /// Every try of the order answered no: a pause (`[limits] capacity_patience` bounds them), then the whole
    /// order again from this, its first try.
    Pause(LaunchTry),
}

impl NextTry {
    /// The try it moves to.
    pub fn next(self) -> LaunchTry {
        match self {
            NextTry::NextType(next) | NextTry::NextPlacement(next) | NextTry::OnDemand(next) | NextTry::Pause(next) => {
                next
            }
        }
    }
}

/// The order a launch tries its way onto an instance in, a pure state machine: the flavor's market first, each
/// instance type in order in a placement before the next placement; for spot with `spot_fallback = "on-demand"`
/// (the default), then on demand the same way; only then a pause, after which the whole order starts again.
/// On demand with one type and one placement, a capacity answer is only waited out.
#[derive(Clone, Debug)]
pub struct LaunchOrder {
    market: Market,
    fallback: SpotFallback,
    instance_types: usize,
    placements: usize,
    current: LaunchTry,
}

impl LaunchOrder {
    pub fn new(market: Market, fallback: SpotFallback, instance_types: usize, placements: usize) -> Self {
        assert!(instance_types > 0 && placements > 0, "a launch has a type and somewhere to go");
        let current = LaunchTry { market, instance_type: 0, placement: 0 };
        LaunchOrder { market, fallback, instance_types, placements, current }
    }

    pub fn current(&self) -> LaunchTry {
        self.current
    }

    /// After a capacity answer to the current try: the next try, and how it was reached.
    pub fn no_room(&mut self) -> NextTry {
        let tried = self.current;
        let next = if tried.instance_type + 1 < self.instance_types {
            NextTry::NextType(LaunchTry { instance_type: tried.instance_type + 1, ..tried })
        } else if tried.placement + 1 < self.placements {
            NextTry::NextPlacement(LaunchTry { instance_type: 0, placement: tried.placement + 1, ..tried })
        } else if tried.market == Market::Spot && self.fallback == SpotFallback::OnDemand {
            NextTry::OnDemand(LaunchTry { market: Market::OnDemand, instance_type: 0, placement: 0 })
        } else {
            NextTry::Pause(LaunchTry { market: self.market, instance_type: 0, placement: 0 })
        };
        self.current = next.next();
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_image_refused_for_the_instance_state_is_told_from_other_invalid_parameters() {
        let refusal = |code: &str, message: &str| CloudError {
            action: crate::cloud::Action::CreateImage,
            region: crate::config::Region::new("us-west-2"),
            kind: ErrorKind::of_code(code),
            code: Some(code.into()),
            message: message.into(),
        };
        assert!(image_not_ready(&refusal("IncorrectInstanceState", "The instance is not stopped")));
        let not_in_state = "Instance 'i-0abc' is not in state 'stopped' or 'running'";
        assert!(image_not_ready(&refusal("InvalidParameterValue", not_in_state)));
        assert!(!image_not_ready(&refusal("InvalidParameterValue", "Invalid name")));
        assert!(no_room(&refusal("InsufficientInstanceCapacity", "")) && no_room(&refusal("VcpuLimitExceeded", "")));
        assert!(!no_room(&refusal("UnauthorizedOperation", "")));
        let key_refused = [
            ("InvalidRequest", "The KMS key arn:aws:kms:us-west-2:1:key/k is not accessible to account 2"),
            ("InvalidRequest", "Given key ID is not accessible"),
            ("KMS.NotFoundException", "Key not found"),
        ];
        for (code, message) in key_refused {
            assert!(key_grant_not_usable_yet(&refusal(code, message)), "{code}: {message}");
        }
        let other = [
            ("InvalidKMSKey.InvalidState", "The KMS key provided is in an incorrect state"),
            ("InvalidRequest", "Snapshots encrypted with the AWS Managed CMK can't be shared"),
            ("RequestLimitExceeded", "KMS"),
        ];
        for (code, message) in other {
            assert!(!key_grant_not_usable_yet(&refusal(code, message)), "{code}: {message}");
        }
    }

    /// The tries a launch makes until its first pause, each with how it was reached, from the order's start.
    fn round(order: &mut LaunchOrder) -> Vec<NextTry> {
        let mut moves = Vec::new();
        loop {
            let next = order.no_room();
            moves.push(next);
            if matches!(next, NextTry::Pause(_)) {
                return moves;
            }
        }
    }

    fn at(market: Market, instance_type: usize, placement: usize) -> LaunchTry {
        LaunchTry { market, instance_type, placement }
    }

    #[test]
    fn a_spot_launch_tries_each_type_then_each_placement_then_on_demand_then_pauses() {
        use Market::{OnDemand, Spot};
        let mut order = LaunchOrder::new(Spot, SpotFallback::OnDemand, 2, 2);
        assert_eq!(order.current(), at(Spot, 0, 0));
        let expected = [
            NextTry::NextType(at(Spot, 1, 0)),
            NextTry::NextPlacement(at(Spot, 0, 1)),
            NextTry::NextType(at(Spot, 1, 1)),
            NextTry::OnDemand(at(OnDemand, 0, 0)),
            NextTry::NextType(at(OnDemand, 1, 0)),
            NextTry::NextPlacement(at(OnDemand, 0, 1)),
            NextTry::NextType(at(OnDemand, 1, 1)),
            NextTry::Pause(at(Spot, 0, 0)),
        ];
        assert_eq!(round(&mut order), expected);
        assert_eq!(order.current(), at(Spot, 0, 0), "after the pause, the whole order again, spot first");
        assert_eq!(round(&mut order), expected);
    }

    #[test]
    fn a_spot_launch_without_fallback_never_tries_on_demand() {
        let mut order = LaunchOrder::new(Market::Spot, SpotFallback::Fail, 2, 1);
        let moves = round(&mut order);
        assert_eq!(moves, [NextTry::NextType(at(Market::Spot, 1, 0)), NextTry::Pause(at(Market::Spot, 0, 0))]);
        assert!(moves.iter().all(|next| next.next().market == Market::Spot));
    }

    #[test]
    fn an_on_demand_launch_moves_through_its_types_and_placements_and_ignores_the_spot_fallback() {
        use Market::OnDemand;
        let mut order = LaunchOrder::new(OnDemand, SpotFallback::OnDemand, 2, 3);
        assert_eq!(
            round(&mut order),
            [
                NextTry::NextType(at(OnDemand, 1, 0)),
                NextTry::NextPlacement(at(OnDemand, 0, 1)),
                NextTry::NextType(at(OnDemand, 1, 1)),
                NextTry::NextPlacement(at(OnDemand, 0, 2)),
                NextTry::NextType(at(OnDemand, 1, 2)),
                NextTry::Pause(at(OnDemand, 0, 0)),
            ]
        );
        let mut single = LaunchOrder::new(OnDemand, SpotFallback::OnDemand, 1, 1);
        assert_eq!(round(&mut single), [NextTry::Pause(at(OnDemand, 0, 0))], "one way in: only waited out");
    }
}
