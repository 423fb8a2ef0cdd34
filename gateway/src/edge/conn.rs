//! One client connection: TLS handshake (HTTPS listeners), protocol by ALPN, the HTTP/1 or
//! HTTP/2 server with the `[limits]`, the idle, stall and close timers, and graceful drain.
//! Requests go from here to the edge stack of the current config generation (`stack.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::Service;

use super::io::{ConnState, EdgeIo};
use super::proxy_protocol;
use super::{ConnInfo, Shared};
use crate::body::ReqBody;
use crate::client_addr::is_trusted;
use crate::config::Limits;
use crate::policy::observe::ObservedBody;
use crate::runtime::{EdgeService, ListenerRt};

/// After a graceful close starts (GOAWAY, or keep-alive off), an idle connection gets this
/// long to finish before it is dropped: a peer that never acknowledges cannot hold it open.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Serve one accepted connection until it closes, idles out, stalls or is drained.
pub async fn serve(
    mut stream: TcpStream,
    tcp_peer: SocketAddr,
    listener: Arc<ListenerRt>,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    // Dead peers (a NAT that dropped the flow, a pulled cable) are found by the kernel.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    let (limits, peer) = {
        let rt = shared.runtime.load();
        let limits = rt.config.limits.clone();
        let mut peer = tcp_peer;
        if listener.info.proxy_protocol {
            let header = tokio::time::timeout(
                limits.header_timeout,
                Box::pin(proxy_protocol::read(&mut stream)),
            );
            match header.await {
                Ok(Ok(Ok(proxy_protocol::Header::Proxied { source, .. }))) => {
                    if is_trusted(tcp_peer.ip(), &rt.config.server.trusted_proxies) {
                        peer = source;
                    } else {
                        tracing::debug!(peer = %tcp_peer, claimed = %source, listener = %listener.info.name, "PROXY header from a peer not in trusted_proxies: ignored");
                    }
                }
                Ok(Ok(Ok(proxy_protocol::Header::Local))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::info!(peer = %tcp_peer, listener = %listener.info.name, error = %e, "closing connection");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %tcp_peer, listener = %listener.info.name, error = %e, "connection closed before its PROXY header");
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = %tcp_peer, listener = %listener.info.name, "no PROXY header within header_timeout: closing connection");
                    return;
                }
            }
        }
        (limits, peer)
    };
    let state = Arc::new(ConnState::new());

    let Some(acceptor) = &listener.tls else {
        // h2c: HTTP/2 with prior knowledge starts with the client preface; anything else is
        // HTTP/1.1 on the same port.
        let h2 = listener.info.h2c
            && Box::pin(starts_with_h2_preface(&stream, limits.header_timeout)).await;
        // Each stage's future is boxed and freed when done: the task keeps only this one's
        // small state, which is what an idle connection costs (with its socket).
        Box::pin(serve_stream(
            stream,
            h2,
            (peer, tcp_peer, None),
            &listener,
            state,
            &limits,
            shared,
        ))
        .await;
        return;
    };
    Box::pin(serve_tls(
        stream, acceptor, peer, tcp_peer, &listener, state, &limits, shared,
    ))
    .await;
}

/// An HTTPS connection: the handshake, then `serve_stream`.
#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    stream: TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    peer: SocketAddr,
    tcp_peer: SocketAddr,
    listener: &ListenerRt,
    state: Arc<ConnState>,
    limits: &Limits,
    shared: Arc<Shared>,
) {
    let metrics = &listener.metrics;
    let tls = match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            if let Some(c) = &metrics.tls_ok {
                c.inc();
            }
            tls
        }
        Ok(Err(e)) => {
            if let Some(c) = &metrics.tls_error {
                c.inc();
            }
            tracing::debug!(%peer, listener = %listener.info.name, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            if let Some(c) = &metrics.tls_error {
                c.inc();
            }
            tracing::debug!(%peer, listener = %listener.info.name, "TLS handshake timed out");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    // A client certificate the verifier accepted (listeners with `client_auth`).
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| crate::tls::client_identity(leaf.as_ref()))
        .and_then(|(subject, sha256)| {
            Some(Arc::new(crate::ctx::ClientCert {
                subject: HeaderValue::from_str(&subject).ok()?,
                sha256: HeaderValue::from_str(&sha256).ok()?,
            }))
        });
    serve_stream(
        tls,
        h2,
        (peer, tcp_peer, client_cert),
        listener,
        state,
        limits,
        shared,
    )
    .await;
}

