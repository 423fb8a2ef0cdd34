//! (5) The connections of one endpoint: a keep-alive pool of HTTP/1.1 connections and a few
//! multiplexed HTTP/2 connections, in plain text or TLS. The upstream tier (6) takes a sender
//! from it and gives HTTP/1.1 senders back when their response ended.
//!
//! Our own rather than hyper-util's legacy client: a connect error must leave the request
//! untouched so it can move on to the balancer's next choice (the legacy client consumes the
//! body), and later limits (`max_pending`) need a per-endpoint view. Idle HTTP/1.1 connections
//! sit in a lock-free bounded queue; HTTP/2 connections in an `ArcSwap`'d list read without a
//! lock, each with an atomic count of its open streams (`h2_max_streams_per_connection`). A
//! mutex is taken only to open an HTTP/2 connection, so a burst of requests opens one
//! connection, not one per request.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use futures_util::future::Either;
use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::addrs::Addrs;
use super::h1::H1Conn;
use crate::body::ReqBody;
use crate::config::{Protocol, Upstream, UpstreamTls};
use crate::metrics::EndpointMetrics;

/// An idle connection older than this is closed rather than reused: upstream servers close
/// idle keep-alive connections after 60-75 s (nginx 75 s, Node 5 s by default), and reusing one
/// they are closing costs a failed send.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// A way to send one request: an HTTP/1.1 connection of its own, or a stream slot on a shared
/// HTTP/2 connection (given back when dropped).
pub enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(H2Stream),
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::H1(_) => "Sender::H1",
            Self::H2(_) => "Sender::H2",
        })
    }
}

/// One stream's place on an HTTP/2 connection.
pub struct H2Stream {
    sender: http2::SendRequest<ReqBody>,
    conn: Arc<H2Conn>,
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.conn.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

struct H2Conn {
    sender: http2::SendRequest<ReqBody>,
    streams: AtomicU32,
    /// A stream on it was cut by the server's GOAWAY: no new streams, even before hyper
    /// reports the connection not ready.
    refused: std::sync::atomic::AtomicBool,
}

/// What sending returns: the response, or the request back when it was not sent.
pub type Sent = Result<Response<Incoming>, TrySendError<Request<ReqBody>>>;

impl Sender {
    /// Ready to send now (a pooled HTTP/1.1 connection may be closing).
    pub fn is_ready(&self) -> bool {
        match self {
            Self::H1(s) => s.is_ready(),
            Self::H2(s) => s.sender.is_ready(),
        }
    }

    /// The server's GOAWAY cut a stream on this HTTP/2 connection: new streams go elsewhere.
    pub fn refused(&self) {
        if let Self::H2(s) = self {
            s.conn.refused.store(true, Ordering::Release);
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Self::H2(_))
    }

    /// Send `req`; a request that could not be sent comes back in the error.
    pub fn try_send_request(
        &mut self,
        req: Request<ReqBody>,
    ) -> impl Future<Output = Sent> + Send + 'static {
        match self {
            Self::H1(s) => Either::Left(s.try_send_request(req)),
            Self::H2(s) => Either::Right(s.sender.try_send_request(req)),
        }
    }
}

/// How to reach the endpoint.
#[derive(Clone)]
struct Dialer {
    addrs: Arc<Addrs>,
    protocol: Protocol,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    max_streams: u32,
}

impl Dialer {
    /// A TCP connection to the endpoint's next address (returned with it), with Nagle off.
    async fn tcp(&self, timeout: Duration) -> io::Result<(SocketAddr, TcpStream)> {
        let addr = self.addrs.next();
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(s) => s?,
            Err(_) => return Err(timed_out(addr, timeout)),
        };
        let _ = stream.set_nodelay(true);
        Ok((addr, stream))
    }
}

