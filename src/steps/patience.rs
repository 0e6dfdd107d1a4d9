//! Waiting out EC2's "not now": which answers are not failures but a lack of room, retried after a pause
//! measured in minutes instead of failing the job — capacity and quotas (`InsufficientInstanceCapacity`,
//! `Unsupported`, `VcpuLimitExceeded`, `InstanceLimitExceeded`, CopyImage's `ResourceLimitExceeded`, up to
//! `[limits] capacity_patience`: [`no_room`]), and CreateImage refused right after the instance stopped (up to
//! [`CREATE_IMAGE_PATIENCE`], as the Packer amazon plugin does: [`image_not_ready`]).
//!
//! The pauses and budgets are `cloud::retry`'s ([`Policy::capacity`], [`Policy::IMAGE_NOT_READY`]). A launch
//! first tries its other placements (subnets, zones) before it pauses: see [`Placements`].
//!
//! [`CREATE_IMAGE_PATIENCE`]: crate::cloud::retry::CREATE_IMAGE_PATIENCE
//! [`Policy::capacity`]: crate::cloud::retry::Policy::capacity
//! [`Policy::IMAGE_NOT_READY`]: crate::cloud::retry::Policy::IMAGE_NOT_READY

use crate::cloud::{CloudError, ErrorKind};

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

/// Where a launch may go, tried in turn when one answers with a capacity error before the launch pauses: the
/// subnets (in different zones) a build may use in its region. With one placement, a capacity answer is
/// only waited out.
#[derive(Clone, Debug)]
pub struct Placements<P> {
    options: Vec<P>,
    current: usize,
    /// Placements tried since the last pause.
    tried_this_round: usize,
}

impl<P> Placements<P> {
    pub fn new(options: Vec<P>) -> Self {
        assert!(!options.is_empty(), "a launch has somewhere to go");
        Placements { options, current: 0, tried_this_round: 1 }
    }

    pub fn current(&self) -> &P {
        &self.options[self.current]
    }

    /// After a capacity answer: moves to the next placement not tried since the last pause, if there is one.
    pub fn rotate(&mut self) -> bool {
        if self.tried_this_round >= self.options.len() {
            return false;
        }
        self.current = (self.current + 1) % self.options.len();
        self.tried_this_round += 1;
        true
    }

    /// After a pause: every placement may be tried again, starting with the current one.
    pub fn new_round(&mut self) {
        self.tried_this_round = 1;
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

    #[test]
    fn placements_are_each_tried_once_a_round() {
        let mut placements = Placements::new(vec!["a", "b", "c"]);
        assert_eq!(*placements.current(), "a");
        assert!(placements.rotate());
        assert!(placements.rotate());
        assert_eq!(*placements.current(), "c");
        assert!(!placements.rotate(), "every placement was tried: pause");
        placements.new_round();
        assert!(placements.rotate());
        assert_eq!(*placements.current(), "a");

        let mut single = Placements::new(vec!["only"]);
        assert!(!single.rotate());
    }
}
