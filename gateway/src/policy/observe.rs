//! The first layer of every route (and of the "no route" answer): the one rescue that turns a
//! `GatewayError` into its JSON answer, the access log line, and the route's metrics.
//!
//! The log line and the metrics are written when the response body is done (or dropped, when
//! the client goes away), so they carry the full duration and the bytes sent.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};
use ipnet::IpNet;
use tower::{Layer, Service};

use crate::body::{ReqBody, ResBody};
use crate::client_addr::client_ip;
use crate::ctx::X_REQUEST_ID;
use crate::ctx::{ClientIp, ConnInfo};
use crate::error::GatewayError;
use crate::metrics::RouteMetrics;

/// What one route observes with.
#[derive(Debug)]
pub struct RouteObs {
    pub name: Arc<str>,
    pub metrics: RouteMetrics,
    pub trusted_proxies: Arc<[IpNet]>,
    /// The route's CORS policy: every answer is decorated for the request's `Origin`.
    pub cors: Option<Arc<crate::policy::cors::CorsRt>>,
    /// `response_headers`: applied to every answer of the route, the gateway's own included.
    pub response_headers: Option<crate::config::HeaderRules>,
    /// The route's upstream (for the access log); `None` for "no route".
    pub upstream: Option<Arc<str>>,
    /// Span export (`[tracing]` with an endpoint).
    pub spans: Option<Arc<crate::spans::Exporter>>,
    /// `[access_log]`; `None`: the first-wave line through the process log.
    pub access_log: Option<Arc<crate::access_log::AccessLogRt>>,
    /// The route's own `idle_timeout` (`ZERO`: none), held on the connection while its
    /// requests are in flight.
    pub idle_timeout: Option<std::time::Duration>,
}

#[derive(Clone, Debug)]
pub struct ObserveLayer {
    obs: Arc<RouteObs>,
}

impl ObserveLayer {
    pub fn new(obs: Arc<RouteObs>) -> Self {
        Self { obs }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            obs: self.obs.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    obs: Arc<RouteObs>,
}

impl<S> Service<Request<ReqBody>> for Observe<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = GatewayError>,
{
    type Response = Response<ObservedBody>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner stack is always ready (no layer queues); an error here would be a bug
        // surfaced as a 500 by the call that follows, never a panic.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        // W3C trace context: continued or started; the upstream gets our span (or, when spans
        // are recorded, the attempt's client span) as its parent.
        let spans = self.obs.spans.as_ref();
        let trace = crate::trace::TraceContext::from_headers(
            req.headers(),
            spans.is_none_or(|s| s.sample_new()),
        );
        req.headers_mut()
            .insert(crate::trace::TRACEPARENT, trace.header());
        let recorder = match spans {
            Some(s) if trace.sampled => {
                let r = Arc::new(crate::spans::Recorder::new(s.clone(), trace));
                req.extensions_mut().insert(r.clone());
                Some(r)
            }
            _ => None,
        };
        let detail = recorder.is_some() || self.obs.access_log.is_some();

        let conn = req.extensions().get::<Arc<ConnInfo>>().cloned();
        let idle = self.obs.idle_timeout.and_then(|idle| {
            let state = conn.as_ref()?.state.as_ref()?;
            Some(state.override_idle(idle))
        });
        let client = conn
            .as_ref()
            .map(|c| client_ip(c.peer.ip(), req.headers(), &self.obs.trusted_proxies));
        if let Some(ip) = client {
            req.extensions_mut().insert(ClientIp(ip));
        }
        let ctx = LogCtx {
            obs: self.obs.clone(),
            start,
            id: req
                .headers()
                .get(X_REQUEST_ID)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("-")),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            conn,
            client,
            status: 0,
            reason: None,
            grpc: crate::grpc::is_grpc(req.headers()),
            trace,
            user_agent: req.headers().get(http::header::USER_AGENT).cloned(),
            origin: self
                .obs
                .cors
                .as_ref()
                .and_then(|_| req.headers().get(http::header::ORIGIN).cloned()),
            preflight: self.obs.cors.is_some()
                && crate::policy::cors::is_preflight(req.method(), req.headers()),
            // Boxed: only spans and `[access_log]` need it, and every request's future moves
            // this state along the stack.
            detail: detail.then(|| {
                Box::new(Detail {
                    host: req.headers().get(http::header::HOST).cloned().or_else(|| {
                        req.uri()
                            .authority()
                            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                    }),
                    referer: req.headers().get(http::header::REFERER).cloned(),
                    recorder,
                })
            }),
            policy: None,
            grpc_code: None,
            _idle: idle,
        };
        ObserveFuture {
            inner: self.inner.call(req),
            ctx: Some(ctx),
        }
    }
}