pub struct Pool {
    dialer: Dialer,
    /// `None` when `max_idle_per_target = 0`: every HTTP/1.1 connection closes after its response.
    idle: Option<ArrayQueue<Idle>>,
    /// Idle connections of the lean HTTP/1.1 client (`h1.rs`): plain-text HTTP/1.1 endpoints.
    idle_lean: Option<ArrayQueue<Box<H1Conn>>>,
    /// Bodiless GET and HEAD requests take the lean client: HTTP/1.1 in plain text.
    lean: bool,
    h2: ArcSwap<Vec<Arc<H2Conn>>>,
    /// Held while an HTTP/2 connection is being opened.
    opening: tokio::sync::Mutex<()>,
    /// ALPN chose HTTP/1.1 for this endpoint (`protocol = "auto"`): no HTTP/2 gate.
    learned_h1: AtomicBool,
    conns_h1: IntGauge,
    conns_h2: IntGauge,
    tls_ok: prometheus::IntCounter,
    tls_error: prometheus::IntCounter,
}

struct Idle {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("addrs", &self.dialer.addrs)
            .field("protocol", &self.dialer.protocol)
            .field("idle", &self.idle_count())
            .finish()
    }
}

/// How a pool reaches its endpoint: what an upstream's config says of it.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    pub protocol: Protocol,
    pub tls: Option<UpstreamTls>,
    /// Idle HTTP/1.1 connections kept (`max_idle_per_target`).
    pub max_idle: usize,
    /// Streams per HTTP/2 connection (`h2_max_streams_per_connection`).
    pub max_streams: u32,
}

impl From<&Upstream> for PoolOptions {
    fn from(cfg: &Upstream) -> Self {
        Self {
            protocol: cfg.protocol,
            tls: cfg.tls.clone(),
            max_idle: cfg.max_idle_per_target,
            max_streams: cfg.h2_max_streams_per_connection,
        }
    }
}