async fn serve_stream<T>(
    stream: T,
    h2: bool,
    (peer, tcp_peer, client_cert): (SocketAddr, SocketAddr, Option<Arc<crate::ctx::ClientCert>>),
    listener: &ListenerRt,
    state: Arc<ConnState>,
    limits: &Limits,
    shared: Arc<Shared>,
) where
    T: AsyncRead + AsyncWrite + super::io::ReadReady + Unpin + Send + 'static,
{
    let metrics = &listener.metrics;
    let io = EdgeIo::new(
        stream,
        state.clone(),
        metrics.bytes_in.clone(),
        metrics.bytes_out.clone(),
        (!h2).then_some(limits.header_timeout),
    );
    let io = if h2 {
        io.with_h2_watch(limits.h2_max_window_updates_per_data)
    } else {
        io
    };
    let svc = EdgeAdapter {
        shared: shared.clone(),
        info: Arc::new(ConnInfo {
            state: Some(state.clone()),
            client_cert,
            ..ConnInfo::new(peer, tcp_peer, listener.info.clone(), h2)
        }),
        state: state.clone(),
    };
    if h2 {
        metrics.h2.inc();
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
            .max_send_buf_size(1 << 20);
        // Boxed, like HTTP/1's: the connection task's own size is what an idle one keeps.
        let mut conn = Box::pin(builder.serve_connection(TokioIo::new(io), svc));
        Box::pin(drive(
            conn.as_mut(),
            |c| c.graceful_shutdown(),
            &state,
            limits,
            None,
            &shared,
            (&metrics.h2_closed, &metrics.h2_reset_send_timeout),
        ))
        .await;
    } else {
        metrics.h1.inc();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Our own head timer (io.rs) does this; hyper's would start when it begins waiting
            // (idle time included) and cost a timer per request. A head pipelined behind a
            // request in flight is timed by ours from its first byte after that request is done.
            .header_read_timeout(None)
            .max_headers(limits.max_headers)
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(limits.max_header_bytes.max(8192) + 8192)
            // One buffer per response (head and body copied together) rather than a queue
            // written with writev: −470 instructions per proxied request (callgrind), and
            // what hyper advises over TLS. The buffer stays bounded by `max_buf_size`.
            .writev(false)
            .keep_alive(true);
        let (mut io, mut svc) = (io, svc);
        loop {
            // Upgrades (WebSocket) hand the connection to a tunnel once the 101 is written.
            let mut conn = Box::pin(
                builder
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades(),
            );
            let driven = Box::pin(drive(
                conn.as_mut(),
                |c| c.graceful_shutdown(),
                &state,
                limits,
                Some(PARK_AFTER),
                &shared,
                (&metrics.h2_closed, &metrics.h2_reset_send_timeout),
            ))
            .await;
            if driven == Driven::Ended {
                return;
            }
            // Parked: hyper's connection (its read and write buffers, the boxed request
            // future) is freed; the socket waits here with no buffer.
            let Some(parts) = Pin::into_inner(conn).into_parts() else {
                return;
            };
            (io, svc) = (parts.io.into_inner(), parts.service);
            io.set_prefix(parts.read_buf);
            if !wait_parked(&mut io, &state, limits, &shared).await {
                return;
            }
        }
    }
}

/// An HTTP/1 connection with nothing in flight for this long is parked: hyper's connection and
/// its buffers are dropped and the socket waits with none (an idle keep-alive connection costs
/// its task and socket, about 2 KiB, instead of ~20 KiB), then a fresh one serves what comes.
/// Busy connections never park; this costs a parked connection one hyper setup when it wakes.
const PARK_AFTER: Duration = Duration::from_millis(250);