/// What spans and `[access_log]` need beyond the built-in access line.
struct Detail {
    host: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    /// The request's spans (sampled, export on).
    recorder: Option<Arc<crate::spans::Recorder>>,
}

struct LogCtx {
    obs: Arc<RouteObs>,
    start: Instant,
    id: HeaderValue,
    method: Method,
    uri: Uri,
    version: Version,
    conn: Option<Arc<ConnInfo>>,
    client: Option<IpAddr>,
    status: u16,
    reason: Option<&'static str>,
    /// A gRPC request: the gateway's own answers go in trailers-only form, statuses counted.
    grpc: bool,
    trace: crate::trace::TraceContext,
    user_agent: Option<HeaderValue>,
    /// The request's `Origin`, on CORS routes.
    origin: Option<HeaderValue>,
    /// A CORS preflight (answered whole by the CORS layer; not decorated again).
    preflight: bool,
    /// With spans or `[access_log]` only.
    detail: Option<Box<Detail>>,
    /// The policy that refused the request.
    policy: Option<&'static str>,
    /// The grpc-status seen (gRPC requests).
    grpc_code: Option<u32>,
    /// The route's `idle_timeout` held on the connection until the request is done.
    _idle: Option<crate::ctx::conn_state::IdleOverride>,
}

pin_project_lite::pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        ctx: Option<LogCtx>,
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, GatewayError>>,
{
    type Output = Result<Response<ObservedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => return Poll::Pending,
        };
        let Some(mut ctx) = this.ctx.take() else {
            // Polled after completion: answer something sane rather than panic.
            return Poll::Ready(Ok(Response::new(ObservedBody {
                inner: ResBody::empty(),
                ctx: None,
                bytes: 0,
                ended: false,
                grpc_counted: true,
            })));
        };
        let mut grpc_counted = !ctx.grpc;
        // A gRPC caller gets every gateway-made answer (an error here, a 429 or a fallback
        // made further in) in trailers-only form.
        let (res, grpc_message) = match result {
            Ok(res) => {
                let made_here = ctx.grpc
                    && res.status() != http::StatusCode::OK
                    && matches!(res.body(), ResBody::Full(_));
                let message = made_here.then(|| {
                    let reason = res.status().canonical_reason().unwrap_or("error");
                    std::borrow::Cow::Owned(reason.to_ascii_lowercase())
                });
                (res, message)
            }
            Err(err) => {
                ctx.reason = Some(err.reason());
                ctx.policy = err.policy();
                if let (GatewayError::BodyTimeout, Some(c)) = (&err, ctx.conn.as_deref()) {
                    if c.h2 {
                        c.listener.h2_body_timeouts.inc();
                    }
                }
                if matches!(err, GatewayError::Connect(_) | GatewayError::Upstream(_)) {
                    tracing::warn!(request_id = %DisplayHeader(&ctx.id), route = %ctx.obs.name, error = %err, "upstream failure");
                }
                let reply =
                    err.to_response_traced(&ctx.id, Some(ctx.trace.trace_id_hex().as_str()));
                (reply, ctx.grpc.then(|| err.public_message()))
            }
        };
        let mut res = match grpc_message {
            Some(message) => crate::grpc::trailers_only(res, &message),
            None => res,
        };
        // A trailers-only status is counted now; any other from the trailers as they pass.
        if !grpc_counted {
            if let Some(code) = crate::grpc::status_of(res.headers()) {
                ctx.obs.metrics.grpc.inc(code);
                ctx.grpc_code = Some(code);
                grpc_counted = true;
            }
        }
        if res.extensions().get::<crate::ctx::Degraded>().is_some() {
            ctx.reason = Some("fallback");
        }

        if let Some(rules) = &ctx.obs.response_headers {
            rules.apply(res.headers_mut());
        }
        if let (Some(cors), false) = (&ctx.obs.cors, ctx.preflight) {
            cors.decorate(ctx.origin.as_ref(), res.headers_mut());
        }
        ctx.status = res.status().as_u16();
        Poll::Ready(Ok(res.map(|inner| ObservedBody {
            inner,
            ctx: Some(ctx),
            bytes: 0,
            ended: false,
            grpc_counted,
        })))
    }
}

