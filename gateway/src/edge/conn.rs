//! One client connection: TLS handshake (HTTPS listeners), protocol by ALPN, the HTTP/1 or
//! HTTP/2 server with the `[limits]`, idle timeout and graceful drain. Requests go from here
//! to the edge stack of the current config generation (`stack.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpStream;
use tower::util::Oneshot;
use tower::ServiceExt;

use super::io::{ConnState, EdgeIo};
use super::{ConnInfo, Shared};
use crate::body::ReqBody;
use crate::config::Limits;
use crate::policy::observe::ObservedBody;
use crate::runtime::{EdgeService, ListenerRt};

/// Serve one accepted connection until it closes, idles out or is drained.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerRt>,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let limits = shared.runtime.load().config.limits.clone();
    let info = Arc::new(ConnInfo {
        peer,
        listener: listener.info.clone(),
    });
    let state = Arc::new(ConnState::new());
    let metrics = &listener.metrics;

    match &listener.tls {
        None => {
            metrics.h1.inc();
            let io = EdgeIo::new(
                stream,
                metrics.bytes_in.clone(),
                metrics.bytes_out.clone(),
                Some((state.clone(), limits.header_timeout)),
            );
            serve_h1(io, info, state, &limits, shared).await;
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await;
            let tls = match handshake {
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
                    tracing::debug!(%peer, listener = %info.listener.name, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    if let Some(c) = &metrics.tls_error {
                        c.inc();
                    }
                    tracing::debug!(%peer, listener = %info.listener.name, "TLS handshake timed out");
                    return;
                }
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            if h2 {
                metrics.h2.inc();
                let io = EdgeIo::new(
                    tls,
                    metrics.bytes_in.clone(),
                    metrics.bytes_out.clone(),
                    None,
                );
                serve_h2(io, info, state, &limits, shared).await;
            } else {
                metrics.h1.inc();
                let io = EdgeIo::new(
                    tls,
                    metrics.bytes_in.clone(),
                    metrics.bytes_out.clone(),
                    Some((state.clone(), limits.header_timeout)),
                );
                serve_h1(io, info, state, &limits, shared).await;
            }
        }
    }
}

async fn serve_h1<T>(
    io: EdgeIo<T>,
    info: Arc<ConnInfo>,
    state: Arc<ConnState>,
    limits: &Limits,
    shared: Arc<Shared>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = EdgeAdapter {
        shared: shared.clone(),
        info,
        state: state.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Our own head timer (io.rs) does the real work; hyper's (which starts when it begins
        // waiting, idle time included) is only a backstop for pipelined heads.
        .header_read_timeout(limits.idle_timeout + limits.header_timeout)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) + 8192)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    drive(conn, state, limits, shared).await;
}

async fn serve_h2<T>(
    io: EdgeIo<T>,
    info: Arc<ConnInfo>,
    state: Arc<ConnState>,
    limits: &Limits,
    shared: Arc<Shared>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = EdgeAdapter {
        shared: shared.clone(),
        info,
        state: state.clone(),
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_send_buf_size(1 << 20);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    drive(conn, state, limits, shared).await;
}

/// Run a connection to its end: closes it when idle past `idle_timeout`, and drains it
/// (finish in-flight requests, then close) when the gateway shuts down.
async fn drive<C>(conn: C, state: Arc<ConnState>, limits: &Limits, shared: Arc<Shared>)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let mut drain = shared.drain_signal();
    let mut closing = *drain.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                return;
            }
            changed = drain.changed(), if !closing => {
                if changed.is_err() || *drain.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = &mut idle, if !closing => {
                match state.idle_deadline(limits.idle_timeout) {
                    Some(deadline) if deadline <= tokio::time::Instant::now() => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    Some(deadline) => idle.as_mut().reset(deadline),
                    // Busy: look again one idle period from now.
                    None => idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout),
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
        let edge = rt.edge.clone();
        drop(rt);
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(self.info.clone());
        let req = Request::from_parts(parts, ReqBody::new(body, limit));
        EdgeFuture {
            inner: edge.oneshot(req),
            state: Some(self.state.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    struct EdgeFuture {
        #[pin]
        inner: Oneshot<EdgeService, Request<ReqBody>>,
        state: Option<Arc<ConnState>>,
    }

    impl PinnedDrop for EdgeFuture {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before answering (the client went away): the request is over.
            if let Some(state) = this.project().state.take() {
                state.request_finished();
            }
        }
    }
}

impl Future for EdgeFuture {
    type Output = Result<Response<ConnBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match this.inner.poll(cx) {
            Poll::Ready(Ok(res)) => res,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => return Poll::Pending,
        };
        let state = this.state.take();
        if res.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
            if let Some(s) = &state {
                s.linger_on_close();
            }
        }
        Poll::Ready(Ok(res.map(|inner| ConnBody { inner, state })))
    }
}

/// The response body as hyper writes it; the request counts as finished when it is dropped.
pub struct ConnBody {
    inner: ObservedBody,
    state: Option<Arc<ConnState>>,
}

impl Body for ConnBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
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
            state.request_finished();
        }
    }
}