/// A parked connection waits for its client: `true` to serve what it sends, `false` when
/// it was closed instead (idle for `idle_timeout`, or the gateway drains).
async fn wait_parked<T>(
    io: &mut EdgeIo<T>,
    state: &ConnState,
    limits: &Limits,
    shared: &Shared,
) -> bool
where
    T: AsyncRead + AsyncWrite + Unpin + super::io::ReadReady,
{
    let mut drain = shared.drain_signal();
    let resume = if *drain.borrow() {
        false
    } else {
        let idle = tokio::time::sleep_until(state.idle_deadline(limits.idle_timeout));
        tokio::select! {
            ready = io.readable() => ready.is_ok(),
            () = idle => false,
            _ = drain.changed() => false,
        }
    };
    state.unpark();
    if !resume {
        let _ = tokio::time::timeout(CLOSE_GRACE, tokio::io::AsyncWriteExt::shutdown(io)).await;
    }
    resume
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the first bytes on `stream` are the HTTP/2 preface (peeked, not consumed): decided
/// as soon as a byte differs, or when 24 bytes are in; `false` if nothing comes in time.
async fn starts_with_h2_preface(stream: &TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        // Part of the preface so far: wait for more.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the connection's timer decided.
enum Check {
    /// Start a graceful close (idle, or no request in time on HTTP/2).
    Close,
    /// Drop the connection now (stalled, or a graceful close that did not finish).
    Abort,
    /// Responses waited on the client for `send_timeout`: drop the connection.
    SendTimeout,
    /// Park the idle HTTP/1 connection (`PARK_AFTER`).
    Park,
    /// Look again then.
    At(Instant),
}

/// How `drive` ended.
#[derive(PartialEq, Eq)]
enum Driven {
    Ended,
    /// hyper's connection finished to park (HTTP/1, idle): the stream is still open.
    Parked,
}

/// The timers of one connection:
/// * idle: no request for `idle_timeout` → graceful close;
/// * stall: requests in flight but no byte moved either way for `idle_timeout` → dropped
///   (a client that stopped reading, an upstream that stopped sending);
/// * HTTP/2 head: no request within `header_timeout` of the handshake → graceful close;
/// * closing: once a graceful close started and nothing is in flight, `CLOSE_GRACE` to finish.
fn check(
    state: &ConnState,
    limits: &Limits,
    (h2, park_after): (bool, Option<Duration>),
    closing_since: Option<Instant>,
    now: Instant,
) -> Check {
    let busy = state.is_busy();
    if busy {
        // A route's own `idle_timeout` (in flight) overrides the limit; "0s" lifts it.
        let stall = state
            .stall_timeout(limits.idle_timeout)
            .map_or(now + Duration::from_secs(3600), |t| state.stall_deadline(t));
        if now >= stall {
            return Check::Abort;
        }
        if state.waiting_on_client() > 0 && now >= state.send_deadline(limits.send_timeout) {
            return Check::SendTimeout;
        }
        // Responses may start waiting on the client at any time: look again soon.
        let tick = now + limits.send_timeout.min(Duration::from_secs(1));
        return Check::At(stall.min(tick));
    }
    if let Some(since) = closing_since {
        let end = since.max(state.idle_deadline(Duration::ZERO)) + CLOSE_GRACE;
        return if now >= end {
            Check::Abort
        } else {
            Check::At(end)
        };
    }
    let mut next = state.idle_deadline(limits.idle_timeout);
    if h2 && state.requests() == 0 {
        next = next.min(state.started() + limits.header_timeout);
    }
    if now >= next {
        return Check::Close;
    }
    if let Some(after) = park_after {
        if state.requests() > 0 && !state.park_asked() {
            let park = state.idle_deadline(after);
            if now >= park {
                return Check::Park;
            }
            next = next.min(park);
        }
    }
    Check::At(next)
}

/// Run a connection to its end under its timers, draining it when the gateway shuts down.
/// `graceful` starts a graceful close (HTTP/2 GOAWAY, or keep-alive off for HTTP/1).
/// `park_after`: HTTP/1, parked after that long idle (`None`: HTTP/2, never parked).
async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    graceful: fn(Pin<&mut C>),
    state: &ConnState,
    limits: &Limits,
    park_after: Option<Duration>,
    shared: &Shared,
    (h2_closed, send_timeouts): (&[prometheus::IntCounter; 6], &prometheus::IntCounter),
) -> Driven
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let counted = |state: &ConnState| {
        if let Some(reason) = state.abuse() {
            let i = crate::metrics::H2Abuse::ALL
                .iter()
                .position(|a| *a == reason)
                .unwrap_or(0);
            h2_closed[i].inc();
            let why = match reason {
                crate::metrics::H2Abuse::RapidReset => {
                    "it resets most of its streams before they are answered (rapid reset)"
                }
                crate::metrics::H2Abuse::WindowUpdateFlood => {
                    "it sends far more WINDOW_UPDATE frames than it receives DATA frames"
                }
                crate::metrics::H2Abuse::Stalled => {
                    "the client took no response bytes for send_timeout"
                }
                _ => "it floods control frames",
            };
            tracing::warn!(
                requests = state.requests(),
                reason = reason.as_str(),
                "closing an abusive client connection: {why}"
            );
        }
    };
    let h2 = park_after.is_none();
    let mut drain = shared.drain_signal();
    let mut closing_since = None;
    let mut draining = *drain.borrow();
    let timer = tokio::time::sleep(Duration::from_millis(100));
    tokio::pin!(timer);
    if draining {
        timer.as_mut().reset(Instant::now());
    }
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "client connection ended with an error");
                } else if state.is_parked() {
                    return Driven::Parked;
                }
                counted(state);
                if state.is_upgraded() {
                    // A WebSocket tunnel lives on in its own task: the connection stays
                    // counted (max_connections, the drain) until it closes.
                    state.tunnel_closed().await;
                }
                return Driven::Ended;
            }
            () = state.abused() => {
                counted(state);
                return Driven::Ended;
            }
            changed = drain.changed(), if !draining => {
                if changed.is_err() || *drain.borrow() {
                    draining = true;
                    timer.as_mut().reset(Instant::now());
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if draining && closing_since.is_none() {
                    // An HTTP/1 connection accepted but not yet asked anything is owed an
                    // answer to its first request: closing it now would fail a request the
                    // client already sent (HTTP/1 has no GOAWAY, and clients do not retry on
                    // a fresh connection). It closes after that first response, or when no
                    // request started within `header_timeout`. Until then it is looked at
                    // every 5 ms: only while draining, only for such connections.
                    let owed = !h2
                        && state.requests() == 0
                        && now < state.started() + limits.header_timeout;
                    if owed {
                        timer.as_mut().reset(now + Duration::from_millis(5));
                    } else {
                        graceful(conn.as_mut());
                        closing_since = Some(now);
                        timer.as_mut().reset(now);
                    }
                    continue;
                }
                match check(state, limits, (h2, park_after), closing_since, now) {
                    Check::Close => {
                        graceful(conn.as_mut());
                        closing_since = Some(now);
                        timer.as_mut().reset(now);
                    }
                    Check::Abort => {
                        tracing::debug!(closing = closing_since.is_some(), "dropping a stalled or unfinished client connection");
                        return Driven::Ended;
                    }
                    Check::Park => {
                        // The connection is polled again right after this: its read that
                        // would wait ends hyper's connection instead.
                        state.ask_park();
                        timer.as_mut().reset(state.idle_deadline(limits.idle_timeout));
                    }
                    Check::SendTimeout => {
                        let streams = state.waiting_on_client();
                        if h2 {
                            // hyper gives no handle on one stream: the connection goes, and
                            // each stream that waited counts as reset for send_timeout.
                            send_timeouts.inc_by(u64::from(streams));
                            state.mark_abusive(crate::metrics::H2Abuse::Stalled);
                            counted(state);
                        } else {
                            tracing::info!("closing a connection whose client took no response bytes for send_timeout");
                        }
                        return Driven::Ended;
                    }
                    Check::At(at) => timer.as_mut().reset(at),
                }
            }
        }
    }
}

