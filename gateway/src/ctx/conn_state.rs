//! One client connection's bookkeeping, shared by the edge's I/O wrapper (`edge/io.rs`), the
//! connection task (`edge/conn.rs`), request bodies (`body.rs`) and WebSocket tunnels
//! (`upstream/tunnel.rs`). One per connection: never contended across connections.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::H2Abuse;

/// Per-connection request bookkeeping.
#[derive(Debug)]
pub struct ConnState {
    started: Instant,
    /// `started` on the coarse clock (`clock::coarse_ms`).
    started_coarse_ms: u64,
    /// Outstanding halves of requests: each request counts 2 while its response is being
    /// written and its body being read; 0 means nothing is in flight.
    busy: AtomicUsize,
    /// Requests started on this connection so far.
    requests: AtomicU64,
    /// Last time a request started or ended, in ms since `started`.
    last_request_ms: AtomicU64,
    /// Last time bytes moved either way, in ms since `started`.
    last_io_ms: AtomicU64,
    /// Read and drop what the client still sends before closing (after an early 413).
    linger: AtomicBool,
    /// The raw scan's verdict on the head being parsed (`h1::scan_head`): 0 none, else the
    /// reason's index + 1.
    head_verdict: AtomicU8,
    /// HTTP/2 streams the client reset before they were answered.
    premature_resets: AtomicU64,
    /// The connection became a tunnel (WebSocket): no more request heads to time.
    upgraded: AtomicBool,
    /// The tunnel ended (the connection's count and drain wait for it).
    tunnel_done: tokio::sync::Notify,
    /// Set once the connection looks abusive; wakes the connection's driver to drop it.
    abusive: tokio::sync::Notify,
    /// Why (`H2Abuse` index + 1; 0 none).
    abuse: AtomicU8,
    /// Responses that handed the server bytes it has not come back for since: the client
    /// is not taking them (zero window, full socket) or they are being written right now.
    waiting_on_client: AtomicU32,
    /// Last time a response started waiting on the client, in ms since `started`.
    last_wait_ms: AtomicU64,
    /// Last time bytes were written to the client, in ms since `started`.
    last_write_ms: AtomicU64,
    /// Requests in flight on routes with their own `idle_timeout`, and the longest of those
    /// (ms; `u64::MAX`: no limit).
    idle_overrides: AtomicUsize,
    idle_override_ms: AtomicU64,
    /// Parking an idle HTTP/1 connection (`edge/conn.rs`): 0 no, `PARK_ASKED`, `PARKED`.
    park: AtomicU8,
}

const PARK_ASKED: u8 = 1;
const PARKED: u8 = 2;

/// A request's hold on its connection's idle limit (its route's `idle_timeout`): released when
/// dropped, with the request's state.
#[derive(Debug)]
pub struct IdleOverride(Arc<ConnState>);

impl Drop for IdleOverride {
    fn drop(&mut self) {
        if self.0.idle_overrides.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_override_ms.store(0, Ordering::Release);
        }
    }
}

