//! Passive outlier detection of one target (SPEC §3 `outlier`): `consecutive_failures` 5xx,
//! connect errors, resets or timeouts in a row eject it for `base_ejection` × the number of
//! times it has been ejected (capped at `max_ejection`); the count starts over once the target
//! has stayed in for `max_ejection`. The cap of `max_ejection_percent` of the upstream's
//! targets is kept by the upstream (`UpstreamRt::try_eject`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::config::OutlierPolicy;

#[derive(Debug)]
pub struct Outlier {
    pub policy: OutlierPolicy,
    consecutive: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
}

impl Outlier {
    pub fn new(policy: OutlierPolicy) -> Self {
        Self {
            policy,
            consecutive: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// When the current ejection ends, if ejected.
    pub fn ejected_until(&self, now_ms: u64) -> Option<u64> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        (now_ms < until).then_some(until)
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Record a result; `true` when this failure reaches the threshold (the caller ejects if
    /// the upstream's cap allows). Results that arrive while ejected (requests sent before the
    /// ejection) are ignored: the count starts afresh when the target comes back.
    pub fn record(&self, failure: bool, now_ms: u64) -> bool {
        if self.is_ejected(now_ms) {
            return false;
        }
        if !failure {
            self.consecutive.store(0, Ordering::Relaxed);
            return false;
        }
        self.consecutive.fetch_add(1, Ordering::Relaxed) + 1 >= self.policy.consecutive_failures
    }

    /// Eject now; returns when the ejection ends.
    pub fn eject(&self, now_ms: u64) -> u64 {
        let last_end = self.ejected_until_ms.load(Ordering::Relaxed);
        let max_ms = self.policy.max_ejection.as_millis() as u64;
        // A target that stayed in for max_ejection starts over at base_ejection.
        if last_end != 0 && now_ms.saturating_sub(last_end) >= max_ms {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let n = u64::from(self.ejections.fetch_add(1, Ordering::Relaxed) + 1);
        let duration = (self.policy.base_ejection.as_millis() as u64 * n).min(max_ms);
        let until = now_ms + duration;
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outlier() -> Outlier {
        Outlier::new(OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(100),
            max_ejection_percent: 50,
        })
    }

    #[test]
    fn consecutive_failures_reach_the_threshold_and_a_success_resets_it() {
        let o = outlier();
        assert!(!o.record(true, 0));
        assert!(!o.record(true, 0));
        assert!(!o.record(false, 0));
        assert!(!o.record(true, 0));
        assert!(!o.record(true, 0));
        assert!(o.record(true, 0));
    }

    #[test]
    fn results_that_arrive_while_ejected_are_ignored() {
        let o = outlier();
        let until = o.eject(1_000);
        // Late failures of requests sent before the ejection neither count nor re-eject.
        for _ in 0..10 {
            assert!(!o.record(true, 2_000));
        }
        // Back in: the count starts from zero.
        assert!(!o.record(true, until));
        assert!(!o.record(true, until));
        assert!(o.record(true, until));
    }

    #[test]
    fn ejection_grows_with_each_ejection_up_to_the_cap() {
        let o = outlier();
        assert_eq!(o.eject(1_000), 31_000);
        assert!(o.is_ejected(30_999) && !o.is_ejected(31_000));
        assert_eq!(o.eject(40_000), 100_000, "second: 2 x base");
        assert_eq!(o.eject(110_000), 200_000, "third: 3 x base");
        assert_eq!(o.eject(210_000), 310_000, "fourth: capped at max_ejection");
        // In for max_ejection since the last one ended: back to base.
        assert_eq!(o.eject(500_000), 530_000);
        assert_eq!(o.ejections(), 1);
    }
}