/// hyper's view of the gateway: each request goes to the edge stack of the config generation
/// current when it arrives, and keeps that generation until its response is done.
#[derive(Clone)]
struct EdgeAdapter {
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    state: Arc<ConnState>,
}

impl hyper::service::Service<Request<Incoming>> for EdgeAdapter {
    type Response = Response<ConnBody>;
    type Error = Infallible;
    type Future = EdgeFuture;

    fn call(&self, req: Request<Incoming>) -> EdgeFuture {
        self.state.request_started();
        let rt = self.shared.runtime.load();
        let limit = rt.config.limits.max_body_bytes;
        let body_timeout = rt.config.limits.body_timeout;
        let mut edge = rt.edge.clone();
        drop(rt);
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(self.info.clone());
        let mut close = false;
        if !self.info.h2 {
            let verdict = self
                .state
                .take_head_verdict()
                .and_then(|i| super::h1::SCAN_REASONS.get(usize::from(i)).copied())
                .map_or_else(|| super::h1::check(&parts), Err);
            if let Err(why) = verdict {
                tracing::debug!(peer = %self.info.peer, reason = why, "refusing an ambiguous request");
                parts
                    .extensions
                    .insert(crate::route::Refused::Malformed(why));
                close = true;
            }
        }
        let body = ReqBody::new(body, limit, Some(self.state.clone()), body_timeout);
        EdgeFuture {
            // Every layer is always ready (none queues): called directly, with no `Oneshot`
            // state to move the request through.
            inner: edge.call(Request::from_parts(parts, body)),
            state: Some(self.state.clone()),
            h2: self.info.h2,
            close,
        }
    }
}

