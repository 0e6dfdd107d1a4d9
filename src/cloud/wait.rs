//! Waiting for EC2 state: poll with exponential backoff up to a ceiling, give up at a deadline. On a cadence
//! (`with_cadence`), each check falls on a multiple of the current interval counted from a shared origin, so
//! waits that poll at the same interval check at the same instants (and share one batched describe). A wait
//! stops by [`retry`](super::retry)'s rule: no check later than the deadline, and the one made there is the last.

use std::future::Future;
use std::time::Duration;

use crate::cloud::retry::Deadline;
use crate::cloud::CloudError;

#[derive(Clone, Copy, Debug)]
pub struct PollPolicy {
    /// How long before the first check (zero: at once).
    pub first_check: Duration,
    /// After the first check, this, growing by `factor` up to `max_interval`.
    pub first_interval: Duration,
    pub max_interval: Duration,
    pub factor: f64,
    pub timeout: Duration,
    /// The origin of the shared cadence, if checks are aligned to one.
    pub cadence: Option<tokio::time::Instant>,
    /// On a cadence: once the wait has lasted long, the interval may double past `max_interval` up to
    /// 1/`stretch` of the time waited so far (a wait of 20 minutes is not ending within seconds), keeping the
    /// delay in noticing the end under about 1/`stretch` of the wait.
    pub stretch: u32,
    /// On a cadence: the step the first check (and a check skipped ahead to) is aligned to, so that waits
    /// that began within one step of each other share it.
    pub first_step: Duration,
}

impl PollPolicy {
    pub const fn new(first_interval: Duration, max_interval: Duration, timeout: Duration) -> Self {
        PollPolicy {
            first_check: Duration::ZERO,
            first_interval,
            max_interval,
            factor: 1.5,
            timeout,
            cadence: None,
            stretch: 0,
            first_step: FIRST_CHECK_STEP,
        }
    }

    /// The same policy, polling every `interval` without growing.
    pub const fn fixed(interval: Duration, timeout: Duration) -> Self {
        PollPolicy {
            first_check: Duration::ZERO,
            first_interval: interval,
            max_interval: interval,
            factor: 1.0,
            timeout,
            cadence: None,
            stretch: 0,
            first_step: FIRST_CHECK_STEP,
        }
    }

    /// The same policy, its checks aligned to multiples of the interval from `origin`, the interval doubling.
    pub fn with_cadence(self, origin: tokio::time::Instant) -> Self {
        PollPolicy { cadence: Some(origin), factor: 2.0, stretch: 30, ..self }
    }

    /// The longest interval allowed after waiting `waited`: `max_interval`, or on a cadence, past it by
    /// doublings up to `waited / stretch`.
    fn ceiling(&self, waited: Duration) -> Duration {
        let mut ceiling = self.max_interval;
        if self.cadence.is_some() && self.stretch > 0 {
            while ceiling * 2 <= waited / self.stretch {
                ceiling *= 2;
            }
        }
        ceiling
    }

    pub fn with_first_check(self, first_check: Duration) -> Self {
        PollPolicy { first_check, ..self }
    }

