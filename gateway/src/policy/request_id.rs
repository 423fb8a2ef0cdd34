//! Request ids: the first thing done to a request, before routing, so even a 404 has one.
//!
//! A 64-bit snowflake in decimal (SPEC §4): `(ms since 2020-01-01T00:00:00Z) << 22 |
//! node_id << 12 | sequence`. The generator is one atomic word, no lock. Its clock is the wall
//! clock read once at start and carried forward by the monotonic clock, so a wall clock that
//! steps back can never make ids go back or repeat, and no request ever sleeps waiting for it
//! (a blocked tokio worker would stall every request on it). A full sequence (4096 ids in one
//! millisecond) waits for the next millisecond. The id goes upstream in `x-request-id`, back
//! to the client, and into every error body and log line. With `trust_request_id` a valid
//! incoming id is kept.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

pub use crate::ctx::X_REQUEST_ID;

/// 2020-01-01T00:00:00Z in Unix milliseconds: the snowflake epoch.
pub const EPOCH_MS: u64 = 1_577_836_800_000;

const SEQUENCE_BITS: u32 = 12;
const NODE_BITS: u32 = 10;
const SEQUENCE_MASK: u64 = (1 << SEQUENCE_BITS) - 1;

/// The snowflake generator of one gateway process.
#[derive(Debug)]
pub struct Snowflake {
    node: u64,
    /// `last_ms << 12 | sequence` of the last id handed out.
    state: AtomicU64,
    /// The wall clock at start (ms since the snowflake epoch) and the monotonic instant then.
    anchor_ms: u64,
    anchor: Instant,
}

impl Snowflake {
    pub fn new(node_id: u16) -> Self {
        Self {
            node: u64::from(node_id) & ((1 << NODE_BITS) - 1),
            state: AtomicU64::new(0),
            anchor_ms: wall_ms(),
            anchor: Instant::now(),
        }
    }

    /// Milliseconds since the snowflake epoch on this generator's clock.
    fn now_ms(&self) -> u64 {
        self.anchor_ms + self.anchor.elapsed().as_millis() as u64
    }

    /// The next id; unique and increasing within this process.
    pub fn next_id(&self) -> u64 {
        loop {
            match self.try_next(self.now_ms()) {
                Some(id) => return id,
                // Lost a race, or the millisecond's 4096 ids are used up: very short.
                None => std::hint::spin_loop(),
            }
        }
    }

    /// The id for clock time `now` (ms since the epoch), or `None` to try again.
    fn try_next(&self, now: u64) -> Option<u64> {
        let prev = self.state.load(Ordering::Acquire);
        let (last, seq) = (prev >> SEQUENCE_BITS, prev & SEQUENCE_MASK);
        let next = if now > last {
            now << SEQUENCE_BITS
        } else if seq < SEQUENCE_MASK {
            // Same millisecond (or another thread read the clock a moment later): next number.
            prev + 1
        } else {
            return None;
        };
        self.state
            .compare_exchange(prev, next, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| {
                ((next >> SEQUENCE_BITS) << (NODE_BITS + SEQUENCE_BITS))
                    | (self.node << SEQUENCE_BITS)
                    | (next & SEQUENCE_MASK)
            })
    }
}

fn wall_ms() -> u64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    unix.saturating_sub(EPOCH_MS)
}

/// The parts of a snowflake id: (ms since the epoch, node, sequence).
pub fn decode(id: u64) -> (u64, u16, u16) {
    (
        id >> (NODE_BITS + SEQUENCE_BITS),
        ((id >> SEQUENCE_BITS) & ((1 << NODE_BITS) - 1)) as u16,
        (id & SEQUENCE_MASK) as u16,
    )
}

/// An incoming id is kept (with `trust_request_id`) when it is 1-128 characters of letters,
/// digits and `-_.:`: safe in headers, JSON and logs without escaping.
pub fn is_valid_incoming(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// Gives every request an `x-request-id` and echoes it on the response.
#[derive(Clone, Debug)]
pub struct RequestIdLayer {
    ids: Arc<Snowflake>,
    trust_incoming: bool,
}

impl RequestIdLayer {
    pub fn new(ids: Arc<Snowflake>, trust_incoming: bool) -> Self {
        Self {
            ids,
            trust_incoming,
        }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestId<S> {
    inner: S,
    layer: RequestIdLayer,
}

impl<S, B, RB> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let keep = self.layer.trust_incoming
            && req
                .headers()
                .get(X_REQUEST_ID)
                .is_some_and(is_valid_incoming);
        let id = if keep {
            req.headers().get(X_REQUEST_ID).cloned()
        } else {
            None
        }
        .unwrap_or_else(|| HeaderValue::from(self.layer.ids.next_id()));
        req.headers_mut().insert(X_REQUEST_ID, id.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = match this.inner.poll(cx) {
            Poll::Ready(Ok(res)) => res,
            other => return other,
        };
        if let Some(id) = this.id.take() {
            res.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_have_the_snowflake_layout() {
        let before = wall_ms();
        let g = Snowflake::new(517);
        let id = g.next_id();
        let (ms, node, seq) = decode(id);
        assert_eq!(node, 517);
        assert_eq!(seq, 0);
        assert!(ms >= before && ms <= wall_ms() + 1, "{ms} vs {before}");
    }

    #[test]
    fn ids_are_unique_and_increasing_across_threads() {
        let g = Arc::new(Snowflake::new(1));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..20_000).map(|_| g.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            let ids = h.join().unwrap();
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            for id in ids {
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(all.len(), 80_000);
    }

    #[test]
    fn a_full_sequence_waits_for_the_next_millisecond() {
        let g = Snowflake::new(0);
        g.state
            .store((1000 << SEQUENCE_BITS) | SEQUENCE_MASK, Ordering::SeqCst);
        assert_eq!(g.try_next(1000), None);
        let id = g.try_next(1001).unwrap();
        assert_eq!(decode(id), (1001, 0, 0));
    }

    #[test]
    fn ids_never_go_back_even_if_the_clock_does() {
        let g = Snowflake::new(3);
        let first = g.try_next(5000).unwrap();
        // A clock reading behind the last id (another thread, a wall-clock step) continues
        // after it instead of going back or waiting.
        let second = g.try_next(4990).unwrap();
        assert!(second > first);
        assert_eq!(decode(second), (5000, 3, 1));
    }

    #[test]
    fn the_generator_clock_is_monotonic_from_the_wall_clock_at_start() {
        let g = Snowflake::new(0);
        let a = g.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = g.now_ms();
        assert!(b >= a + 5);
        assert!(a.abs_diff(wall_ms()) < 1000);
    }

    #[test]
    fn only_safe_incoming_ids_are_kept() {
        assert!(is_valid_incoming(&HeaderValue::from_static(
            "abc-123_x.y:z"
        )));
        assert!(!is_valid_incoming(&HeaderValue::from_static("")));
        assert!(!is_valid_incoming(&HeaderValue::from_static("a b")));
        assert!(!is_valid_incoming(&HeaderValue::from_static("a\"b")));
    }
}
