//! The client connection's byte stream, watched: bytes counted per listener, activity
//! recorded for the idle and stall timers (`conn.rs`), and the request-head deadline
//! (slowloris protection) enforced for HTTP/1.
//!
//! hyper's own header timer starts when it begins waiting for a request, so on a keep-alive
//! connection it would cut idle clients at `header_timeout`. Here the clock starts at accept
//! and then at the first byte of each later request head, and stops when the head is complete
//! (the connection's request counter moved): idle keep-alive time is `idle_timeout`'s business,
//! a head that trickles in is cut at `header_timeout`.
//!
//! After an early 413 the client may still be sending its body; closing with unread data
//! makes the kernel answer its next writes with a reset, and many clients then never read the
//! 413. So such a connection lingers: write side shut, then up to 256 KiB (or 5 s) read and
//! dropped, then closed (nginx's lingering close).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;

use super::h2_frames::H2Watch;
pub use crate::ctx::conn_state::{ConnState, PREMATURE_RESET_MIN_STREAMS};
use crate::metrics::H2Abuse;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// At most this much of an unwanted body is read before closing.
const LINGER_BYTES: u64 = 256 * 1024;
/// At most this long is spent lingering.
const LINGER_TIME: Duration = Duration::from_secs(5);
/// Heads longer than this are not scanned (hyper refuses them with 431 before that anyway).
const MAX_SCANNED_HEAD: usize = 1 << 20;

/// The watched stream.
pub struct EdgeIo<T> {
    inner: T,
    state: Arc<ConnState>,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    pending_in: u64,
    pending_out: u64,
    head: Option<HeadTimer>,
    linger: Option<Linger>,
    /// HTTP/2 connections: frame counts for the WINDOW_UPDATE rule (`h2_frames.rs`).
    h2: Option<Box<H2Watch>>,
    /// Bytes hyper had read but not parsed when its connection was parked: read first.
    prefix: Option<Bytes>,
}

/// Streams that can say when they have bytes to read without reading them: a parked
/// connection waits on this with no buffer.
pub trait ReadReady {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

/// A parked TLS connection has no plaintext buffered (it parks only when a read would wait),
/// so the socket's readiness is the stream's.
impl ReadReady for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// The request-head deadline of an HTTP/1 connection, and the raw copy of the head being
/// read for `h1::scan_head`.
struct HeadTimer {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// `Some(n)`: a head is being read, and `n` was the request count when it started.
    reading: Option<u64>,
    /// The head's bytes so far, while it is being captured.
    capture: Vec<u8>,
    capturing: bool,
    max_capture: usize,
    /// When the head being read started (`clock::coarse_ms`).
    head_started_ms: u64,
    /// Whether `sleep` is set for the head being read.
    armed: bool,
}

struct Linger {
    write_shut: bool,
    drained: u64,
    deadline: Pin<Box<Sleep>>,
}

impl<T> EdgeIo<T> {
    /// `header_timeout`: for HTTP/1, the request-head deadline; the first head's clock starts
    /// now.
    pub fn new(
        inner: T,
        state: Arc<ConnState>,
        bytes_in: IntCounter,
        bytes_out: IntCounter,
        header_timeout: Option<Duration>,
    ) -> Self {
        let head = header_timeout.map(|timeout| HeadTimer {
            reading: Some(state.requests()),
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            capture: Vec::new(),
            capturing: true,
            max_capture: MAX_SCANNED_HEAD,
            head_started_ms: crate::clock::coarse_ms(),
            armed: true,
        });
        Self {
            inner,
            state,
            bytes_in,
            bytes_out,
            pending_in: 0,
            pending_out: 0,
            head,
            linger: None,
            h2: None,
            prefix: None,
        }
    }

    /// Give back what hyper had read and not parsed when its connection was parked.
    pub fn set_prefix(&mut self, bytes: Bytes) {
        self.prefix = (!bytes.is_empty()).then_some(bytes);
    }