pin_project_lite::pin_project! {
    struct EdgeFuture {
        #[pin]
        inner: <EdgeService as Service<Request<ReqBody>>>::Future,
        state: Option<Arc<ConnState>>,
        h2: bool,
        // The head was refused as ambiguous: its body cannot be trusted, close after answering.
        close: bool,
    }

    impl PinnedDrop for EdgeFuture {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before answering (the client went away): the response half is over.
            let this = this.project();
            if let Some(state) = this.state.take() {
                state.half_done();
                if *this.h2 {
                    state.premature_reset();
                }
            }
        }
    }
}

impl Future for EdgeFuture {
    type Output = Result<Response<ConnBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = match this.inner.poll(cx) {
            Poll::Ready(Ok(res)) => res,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => return Poll::Pending,
        };
        let state = this.state.take();
        let refused_head = *this.close && !*this.h2;
        if refused_head
            || (res.status() == StatusCode::PAYLOAD_TOO_LARGE
                && !*this.h2
                && res.body().is_gateway_made())
        {
            // The rest of the body may still be on the wire (after a refused ambiguous head,
            // even a smuggled request): close, lingering (io.rs), never parse it.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            if let Some(s) = &state {
                s.linger_on_close();
            }
        }
        Poll::Ready(Ok(res.map(|inner| ConnBody {
            inner,
            state,
            waiting: false,
        })))
    }
}

/// The response body as hyper writes it; the response half of the request is done when it
/// is dropped.
pub struct ConnBody {
    inner: ObservedBody,
    state: Option<Arc<ConnState>>,
    /// Handed hyper data it has not come back for yet (`ConnState::wait_on_client`).
    waiting: bool,
}

impl Body for ConnBody {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::body::BoxError>>> {
        let this = &mut *self;
        if this.waiting {
            this.waiting = false;
            if let Some(s) = &this.state {
                s.client_took();
            }
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                if let Some(s) = &this.state {
                    s.wait_on_client();
                    this.waiting = true;
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ConnBody {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            if self.waiting {
                state.client_took();
            }
            state.half_done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            idle_timeout: Duration::from_secs(75),
            header_timeout: Duration::from_secs(10),
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_idle_timeout() {
        let s = ConnState::new();
        let t0 = Instant::now();
        assert!(
            matches!(check(&s, &limits(), (false, None), None, t0), Check::At(at) if at == t0 + Duration::from_secs(75))
        );
        assert!(matches!(
            check(
                &s,
                &limits(),
                (false, None),
                None,
                t0 + Duration::from_secs(75)
            ),
            Check::Close
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_without_a_request_is_closed_at_header_timeout() {
        let s = ConnState::new();
        let t0 = Instant::now();
        assert!(matches!(
            check(
                &s,
                &limits(),
                (true, None),
                None,
                t0 + Duration::from_secs(10)
            ),
            Check::Close
        ));
        s.request_started();
        s.half_done();
        s.half_done();
        assert!(matches!(
            check(
                &s,
                &limits(),
                (true, None),
                None,
                t0 + Duration::from_secs(10)
            ),
            Check::At(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_where_nothing_moves_is_dropped() {
        let s = ConnState::new();
        let t0 = Instant::now();
        s.request_started();
        assert!(matches!(
            check(
                &s,
                &limits(),
                (false, None),
                None,
                t0 + Duration::from_secs(74)
            ),
            Check::At(_)
        ));
        assert!(matches!(
            check(
                &s,
                &limits(),
                (false, None),
                None,
                t0 + Duration::from_secs(75)
            ),
            Check::Abort
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_graceful_close_that_does_not_finish_is_dropped_after_the_grace() {
        let s = ConnState::new();
        let t0 = Instant::now();
        assert!(matches!(
            check(
                &s,
                &limits(),
                (true, None),
                Some(t0),
                t0 + Duration::from_secs(1)
            ),
            Check::At(_)
        ));
        assert!(matches!(
            check(&s, &limits(), (true, None), Some(t0), t0 + CLOSE_GRACE),
            Check::Abort
        ));
    }
}
