//! Trying again: every loop in fleetbake that pauses after an answer and makes the call again (capacity and
//! quota answers, CreateImage refused while the instance settles, credentials that failed during cleanup,
//! EC2's lag about something just created, a repeated key pair, SSH not up yet) is a [`Policy`] run by
//! [`retry`] or [`retry_cancellable`], and so is the request limiter's retry of every throttled or transient
//! AWS answer ([`Policy::THROTTLED`], in [`super::limiter`]). The waits' polls ([`super::wait`]) keep their own
//! cadence but stop by the same [`Deadline`].
//!
//! A policy is a [`Backoff`] (the pauses: a first one doubling up to a cap, or a fixed one; jittered or not)
//! and a budget (how long, from the start or from a given instant, the tries may go on, and at most how many
//! retries). The one stopping rule: **no pause ends past the deadline — the last is shortened to end at it —
//! and a try that fails at or after the deadline, or after the last retry allowed, is the last.** So a budget
//! is spent exactly at its deadline, with one try made there.
//!
//! Cancellation: [`retry_cancellable`] races each pause against a cancellation token and starts no further try
//! once it is cancelled; a try itself is never raced (a call that creates something must be heard to its end).
//!
//! Layer: `cloud`, below everything that retries (`remote`, `steps`); it imports only `consistency`'s window.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::consistency::CONSISTENCY_WINDOW;

/// How long CreateImage may keep answering that the instance is not in a state to be imaged
/// (`IncorrectInstanceState`, `InvalidParameterValue … is not in state`) right after it reported `stopped`.
/// The Packer amazon plugin retries this for 15 minutes.
pub const CREATE_IMAGE_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// How long cleanup retries a call its credentials fail (expired, or a refresh that failed): long enough for
/// the provider's next refresh, short enough that a run whose credentials are gone for good ends.
pub const CREDENTIALS_PATIENCE: Duration = Duration::from_secs(3 * 60);

/// How long a new KMS grant may take to be usable everywhere: "up to five minutes" (KMS Developer Guide,
/// "Grants in AWS KMS", eventual consistency). A grant token makes one usable at once, but CopyImage takes none.
pub const KMS_GRANT_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The pauses between tries: the first, then each twice the one before up to a cap (or always the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The pause after the first failed try (after the immediate retry, if there is one).
    pub first: Duration,
    /// No pause is longer.
    pub max: Duration,
    /// Whether the first retry comes at once, before any pause.
    pub immediate_first: bool,
    /// Whether each pause is lengthened by a random part of itself (up to double), so that many callers
    /// refused at once do not come back at once.
    pub jitter: bool,
}

impl Backoff {
    /// `first`, `2 × first`, `4 × first`, … up to `max`.
    pub const fn doubling(first: Duration, max: Duration) -> Self {
        Backoff { first, max, immediate_first: false, jitter: false }
    }

    /// `pause` every time.
    pub const fn fixed(pause: Duration) -> Self {
        Backoff { first: pause, max: pause, immediate_first: false, jitter: false }
    }

    /// The same pauses, each lengthened by a random fraction of itself.
    pub const fn jittered(self) -> Self {
        Backoff { jitter: true, ..self }
    }

    /// The same pauses, after a first retry made at once.
    pub const fn after_an_immediate_retry(self) -> Self {
        Backoff { immediate_first: true, ..self }
    }

    /// The pause after `pause`.
    fn after(&self, pause: Duration) -> Duration {
        if pause.is_zero() {
            self.first
        } else {
            (pause * 2).min(self.max)
        }
    }

    /// The first pause.
    fn first_pause(&self) -> Duration {
        if self.immediate_first {
            Duration::ZERO
        } else {
            self.first
        }
    }
}

/// When tries stop, and the one stopping rule: a pause never ends past it, and a try at or after it is the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(Instant);

impl Deadline {
    /// `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Deadline(Instant::now() + budget)
    }

    pub fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    pub fn instant(&self) -> Instant {
        self.0
    }

    /// Whether the budget is spent: a try that failed now is the last.
    pub fn is_spent(&self) -> bool {
        Instant::now() >= self.0
    }

    /// When a pause meant to end at `wake` ends: then, or at the deadline if that comes first.
    pub fn clip(&self, wake: Instant) -> Instant {
        wake.min(self.0)
    }
}