    /// The same policy, its first check (on a cadence) aligned to `first_step` instead of [`FIRST_CHECK_STEP`].
    pub fn with_first_step(self, first_step: Duration) -> Self {
        PollPolicy { first_step, ..self }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("gave up waiting for {what} after {}", humantime::format_duration(*after))]
    Timeout { what: String, after: Duration },
    #[error("{0}")]
    Cloud(#[from] CloudError),
    /// The awaited thing reached a state it will not leave.
    #[error("{0}")]
    Failed(String),
}

/// What one check found.
pub enum Poll<T> {
    Ready(T),
    NotYet,
    Failed(String),
}

/// Calls `check` until it is ready, fails, or the policy's timeout passes.
pub async fn poll_until<T, Check, Checked>(policy: PollPolicy, what: &str, check: Check) -> Result<T, WaitError>
where
    Check: FnMut() -> Checked,
    Checked: Future<Output = Result<Poll<T>, CloudError>>,
{
    poll_until_not_before(policy, what, || None, check).await
}

/// [`poll_until`], but no check comes before what `not_before` says at the time (asked after each check): a
/// wait that learns, while it polls, when its thing can be ready at the earliest skips the checks before that.
pub async fn poll_until_not_before<T, NotBefore, Check, Checked>(
    policy: PollPolicy,
    what: &str,
    not_before: NotBefore,
    mut check: Check,
) -> Result<T, WaitError>
where
    NotBefore: Fn() -> Option<tokio::time::Instant>,
    Check: FnMut() -> Checked,
    Checked: Future<Output = Result<Poll<T>, CloudError>>,
{
    let started = tokio::time::Instant::now();
    // The one stopping rule (`retry`): no check is put off past the deadline, and one that finds the thing not
    // ready at or after it is the last.
    let deadline = Deadline::after(policy.timeout);
    let mut interval = policy.first_interval;
    let first = match policy.cadence {
        // The first check on a finer step of the cadence: waits that began together share it, and none is
        // seen more than a moment late.
        Some(origin) => on_cadence(origin, started + policy.first_check, policy.first_step, false),
        None => started + policy.first_check,
    };
    tokio::time::sleep_until(deadline.clip(first)).await;
    loop {
        match check().await? {
            Poll::Ready(value) => return Ok(value),
            Poll::Failed(reason) => return Err(WaitError::Failed(reason)),
            Poll::NotYet => {}
        }
        if deadline.is_spent() {
            return Err(WaitError::Timeout { what: what.to_string(), after: policy.timeout });
        }
        let now = tokio::time::Instant::now();
        let mut next = match policy.cadence {
            Some(origin) => on_cadence(origin, now, interval, true),
            None => now + interval,
        };
        if let Some(earliest) = not_before().filter(|earliest| *earliest > next) {
            next = match policy.cadence {
                Some(origin) => on_cadence(origin, earliest, policy.first_step, false),
                None => earliest,
            };
            // Near the expected end: start again from the first interval.
            interval = policy.first_interval;
            tokio::time::sleep_until(deadline.clip(next)).await;
            continue;
        }
        tokio::time::sleep_until(deadline.clip(next)).await;
        interval = interval.mul_f64(policy.factor).min(policy.ceiling(started.elapsed()));
    }
}

/// The step a first check (and a check skipped ahead to) is aligned to on a cadence, unless the policy says
/// another ([`PollPolicy::with_first_step`]).
const FIRST_CHECK_STEP: Duration = Duration::from_millis(500);

/// The first instant `origin + k × step` at or after `at` (strictly after it, if `after`).
fn on_cadence(
    origin: tokio::time::Instant,
    at: tokio::time::Instant,
    step: Duration,
    after: bool,
) -> tokio::time::Instant {
    let step = step.as_nanos().max(1);
    let since = at.saturating_duration_since(origin).as_nanos();
    let steps = if after { since / step + 1 } else { since.div_ceil(step) };
    origin + Duration::from_nanos(u64::try_from(steps * step).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test(start_paused = true)]
    async fn backs_off_then_times_out() {
        let policy = PollPolicy::new(Duration::from_secs(2), Duration::from_secs(10), Duration::from_secs(60));
        let checks = Cell::new(0);
        let started = tokio::time::Instant::now();
        let result: Result<(), _> = poll_until(policy, "the thing", || async {
            checks.set(checks.get() + 1);
            Ok(Poll::NotYet)
        })
        .await;
        assert!(matches!(result, Err(WaitError::Timeout { .. })));
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        // 0, 2, 5, 9.5, 16.25, 26.25, 36.25, 46.25, 56.25, 60
        assert_eq!(checks.get(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_cadence_waits_started_apart_check_at_the_same_instants() {
        let origin = tokio::time::Instant::now();
        let policy = PollPolicy::new(Duration::from_millis(2500), Duration::from_secs(10), Duration::from_secs(60))
            .with_cadence(origin);
        let checks = std::sync::Mutex::new(Vec::new());
        let wait = |delay: u64| {
            let checks = &checks;
            async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let _: Result<(), _> = poll_until(policy.with_first_check(Duration::ZERO), "x", || async {
                    checks.lock().unwrap().push((delay, origin.elapsed().as_millis()));
                    Ok(if origin.elapsed() >= Duration::from_secs(40) { Poll::Ready(()) } else { Poll::NotYet })
                })
                .await;
            }
        };
        futures::join!(wait(300), wait(7100));
        let checks = checks.into_inner().unwrap();
        let at = |delay: u64| checks.iter().filter(|(d, _)| *d == delay).map(|(_, at)| *at).collect::<Vec<_>>();
        // The first check on the next 0.5 s step; then 2.5 s, 5, 10: each on a multiple of its interval.
        assert_eq!(at(300), [500, 2500, 5000, 10000, 20000, 30000, 40000]);
        assert_eq!(at(7100), [7500, 10000, 15000, 20000, 30000, 40000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_check_on_a_finer_step_then_intervals_doubling_onto_the_cadence() {
        let origin = tokio::time::Instant::now();
        let policy = PollPolicy::new(Duration::from_millis(625), Duration::from_secs(5), Duration::from_secs(60))
            .with_first_step(Duration::from_millis(125))
            .with_cadence(origin);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let checks = std::sync::Mutex::new(Vec::new());
        poll_until(policy, "x", || async {
            checks.lock().unwrap().push(origin.elapsed().as_millis());
            Ok(if origin.elapsed() >= Duration::from_secs(6) { Poll::Ready(()) } else { Poll::NotYet })
        })
        .await
        .unwrap();
        // The first check on the next 125 ms step, not the next 500 ms one; then 0.625 s, 1.25, 2.5, 5 (the
        // ceiling), each on a multiple of its interval.
        assert_eq!(checks.into_inner().unwrap(), [375, 625, 1250, 2500, 5000, 10000]);
    }

    #[tokio::test(start_paused = true)]
    async fn returns_when_ready_or_failed() {
        let policy = PollPolicy::new(Duration::from_secs(1), Duration::from_secs(1), Duration::from_secs(60));
        let checks = Cell::new(0);
        let value = poll_until(policy, "x", || async {
            checks.set(checks.get() + 1);
            Ok(if checks.get() == 3 { Poll::Ready(7) } else { Poll::NotYet })
        })
        .await
        .unwrap();
        assert_eq!(value, 7);
        let failed: Result<(), _> = poll_until(policy, "x", || async { Ok(Poll::Failed("broken".into())) }).await;
        assert!(matches!(failed, Err(WaitError::Failed(reason)) if reason == "broken"));
    }
}