/// The response body as it leaves the route: counts bytes, logs and records metrics once done.
pub struct ObservedBody {
    inner: ResBody,
    ctx: Option<LogCtx>,
    bytes: u64,
    ended: bool,
    /// The gRPC status is counted (or this is no gRPC response).
    grpc_counted: bool,
}

impl ObservedBody {
    /// Whether the gateway made this answer itself (not an upstream's).
    pub fn is_gateway_made(&self) -> bool {
        matches!(self.inner, ResBody::Full(_))
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::body::BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                } else if let (false, Some(t)) = (this.grpc_counted, frame.trailers_ref()) {
                    if let (Some(code), Some(ctx)) = (crate::grpc::status_of(t), &mut this.ctx) {
                        ctx.obs.metrics.grpc.inc(code);
                        ctx.grpc_code = Some(code);
                        this.grpc_counted = true;
                    }
                }
            }
            Poll::Ready(None) => this.ended = true,
            _ => {}
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

impl Drop for ObservedBody {
    fn drop(&mut self) {
        let Some(ctx) = self.ctx.take() else { return };
        let elapsed = ctx.start.elapsed();
        let completed = self.ended || self.inner.is_end_stream() || ctx.method == Method::HEAD;
        ctx.obs.metrics.requests.inc(&ctx.method, ctx.status);
        ctx.obs.metrics.duration.observe(elapsed.as_secs_f64());
        let target = self.inner.target();
        if let Some(log) = &ctx.obs.access_log {
            let trace_id = ctx.trace.trace_id_hex();
            log.log(&crate::access_log::Entry {
                unix_ms: crate::clock::to_unix_ms(crate::clock::now_ms())
                    .saturating_sub(elapsed.as_millis() as u64),
                request_id: ctx.id.to_str().unwrap_or("-"),
                trace_id: trace_id.as_str(),
                client_ip: ctx.client,
                method: ctx.method.as_str(),
                host: ctx
                    .detail
                    .as_ref()
                    .and_then(|d| d.host.as_ref())
                    .and_then(|h| h.to_str().ok()),
                path: ctx.uri.path(),
                protocol: version_str(ctx.version),
                status: ctx.status,
                bytes_sent: self.bytes,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                upstream_ms: self.inner.head_time().map(|t| t.as_secs_f64() * 1000.0),
                route: &ctx.obs.name,
                upstream: ctx.obs.upstream.as_deref(),
                target,
                listener: ctx.conn.as_ref().map(|c| c.listener.name.as_str()),
                user_agent: ctx.user_agent.as_ref().and_then(|v| v.to_str().ok()),
                referer: ctx
                    .detail
                    .as_ref()
                    .and_then(|d| d.referer.as_ref())
                    .and_then(|v| v.to_str().ok()),
                error: ctx.reason,
            });
        } else {
            tracing::info!(
                target: "access",
                request_id = %DisplayHeader(&ctx.id),
                trace_id = %ctx.trace.trace_id_hex(),
                user_agent = ctx.user_agent.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
                listener = ctx.conn.as_ref().map_or("", |c| c.listener.name.as_str()),
                client = %DisplayOpt(ctx.client),
                protocol = version_str(ctx.version),
                method = ctx.method.as_str(),
                path = ctx.uri.path(),
                route = &*ctx.obs.name,
                status = ctx.status,
                upstream_target = target.unwrap_or(""),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                bytes = self.bytes,
                completed,
                error = ctx.reason.unwrap_or(""),
            );
        }
        if let Some(rec) = ctx.detail.as_ref().and_then(|d| d.recorder.as_ref()) {
            rec.finish(server_span(&ctx, completed));
        }
    }
}