    /// Wait, with no buffer, until the client sends something (or the stream fails).
    pub async fn readable(&self) -> io::Result<()>
    where
        T: ReadReady,
    {
        if self.prefix.is_some() {
            return Ok(());
        }
        std::future::poll_fn(|cx| self.inner.poll_read_ready(cx)).await
    }

    /// An HTTP/1 connection may park when nothing is in flight and no head has begun.
    fn parkable(&self) -> bool {
        let Some(h) = &self.head else {
            return false;
        };
        self.prefix.is_none()
            && !self.state.is_busy()
            && !self.state.is_upgraded()
            && h.reading != Some(self.state.requests())
    }

    /// Watch HTTP/2 frames: `per_data` is `h2_max_window_updates_per_data` (0 = rule off).
    pub fn with_h2_watch(mut self, per_data: u32) -> Self {
        if per_data > 0 {
            self.h2 = Some(Box::new(H2Watch::new(per_data)));
        }
        self
    }

    fn flush_in(&mut self) {
        if self.pending_in > 0 {
            self.bytes_in.inc_by(self.pending_in);
            self.pending_in = 0;
        }
    }

    fn flush_out(&mut self) {
        if self.pending_out > 0 {
            self.bytes_out.inc_by(self.pending_out);
            self.pending_out = 0;
        }
    }
}

/// Where a request head ends in `bytes` (just past its blank line), if it does: the first
/// CRLF CRLF, or a bare LF LF (which hyper also accepts).
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(bytes, b"\r\n\r\n").map(|i| i + 4);
    // A bare LF LF before it would end the head earlier.
    let limit = crlf.unwrap_or(bytes.len());
    let lf = memchr::memmem::find(&bytes[..limit], b"\n\n").map(|i| i + 2);
    lf.or(crlf)
}

impl HeadTimer {
    /// Bytes arrived: a new head starts if the connection was between requests.
    fn on_bytes(&mut self, state: &ConnState, bytes: &[u8]) {
        if state.is_upgraded() {
            self.reading = None;
            self.capturing = false;
            return;
        }
        let requests = state.requests();
        if let Some(start) = self.reading {
            if requests != start || state.is_busy() {
                self.reading = None;
            }
        }
        if self.reading.is_none() && !state.is_busy() {
            self.reading = Some(requests);
            // The timer is armed only if the head is still incomplete when the stream runs
            // dry (`expired`): most heads arrive in one read and never need it.
            self.head_started_ms = crate::clock::coarse_ms();
            self.armed = false;
            self.capture.clear();
            self.capturing = true;
        }
        if self.capturing {
            self.scan(state, bytes);
        }
    }

    /// Copy the head's bytes until its end, then judge it. Pipelined heads (sent while a
    /// request is in flight) are not captured: hyper's normalisation and our re-framing keep
    /// them from being read two ways.
    fn scan(&mut self, state: &ConnState, bytes: &[u8]) {
        if self.capture.is_empty() {
            // The usual case: the whole head arrived in one read. Judge it in place.
            if let Some(end) = head_end(bytes) {
                let verdict = super::h1::scan_head(&bytes[..end]).map_or(0, |i| i + 1);
                state.set_head_verdict(verdict);
                self.capturing = false;
                return;
            }
        }
        let from = self.capture.len().saturating_sub(3);
        self.capture.extend_from_slice(bytes);
        let end = head_end(&self.capture[from..]).map(|e| from + e);
        match end {
            Some(end) => {
                let verdict = super::h1::scan_head(&self.capture[..end]).map_or(0, |i| i + 1);
                state.set_head_verdict(verdict);
                self.capturing = false;
                self.capture.clear();
                self.capture.shrink_to(4096);
            }
            None if self.capture.len() > self.max_capture => {
                self.capturing = false;
                self.capture = Vec::new();
            }
            None => {}
        }
    }

