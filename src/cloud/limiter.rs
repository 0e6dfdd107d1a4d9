//! The client's side of AWS's request limits: per place (a region of an account) and per service (EC2, SSM,
//! KMS, STS), one token bucket per action class (on Tokio's clock) at EC2's documented rates, slowed after throttles by an [`AdaptiveRate`] per class (the account's buckets
//! are shared with its other tools), and the retry of throttled and transient calls ([`Policy::THROTTLED`]:
//! jittered exponential backoff, run by the one retry of [`super::retry`]), counted in [`ApiStats`].
//! Every adapter call goes through [`RegionLimiter::call`]; the run's concurrency caps are the engine's
//! (`engine::limits`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::cloud::adaptive::AdaptiveRate;
use crate::cloud::retry::{retry, Outcome, Policy};
use crate::cloud::{Action, ActionClass, CloudError, CloudResult, ErrorKind, Service};
use crate::config::{ApiRates, Place, Region};
use crate::util::clock::TokenBucket;

/// How a region's sends react to throttled answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// At EC2's documented rates whatever the answers: how most tools send. The benches compare the two.
    Fixed,
    /// Slowed per class and region after a throttle, recovering along a cubic curve: fleetbake's way.
    Adaptive,
}

/// Counters across every region of a run, and who is told of each throttle.
#[derive(Default)]
pub struct ApiStats {
    calls: DashMap<(Region, Action), u64>,
    /// The same calls by place: what was asked of each account (`[[distribution]]` accounts' roles too).
    calls_by_place: DashMap<(Place, Action), u64>,
    throttled: AtomicU64,
    retries: AtomicU64,
    on_throttle: std::sync::OnceLock<ThrottleObserver>,
}

/// Told of every `RequestLimitExceeded` answer (the engine turns it into an event).
pub type ThrottleObserver = Box<dyn Fn(&Place, Action) + Send + Sync>;

impl std::fmt::Debug for ApiStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiStats").field("throttled", &self.throttled).field("retries", &self.retries).finish()
    }
}

impl ApiStats {
    pub fn calls(&self) -> Vec<((Region, Action), u64)> {
        let mut calls: Vec<_> = self.calls.iter().map(|entry| (entry.key().clone(), *entry.value())).collect();
        calls.sort();
        calls
    }
    /// Every call by place and action (what each account's role was asked: the IAM documents' test reads it).
    pub fn calls_by_place(&self) -> Vec<((Place, Action), u64)> {
        let mut calls: Vec<_> = self.calls_by_place.iter().map(|entry| (entry.key().clone(), *entry.value())).collect();
        calls.sort();
        calls
    }
    pub fn throttled_responses(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Tells `observer` of every throttle from now on (the first observer set stays).
    pub fn observe_throttles(&self, observer: ThrottleObserver) {
        let _ = self.on_throttle.set(observer);
    }
}

/// The request buckets of one place: per service, one per action class, on Tokio's clock. Every service is
/// given the configured (EC2's) rates: SSM's, KMS's and STS's documented rates are no lower than EC2's for
/// the few calls fleetbake makes of them, and EC2's own calls are paced exactly as before.
pub struct RegionLimiter {
    place: Place,
    /// Indexed by `Service as usize`.
    buckets: [ClassBuckets; Service::ALL.len()],
    /// Per service and class, with [`Pacing::Adaptive`].
    adaptive: Option<[[AdaptiveRate; ActionClass::ALL.len()]; Service::ALL.len()]>,
    retry: Policy,
    stats: Arc<ApiStats>,
}

impl RegionLimiter {
    pub fn new(place: Place, rates: &ApiRates, retry: Policy, pacing: Pacing, stats: Arc<ApiStats>) -> Self {
        let adaptive = match pacing {
            Pacing::Fixed => None,
            Pacing::Adaptive => Some(
                Service::ALL.map(|_| ActionClass::ALL.map(|class| AdaptiveRate::new(class.bucket(rates).per_second))),
            ),
        };
        let buckets = Service::ALL.map(|_| ClassBuckets::new(rates));
        RegionLimiter { place, buckets, adaptive, retry, stats }
    }

    fn adaptive(&self, action: Action) -> Option<&AdaptiveRate> {
        // `Service::ALL` and `ActionClass::ALL` list their values in declaration order.
        self.adaptive.as_ref().map(|rates| &rates[action.service() as usize][action.class() as usize])
    }

    fn bucket(&self, action: Action) -> &TokenBucket {
        self.buckets[action.service() as usize].of(action.class())
    }

    pub fn place(&self) -> &Place {
        &self.place
    }

    pub fn region(&self) -> &Region {
        &self.place.region
    }

