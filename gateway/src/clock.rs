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
