//! The circuit breaker of one target (SPEC §3): closed → open when the error ratio over a
//! rolling window reaches `error_ratio` with at least `min_requests`; open for `open_for`
//! (requests fail fast, the target counts as down for balancing); then half-open lets
//! `half_open_requests` through: all succeed and it closes, one fails and it re-opens.
//! Failures are 5xx, connect errors, resets and timeouts; 4xx is success. Requests refused
//! while open are not counted, and the window is cleared on every state change.
//!
//! All state is atomics: the request path never takes a lock here.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use prometheus::IntGauge;

use super::rolling::Rolling;
use crate::config::BreakerPolicy;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// Permission to send one request through the breaker, stamped with the breaker's generation
/// (which every state change increases): a result from an older generation is ignored, so
/// results never leak across a state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    half_open: bool,
    generation: u64,
}

/// `state` word: generation << 8 | state.
const STATE_BITS: u64 = 8;

#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    /// Generation and state in one word, so a transition is one compare-and-swap.
    word: AtomicU64,
    opened_at_ms: AtomicU64,
    half_open_in_flight: AtomicU32,
    half_open_successes: AtomicU32,
    /// (requests, failures) while closed.
    window: Rolling,
    gauge: IntGauge,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy, gauge: IntGauge) -> Self {
        gauge.set(0);
        Self {
            window: Rolling::new(policy.window),
            policy,
            word: AtomicU64::new(CircuitState::Closed as u64),
            opened_at_ms: AtomicU64::new(0),
            half_open_in_flight: AtomicU32::new(0),
            half_open_successes: AtomicU32::new(0),
            gauge,
        }
    }

    fn load(&self) -> (u64, CircuitState) {
        let w = self.word.load(Ordering::Acquire);
        (w >> STATE_BITS, CircuitState::from_u8((w & 0xff) as u8))
    }

    pub fn state(&self) -> CircuitState {
        self.load().1
    }

    fn open_until(&self) -> u64 {
        self.opened_at_ms.load(Ordering::Relaxed) + self.policy.open_for.as_millis() as u64
    }

    /// Whether a request could get through now (for balancing; does not take a permit).
    pub fn allows(&self, now_ms: u64) -> bool {
        match self.state() {
            CircuitState::Closed => true,
            CircuitState::Open => now_ms >= self.open_until(),
            CircuitState::HalfOpen => {
                self.half_open_in_flight.load(Ordering::Relaxed) < self.policy.half_open_requests
            }
        }
    }

    /// Take a permit to send, or `None` (fail fast). An open circuit whose time is up turns
    /// half-open here. Returns the state it moved to, if it moved.
    pub fn acquire(&self, now_ms: u64) -> (Option<Ticket>, Option<CircuitState>) {
        let mut moved = None;
        let (mut generation, state) = self.load();
        match state {
            CircuitState::Closed => {
                return (
                    Some(Ticket {
                        half_open: false,
                        generation,
                    }),
                    None,
                )
            }
            CircuitState::Open => {
                if now_ms < self.open_until() {
                    return (None, None);
                }
                match self.transition(generation, CircuitState::Open, CircuitState::HalfOpen) {
                    Some(g) => {
                        generation = g;
                        moved = Some(CircuitState::HalfOpen);
                    }
                    None => return (None, None),
                }
            }
            CircuitState::HalfOpen => {}
        }
        let before = self.half_open_in_flight.fetch_add(1, Ordering::AcqRel);
        if before < self.policy.half_open_requests
            && self.load() == (generation, CircuitState::HalfOpen)
        {
            (
                Some(Ticket {
                    half_open: true,
                    generation,
                }),
                moved,
            )
        } else {
            self.half_open_in_flight.fetch_sub(1, Ordering::AcqRel);
            (None, moved)
        }
    }

    /// Record how a permitted request went. Returns the state it moved to, if it moved.
    pub fn record(&self, ticket: Ticket, failure: bool, now_ms: u64) -> Option<CircuitState> {
        let (generation, state) = self.load();
        if ticket.generation != generation {
            // Started before a state change: that window and those permits are gone.
            return None;
        }
        if ticket.half_open {
            self.half_open_in_flight.fetch_sub(1, Ordering::AcqRel);
            if state != CircuitState::HalfOpen {
                return None;
            }
            if failure {
                self.opened_at_ms.store(now_ms, Ordering::Relaxed);
                return self
                    .transition(generation, CircuitState::HalfOpen, CircuitState::Open)
                    .map(|_| CircuitState::Open);
            }
            let ok = self.half_open_successes.fetch_add(1, Ordering::AcqRel) + 1;
            if ok >= self.policy.half_open_requests {
                return self
                    .transition(generation, CircuitState::HalfOpen, CircuitState::Closed)
                    .map(|_| CircuitState::Closed);
            }
            return None;
        }
        if state != CircuitState::Closed {
            return None;
        }
        self.window.add(now_ms, 1, u64::from(failure));
        let (total, failures) = self.window.sum(now_ms);
        let ratio = failures as f64 / total.max(1) as f64;
        if total >= u64::from(self.policy.min_requests) && ratio >= self.policy.error_ratio {
            self.opened_at_ms.store(now_ms, Ordering::Relaxed);
            return self
                .transition(generation, CircuitState::Closed, CircuitState::Open)
                .map(|_| CircuitState::Open);
        }
        None
    }

    /// A permit taken but not used (nothing was sent, or the request was cancelled).
    pub fn release(&self, ticket: Ticket) {
        if ticket.half_open && self.load().0 == ticket.generation {
            self.half_open_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Move from `from` (in `generation`) to `to`; returns the new generation if this call did.
    fn transition(&self, generation: u64, from: CircuitState, to: CircuitState) -> Option<u64> {
        let old = (generation << STATE_BITS) | from as u64;
        let next_generation = generation + 1;
        // Reset what the new state counts before it is published.
        self.window.clear();
        self.half_open_successes.store(0, Ordering::Relaxed);
        self.half_open_in_flight.store(0, Ordering::Relaxed);
        let new = (next_generation << STATE_BITS) | to as u64;
        self.word
            .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        self.gauge.set(to as i64);
        Some(next_generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker() -> Breaker {
        Breaker::new(
            BreakerPolicy {
                error_ratio: 0.5,
                min_requests: 10,
                window: Duration::from_secs(10),
                open_for: Duration::from_secs(5),
                half_open_requests: 3,
            },
            IntGauge::new("g", "g").unwrap(),
        )
    }

    fn send(b: &Breaker, failure: bool, now: u64) -> Option<CircuitState> {
        let (t, _) = b.acquire(now);
        b.record(t.expect("permitted"), failure, now)
    }

    #[test]
    fn opens_after_min_requests_at_error_ratio() {
        let b = breaker();
        for i in 0..9 {
            assert_eq!(send(&b, true, 1000 + i), None, "not before min_requests");
        }
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(send(&b, true, 1010), Some(CircuitState::Open));
        assert_eq!(b.gauge.get(), 1);
        assert!(b.acquire(1011).0.is_none());
        // At exactly the ratio it opens too: 5 failures of 10.
        let b = breaker();
        for i in 0..9 {
            send(&b, i % 2 == 0, 1000 + i);
        }
        assert_eq!(send(&b, false, 1010), Some(CircuitState::Open));
    }

    #[test]
    fn stays_closed_below_the_ratio_and_forgets_old_failures() {
        let b = breaker();
        for i in 0..100 {
            send(&b, i % 3 == 0, 1000 + i);
        }
        assert_eq!(b.state(), CircuitState::Closed);
        let b = breaker();
        // 9 failures: one short of min_requests...
        for i in 0..9 {
            send(&b, true, 1000 + i);
        }
        // ... and 15 s later they are out of the window: 1 failure in 10 keeps it closed
        // (10 of 19 would have opened it, had they still counted).
        for i in 0..10 {
            assert_eq!(send(&b, i == 0, 16_000 + i), None);
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn concurrent_half_open_failures_cannot_wedge_it() {
        let b = breaker();
        for i in 0..10 {
            send(&b, true, 1000 + i);
        }
        let (t1, _) = b.acquire(7000);
        let (t2, _) = b.acquire(7000);
        // The first failure re-opens; the second, from the same half-open period, is stale.
        assert_eq!(b.record(t1.unwrap(), true, 7001), Some(CircuitState::Open));
        assert_eq!(b.record(t2.unwrap(), true, 7002), None);
        // The next half-open period has all its permits.
        for _ in 0..3 {
            assert!(b.acquire(13_000).0.is_some());
        }
        assert!(b.acquire(13_000).0.is_none());
    }

    #[test]
    fn released_permits_come_back_and_stale_ones_are_ignored() {
        let b = breaker();
        for i in 0..10 {
            send(&b, true, 1000 + i);
        }
        let (t, _) = b.acquire(7000);
        let t = t.unwrap();
        let others: Vec<_> = (0..2).map(|_| b.acquire(7000).0.unwrap()).collect();
        assert!(b.acquire(7000).0.is_none());
        b.release(t);
        assert!(
            b.acquire(7000).0.is_some(),
            "a cancelled request gives its permit back"
        );
        // A closed-state ticket from before a cycle does not feed the new window.
        let b2 = breaker();
        let (old, _) = b2.acquire(1000);
        for i in 0..10 {
            send(&b2, true, 1000 + i);
        }
        assert_eq!(b2.record(old.unwrap(), true, 1100), None);
        drop(others);
    }

    #[test]
    fn fails_fast_while_open_then_half_opens_and_closes_on_success() {
        let b = breaker();
        for i in 0..10 {
            send(&b, true, 1000 + i);
        }
        assert_eq!(b.state(), CircuitState::Open);
        assert!(!b.allows(3000));
        assert_eq!(b.acquire(3000).0, None, "fails fast, and is not counted");
        assert!(b.allows(6010));
        let (t1, moved) = b.acquire(6010);
        assert_eq!(moved, Some(CircuitState::HalfOpen));
        let (t2, _) = b.acquire(6010);
        let (t3, _) = b.acquire(6010);
        assert_eq!(
            b.acquire(6010).0,
            None,
            "only half_open_requests get through"
        );
        assert!(!b.allows(6010));
        assert_eq!(b.record(t1.unwrap(), false, 6020), None);
        assert_eq!(b.record(t2.unwrap(), false, 6021), None);
        assert_eq!(
            b.record(t3.unwrap(), false, 6022),
            Some(CircuitState::Closed)
        );
        assert!(b.allows(6023));
    }

    #[test]
    fn a_half_open_failure_reopens_for_another_period() {
        let b = breaker();
        for i in 0..10 {
            send(&b, true, 1000 + i);
        }
        let (t, _) = b.acquire(7000);
        assert_eq!(b.record(t.unwrap(), true, 7001), Some(CircuitState::Open));
        assert!(!b.allows(11_000));
        assert!(b.allows(12_001));
    }
}
