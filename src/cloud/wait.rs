//! Waiting for EC2 state: poll with exponential backoff up to a ceiling, give up at a deadline.

use std::future::Future;
use std::time::Duration;

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
}

impl PollPolicy {
    pub const fn new(first_interval: Duration, max_interval: Duration, timeout: Duration) -> Self {
        PollPolicy { first_check: Duration::ZERO, first_interval, max_interval, factor: 1.5, timeout }
    }

    /// The same policy, polling every `interval` without growing.
    pub const fn fixed(interval: Duration, timeout: Duration) -> Self {
        PollPolicy {
            first_check: Duration::ZERO,
            first_interval: interval,
            max_interval: interval,
            factor: 1.0,
            timeout,
        }
    }

    pub fn with_first_check(self, first_check: Duration) -> Self {
        PollPolicy { first_check, ..self }
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
pub async fn poll_until<T, Check, Checked>(policy: PollPolicy, what: &str, mut check: Check) -> Result<T, WaitError>
where
    Check: FnMut() -> Checked,
    Checked: Future<Output = Result<Poll<T>, CloudError>>,
{
    let deadline = tokio::time::Instant::now() + policy.timeout;
    let mut interval = policy.first_interval;
    tokio::time::sleep(policy.first_check.min(policy.timeout)).await;
    loop {
        match check().await? {
            Poll::Ready(value) => return Ok(value),
            Poll::Failed(reason) => return Err(WaitError::Failed(reason)),
            Poll::NotYet => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(WaitError::Timeout { what: what.to_string(), after: policy.timeout });
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = interval.mul_f64(policy.factor).min(policy.max_interval);
    }
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
