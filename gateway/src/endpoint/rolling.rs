//! A rolling window of two counters (requests and failures, or requests and retries) in ten
//! buckets, lock-free: each bucket is one atomic word holding its epoch and both counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: usize = 10;
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_SHIFT: u32 = 2 * COUNT_BITS;

#[derive(Debug)]
pub struct Rolling {
    bucket_ms: u64,
    buckets: [AtomicU64; BUCKETS],
}

impl Rolling {
    /// A window of `window`, in ten buckets of a tenth each (at least 1 ms).
    pub fn new(window: Duration) -> Self {
        Self {
            bucket_ms: (window.as_millis() as u64 / BUCKETS as u64).max(1),
            buckets: Default::default(),
        }
    }

    /// Count `a` and `b` at time `now_ms`.
    pub fn add(&self, now_ms: u64, a: u64, b: u64) {
        let epoch = now_ms / self.bucket_ms;
        let slot = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (e, ca, cb) = unpack(cur);
            let (na, nb) = if e == epoch & epoch_mask() {
                ((ca + a).min(COUNT_MAX), (cb + b).min(COUNT_MAX))
            } else {
                (a.min(COUNT_MAX), b.min(COUNT_MAX))
            };
            match slot.compare_exchange_weak(
                cur,
                pack(epoch, na, nb),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Take back `a` and `b` counted at `now_ms` (an undo of `add`; saturates at zero, and
    /// does nothing once that bucket has rolled over).
    pub fn sub(&self, now_ms: u64, a: u64, b: u64) {
        let epoch = now_ms / self.bucket_ms;
        let slot = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (e, ca, cb) = unpack(cur);
            if e != epoch & epoch_mask() {
                return;
            }
            let next = pack(epoch, ca.saturating_sub(a), cb.saturating_sub(b));
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Totals of both counters over the window ending at `now_ms`.
    pub fn sum(&self, now_ms: u64) -> (u64, u64) {
        let epoch = now_ms / self.bucket_ms;
        let oldest = epoch.saturating_sub(BUCKETS as u64 - 1);
        let mut total = (0, 0);
        for slot in &self.buckets {
            let (e, a, b) = unpack(slot.load(Ordering::Relaxed));
            if (oldest & epoch_mask()..=epoch & epoch_mask()).contains(&e)
                || in_window_wrapped(e, oldest, epoch)
            {
                total.0 += a;
                total.1 += b;
            }
        }
        total
    }

    /// Forget everything.
    pub fn clear(&self) {
        for slot in &self.buckets {
            slot.store(0, Ordering::Relaxed);
        }
    }
}

fn epoch_mask() -> u64 {
    (1 << (64 - EPOCH_SHIFT)) - 1
}

/// The epoch field wraps every 2^24 buckets; a window spanning the wrap is checked here.
fn in_window_wrapped(e: u64, oldest: u64, newest: u64) -> bool {
    let (lo, hi) = (oldest & epoch_mask(), newest & epoch_mask());
    lo > hi && (e >= lo || e <= hi)
}

fn pack(epoch: u64, a: u64, b: u64) -> u64 {
    ((epoch & epoch_mask()) << EPOCH_SHIFT) | (a << COUNT_BITS) | b
}

fn unpack(v: u64) -> (u64, u64, u64) {
    (
        v >> EPOCH_SHIFT,
        (v >> COUNT_BITS) & COUNT_MAX,
        v & COUNT_MAX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_forgets_older_buckets() {
        let r = Rolling::new(Duration::from_secs(10));
        r.add(1_000, 1, 0);
        r.add(1_500, 1, 1);
        r.add(9_999, 1, 1);
        assert_eq!(r.sum(10_000), (3, 2));
        assert_eq!(r.sum(10_999), (3, 2));
        // From 11 s the window is 2.0-11.x s: the bucket of 1.0-1.999 s is out.
        assert_eq!(r.sum(11_000), (1, 1));
        assert_eq!(r.sum(30_000), (0, 0));
    }

    #[test]
    fn a_reused_bucket_starts_from_zero() {
        let r = Rolling::new(Duration::from_secs(10));
        r.add(0, 5, 5);
        r.add(10_000, 1, 0);
        assert_eq!(r.sum(10_000), (1, 0));
    }

    #[test]
    fn concurrent_adds_are_all_counted() {
        let r = std::sync::Arc::new(Rolling::new(Duration::from_secs(10)));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        r.add(5_000, 1, 1);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(r.sum(5_000), (40_000, 40_000));
    }
}