/// The request's server span (SPEC §8.4): `<METHOD> <route>`, the HTTP semantic attributes,
/// status Error for 5xx with `error.type`, an event naming the policy that refused it.
fn server_span(ctx: &LogCtx, completed: bool) -> crate::spans::SpanRec {
    use crate::spans::{kv_int, kv_str, Val};
    let matched = ctx.obs.upstream.is_some();
    let https = ctx.conn.as_ref().is_some_and(|c| c.listener.https);
    let mut attributes = Vec::with_capacity(14);
    attributes.push(("http.request.method", Val::Method(ctx.method.clone())));
    attributes.push(("url.path", Val::Path(ctx.uri.clone())));
    attributes.push(kv_str("url.scheme", if https { "https" } else { "http" }));
    attributes.push(kv_int("http.response.status_code", i64::from(ctx.status)));
    attributes.push(kv_str(
        "network.protocol.version",
        match ctx.version {
            Version::HTTP_2 => "2",
            Version::HTTP_10 => "1.0",
            _ => "1.1",
        },
    ));
    if matched {
        attributes.push(("http.route", Val::Shared(ctx.obs.name.clone())));
    }
    let host = ctx.detail.as_ref().and_then(|d| d.host.as_ref());
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        let (name, port) = split_host(host);
        attributes.push(kv_str("server.address", name.to_string()));
        let port = port.unwrap_or(if https { 443 } else { 80 });
        attributes.push(kv_int("server.port", port));
    }
    if let Some(ip) = ctx.client {
        attributes.push(("client.address", Val::ip(ip)));
    }
    if let Some(code) = ctx.grpc_code {
        attributes.push(kv_int("rpc.grpc.status_code", i64::from(code)));
    }
    if let Some(ua) = &ctx.user_agent {
        attributes.push(("user_agent.original", Val::Header(ua.clone())));
    }
    attributes.push(("gateway.request_id", Val::Header(ctx.id.clone())));
    if !completed {
        attributes.push(kv_str("gateway.incomplete", "true"));
    }
    let error_type: Option<Val> = match ctx.reason {
        Some("timeout") => Some(Val::Static("timeout")),
        Some("connect_error") => Some(Val::Static("connect_error")),
        Some("upstream_error") => Some(Val::Static("reset")),
        Some("no_target") => Some(Val::Static("no_target")),
        Some("overloaded") => Some(Val::Static("concurrency_limit")),
        Some(r) if ctx.status >= 500 || ctx.policy.is_some() => Some(Val::Static(r)),
        _ if ctx.status >= 500 => Some(Val::Owned(ctx.status.to_string())),
        _ => None,
    };
    if let Some(e) = &error_type {
        attributes.push(("error.type", e.clone()));
    }
    let events = ctx
        .policy
        .map(|p| {
            vec![crate::spans::event(
                "policy.refused",
                vec![
                    kv_str("gateway.policy", p),
                    kv_str("gateway.reason", ctx.reason.unwrap_or("")),
                    kv_int("http.response.status_code", i64::from(ctx.status)),
                ],
            )]
        })
        .unwrap_or_default();
    crate::spans::SpanRec {
        trace_id: [0; 16],
        span_id: [0; 8],
        parent_span_id: None,
        name: Val::Method(ctx.method.clone()),
        name_suffix: matched.then(|| ctx.obs.name.clone()),
        kind: crate::spans::Kind::Server,
        start_ns: 0,
        end_ns: 0,
        attributes,
        events,
        error: if ctx.status >= 500 { error_type } else { None },
        flags: 0,
    }
}

/// `host[:port]` or `[v6][:port]` of a Host header.
fn split_host(host: &str) -> (&str, Option<i64>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) => match p.parse() {
            Ok(p) => (h, Some(p)),
            Err(_) => (host, None),
        },
        None => (host, None),
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// Prints a header value without allocating (ids are ASCII by construction).
struct DisplayHeader<'a>(&'a HeaderValue);

impl std::fmt::Display for DisplayHeader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.to_str().unwrap_or("-"))
    }
}

struct DisplayOpt(Option<IpAddr>);

impl std::fmt::Display for DisplayOpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}
