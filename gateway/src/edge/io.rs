//! The client connection's byte stream, watched: bytes counted per listener, and the request
//! head deadline (slowloris protection) enforced for HTTP/1.
//!
//! hyper's own header timer starts when it begins waiting for a request, so on a keep-alive
//! connection it would cut idle clients at `header_timeout`. Here the clock starts at accept
//! and then at the first byte of each later request head, and stops when the head is complete
//! (the connection's request counter moved): idle keep-alive time is `idle_timeout`'s business
//! (`conn.rs`), a head that trickles in is cut at `header_timeout`.
//!
//! After an early 413 the client may still be sending its body; closing with unread data
//! would make the kernel answer with a reset that can destroy the 413 before the client
//! reads it. So such a connection lingers: write side shut, then up to 256 KiB (or 5 s) read
//! and dropped, then closed (nginx's lingering close).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// At most this much of an unwanted body is read before closing.
const LINGER_BYTES: u64 = 256 * 1024;
/// At most this long is spent lingering.
const LINGER_TIME: Duration = Duration::from_secs(5);

/// Per-connection request bookkeeping shared by the I/O wrapper, the connection task and the
/// service. One per connection: never contended across connections.
#[derive(Debug)]
pub struct ConnState {
    started: Instant,
    /// Requests whose response is not finished yet.
    in_flight: AtomicUsize,
    /// Requests started on this connection so far.
    requests: AtomicU64,
    /// When the connection last became idle, in ms since `started`.
    idle_since_ms: AtomicU64,
    /// Read and drop what the client still sends before closing (after an early 413).
    linger: AtomicBool,
}

impl ConnState {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            linger: AtomicBool::new(false),
        }
    }

    /// Ask for a lingering close when this connection closes.
    pub fn linger_on_close(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }

    fn wants_linger(&self) -> bool {
        self.linger.load(Ordering::Relaxed)
    }

    pub fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = self.started.elapsed().as_millis() as u64;
            self.idle_since_ms.store(ms, Ordering::Relaxed);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// When the connection may be closed for idleness, if it is idle now.
    pub fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        if self.in_flight() > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        Some(self.started + since + idle_timeout)
    }
}

impl Default for ConnState {
    fn default() -> Self {
        Self::new()
    }
}

/// The watched stream.
pub struct EdgeIo<T> {
    inner: T,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    pending_in: u64,
    pending_out: u64,
    head: Option<HeadTimer>,
    linger: Option<Linger>,
}

struct Linger {
    write_shut: bool,
    drained: u64,
    deadline: Pin<Box<Sleep>>,
}

/// The request-head deadline of an HTTP/1 connection.
struct HeadTimer {
    state: Arc<ConnState>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// `Some(n)`: a head is being read, and `n` was the request count when it started.
    reading: Option<u64>,
}

impl<T> EdgeIo<T> {
    /// `head`: for HTTP/1, the connection's state and `header_timeout`; the first head's clock
    /// starts now.
    pub fn new(
        inner: T,
        bytes_in: IntCounter,
        bytes_out: IntCounter,
        head: Option<(Arc<ConnState>, Duration)>,
    ) -> Self {
        let head = head.map(|(state, timeout)| HeadTimer {
            reading: Some(state.requests()),
            state,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        });
        Self {
            inner,
            bytes_in,
            bytes_out,
            pending_in: 0,
            pending_out: 0,
            head,
            linger: None,
        }
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

impl HeadTimer {
    /// Bytes arrived: a new head starts if the connection was between requests.
    fn on_bytes(&mut self) {
        let requests = self.state.requests();
        if let Some(start) = self.reading {
            if requests != start || self.state.in_flight() > 0 {
                self.reading = None;
            }
        }
        if self.reading.is_none() && self.state.in_flight() == 0 {
            self.reading = Some(requests);
            self.sleep.as_mut().reset(Instant::now() + self.timeout);
        }
    }

    /// The stream has nothing to read: is the head that is being read late?
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(start) = self.reading else {
            return false;
        };
        if self.state.requests() != start || self.state.in_flight() > 0 {
            // The head was complete; the body or the next request is not our business.
            self.reading = None;
            return false;
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for EdgeIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n > 0 {
                    self.pending_in += n;
                    if let Some(h) = self.head.as_mut() {
                        h.on_bytes();
                    }
                } else {
                    self.flush_in();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                self.flush_in();
                if let Some(h) = self.head.as_mut() {
                    if h.expired(cx) {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not received within header_timeout",
                        )));
                    }
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
        let lingers = self.head.as_ref().is_some_and(|h| h.state.wants_linger());
        if !lingers {
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

    fn counters() -> (IntCounter, IntCounter) {
        (
            IntCounter::new("i", "i").unwrap(),
            IntCounter::new("o", "o").unwrap(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_trickles_in_is_cut_at_header_timeout() {
        let (client, server) = tokio::io::duplex(1024);
        let (i, o) = counters();
        let state = Arc::new(ConnState::new());
        let mut io = EdgeIo::new(server, i, o, Some((state, Duration::from_secs(10))));
        let mut client = client;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(n, 16);
        tokio::time::advance(Duration::from_secs(11)).await;
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_has_no_head_deadline() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (i, o) = counters();
        let state = Arc::new(ConnState::new());
        let mut io = EdgeIo::new(
            server,
            i.clone(),
            o,
            Some((state.clone(), Duration::from_secs(10))),
        );
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 18);
        // The head was parsed and answered: the connection is idle now.
        state.request_started();
        state.request_finished();
        let read = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf)).await;
        assert!(read.is_err(), "idle read must just wait, not fail");
        // The next request's first byte starts a fresh clock.
        client.write_all(b"G").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(io.read(&mut buf).await.is_err());
        assert_eq!(i.get(), 19);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_is_cut_at_header_timeout() {
        let (_client, server) = tokio::io::duplex(1024);
        let (i, o) = counters();
        let mut io = EdgeIo::new(
            server,
            i,
            o,
            Some((Arc::new(ConnState::new()), Duration::from_secs(10))),
        );
        let mut buf = [0u8; 8];
        let started = Instant::now();
        assert!(io.read(&mut buf).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