/// A named way of trying again: its pauses and its budget. Each use has its constructor or constant here, so
/// every retry's timings are in one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub backoff: Backoff,
    /// How long the tries may go on, from [`Policy::start`] (or the instant given to [`Policy::start_from`]).
    pub budget: Duration,
    /// At most this many retries (pauses), if the budget in time is not spent first.
    pub retries: Option<u32>,
}

impl Policy {
    /// Capacity and quota answers (a launch's, a CopyImage's): pauses of 1, 2, 4, 5, 5, … minutes, for at most
    /// `[limits] capacity_patience`.
    pub const fn capacity(capacity_patience: Duration) -> Self {
        Policy {
            backoff: Backoff::doubling(Duration::from_secs(60), Duration::from_secs(5 * 60)),
            budget: capacity_patience,
            retries: None,
        }
    }

    /// CreateImage refused while the instance settles: pauses of 5 s doubling to 30 s, up to
    /// [`CREATE_IMAGE_PATIENCE`].
    pub const IMAGE_NOT_READY: Policy = Policy {
        backoff: Backoff::doubling(Duration::from_secs(5), Duration::from_secs(30)),
        budget: CREATE_IMAGE_PATIENCE,
        retries: None,
    };

    /// A cleanup call its credentials fail: pauses of 5 s doubling to a minute, up to [`CREDENTIALS_PATIENCE`].
    pub const CREDENTIALS: Policy = Policy {
        backoff: Backoff::doubling(Duration::from_secs(5), Duration::from_secs(60)),
        budget: CREDENTIALS_PATIENCE,
        retries: None,
    };

    /// EC2's lag about something just created (a NotFound about it, a describe that does not list it yet, a
    /// terminate answered NotFound while it is still listed): pauses of 1 s doubling to 15 s, for the
    /// consistency window — from the creation, where it is known ([`Policy::start_from`]).
    pub const NEW_RESOURCE_LAG: Policy = Policy {
        backoff: Backoff::doubling(Duration::from_secs(1), Duration::from_secs(15)),
        budget: CONSISTENCY_WINDOW,
        retries: None,
    };

    /// A key pair that already exists, deleted and made again: at once, then after pauses of 1 s doubling to
    /// 15 s (the delete may not have reached everywhere), for the consistency window.
    pub const REPEATED_KEY_PAIR: Policy = Policy {
        backoff: Backoff::doubling(Duration::from_secs(1), Duration::from_secs(15)).after_an_immediate_retry(),
        budget: CONSISTENCY_WINDOW,
        retries: None,
    };

    /// A deregistered image's snapshot still in use (`InvalidSnapshot.InUse`: EC2 counts the image for a while
    /// after DeregisterImage answers): pauses of 2 s doubling to 30 s, for 10 minutes.
    pub const SNAPSHOT_IN_USE: Policy = Policy {
        backoff: Backoff::doubling(Duration::from_secs(2), Duration::from_secs(30)),
        budget: Duration::from_secs(10 * 60),
        retries: None,
    };

    /// A cross-account CopyImage refused about the source image's KMS key while the grant that lets the
    /// account use it is new: pauses of 5 s doubling to 30 s, until [`KMS_GRANT_WINDOW`] after the grant was made
    /// ([`Policy::start_from`] the grant).
    pub const NEW_KMS_GRANT: Policy = Policy {
        backoff: Backoff::doubling(Duration::from_secs(5), Duration::from_secs(30)),
        budget: KMS_GRANT_WINDOW,
        retries: None,
    };

    /// SSH not answering yet (sshd starting, the key not installed): every 3 s for `[ssh] timeout`.
    pub const fn ssh_connect(timeout: Duration) -> Self {
        Policy { backoff: Backoff::fixed(Duration::from_secs(3)), budget: timeout, retries: None }
    }

    /// An instance's host keys not on its console yet (cloud-init prints them late in the first boot): pauses
    /// of 2 s doubling to 15 s, for `[ssh] host_key_wait`.
    pub const fn console_keys(host_key_wait: Duration) -> Self {
        Policy {
            backoff: Backoff::doubling(Duration::from_secs(2), Duration::from_secs(15)),
            budget: host_key_wait,
            retries: None,
        }
    }