    /// Waits for a token of the action's service and class, then for its paced slot if throttles have
    /// slowed it.
    async fn acquire(&self, action: Action) {
        self.bucket(action).take().await;
        if let Some(rate) = self.adaptive(action) {
            rate.pace().await;
        }
    }

    /// Runs one EC2 call under the action's bucket, retrying throttled and transient failures.
    pub async fn call<T, Operation, Attempt>(&self, action: Action, operation: Operation) -> CloudResult<T>
    where
        Operation: FnMut() -> Attempt,
        Attempt: std::future::Future<Output = CloudResult<T>>,
    {
        let operation = std::sync::Mutex::new(operation);
        let attempt = |_| async {
            self.acquire(action).await;
            *self.stats.calls.entry((self.place.region.clone(), action)).or_insert(0) += 1;
            *self.stats.calls_by_place.entry((self.place.clone(), action)).or_insert(0) += 1;
            let future = (operation.lock().expect("not poisoned"))();
            match future.await {
                Err(error) if error.kind.is_retryable() => Outcome::Again(error),
                answer => Outcome::Done(answer),
            }
        };
        let before_pause = |error: &CloudError, pause: Duration| {
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            if error.kind == ErrorKind::Throttled {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                if let Some(observer) = self.stats.on_throttle.get() {
                    observer(&self.place, action);
                }
                if let Some(rate) = self.adaptive(action) {
                    rate.throttled();
                }
            }
            tracing::debug!(place = %self.place, %action, ?pause, "retrying after {error}");
        };
        retry(self.retry.start(), attempt, before_pause).await.map_err(|gave_up| gave_up.into_error())
    }
}

/// One token bucket per EC2 request class of one region: the client's ([`RegionLimiter`]) and the simulated EC2's.
pub struct ClassBuckets([TokenBucket; ActionClass::ALL.len()]);

impl ClassBuckets {
    pub fn new(rates: &ApiRates) -> Self {
        ClassBuckets(ActionClass::ALL.map(|class| {
            let bucket = class.bucket(rates);
            TokenBucket::new(bucket.burst, bucket.per_second)
        }))
    }

    pub fn of(&self, class: ActionClass) -> &TokenBucket {
        // `ActionClass::ALL` lists the classes in declaration order.
        &self.0[class as usize]
    }
}

/// The client's request buckets in every place, created on first use, and the counters of every call.
pub struct ApiLimits {
    rates: ApiRates,
    retry: Policy,
    pacing: Pacing,
    places: DashMap<Place, Arc<RegionLimiter>>,
    stats: Arc<ApiStats>,
}

impl ApiLimits {
    pub fn new(rates: &ApiRates, retry: Policy, pacing: Pacing) -> Self {
        ApiLimits { rates: *rates, retry, pacing, places: DashMap::new(), stats: Arc::new(ApiStats::default()) }
    }

    /// The buckets of a place.
    pub fn place(&self, place: &Place) -> Arc<RegionLimiter> {
        self.places
            .entry(place.clone())
            .or_insert_with(|| {
                let stats = Arc::clone(&self.stats);
                Arc::new(RegionLimiter::new(place.clone(), &self.rates, self.retry, self.pacing, stats))
            })
            .clone()
    }

    /// The buckets of a region of the run's own account.
    pub fn region(&self, region: &Region) -> Arc<RegionLimiter> {
        self.place(&Place::own(region.clone()))
    }

    pub fn stats(&self) -> &ApiStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::retry::Backoff;
    use std::sync::atomic::AtomicUsize;

    fn throttled(region: &Region) -> CloudError {
        CloudError {
            action: Action::DescribeImages,
            region: region.clone(),
            kind: ErrorKind::Throttled,
            code: Some("RequestLimitExceeded".into()),
            message: "Request limit exceeded.".into(),
        }
    }

    /// Pauses of 1 ms doubling to 5 ms, `retries` of them.
    fn quick_retries(retries: u32) -> Policy {
        Policy {
            backoff: Backoff::doubling(Duration::from_millis(1), Duration::from_millis(5)),
            budget: Duration::from_secs(60),
            retries: Some(retries),
        }
    }

    fn limiter(retries: u32) -> RegionLimiter {
        fixed_limiter(&ApiRates::default(), quick_retries(retries))
    }

    /// A limiter of us-west-2 in the run's own account, at fixed rates, with stats of its own.
    fn fixed_limiter(rates: &ApiRates, retry: Policy) -> RegionLimiter {
        RegionLimiter::new(
            Place::own(Region::new("us-west-2")),
            rates,
            retry,
            Pacing::Fixed,
            Arc::new(ApiStats::default()),
        )
    }

