//! Request and response bodies on the request path. Both are streamed, never buffered.
//!
//! `ReqBody` is the client's body with `max_body_bytes` enforced while it streams (also for
//! chunked bodies with no length). `ResBody` is what a route answers: the upstream's body
//! (which hands its connection back to the pool when it ends) or a small gateway-made one.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::ctx::ConnState;
use crate::upstream::UpstreamBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error a `ReqBody` yields when the client sends more than `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than max_body_bytes")]
pub struct BodyTooLarge;

/// The error a `ReqBody` yields when the client's side of the body failed (the client went
/// away mid-upload): the client's fault, not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// When a request body was fully received, for timeouts that start then (`upstream/`).
#[derive(Debug, Default)]
pub struct BodyProgress(OnceLock<Instant>);

impl BodyProgress {
    /// When the body was complete, if it is.
    pub fn done_at(&self) -> Option<Instant> {
        self.0.get().copied()
    }

    fn mark_done(&self) {
        let _ = self.0.set(Instant::now());
    }
}

/// Bodies up to this size are kept while they stream, so a retry can send them again.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Request bodies with a `Content-Length` up to this are received whole before an upstream
/// connection is used, and responses up to this are read whole from the upstream (which then
/// gets its connection back whatever the client does). SPEC §8.2.
pub const BUFFER_WHOLE_LIMIT: u64 = 64 * 1024;

/// Body bytes held in the gateway's own buffers, process-wide (`max_buffered_bytes`).
static BUFFERED: AtomicU64 = AtomicU64::new(0);
static BUFFER_MAX: AtomicU64 = AtomicU64::new(256 << 20);
static BUFFER_GAUGE: OnceLock<prometheus::IntGauge> = OnceLock::new();
static BUFFER_REJECTED: OnceLock<prometheus::IntCounter> = OnceLock::new();

/// Set the limit and the metrics (`[limits] max_buffered_bytes`, `gateway_buffered_bytes`,
/// `gateway_buffer_rejected_total`); called for every config generation.
pub fn configure_buffers(
    max: u64,
    gauge: &prometheus::IntGauge,
    rejected: &prometheus::IntCounter,
) {
    BUFFER_MAX.store(max, Ordering::Relaxed);
    let _ = BUFFER_GAUGE.set(gauge.clone());
    let _ = BUFFER_REJECTED.set(rejected.clone());
}

/// A request was refused because buffering it would pass `max_buffered_bytes`.
pub fn count_buffer_rejected() {
    if let Some(c) = BUFFER_REJECTED.get() {
        c.inc();
    }
}

/// Bytes of a gateway buffer, counted in `gateway_buffered_bytes` while it lives.
#[derive(Debug)]
pub struct BufferLease(u64);

impl BufferLease {
    /// Room for `n` more bytes, if holding them stays within `max_buffered_bytes`.
    pub fn try_new(n: u64) -> Option<Self> {
        let mut lease = Self(0);
        lease.grow(n).then_some(lease)
    }

    /// Count `n` more bytes; false (and nothing counted) when that would pass the limit.
    pub fn grow(&mut self, n: u64) -> bool {
        let now = BUFFERED.fetch_add(n, Ordering::AcqRel) + n;
        if now > BUFFER_MAX.load(Ordering::Relaxed) {
            BUFFERED.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        self.0 += n;
        if let Some(g) = BUFFER_GAUGE.get() {
            g.add(n as i64);
        }
        true
    }
}

impl Drop for BufferLease {
    fn drop(&mut self) {
        if self.0 > 0 {
            BUFFERED.fetch_sub(self.0, Ordering::AcqRel);
            if let Some(g) = BUFFER_GAUGE.get() {
                g.sub(self.0 as i64);
            }
        }
    }
}

/// The error a `ReqBody` yields when the client paused its body longer than `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body paused longer than body_timeout")]
pub struct BodyTimedOut;

/// What a body kept for replay has collected.
#[derive(Debug, Default)]
pub struct ReplayBuf {
    frames: Vec<Bytes>,
    size: usize,
    overflow: bool,
    complete: bool,
    /// The kept frames count against `max_buffered_bytes`.
    lease: Option<BufferLease>,
}

/// How to send a request's body again for a retry.
#[derive(Debug, Clone)]
pub enum Replay {
    /// The request had no body.
    Empty,
    /// The body as it streamed, if it was complete and small enough.
    Kept(Arc<Mutex<ReplayBuf>>),
    /// Not kept (no retry policy, or not idempotent).
    No,
    /// A body that was in memory all along.
    Frames(Vec<Bytes>),
}