    /// A throttled (`RequestLimitExceeded`) or transient (5xx, a dropped connection, an attempt's timeout) AWS
    /// answer, retried by the request limiter: jittered pauses from 0.5 s doubling to 30 s, at most 12 retries
    /// (about 3.5 minutes of pauses before jitter, at most twice that with it: the time budget, 15 minutes,
    /// never binds before the count). The AWS SDKs' own retry uses the same shape (jittered exponential
    /// backoff, capped) with fewer attempts; fleetbake's limiter also slows the request class after a throttle.
    pub const THROTTLED: Policy = Policy {
        backoff: Backoff::doubling(Duration::from_millis(500), Duration::from_secs(30)).jittered(),
        budget: Duration::from_secs(15 * 60),
        retries: Some(12),
    };

    /// One use of the policy, its budget counted from now.
    pub fn start(self) -> Retry {
        self.start_from(Instant::now())
    }

    /// One use of the policy, its budget counted from `origin` (when what is waited out began).
    pub fn start_from(self, origin: Instant) -> Retry {
        Retry {
            deadline: Deadline::at(origin + self.budget),
            next_pause: self.backoff.first_pause(),
            backoff: self.backoff,
            pauses: 0,
            retries: self.retries,
        }
    }
}

/// One use of a [`Policy`]: the next pause and the deadline.
#[derive(Clone, Debug)]
pub struct Retry {
    backoff: Backoff,
    deadline: Deadline,
    next_pause: Duration,
    /// Pauses given so far.
    pauses: u32,
    /// At most this many pauses.
    retries: Option<u32>,
}

impl Retry {
    /// The pause before the next try, or `None` when the budget is spent (the stopping rule: no pause ends past
    /// the deadline, after a try at or past it there is none, and none after the last retry allowed).
    pub fn next_pause(&mut self) -> Option<Duration> {
        if self.deadline.is_spent() || self.retries.is_some_and(|retries| self.pauses >= retries) {
            return None;
        }
        let now = Instant::now();
        let mut wanted = self.next_pause;
        if self.backoff.jitter {
            wanted += wanted.mul_f32(fastrand::f32());
        }
        let pause = self.deadline.clip(now + wanted) - now;
        self.next_pause = self.backoff.after(self.next_pause);
        self.pauses += 1;
        Some(pause)
    }

    /// Pauses given so far.
    pub fn pauses(&self) -> u32 {
        self.pauses
    }

    pub fn deadline(&self) -> Deadline {
        self.deadline
    }
}

/// What one try came to.
#[derive(Debug)]
pub enum Outcome<T, E> {
    /// The answer, success or an error no pause will change: returned as it is.
    Done(Result<T, E>),
    /// Worth another try after the policy's next pause.
    Again(E),
    /// Worth another try at once (somewhere else), without a pause and whatever the budget says: the attempt
    /// bounds how often it answers this (a launch, once per placement between pauses).
    AgainAtOnce(E),
}

/// Why [`retry`] returned no value.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp<E> {
    /// A try's error that no pause will change.
    Refused(E),
    /// The budget was spent: the last try's error, and how many tries were made.
    Spent { error: E, tries: u32 },
}

impl<E> GaveUp<E> {
    pub fn into_error(self) -> E {
        match self {
            GaveUp::Refused(error) | GaveUp::Spent { error, .. } => error,
        }
    }
}

/// Why [`retry_cancellable`] returned no value.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped<E> {
    GaveUp(GaveUp<E>),
    /// Cancelled during a pause (or as one ended): no further try was made.
    Cancelled,
}

/// Makes tries until one is done or the budget is spent, pausing as `retrying` says; `before_pause` is told of
/// each pause and the error that caused it. `attempt` is given the number of tries made before it.
pub async fn retry<T, E, Attempt, Tried>(
    retrying: Retry,
    attempt: Attempt,
    before_pause: impl FnMut(&E, Duration),
) -> Result<T, GaveUp<E>>
where
    Attempt: FnMut(u32) -> Tried,
    Tried: Future<Output = Outcome<T, E>>,
{
    match run(retrying, None, attempt, before_pause).await {
        Ok(value) => Ok(value),
        Err(Stopped::GaveUp(gave_up)) => Err(gave_up),
        Err(Stopped::Cancelled) => unreachable!("cancelled without a cancellation token"),
    }
}

/// [`retry`], its pauses raced against `cancel`.
pub async fn retry_cancellable<T, E, Attempt, Tried>(
    retrying: Retry,
    cancel: &CancellationToken,
    attempt: Attempt,
    before_pause: impl FnMut(&E, Duration),
) -> Result<T, Stopped<E>>
where
    Attempt: FnMut(u32) -> Tried,
    Tried: Future<Output = Outcome<T, E>>,
{
    run(retrying, Some(cancel), attempt, before_pause).await
}