    /// The stream has nothing to read: is the head that is being read late?
    fn expired(&mut self, state: &ConnState, cx: &mut Context<'_>) -> bool {
        let Some(start) = self.reading else {
            return false;
        };
        if state.is_upgraded() {
            self.reading = None;
            return false;
        }
        if state.requests() != start || state.is_busy() {
            // The head was complete; the body or the next request is not our business.
            self.reading = None;
            return false;
        }
        if !self.armed {
            let waited = crate::clock::coarse_ms().saturating_sub(self.head_started_ms);
            let left = self.timeout.saturating_sub(Duration::from_millis(waited));
            self.sleep.as_mut().reset(Instant::now() + left);
            self.armed = true;
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for EdgeIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(prefix) = self.prefix.as_mut() {
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix.split_to(n));
            if prefix.is_empty() {
                self.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n > 0 {
                    let this = &mut *self;
                    this.pending_in += n;
                    this.state.touch_io();
                    this.state.cancel_park();
                    let filled = buf.filled();
                    let fresh = &filled[filled.len() - n as usize..];
                    if let Some(h) = this.head.as_mut() {
                        h.on_bytes(&this.state, fresh);
                    }
                    if let Some(w) = this.h2.as_mut() {
                        if w.on_read(fresh) {
                            // A WINDOW_UPDATE flood: GOAWAY ENHANCE_YOUR_CALM (written here,
                            // between two of hyper's frames, when the stream allows), then
                            // the connection ends.
                            this.state.mark_abusive(H2Abuse::WindowUpdateFlood);
                            if w.write.at_boundary() {
                                let goaway = w.goaway();
                                if let Poll::Ready(Ok(_)) =
                                    Pin::new(&mut this.inner).poll_write(cx, &goaway)
                                {
                                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
                                }
                            }
                            return Poll::Ready(Err(io::Error::other(
                                "HTTP/2 WINDOW_UPDATE flood",
                            )));
                        }
                    }
                } else {
                    self.flush_in();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                self.flush_in();
                let this = &mut *self;
                if let Some(h) = this.head.as_mut() {
                    if h.expired(&this.state, cx) {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not received within header_timeout",
                        )));
                    }
                }
                if this.state.park_asked() && this.parkable() {
                    // Parked: hyper sees the end of the stream on an idle connection and
                    // finishes cleanly; the stream itself stays open (`poll_shutdown`).
                    this.state.set_parked();
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for EdgeIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            self.pending_out += *n as u64;
            self.state.touch_io();
            self.state.touch_write();
            if let Some(w) = self.h2.as_mut() {
                w.on_write(&data[..*n]);
            }
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.pending_out += *n as u64;
            self.state.touch_io();
            self.state.touch_write();
            if let Some(w) = self.h2.as_mut() {
                let mut left = *n;
                for b in bufs {
                    if left == 0 {
                        break;
                    }
                    let k = left.min(b.len());
                    w.on_write(&b[..k]);
                    left -= k;
                }
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush_out();
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush_out();
        if self.state.is_parked() {
            return Poll::Ready(Ok(()));
        }
        if !self.state.wants_linger() {
            return Pin::new(&mut self.inner).poll_shutdown(cx);
        }
        let this = &mut *self;
        let linger = this.linger.get_or_insert_with(|| Linger {
            write_shut: false,
            drained: 0,
            deadline: Box::pin(tokio::time::sleep(LINGER_TIME)),
        });
        if !linger.write_shut {
            match Pin::new(&mut this.inner).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => linger.write_shut = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut buf = [0u8; 8192];
        while linger.drained < LINGER_BYTES {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => break,
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len() as u64;
                    linger.drained += n;
                    this.pending_in += n;
                }
                Poll::Ready(Err(_)) => break,
                Poll::Pending => {
                    if linger.deadline.as_mut().poll(cx).is_ready() {
                        break;
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T> Drop for EdgeIo<T> {
    fn drop(&mut self) {
        self.flush_in();
        self.flush_out();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn io_for(
        server: tokio::io::DuplexStream,
        state: Arc<ConnState>,
    ) -> (EdgeIo<tokio::io::DuplexStream>, IntCounter) {
        let i = IntCounter::new("i", "i").unwrap();
        let o = IntCounter::new("o", "o").unwrap();
        (
            EdgeIo::new(server, state, i.clone(), o, Some(Duration::from_secs(10))),
            i,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_trickles_in_is_cut_at_header_timeout() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut io, _) = io_for(server, Arc::new(ConnState::new()));
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 16);
        tokio::time::advance(Duration::from_secs(11)).await;
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_has_no_head_deadline() {
        let (mut client, server) = tokio::io::duplex(1024);
        let state = Arc::new(ConnState::new());
        let (mut io, bytes_in) = io_for(server, state.clone());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 18);
        // The head was parsed and answered, and it had no body: the connection is idle now.
        state.request_started();
        state.half_done();
        state.half_done();
        let read = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf)).await;
        assert!(read.is_err(), "idle read must just wait, not fail");
        // The next request's first byte starts a fresh clock.
        client.write_all(b"G").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(io.read(&mut buf).await.is_err());
        assert_eq!(bytes_in.get(), 19);
    }

    #[tokio::test(start_paused = true)]
    async fn body_bytes_after_the_response_are_not_a_new_head() {
        let (mut client, server) = tokio::io::duplex(1024);
        let state = Arc::new(ConnState::new());
        let (mut io, _) = io_for(server, state.clone());
        client.write_all(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 19);
        state.request_started();
        // The response is done, the body is still being read.
        state.half_done();
        client.write_all(b"more body").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 9);
        tokio::time::advance(Duration::from_secs(30)).await;
        let read = tokio::time::timeout(Duration::from_secs(1), io.read(&mut buf)).await;
        assert!(read.is_err(), "a slow body must not hit the head deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_is_cut_at_header_timeout() {
        let (_client, server) = tokio::io::duplex(1024);
        let (mut io, _) = io_for(server, Arc::new(ConnState::new()));
        let mut buf = [0u8; 8];
        let started = Instant::now();
        assert!(io.read(&mut buf).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_read_ends_hyper_but_not_the_stream() {
        let (mut client, server) = tokio::io::duplex(1024);
        let state = Arc::new(ConnState::new());
        let (mut io, _) = io_for(server, state.clone());
        let mut buf = [0u8; 64];
        // Asked before any request: the first head is owed, so no park.
        state.ask_park();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), io.read(&mut buf))
                .await
                .is_err(),
            "nothing to read must just wait"
        );
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 18);
        assert!(!state.park_asked(), "bytes cancel a park");
        // Mid-request: no park.
        state.request_started();
        state.ask_park();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), io.read(&mut buf))
                .await
                .is_err(),
            "a request in flight must not park"
        );
        state.half_done();
        state.half_done();
        // Idle: the read that would wait ends (0 bytes) and the connection is parked.
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert!(state.is_parked());
        // hyper's shutdown does not reach the stream.
        io.shutdown().await.unwrap();
        client.write_all(b"G").await.unwrap();
        state.unpark();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        // Half a head: no park until it is complete and answered.
        state.ask_park();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), io.read(&mut buf))
                .await
                .is_err(),
            "a head in progress must not park"
        );
        assert!(!state.is_parked());
    }

    #[tokio::test]
    async fn bytes_hyper_had_not_parsed_are_read_first_after_a_park() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut io, bytes_in) = io_for(server, Arc::new(ConnState::new()));
        io.set_prefix(Bytes::from_static(b"GET /a"));
        client.write_all(b" HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
        assert_eq!(&buf, b"GET ");
        let mut rest = [0u8; 64];
        assert_eq!(io.read(&mut rest).await.unwrap(), 2);
        assert_eq!(&rest[..2], b"/a");
        assert_eq!(io.read(&mut rest).await.unwrap(), 13);
        drop(io);
        // The prefix was counted when it was first read.
        assert_eq!(bytes_in.get(), 13);
    }
}