impl Replay {
    /// A fresh body for another attempt, if there is one to send.
    pub fn body(&self) -> Option<ReqBody> {
        match self {
            Self::Empty => Some(ReqBody::empty()),
            Self::No => None,
            Self::Frames(f) => Some(ReqBody::from_frames(f.clone())),
            Self::Kept(buf) => {
                let b = buf.lock().ok()?;
                (b.complete && !b.overflow).then(|| ReqBody::from_frames(b.frames.clone()))
            }
        }
    }
}

/// The client's request body, limited to `max_body_bytes`. It holds the body half of its
/// connection's busy count (`edge/io.rs`) until it ends or is dropped.
#[derive(Debug)]
pub struct ReqBody {
    inner: Option<Incoming>,
    remaining: u64,
    conn: Option<Arc<ConnState>>,
    /// Only for bodies still to come (GETs and the like need none).
    progress: Option<Arc<BodyProgress>>,
    /// Frames kept for a retry (only when a retry policy may use them).
    replay: Option<Arc<Mutex<ReplayBuf>>>,
    /// A replayed body's frames.
    buffered: VecDeque<Bytes>,
    /// `body_timeout`: the longest pause between two frames of a body still to come.
    pause: Option<PauseTimer>,
}

/// The body's pause deadline; only for bodies still to come.
#[derive(Debug)]
struct PauseTimer {
    limit: Duration,
    last_frame: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl ReqBody {
    pub fn new(
        inner: Incoming,
        limit: u64,
        conn: Option<Arc<ConnState>>,
        body_timeout: Duration,
    ) -> Self {
        let ended = inner.is_end_stream();
        let mut body = Self {
            inner: Some(inner),
            remaining: limit,
            conn,
            progress: None,
            replay: None,
            buffered: VecDeque::new(),
            pause: None,
        };
        if ended {
            body.finish();
        } else {
            body.progress = Some(Arc::new(BodyProgress::default()));
            let now = Instant::now();
            body.pause = Some(PauseTimer {
                limit: body_timeout,
                last_frame: now,
                sleep: Box::pin(tokio::time::sleep_until(now + body_timeout)),
            });
        }
        body
    }

    /// Whether the body paused longer than `body_timeout` (registers the wake-up otherwise).
    fn paused_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(p) = self.pause.as_mut() else {
            return false;
        };
        loop {
            if p.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = p.last_frame + p.limit;
            if Instant::now() >= due {
                return true;
            }
            p.sleep.as_mut().reset(due);
        }
    }

    /// The length the client announced, if any (HTTP/1 `Content-Length`, or HTTP/2's).
    pub fn exact_len(&self) -> Option<u64> {
        self.size_hint().exact()
    }

    /// Read the whole body (it is at most `BUFFER_WHOLE_LIMIT`, the caller checked) and
    /// replace it with the bytes, so no upstream waits for a slow client.
    pub async fn buffer_whole(&mut self) -> Result<(), BoxError> {
        use http_body_util::BodyExt;
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = self.frame().await {
            if let Ok(data) = frame?.into_data() {
                out.extend_from_slice(&data);
            }
        }
        let bytes = out.freeze();
        self.inner = None;
        self.pause = None;
        self.replay = None;
        self.buffered = if bytes.is_empty() {
            VecDeque::new()
        } else {
            VecDeque::from([bytes])
        };
        Ok(())
    }

    /// A body with nothing in it.
    pub fn empty() -> Self {
        Self::from_frames(Vec::new())
    }