impl Pool {
    /// The pool of the endpoint at `addrs`. `max_idle` idle HTTP/1.1 connections are kept;
    /// more are closed when they come back, so a burst's connections do not all stay open.
    /// TLS verifies `server_name`, else the endpoint's DNS name, else its IP address.
    pub fn new(addrs: Arc<Addrs>, cfg: &PoolOptions, metrics: &EndpointMetrics) -> Self {
        let tls = cfg.tls.as_ref().map(|t| {
            let ip = ServerName::IpAddress(addrs.first().ip().into());
            let name = match t.server_name.as_deref().or(addrs.host()) {
                Some(n) => ServerName::try_from(n.to_string()).unwrap_or(ip),
                None => ip,
            };
            (tokio_rustls::TlsConnector::from(t.client.clone()), name)
        });
        let max_idle = cfg.max_idle;
        Self {
            dialer: Dialer {
                addrs,
                protocol: cfg.protocol,
                tls,
                max_streams: cfg.max_streams.max(1),
            },
            idle: (max_idle > 0).then(|| ArrayQueue::new(max_idle)),
            idle_lean: (max_idle > 0 && cfg.protocol == Protocol::Http1 && cfg.tls.is_none())
                .then(|| ArrayQueue::new(max_idle)),
            lean: cfg.protocol == Protocol::Http1 && cfg.tls.is_none(),
            h2: ArcSwap::from_pointee(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
            learned_h1: AtomicBool::new(false),
            conns_h1: metrics.conns_h1.clone(),
            conns_h2: metrics.conns_h2.clone(),
            tls_ok: metrics.tls_ok.clone(),
            tls_error: metrics.tls_error.clone(),
        }
    }

    /// Whether requests to this endpoint may share HTTP/2 connections.
    fn may_be_h2(&self) -> bool {
        match self.dialer.protocol {
            Protocol::H2 => true,
            Protocol::Auto => self.dialer.tls.is_some() && !self.learned_h1.load(Ordering::Relaxed),
            Protocol::Http1 => false,
        }
    }

    /// A stream slot on an open HTTP/2 connection with room, or an idle HTTP/1.1 connection.
    pub fn take_idle(&self) -> Option<Sender> {
        if let Some(s) = self.h2_slot() {
            return Some(s);
        }
        let idle = self.idle.as_ref()?;
        while let Some(idle) = idle.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(Sender::H1(idle.sender));
            }
        }
        None
    }

    /// Whether bodiless GET and HEAD requests go through the lean client (`h1.rs`).
    pub fn is_lean(&self) -> bool {
        self.lean
    }

    /// An idle lean connection that is still clean (the upstream did not close it meanwhile).
    pub fn take_lean(&self) -> Option<Box<H1Conn>> {
        let idle = self.idle_lean.as_ref()?;
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < IDLE_TIMEOUT && conn.is_clean() {
                return Some(conn);
            }
        }
        None
    }

    /// Hand a lean connection back after its response was read to the end (a full pool closes it).
    pub fn put_back_lean(&self, mut conn: Box<H1Conn>) {
        if let Some(idle) = &self.idle_lean {
            conn.since = Instant::now();
            let _ = idle.push(conn);
        }
    }

    /// A new lean connection.
    pub async fn connect_lean(&self, timeout: Duration) -> io::Result<Box<H1Conn>> {
        let (_, stream) = self.dialer.tcp(timeout).await?;
        Ok(H1Conn::new(stream, self.conns_h1.clone()))
    }

    fn h2_slot(&self) -> Option<Sender> {
        let conns = self.h2.load();
        for c in conns.iter() {
            // Closed, or going away (the server sent GOAWAY): new streams go elsewhere.
            if c.sender.is_closed() || !c.sender.is_ready() || c.refused.load(Ordering::Acquire) {
                continue;
            }
            if c.streams.fetch_add(1, Ordering::AcqRel) < self.dialer.max_streams {
                return Some(Sender::H2(H2Stream {
                    sender: c.sender.clone(),
                    conn: c.clone(),
                }));
            }
            c.streams.fetch_sub(1, Ordering::AcqRel);
        }
        None
    }

    /// Hand a connection back after its response ended (HTTP/2 slots free themselves).
    pub fn put_back(&self, sender: Sender) {
        let Sender::H1(sender) = sender else { return };
        if let (false, Some(idle)) = (sender.is_closed(), &self.idle) {
            // A full pool drops (closes) the connection.
            let _ = idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Close idle connections that are closed or too old; forget closed HTTP/2 connections.
    pub fn reap(&self) {
        if let Some(queue) = &self.idle {
            for _ in 0..queue.len() {
                let Some(idle) = queue.pop() else { break };
                if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
                    let _ = queue.push(idle);
                }
            }
        }
        if let Some(queue) = &self.idle_lean {
            for _ in 0..queue.len() {
                let Some(conn) = queue.pop() else { break };
                if conn.since.elapsed() < IDLE_TIMEOUT && conn.is_clean() {
                    let _ = queue.push(conn);
                }
            }
        }
        if self.h2.load().iter().any(|c| c.sender.is_closed()) {
            self.h2.rcu(|list| {
                list.iter()
                    .filter(|c| !c.sender.is_closed())
                    .cloned()
                    .collect::<Vec<_>>()
            });
        }
    }

    /// The endpoint's addresses changed (DNS): close idle connections and stop opening streams
    /// on the open HTTP/2 ones (their streams finish), so new requests reach the new addresses.
    pub fn forget_connections(&self) {
        if let Some(queue) = &self.idle {
            while queue.pop().is_some() {}
        }
        if let Some(queue) = &self.idle_lean {
            while queue.pop().is_some() {}
        }
        self.h2.store(Arc::new(Vec::new()));
    }

    /// Idle HTTP/1.1 connections plus open HTTP/2 connections.
    pub fn idle_count(&self) -> usize {
        self.idle.as_ref().map_or(0, ArrayQueue::len)
            + self.idle_lean.as_ref().map_or(0, ArrayQueue::len)
            + self.h2.load().len()
    }

    /// A sender for a health probe: a stream on an open HTTP/2 connection, else a new
    /// connection (HTTP/2 ones join the pool, HTTP/1.1 ones close after the probe).
    pub async fn probe_sender(&self, timeout: Duration) -> io::Result<Sender> {
        if let Some(s) = self.h2_slot() {
            return Ok(s);
        }
        self.connect(timeout).await
    }

    /// Whether this endpoint is reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.dialer.tls.is_some()
    }

    /// A sender on a new connection (or, for HTTP/2, on one another request opened
    /// meanwhile). Its I/O runs on a task of its own.
    pub async fn connect(&self, timeout: Duration) -> io::Result<Sender> {
        if !self.may_be_h2() {
            return self.dial(timeout).await;
        }
        let _one = match tokio::time::timeout(timeout, self.opening.lock()).await {
            Ok(guard) => guard,
            Err(_) => return Err(timed_out(self.dialer.addrs.first(), timeout)),
        };
        if let Some(s) = self.h2_slot() {
            return Ok(s);
        }
        self.dial(timeout).await
    }

    async fn dial(&self, timeout: Duration) -> io::Result<Sender> {
        let d = &self.dialer;
        let started = Instant::now();
        let (addr, stream) = d.tcp(timeout).await?;
        let Some((connector, name)) = &d.tls else {
            let h2 = d.protocol == Protocol::H2;
            return self.handshake(stream, h2).await;
        };
        let left = timeout.saturating_sub(started.elapsed());
        let tls = match tokio::time::timeout(left, connector.connect(name.clone(), stream)).await {
            Ok(Ok(tls)) => {
                self.tls_ok.inc();
                tls
            }
            Ok(Err(e)) => {
                self.tls_error.inc();
                tracing::warn!(target_addr = %addr, error = %e, "upstream TLS handshake failed");
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("TLS handshake with {addr} failed: {e}"),
                ));
            }
            Err(_) => {
                self.tls_error.inc();
                return Err(timed_out(addr, timeout));
            }
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        if !h2 && d.protocol == Protocol::Auto {
            self.learned_h1.store(true, Ordering::Relaxed);
        }
        if !h2 && d.protocol == Protocol::H2 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{addr} did not agree to HTTP/2 (ALPN h2)"),
            ));
        }
        self.handshake(tls, h2).await
    }

    async fn handshake<I>(&self, io: I, h2: bool) -> io::Result<Sender>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .handshake(TokioIo::new(io))
                .await
                .map_err(io::Error::other)?;
            let gauge = self.conns_h2.clone();
            gauge.inc();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
                gauge.dec();
            });
            let conn = Arc::new(H2Conn {
                sender: sender.clone(),
                streams: AtomicU32::new(1),
                refused: std::sync::atomic::AtomicBool::new(false),
            });
            self.h2.rcu(|list| {
                let mut next: Vec<Arc<H2Conn>> = list
                    .iter()
                    .filter(|c| !c.sender.is_closed())
                    .cloned()
                    .collect();
                next.push(conn.clone());
                next
            });
            return Ok(Sender::H2(H2Stream { sender, conn }));
        }
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(1 << 20)
            .handshake(TokioIo::new(io))
            .await
            .map_err(io::Error::other)?;
        let gauge = self.conns_h1.clone();
        gauge.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            gauge.dec();
        });
        Ok(Sender::H1(sender))
    }
}

/// Shape the request for the connection it goes on: HTTP/2 wants the scheme and authority in
/// the URI (no `Host`) and `te: trailers` for gRPC; HTTP/1.1 the origin-form and `Host`. A
/// request that came back unsent may go on the other kind, so both directions are handled.
pub fn fit_request(req: &mut Request<ReqBody>, h2: bool, https: bool) {
    if h2 {
        if req.uri().scheme().is_none() {
            let authority = req
                .headers_mut()
                .remove(header::HOST)
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = Some(if https {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            });
            parts.authority =
                Some(authority.unwrap_or_else(|| http::uri::Authority::from_static("upstream")));
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        *req.version_mut() = Version::HTTP_2;
        if crate::grpc::is_grpc(req.headers()) {
            req.headers_mut()
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
    } else if req.uri().scheme().is_some() {
        if let Some(a) = req.uri().authority() {
            if let Ok(h) = HeaderValue::from_str(a.as_str()) {
                req.headers_mut().insert(header::HOST, h);
            }
        }
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
        *req.version_mut() = Version::HTTP_11;
        req.headers_mut().remove(header::TE);
    }
}

fn timed_out(addr: SocketAddr, timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("connect to {addr} timed out after {timeout:?}"),
    )
}