async fn run<T, E, Attempt, Tried>(
    mut retrying: Retry,
    cancel: Option<&CancellationToken>,
    mut attempt: Attempt,
    mut before_pause: impl FnMut(&E, Duration),
) -> Result<T, Stopped<E>>
where
    Attempt: FnMut(u32) -> Tried,
    Tried: Future<Output = Outcome<T, E>>,
{
    let mut tries = 0;
    loop {
        let outcome = attempt(tries).await;
        tries += 1;
        let error = match outcome {
            Outcome::Done(answer) => return answer.map_err(|error| Stopped::GaveUp(GaveUp::Refused(error))),
            Outcome::AgainAtOnce(_) => continue,
            Outcome::Again(error) => error,
        };
        let Some(pause) = retrying.next_pause() else {
            return Err(Stopped::GaveUp(GaveUp::Spent { error, tries }));
        };
        before_pause(&error, pause);
        match cancel {
            None => tokio::time::sleep(pause).await,
            Some(cancel) => {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Err(Stopped::Cancelled),
                    () = tokio::time::sleep(pause) => {}
                }
                // Cancelled as the pause ended: no try after it either.
                if cancel.is_cancelled() {
                    return Err(Stopped::Cancelled);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// The pauses a policy gives when every try fails at once, in seconds.
    async fn pauses_of(policy: Policy) -> Vec<f64> {
        let mut retry = policy.start();
        let mut pauses = Vec::new();
        while let Some(pause) = retry.next_pause() {
            pauses.push(pause.as_secs_f64());
            tokio::time::sleep(pause).await;
        }
        pauses
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_pauses_grow_to_minutes_and_the_last_ends_at_the_limit() {
        let mut retry = Policy::capacity(Duration::from_secs(10 * 60)).start();
        let started = Instant::now();
        let mut pauses = Vec::new();
        while let Some(pause) = retry.next_pause() {
            pauses.push(pause.as_secs());
            tokio::time::sleep(pause).await;
        }
        // 1 + 2 + 4 minutes, then what is left of the 10.
        assert_eq!(pauses, [60, 120, 240, 180]);
        assert_eq!(retry.pauses(), 4);
        assert_eq!(started.elapsed(), Duration::from_secs(10 * 60));
    }

    #[tokio::test(start_paused = true)]
    async fn each_named_policy_keeps_its_pauses() {
        assert_eq!(pauses_of(Policy::IMAGE_NOT_READY).await[..6], [5.0, 10.0, 20.0, 30.0, 30.0, 30.0]);
        assert_eq!(pauses_of(Policy::CREDENTIALS).await, [5.0, 10.0, 20.0, 40.0, 60.0, 45.0]);
        let lag = pauses_of(Policy::NEW_RESOURCE_LAG).await;
        assert_eq!(lag[..6], [1.0, 2.0, 4.0, 8.0, 15.0, 15.0]);
        assert_eq!(lag.iter().sum::<f64>(), 300.0);
        assert_eq!(pauses_of(Policy::REPEATED_KEY_PAIR).await[..6], [0.0, 1.0, 2.0, 4.0, 8.0, 15.0]);
        assert_eq!(pauses_of(Policy::ssh_connect(Duration::from_secs(10))).await, [3.0, 3.0, 3.0, 1.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_deadline_a_last_try_is_made_and_then_no_pause() {
        let policy =
            Policy { backoff: Backoff::fixed(Duration::from_secs(4)), budget: Duration::from_secs(10), retries: None };
        let started = Instant::now();
        let tried_at = RefCell::new(Vec::new());
        let answer: Result<(), _> = retry(
            policy.start(),
            |_| async {
                tried_at.borrow_mut().push(started.elapsed().as_secs());
                Outcome::Again("not yet")
            },
            |_, _| {},
        )
        .await;
        assert_eq!(answer, Err(GaveUp::Spent { error: "not yet", tries: 4 }));
        // 4 + 4, then the last pause shortened to end at the deadline, where the last try is made.
        assert_eq!(*tried_at.borrow(), [0, 4, 8, 10]);

        // A try that ends one moment before the deadline gets a pause of that moment, and one more try.
        let mut retry = policy.start();
        tokio::time::sleep(Duration::from_secs(10) - Duration::from_millis(1)).await;
        assert_eq!(retry.next_pause(), Some(Duration::from_millis(1)));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(retry.next_pause(), None, "at the deadline: spent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_count_of_retries_stops_before_the_deadline_and_jitter_stays_within_double() {
        let mut retry = Policy::THROTTLED.start();
        let mut pauses = Vec::new();
        while let Some(pause) = retry.next_pause() {
            pauses.push(pause);
            tokio::time::sleep(pause).await;
        }
        assert_eq!(pauses.len(), 12, "12 retries, then the error reaches the caller");
        let unjittered = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0];
        for (pause, base) in pauses.iter().zip(unjittered) {
            let pause = pause.as_secs_f64();
            assert!((base..=base * 2.0).contains(&pause), "{pause} s from a base of {base} s");
        }
        assert!(!retry.deadline().is_spent(), "the count stopped it, not the time budget");
        // Jitter spreads callers refused at the same moment: 12 pauses all at their base is (almost) impossible.
        assert!(pauses.iter().zip(unjittered).any(|(pause, base)| pause.as_secs_f64() > base));

        let unjittered_policy =
            Policy { backoff: Backoff::fixed(Duration::from_secs(1)), retries: Some(2), ..Policy::THROTTLED };
        assert_eq!(pauses_of(unjittered_policy).await, [1.0, 1.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_counted_from_an_earlier_origin_is_partly_spent() {
        let origin = Instant::now();
        tokio::time::sleep(Duration::from_secs(298)).await;
        let mut retry = Policy::NEW_RESOURCE_LAG.start_from(origin);
        assert_eq!(retry.next_pause(), Some(Duration::from_secs(1)));
        assert_eq!(retry.next_pause(), Some(Duration::from_secs(2)), "nothing has passed yet");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(retry.next_pause(), None);
        assert_eq!(retry.deadline().instant(), origin + CONSISTENCY_WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn a_done_answer_is_returned_as_it_is_and_an_immediate_retry_takes_no_pause() {
        let started = Instant::now();
        let pauses = RefCell::new(Vec::new());
        let answer: Result<u32, GaveUp<&str>> = retry(
            Policy::capacity(Duration::from_secs(3600)).start(),
            |tries| async move {
                match tries {
                    0 => Outcome::AgainAtOnce("no room in a"),
                    1 => Outcome::Again("no room in b"),
                    _ => Outcome::Done(Ok(tries)),
                }
            },
            |error, pause| pauses.borrow_mut().push((error.to_string(), pause.as_secs())),
        )
        .await;
        assert_eq!(answer, Ok(2), "the attempt is told how many tries came before it");
        assert_eq!(*pauses.borrow(), [("no room in b".to_string(), 60)]);
        assert_eq!(started.elapsed(), Duration::from_secs(60));

        let refused: Result<(), _> =
            retry(Policy::CREDENTIALS.start(), |_| async { Outcome::Done(Err("denied")) }, |_, _| {}).await;
        assert_eq!(refused, Err(GaveUp::Refused("denied")));
        assert_eq!(started.elapsed(), Duration::from_secs(60), "no pause after a final answer");
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_a_pause_and_starts_no_further_try() {
        let cancel = CancellationToken::new();
        let tries = Cell::new(0);
        let started = Instant::now();
        let canceller = {
            let cancel = cancel.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(90)).await;
                cancel.cancel();
            }
        };
        let retrying = retry_cancellable(
            Policy::capacity(Duration::from_secs(3600)).start(),
            &cancel,
            |_| async {
                tries.set(tries.get() + 1);
                Outcome::<(), _>::Again("no room")
            },
            |_, _| {},
        );
        let (answer, ()) = tokio::join!(retrying, canceller);
        assert_eq!(answer, Err(Stopped::Cancelled));
        // Tries at 0 and 60 s; cancelled 30 s into the 2-minute pause.
        assert_eq!(tries.get(), 2);
        assert_eq!(started.elapsed(), Duration::from_secs(90));

        // Already cancelled: the first try is made (a try is never raced), then no pause.
        let answer = retry_cancellable(
            Policy::IMAGE_NOT_READY.start(),
            &cancel,
            |_| async { Outcome::<(), _>::Again("x") },
            |_, _| {},
        )
        .await;
        assert_eq!(answer, Err(Stopped::Cancelled));
        assert_eq!(started.elapsed(), Duration::from_secs(90));
    }
}