    /// A body already read whole (integrity checks read it before forwarding).
    pub fn from_bytes(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            Self::empty()
        } else {
            Self::from_frames(vec![bytes])
        }
    }

    /// A body sent again from kept frames.
    fn from_frames(frames: Vec<Bytes>) -> Self {
        Self {
            inner: None,
            remaining: 0,
            conn: None,
            progress: None,
            replay: None,
            buffered: frames.into(),
            pause: None,
        }
    }

    /// Keep the frames as they stream (up to `REPLAY_LIMIT`), for a retry.
    pub fn keep_for_replay(&mut self) {
        if self.inner.is_some() && self.progress.is_some() && self.replay.is_none() {
            self.replay = Some(Arc::new(Mutex::new(ReplayBuf::default())));
        }
    }

    /// How to send this body again.
    pub fn replay(&self) -> Replay {
        if let Some(r) = &self.replay {
            return Replay::Kept(r.clone());
        }
        if self.inner.is_none() && !self.buffered.is_empty() {
            // Received whole (`buffer_whole`): in memory already.
            return Replay::Frames(self.buffered.iter().cloned().collect());
        }
        let empty =
            self.inner.as_ref().is_none_or(|b| b.is_end_stream()) && self.buffered.is_empty();
        if empty {
            Replay::Empty
        } else {
            Replay::No
        }
    }

    fn keep(&self, data: &Bytes) {
        if let Some(r) = &self.replay {
            if let Ok(mut b) = r.lock() {
                if !b.overflow {
                    let counted = match &mut b.lease {
                        Some(l) => l.grow(data.len() as u64),
                        None => match BufferLease::try_new(data.len() as u64) {
                            Some(l) => {
                                b.lease = Some(l);
                                true
                            }
                            None => false,
                        },
                    };
                    if !counted || b.size + data.len() > REPLAY_LIMIT {
                        // Too big to keep (or no room left): no replay for this body.
                        b.overflow = true;
                        b.frames = Vec::new();
                        b.lease = None;
                    } else {
                        b.size += data.len();
                        b.frames.push(data.clone());
                    }
                }
            }
        }
    }

    fn mark_complete(&self) {
        if let Some(r) = &self.replay {
            if let Ok(mut b) = r.lock() {
                b.complete = true;
            }
        }
    }

    /// Tracks when the body is complete; `None` when it already is.
    pub fn progress(&self) -> Option<Arc<BodyProgress>> {
        self.progress.clone()
    }

    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.half_done();
        }
        if let Some(p) = &self.progress {
            p.mark_done();
        }
    }
}

impl Drop for ReqBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(self.buffered.pop_front().map(|d| Ok(Frame::data(d))));
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(p) = self.pause.as_mut() {
                    p.last_frame = Instant::now();
                }
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        self.remaining = 0;
                        self.inner = None;
                        self.finish();
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.remaining -= len;
                    self.keep(data);
                }
                if self.inner.as_ref().is_some_and(|b| b.is_end_stream()) {
                    self.mark_complete();
                    self.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.inner = None;
                self.finish();
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
            }
            Poll::Ready(None) => {
                self.mark_complete();
                self.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if self.paused_too_long(cx) {
                    self.inner = None;
                    self.finish();
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(b) => b.is_end_stream(),
            None => self.buffered.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(self.buffered.iter().map(|b| b.len() as u64).sum::<u64>()),
        }
    }
}

/// Whether an error (from hyper's client, say) was caused by an error of type `E` anywhere in
/// its chain of sources.
pub fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<E>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// What a route answers with.
#[derive(Debug)]
pub enum ResBody {
    /// Made by the gateway: an error, a redirect, an admin answer.
    Full(Option<Bytes>),
    /// Streamed from an upstream.
    Upstream(UpstreamBody),
    /// An upstream's refusal of an upgrade, on a connection of its own (not pooled).
    Tunnel(Incoming),
    /// A small upstream response read whole (its connection is back in the pool).
    Buffered(crate::upstream::BufferedBody),
    /// Compressed as it streams (`compress = true`).
    Compressed(Box<crate::policy::compress::CompressBody>),
}

impl From<Bytes> for ResBody {
    fn from(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            Self::empty()
        } else {
            Self::full(bytes)
        }
    }
}

impl ResBody {
    pub fn full(bytes: Bytes) -> Self {
        Self::Full(Some(bytes))
    }

    pub fn empty() -> Self {
        Self::Full(None)
    }

    /// How long the upstream's response head took (the access log's `upstream_ms`).
    pub fn head_time(&self) -> Option<std::time::Duration> {
        match self {
            Self::Full(_) | Self::Tunnel(_) => None,
            Self::Upstream(b) => Some(b.head_time()),
            Self::Buffered(b) => Some(b.head_time()),
            Self::Compressed(b) => b.head_time(),
        }
    }

    /// The upstream target that produced this body, if any (for the access log).
    pub fn target(&self) -> Option<&str> {
        match self {
            Self::Full(_) | Self::Tunnel(_) => None,
            Self::Upstream(b) => Some(b.target()),
            Self::Buffered(b) => Some(b.target()),
            Self::Compressed(b) => b.target(),
        }
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Upstream(b) => Pin::new(b).poll_frame(cx),
            Self::Tunnel(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            Self::Buffered(b) => Pin::new(b).poll_frame(cx),
            Self::Compressed(b) => Pin::new(b.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(data) => data.is_none(),
            Self::Upstream(b) => b.is_end_stream(),
            Self::Tunnel(b) => b.is_end_stream(),
            Self::Buffered(b) => b.is_end_stream(),
            Self::Compressed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Upstream(b) => b.size_hint(),
            Self::Tunnel(b) => b.size_hint(),
            Self::Buffered(b) => b.size_hint(),
            Self::Compressed(b) => b.size_hint(),
        }
    }
}
