//! Milliseconds on one monotonic clock for the whole process, small enough to live in an
//! atomic: what breakers, ejections and probes stamp their state with, lock-free.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Origin {
    instant: Instant,
    unix_ms: u64,
}

fn origin() -> &'static Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    ORIGIN.get_or_init(|| Origin {
        instant: Instant::now(),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    })
}

/// Milliseconds since the process started, plus one (so 0 can mean "never").
pub fn now_ms() -> u64 {
    origin().instant.elapsed().as_millis() as u64 + 1
}

/// A `now_ms` stamp as Unix milliseconds.
pub fn to_unix_ms(ms: u64) -> u64 {
    origin().unix_ms + ms.saturating_sub(1)
}

/// A `now_ms` stamp as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: u64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(to_unix_ms(ms));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds on the kernel's coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`: updated
/// once per tick, read without touching the hardware counter). For per-request timestamps
/// that only feed second-scale timers (idle, stall), where a few milliseconds do not matter
/// and a full clock read per byte moved would.
#[cfg(target_os = "linux")]
pub fn coarse_ms() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Elsewhere: the precise clock.
#[cfg(not(target_os = "linux"))]
pub fn coarse_ms() -> u64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_moves_forward_with_the_precise_one() {
        let (c0, p0) = (coarse_ms(), now_ms());
        std::thread::sleep(std::time::Duration::from_millis(60));
        let (c1, p1) = (coarse_ms(), now_ms());
        let (dc, dp) = (c1 - c0, p1 - p0);
        assert!(dp >= 60);
        // One kernel tick (1–10 ms) of lag at most on each end.
        assert!(
            dc + 25 >= dp && dc <= dp + 25,
            "coarse {dc} ms vs precise {dp} ms"
        );
    }
}
