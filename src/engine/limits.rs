//! Every limit of a run in one module: the client's request buckets per place, service and action class
//! ([`ApiLimits`], which every cloud call goes through), the cap on builds running at once and, per destination
//! place (a region of an account), the cap on copies running at once.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Semaphore;

use crate::cloud::limiter::{ApiLimits, ApiStats, Pacing};
use crate::cloud::retry::Policy;
use crate::config::{Limits, Place};

/// The request buckets and the concurrency caps of one run.
pub struct RunLimits {
    api: Arc<ApiLimits>,
    builds: Arc<Semaphore>,
    copies_per_region: usize,
    copies: DashMap<Place, Arc<Semaphore>>,
}

impl RunLimits {
    pub fn new(limits: &Limits, retry: Policy, pacing: Pacing) -> Self {
        RunLimits {
            api: Arc::new(ApiLimits::new(&limits.api, retry, pacing)),
            builds: Arc::new(Semaphore::new(limits.max_parallel_builds)),
            copies_per_region: limits.max_parallel_copies_per_region,
            copies: DashMap::new(),
        }
    }

    /// The request buckets, for the cloud adapters.
    pub fn api(&self) -> &Arc<ApiLimits> {
        &self.api
    }

    pub fn stats(&self) -> &ApiStats {
        self.api.stats()
    }

    /// The cap on builds running at once.
    pub fn builds(&self) -> Arc<Semaphore> {
        Arc::clone(&self.builds)
    }

    /// The cap on copies running at once into `destination` (`max_parallel_copies_per_region`: a place is a
    /// region of one account).
    pub fn copies_into(&self, destination: &Place) -> Arc<Semaphore> {
        self.copies
            .entry(destination.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.copies_per_region)))
            .clone()
    }
}
