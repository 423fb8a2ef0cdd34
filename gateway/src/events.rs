//! What the gateway decided, as events for the status page and `GET /admin/events`: reloads
//! (with their diff summary) and refused reloads, health flips, outlier ejections, circuit
//! transitions and rate-limit store fallbacks.
//!
//! One bounded in-memory ring for the process. Events are rare (state changes, not requests):
//! pushing one takes a short lock that no request takes otherwise; reading never blocks a
//! push for long. The oldest events fall off once `CAPACITY` is reached; ids keep counting so
//! a reader asking `since=ID` notices what it missed.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

/// Events kept.
pub const CAPACITY: usize = 500;

/// The `kind` of an event (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Reload,
    ReloadError,
    Health,
    Ejection,
    Circuit,
    StoreFallback,
    Discovery,
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub id: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub kind: Kind,
    /// What it is about: `upstream/target`, a policy, or the config file.
    pub subject: String,
    pub detail: String,
    /// `bad` for what an operator should look at (down, ejected, open, refused, fallback),
    /// `good` for recoveries, `info` otherwise.
    pub severity: &'static str,
}

struct Ring {
    next_id: u64,
    events: VecDeque<Event>,
}

fn ring() -> &'static Mutex<Ring> {
    static RING: OnceLock<Mutex<Ring>> = OnceLock::new();
    RING.get_or_init(|| {
        Mutex::new(Ring {
            next_id: 1,
            events: VecDeque::with_capacity(CAPACITY),
        })
    })
}

/// Record an event.
pub fn push(
    kind: Kind,
    severity: &'static str,
    subject: impl Into<String>,
    detail: impl Into<String>,
) {
    let time = crate::clock::rfc3339(crate::clock::now_ms());
    let Ok(mut r) = ring().lock() else { return };
    let id = r.next_id;
    r.next_id += 1;
    if r.events.len() == CAPACITY {
        r.events.pop_front();
    }
    r.events.push_back(Event {
        id,
        time,
        kind,
        subject: subject.into(),
        detail: detail.into(),
        severity,
    });
}

/// Events with an id above `since`, oldest first, at most `limit`; and the last id given out
/// (0 when none yet), so a reader can ask again from there.
pub fn since(since: u64, limit: usize) -> (Vec<Event>, u64) {
    let Ok(r) = ring().lock() else {
        return (Vec::new(), 0);
    };
    let last = r.next_id - 1;
    let newer = r.events.iter().filter(|e| e.id > since);
    let n = newer.clone().count();
    let skip = n.saturating_sub(limit);
    (newer.skip(skip).cloned().collect(), last)
}

/// The newest `n` events, oldest first.
pub fn latest(n: usize) -> Vec<Event> {
    let Ok(r) = ring().lock() else {
        return Vec::new();
    };
    let skip = r.events.len().saturating_sub(n);
    r.events.iter().skip(skip).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_and_ids_keep_counting() {
        // The ring is process-wide: look only at what this test pushed.
        let (_, start) = since(u64::MAX, 0);
        for i in 0..CAPACITY + 10 {
            push(Kind::Health, "bad", format!("u/t{i}"), "down");
        }
        let (all, last) = since(start, usize::MAX);
        assert!(last >= start + (CAPACITY + 10) as u64);
        assert!(all.len() <= CAPACITY);
        let (few, _) = since(last - 3, 100);
        assert_eq!(few.len(), 3);
        assert!(few.windows(2).all(|w| w[0].id + 1 == w[1].id));
        assert_eq!(few[2].id, last);
        let (capped, _) = since(start, 2);
        assert_eq!(capped.len(), 2, "the newest two");
        assert_eq!(capped[1].id, last);
        assert_eq!(latest(1)[0].id, last);
        let json = serde_json::to_value(&few[0]).unwrap();
        assert_eq!(json["kind"], "health");
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
    }
}
