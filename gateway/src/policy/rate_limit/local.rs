//! Buckets in this process: governor's keyed GCRA over 64-bit key hashes.
//!
//! Memory is bounded by eviction, not by a cap: every 10 s the keys whose bucket is full again
//! (idle for at least `burst × per / rate`) are dropped, so the map holds the keys active in
//! that span plus 10 s. Each key costs one hash-map entry (a u64 key and governor's u64 state,
//! about 50 bytes with the map's overhead; measured in the README).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::Decision;
use crate::config::RateLimitPolicy;

type Keyed =
    RateLimiter<u64, DefaultKeyedStateStore<u64>, DefaultClock, StateInformationMiddleware>;

pub struct LocalLimiter {
    limiter: Keyed,
    interval: Duration,
    burst: u32,
}

impl LocalLimiter {
    pub fn new(policy: &RateLimitPolicy) -> Self {
        let interval = policy.emission_interval();
        let burst = u32::try_from(policy.burst).unwrap_or(u32::MAX).max(1);
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            interval,
            burst,
        }
    }

    pub fn check(&self, key: u64) -> Decision {
        match self.limiter.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let used = self.burst.saturating_sub(remaining);
                Decision::allow(u64::from(remaining), self.interval * used)
            }
            Err(not_until) => Decision::deny(not_until.wait_time_from(self.limiter.clock().now())),
        }
    }

    pub fn evict_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}
