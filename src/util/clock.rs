//! Time as a run sees it: Tokio's clock, which is the system's in a real run and a paused, virtual one under
//! `--cloud sim` and in tests. Request buckets, waits and the manifest's timestamps read it, so a simulated
//! night is consistent from the first call to the last line of the manifest.

use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Tokio's clock for governor: instants are durations since the clock was made.
#[derive(Clone, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        TokioClock { origin: tokio::time::Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl governor::clock::Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// The wall-clock time of a run, advanced by Tokio's clock: real time in a real run, virtual in the sim.
#[derive(Clone, Copy, Debug)]
pub struct RunClock {
    started_at: DateTime<Utc>,
    started: tokio::time::Instant,
}

impl RunClock {
    pub fn start() -> Self {
        RunClock::starting_at(Utc::now())
    }

    /// A clock whose now is `at` (a simulated account's, which continues from its saved state).
    pub fn starting_at(at: DateTime<Utc>) -> Self {
        RunClock { started_at: at, started: tokio::time::Instant::now() }
    }

    /// Starts the clock of the run this process makes: also the one its lines are stamped with ([`line_time`]).
    pub fn start_run() -> Self {
        RunClock::start().stamping_lines()
    }

    /// This clock, made the one this process's lines are stamped with ([`line_time`]).
    pub fn stamping_lines(self) -> Self {
        *LINE_CLOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(self);
        self
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.started_at + chrono::TimeDelta::from_std(self.elapsed()).unwrap_or_default()
    }

    /// `now()` as the manifest writes times: RFC 3339, whole seconds, `Z`.
    pub fn now_rfc3339(&self) -> String {
        self.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}

/// The clock of the run this process makes, once it has started: what a line printed outside the reporters (a
/// log line, a warning, what follows the summary) is stamped with, so that it reads the time the reporters'
/// lines do (virtual in the sim).
static LINE_CLOCK: std::sync::Mutex<Option<RunClock>> = std::sync::Mutex::new(None);

/// The time to stamp a line with now: the run's clock once a run has started, else the system's.
pub fn line_time() -> DateTime<Utc> {
    match *LINE_CLOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
        Some(clock) => clock.now(),
        None => Utc::now(),
    }
}

/// A token bucket (GCRA, from governor) on Tokio's clock: `burst` at once, refilled at `per_second`.
pub struct TokenBucket {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
    clock: TokioClock,
}

impl TokenBucket {
    pub fn new(burst: u32, per_second: f64) -> Self {
        let period = Duration::from_secs_f64(1.0 / per_second);
        let quota = Quota::with_period(period)
            .expect("validated: per_second is positive")
            .allow_burst(NonZeroU32::new(burst).expect("validated: burst is at least 1"));
        let clock = TokioClock::new();
        TokenBucket { limiter: RateLimiter::direct_with_clock(quota, clock.clone()), clock }
    }

    /// Takes a token now, or says how long until one is there.
    pub fn try_take(&self) -> Result<(), Duration> {
        use governor::clock::Clock;
        self.limiter.check().map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Waits for a token and takes it.
    pub async fn take(&self) {
        while let Err(wait) = self.try_take() {
            tokio::time::sleep(wait).await;
        }
    }
}
