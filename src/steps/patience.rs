//! Waiting out EC2's "not now": answers that are not failures but a lack of room, retried after a pause
//! measured in minutes instead of failing the job — capacity and quotas (`InsufficientInstanceCapacity`,
//! `Unsupported`, `VcpuLimitExceeded`, `InstanceLimitExceeded`, CopyImage's `ResourceLimitExceeded`, up to
//! `[limits] capacity_patience`), and CreateImage refused right after the instance stopped (up to
//! [`CREATE_IMAGE_PATIENCE`], as the Packer amazon plugin does).
//!
//! A [`Patience`] is one job's budget for one kind of answer: it says how long to pause before the next try,
//! or that the budget is spent. A launch first tries its other placements (subnets, zones) before it pauses:
//! see [`Placements`].

use std::time::Duration;

use tokio::time::Instant;

use crate::cloud::{CloudError, ErrorKind};

/// How long CreateImage may keep answering that the instance is not in a state to be imaged
/// (`IncorrectInstanceState`, `InvalidParameterValue … is not in state`) right after it reported `stopped`.
/// The Packer amazon plugin retries this for 15 minutes.
pub const CREATE_IMAGE_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// The first pause after a capacity answer, doubling up to [`CAPACITY_MAX_PAUSE`].
const CAPACITY_FIRST_PAUSE: Duration = Duration::from_secs(60);
const CAPACITY_MAX_PAUSE: Duration = Duration::from_secs(5 * 60);
/// CreateImage's not-ready answers clear in seconds to minutes.
const NOT_READY_FIRST_PAUSE: Duration = Duration::from_secs(5);
const NOT_READY_MAX_PAUSE: Duration = Duration::from_secs(30);

/// One job's budget for waiting out one kind of answer.
#[derive(Clone, Debug)]
pub struct Patience {
    deadline: Instant,
    next_pause: Duration,
    max_pause: Duration,
    /// Pauses taken so far.
    pub tries: u32,
}

impl Patience {
    /// For capacity and quota answers: pauses of 1, 2, 4, 5, 5, … minutes, for at most `limit` in all.
    pub fn capacity(limit: Duration) -> Self {
        Patience::new(limit, CAPACITY_FIRST_PAUSE, CAPACITY_MAX_PAUSE)
    }

    /// For CreateImage refused while the instance settles: pauses of 5 s doubling to 30 s, up to
    /// [`CREATE_IMAGE_PATIENCE`].
    pub fn image_not_ready() -> Self {
        Patience::new(CREATE_IMAGE_PATIENCE, NOT_READY_FIRST_PAUSE, NOT_READY_MAX_PAUSE)
    }

    fn new(limit: Duration, first_pause: Duration, max_pause: Duration) -> Self {
        Patience { deadline: Instant::now() + limit, next_pause: first_pause, max_pause, tries: 0 }
    }

    /// The pause before the next try, or `None` when the budget is spent (no pause ends past it).
    pub fn next_pause(&mut self) -> Option<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let pause = self.next_pause.min(left);
        self.next_pause = (self.next_pause * 2).min(self.max_pause);
        self.tries += 1;
        Some(pause)
    }
}

/// Whether CreateImage refused because the instance is not yet in a state to be imaged.
pub fn image_not_ready(error: &CloudError) -> bool {
    match error.code.as_deref() {
        Some("IncorrectInstanceState") => true,
        Some("InvalidParameterValue") => error.message.contains("not in state"),
        _ => false,
    }
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

    #[tokio::test(start_paused = true)]
    async fn capacity_pauses_grow_to_minutes_and_stop_at_the_limit() {
        let mut patience = Patience::capacity(Duration::from_secs(10 * 60));
        let mut pauses = Vec::new();
        while let Some(pause) = patience.next_pause() {
            pauses.push(pause.as_secs());
            tokio::time::sleep(pause).await;
        }
        // 1 + 2 + 4 minutes, then what is left of the 10.
        assert_eq!(pauses, [60, 120, 240, 180]);
        assert_eq!(patience.tries, 4);
    }

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