    #[tokio::test]
    async fn throttling_is_absorbed_until_retries_run_out() {
        let limiter = limiter(5);
        let attempts = AtomicUsize::new(0);
        let result = limiter
            .call(Action::DescribeImages, || async {
                if attempts.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(throttled(limiter.region()))
                } else {
                    Ok(42)
                }
            })
            .await;
        assert_eq!(result.unwrap(), 42);
        assert_eq!(limiter.stats.throttled_responses(), 3);
        assert_eq!(limiter.stats.retries(), 3);

        let limiter = self::limiter(2);
        let result: CloudResult<()> =
            limiter.call(Action::DescribeImages, || async { Err(throttled(limiter.region())) }).await;
        assert_eq!(result.unwrap_err().code.as_deref(), Some("RequestLimitExceeded"));
        assert_eq!(limiter.stats.calls()[0].1, 3, "one attempt and two retries");
    }

    #[tokio::test]
    async fn the_observer_is_told_of_every_throttle_and_the_stats_are_the_limits_own() {
        let retry = quick_retries(5);
        let limits = ApiLimits::new(&ApiRates::default(), retry, Pacing::Adaptive);
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&told);
        limits.stats().observe_throttles(Box::new(move |place: &Place, action: Action| {
            record.lock().unwrap().push((place.region.clone(), action))
        }));
        let limiter = limits.region(&Region::new("eu-west-1"));
        let attempts = AtomicUsize::new(0);
        let result = limiter
            .call(Action::DescribeImages, || async {
                if attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(throttled(limiter.region()))
                } else {
                    Ok(())
                }
            })
            .await;
        assert!(result.is_ok());
        let eu = Region::new("eu-west-1");
        assert_eq!(*told.lock().unwrap(), [(eu.clone(), Action::DescribeImages), (eu, Action::DescribeImages)]);
        assert_eq!(limits.stats().throttled_responses(), 2, "the run's stats are the ones the limiter counted in");
        assert!(limiter.adaptive(Action::DescribeImages).is_some(), "adaptive pacing keeps a rate per class");
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let limiter = limiter(5);
        let result: CloudResult<()> = limiter
            .call(Action::CreateImage, || async {
                Err(CloudError {
                    action: Action::CreateImage,
                    region: limiter.region().clone(),
                    kind: ErrorKind::Permanent,
                    code: Some("InvalidAMIName.Duplicate".into()),
                    message: "duplicate".into(),
                })
            })
            .await;
        assert!(result.is_err());
        assert_eq!(limiter.stats.retries(), 0);
    }

    #[test]
    fn every_class_indexes_its_own_bucket() {
        for (index, class) in ActionClass::ALL.into_iter().enumerate() {
            assert_eq!(class as usize, index, "{class:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn class_buckets_follow_their_rates() {
        let rates =
            ApiRates { run_instances: crate::config::Bucket { burst: 1, per_second: 0.5 }, ..ApiRates::default() };
        let buckets = ClassBuckets::new(&rates);
        assert!(buckets.of(ActionClass::RunInstances).try_take().is_ok());
        assert_eq!(buckets.of(ActionClass::RunInstances).try_take(), Err(Duration::from_secs(2)));
        assert!(buckets.of(ActionClass::Mutating).try_take().is_ok(), "other classes keep their own tokens");
    }

    #[tokio::test(start_paused = true)]
    async fn run_instances_bucket_spaces_calls_beyond_its_burst() {
        let rates =
            ApiRates { run_instances: crate::config::Bucket { burst: 2, per_second: 2.0 }, ..ApiRates::default() };
        let limiter = fixed_limiter(&rates, Policy::THROTTLED);
        let started = tokio::time::Instant::now();
        for _ in 0..4 {
            limiter.acquire(Action::RunInstances).await;
        }
        // Two from the burst, then two more at 2 per second: one second of (virtual) time.
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn each_service_has_its_own_buckets() {
        let rates = ApiRates { mutating: crate::config::Bucket { burst: 1, per_second: 1.0 }, ..ApiRates::default() };
        let limiter = fixed_limiter(&rates, Policy::THROTTLED);
        let started = tokio::time::Instant::now();
        limiter.acquire(Action::PutParameter).await;
        limiter.acquire(Action::CreateImage).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "SSM's mutating call spent none of EC2's tokens");
        limiter.acquire(Action::CreateImage).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1), "EC2's second call waited for its own bucket");
    }

    #[test]
    fn limits_keep_one_limiter_per_place() {
        let limits = ApiLimits::new(&ApiRates::default(), Policy::THROTTLED, Pacing::Fixed);
        let region = Region::new("eu-west-1");
        let own = limits.region(&region);
        assert!(Arc::ptr_eq(&own, &limits.place(&Place::own(region.clone()))), "a region is its own account's");
        let other = limits.place(&Place { account: crate::config::Account::Id("123456789012".into()), region });
        assert!(!Arc::ptr_eq(&own, &other), "another account's region has buckets of its own");
        assert_eq!(other.region(), own.region());
    }
}