impl ConnState {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            started_coarse_ms: crate::clock::coarse_ms(),
            busy: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_request_ms: AtomicU64::new(0),
            last_io_ms: AtomicU64::new(0),
            linger: AtomicBool::new(false),
            head_verdict: AtomicU8::new(0),
            premature_resets: AtomicU64::new(0),
            abusive: tokio::sync::Notify::new(),
            abuse: AtomicU8::new(0),
            waiting_on_client: AtomicU32::new(0),
            last_wait_ms: AtomicU64::new(0),
            last_write_ms: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            tunnel_done: tokio::sync::Notify::new(),
            idle_overrides: AtomicUsize::new(0),
            idle_override_ms: AtomicU64::new(0),
            park: AtomicU8::new(0),
        }
    }

    /// A request of a route with its own `idle_timeout` (`ZERO`: none) is in flight: until the
    /// returned hold is dropped, the connection may be idle that long with requests in flight
    /// (the longest such route's, when several are in flight on one HTTP/2 connection).
    pub fn override_idle(self: &Arc<Self>, idle: Duration) -> IdleOverride {
        let ms = if idle.is_zero() {
            u64::MAX
        } else {
            idle.as_millis() as u64
        };
        self.idle_overrides.fetch_add(1, Ordering::AcqRel);
        self.idle_override_ms.fetch_max(ms, Ordering::AcqRel);
        IdleOverride(self.clone())
    }

    /// How long the connection may go without a byte moving while requests are in flight:
    /// `default` (`[limits] idle_timeout`), or the routes' override; `None`: no limit.
    pub fn stall_timeout(&self, default: Duration) -> Option<Duration> {
        if self.idle_overrides.load(Ordering::Acquire) == 0 {
            return Some(default);
        }
        match self.idle_override_ms.load(Ordering::Acquire) {
            u64::MAX => None,
            0 => Some(default),
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The connection is a tunnel from now on: the head timer and scan stop.
    pub fn set_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    /// The tunnel this connection became has closed.
    pub fn tunnel_ended(&self) {
        self.tunnel_done.notify_one();
    }

    /// Resolves once the tunnel has closed: until then the connection still counts against
    /// `max_connections` and the drain waits for it.
    pub async fn tunnel_closed(&self) {
        self.tunnel_done.notified().await;
    }

    /// When bytes last moved either way on this connection.
    pub fn last_io(&self) -> Instant {
        self.at(self.last_io_ms.load(Ordering::Relaxed))
    }

    /// An HTTP/2 stream was reset by the client before its response. A connection where at
    /// least half of `PREMATURE_RESET_MIN_STREAMS` or more streams ended that way is the
    /// "rapid reset" attack (CVE-2023-44487): each stream costs us a request, the client
    /// nothing. Returns whether this reset made the connection abusive (then the driver drops
    /// it), as Envoy's premature-reset check does.
    pub fn premature_reset(&self) -> bool {
        let resets = self.premature_resets.fetch_add(1, Ordering::Relaxed) + 1;
        let streams = self.requests();
        let abusive = streams >= PREMATURE_RESET_MIN_STREAMS && resets * 2 >= streams;
        if abusive {
            self.mark_abusive(H2Abuse::RapidReset);
        }
        abusive
    }

    /// The connection is abusive: its driver drops it and counts `reason` (first one wins).
    pub fn mark_abusive(&self, reason: H2Abuse) {
        let idx = H2Abuse::ALL.iter().position(|a| *a == reason).unwrap_or(0) as u8;
        let _ = self
            .abuse
            .compare_exchange(0, idx + 1, Ordering::AcqRel, Ordering::Acquire);
        self.abusive.notify_one();
    }

    /// A response handed the server bytes and waits for it to send them.
    pub fn wait_on_client(&self) {
        self.waiting_on_client.fetch_add(1, Ordering::AcqRel);
        self.last_wait_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The server came back for more (or the response ended).
    pub fn client_took(&self) {
        self.waiting_on_client.fetch_sub(1, Ordering::AcqRel);
    }

    /// Responses whose bytes wait for the client.
    pub fn waiting_on_client(&self) -> u32 {
        self.waiting_on_client.load(Ordering::Acquire)
    }

    /// When responses waiting on the client count as stalled: `send_timeout` after the later
    /// of the last byte written and the last response that started waiting.
    pub fn send_deadline(&self, send_timeout: Duration) -> Instant {
        let ms = self
            .last_write_ms
            .load(Ordering::Relaxed)
            .max(self.last_wait_ms.load(Ordering::Relaxed));
        self.at(ms) + send_timeout
    }

    pub(crate) fn touch_write(&self) {
        self.last_write_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Why the connection was found abusive, if it was.
    pub fn abuse(&self) -> Option<H2Abuse> {
        match self.abuse.load(Ordering::Acquire) {
            0 => None,
            n => H2Abuse::ALL.get(usize::from(n - 1)).copied(),
        }
    }

    /// Resolves once the connection was found abusive.
    pub async fn abused(&self) {
        self.abusive.notified().await;
    }

    /// The raw scan's objection to the head just parsed, if any (taken once): an index into
    /// `edge::h1::SCAN_REASONS`.
    pub fn take_head_verdict(&self) -> Option<u8> {
        match self.head_verdict.swap(0, Ordering::AcqRel) {
            0 => None,
            n => Some(n - 1),
        }
    }

    /// Record the raw scan's verdict on the head being read (index + 1; 0 none).
    pub(crate) fn set_head_verdict(&self, verdict: u8) {
        self.head_verdict.store(verdict, Ordering::Release);
    }

    /// Milliseconds since the connection started, on the coarse clock: these stamps are
    /// taken on every read and write and only feed second-scale timers.
    fn now_ms(&self) -> u64 {
        crate::clock::coarse_ms().saturating_sub(self.started_coarse_ms)
    }

    fn at(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    /// A request head arrived: its response and its body are now outstanding.
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.busy.fetch_add(2, Ordering::AcqRel);
        self.last_request_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A request's response is done, or its body is (each happens once per request).
    pub fn half_done(&self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.last_request_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether any request is in flight (response not written or body not read).
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// When an idle connection may be closed: `idle_timeout` after its last request.
    pub fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        self.at(self.last_request_ms.load(Ordering::Relaxed)) + idle_timeout
    }

    /// When a busy connection counts as stalled: `timeout` after bytes last moved.
    pub fn stall_deadline(&self, timeout: Duration) -> Instant {
        let ms = self
            .last_io_ms
            .load(Ordering::Relaxed)
            .max(self.last_request_ms.load(Ordering::Relaxed));
        self.at(ms) + timeout
    }

    pub(crate) fn touch_io(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Ask the idle HTTP/1 connection to park: its next read that would wait ends hyper's
    /// connection instead (`edge/io.rs`), so its buffers are freed while the client is quiet.
    pub fn ask_park(&self) {
        self.park.store(PARK_ASKED, Ordering::Release);
    }

    pub fn park_asked(&self) -> bool {
        self.park.load(Ordering::Acquire) == PARK_ASKED
    }

    /// Bytes arrived: a park that was asked for is off.
    pub(crate) fn cancel_park(&self) {
        if self.park.load(Ordering::Relaxed) == PARK_ASKED {
            self.park.store(0, Ordering::Release);
        }
    }

    /// hyper was told the stream ended, to park the connection.
    pub(crate) fn set_parked(&self) {
        self.park.store(PARKED, Ordering::Release);
    }

    pub fn is_parked(&self) -> bool {
        self.park.load(Ordering::Acquire) == PARKED
    }

    /// The parked connection is served again (or closed for real).
    pub fn unpark(&self) {
        self.park.store(0, Ordering::Release);
    }

    /// Ask for a lingering close when this connection closes.
    pub fn linger_on_close(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }

    pub(crate) fn wants_linger(&self) -> bool {
        self.linger.load(Ordering::Relaxed)
    }
}

/// Streams a connection must have opened before its share of premature resets is judged.
pub const PREMATURE_RESET_MIN_STREAMS: u64 = 200;

impl Default for ConnState {
    fn default() -> Self {
        Self::new()
    }
}
