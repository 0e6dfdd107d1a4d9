//! Pacing for a shared account. EC2's request buckets are per account and region, shared with Terraform,
//! autoscaling and every other tool of the account ("Request throttling for the Amazon EC2 API"), so a client
//! that sends at exactly EC2's rates is still throttled whenever others are busy. [`AdaptiveRate`] slows one
//! request class of one region after a throttle and recovers along a cubic curve, as the AWS SDKs' adaptive
//! retry mode does (CUBIC): right after a throttle the rate is β × the rate that was throttled, it climbs
//! back to that rate along a concave curve, then beyond along a convex one, up to EC2's documented rate.
//! While it is below that, sends of the class are spaced at 1/rate (no bursts).
//!
//! The SDKs' constants (β = 0.7, scale C = 0.4 req/s³) return a 5 req/s class to its throttled rate in 1.5 s:
//! made for services with rates in the hundreds. EC2's classes run at 1 to 20 req/s, and a class the account's
//! other tools keep half-busy was throttled again every second or two with them (measured in the sim bench's
//! shared-account row: 92 throttles for fixed pacing's 304). Here, for EC2's rates: β = 0.5 (one throttle
//! brings a class under what half-busy neighbours leave), the lowered rate is held [`HOLD`] (others' load
//! does not vanish in a second), then the same curve stretched to [`RECOVERY`]: back at the throttled rate
//! 45 s after the throttle. Measured: 8 throttles for fixed pacing's 147 (`cargo bench --bench sim`).
//!
//! Not the SDK's own limiter: fleetbake turns the SDK's retries off (one retry policy, counted, for the
//! simulated cloud too), and the SDK's client rate limiter is not a public API.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The share of the throttled rate kept right after a throttle.
const BETA: f64 = 0.5;
/// How long the lowered rate is held before it climbs: the other tools' load does not vanish in a second.
const HOLD: f64 = 15.0;
/// How long the rate then takes to climb back to the rate that was throttled (CUBIC's K).
const RECOVERY: f64 = 30.0;
/// The lowest rate, as a share of EC2's: a class is never paced to a standstill.
const FLOOR: f64 = 0.05;

/// The adaptive send rate of one request class in one region.
#[derive(Debug)]
pub struct AdaptiveRate {
    /// EC2's documented rate for the class (per second): the most it ever allows.
    ceiling: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The rate when the last throttle came, and when it came.
    throttled_at: Option<(f64, Instant)>,
    /// The earliest the next paced send may go.
    next_send: Instant,
}

impl AdaptiveRate {
    pub fn new(ceiling: f64) -> Self {
        AdaptiveRate { ceiling, state: Mutex::new(State { throttled_at: None, next_send: Instant::now() }) }
    }

    /// The rate allowed at `now`, per second.
    pub fn rate(&self, now: Instant) -> f64 {
        self.state.lock().expect("not poisoned").rate(now, self.ceiling)
    }

    /// Waits for the class's next send slot while throttles keep the rate below EC2's; at once otherwise.
    pub async fn pace(&self) {
        let send_at = {
            let mut state = self.state.lock().expect("not poisoned");
            let now = Instant::now();
            let rate = state.rate(now, self.ceiling);
            if rate >= self.ceiling {
                return;
            }
            let send_at = state.next_send.max(now);
            state.next_send = send_at + Duration::from_secs_f64(1.0 / rate);
            send_at
        };
        tokio::time::sleep_until(send_at).await;
    }

    /// A throttled answer: the rate drops to β × what it was.
    pub fn throttled(&self) {
        let mut state = self.state.lock().expect("not poisoned");
        let now = Instant::now();
        let rate = state.rate(now, self.ceiling);
        state.throttled_at = Some((rate, now));
    }
}

impl State {
    fn rate(&self, now: Instant, ceiling: f64) -> f64 {
        let Some((last_max, at)) = self.throttled_at else {
            return ceiling;
        };
        let since = (now.saturating_duration_since(at).as_secs_f64() - HOLD).max(0.0);
        // W + C·(t − K)³ with C chosen so that the curve starts at β·W: C = W·(1 − β) / K³.
        let scale = last_max * (1.0 - BETA) / RECOVERY.powi(3);
        (scale * (since - RECOVERY).powi(3) + last_max).clamp(ceiling * FLOOR, ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_throttle_slows_the_class_and_the_rate_recovers_along_a_cubic() {
        let rate = AdaptiveRate::new(5.0);
        assert_eq!(rate.rate(Instant::now()), 5.0);
        rate.throttled();
        let start = Instant::now();
        let at = |seconds: u64| rate.rate(start + Duration::from_secs(seconds));
        assert!((at(0) - 2.5).abs() < 1e-9, "β × 5");
        assert!((at(15) - 2.5).abs() < 1e-9, "held for 15 s");
        // Then concave, flat near the throttled rate 45 s after the throttle.
        assert!(at(20) > 3.0 && at(20) < at(30) && at(30) < at(44), "{} {} {}", at(20), at(30), at(44));
        assert!((at(45) - 5.0).abs() < 1e-9);

        // Throttled again and again, it settles lower; never below the floor.
        for _ in 0..20 {
            rate.throttled();
        }
        assert!((rate.rate(Instant::now()) - 0.25).abs() < 1e-9, "5 % of 5");
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_ceiling_sends_are_spaced_at_one_over_the_rate() {
        let rate = AdaptiveRate::new(2.0);
        let started = Instant::now();
        for _ in 0..3 {
            rate.pace().await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "not throttled: no pacing");
        rate.throttled();
        let throttled = Instant::now();
        rate.pace().await;
        rate.pace().await;
        rate.pace().await;
        // 1 per second after the throttle: the third send waits 2 s.
        assert_eq!(throttled.elapsed(), Duration::from_secs(2));
    }
}
