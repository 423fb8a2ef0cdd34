//! The service at the bottom of every route stack: pick a shard, send to its serving
//! endpoint over a pooled connection, retry within the route's policy and the upstream's
//! budget, or answer degraded.
//!
//! SPEC §3 "Retries, timeouts, breakers, health":
//! * a connect error (nothing sent) moves on, once per endpoint, outside `attempts` and the
//!   budget: first to the shard's next endpoint (its backups), then to the balancer's next
//!   choice;
//! * `retry.on` triggers (reset, timeout, statuses) retry idempotent methods only, each retry
//!   to a target not tried yet when one is up, while the budget allows; bodies up to 64 KiB
//!   are kept for replay, larger streamed bodies are not replayed;
//! * `timeout` bounds each attempt until the response head, `total_timeout` all of them;
//! * an open circuit or a target that is down is not a candidate; with no candidate left, or
//!   over `max_in_flight` / `max_pending`, the route's `fallback` answers (else 503).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use ipnet::IpNet;
use tokio::time::Instant;
use tower::Service;

use super::pool::Sender;
use super::{headers, InFlightGuard, UpstreamRt};
use crate::balance::{PickCtx, TargetSet};
use crate::body::{
    caused_by, BodyProgress, BodyTimedOut, BodyTooLarge, BoxError, BufferLease, ClientBodyError,
    Replay, ReqBody, ResBody, BUFFER_WHOLE_LIMIT,
};
use crate::clock;
use crate::config::{Fallback, RetryPolicy};
use crate::ctx::ClientIp;
use crate::ctx::OriginalPath;
use crate::ctx::{ConnInfo, Degraded};
use crate::endpoint::breaker::CircuitState;
use crate::endpoint::h1::{H1Body, H1Error};
use crate::endpoint::{Endpoint, Permit};
use crate::error::GatewayError;

/// How one route forwards to its upstream.
#[derive(Debug)]
pub struct ForwardConfig {
    pub upstream: Arc<UpstreamRt>,
    pub timeout: Duration,
    pub total_timeout: Duration,
    pub host_rewrite: Option<HeaderValue>,
    pub trusted_proxies: Arc<[IpNet]>,
    pub retry: Option<RetryPolicy>,
    pub fallback: Option<Fallback>,
    /// WebSocket upgrades allowed, and the idle timeout of their tunnels.
    pub websocket: Option<Duration>,
    /// `[limits] body_timeout`: a small body received whole must arrive within this.
    pub body_timeout: Duration,
    /// Spans are exported (`[tracing]` with an endpoint): sampled requests carry a recorder.
    pub spans: bool,
}

/// The bottom of a route stack.
#[derive(Clone, Debug)]
pub struct Forward {
    cfg: Arc<ForwardConfig>,
}

impl Forward {
    pub fn new(cfg: ForwardConfig) -> Self {
        Self { cfg: Arc::new(cfg) }
    }
}

impl Service<Request<ReqBody>> for Forward {
    type Response = Response<ResBody>;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, GatewayError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        Box::pin(proxy_request(self.cfg.clone(), req))
    }
}

/// When the route's timers run. They start once the request has been fully received (a slow
/// upload is the client's time, not the upstream's, as in Envoy), or when sending starts if
/// that is later.
struct Timing {
    started: Instant,
    progress: Option<Arc<BodyProgress>>,
    timeout: Duration,
    total_timeout: Duration,
}

impl Timing {
    fn origin(&self, since: Instant) -> Option<Instant> {
        match &self.progress {
            None => Some(since),
            Some(p) => p.done_at().map(|done| done.max(since)),
        }
    }

    /// The end of all attempts; `None` while the body is still arriving.
    fn total_deadline(&self) -> Option<Instant> {
        self.origin(self.started).map(|o| o + self.total_timeout)
    }

    /// The end of an attempt that started at `attempt`; `None` while the body is arriving.
    fn attempt_deadline(&self, attempt: Instant) -> Option<Instant> {
        let own = self.origin(attempt)? + self.timeout;
        Some(self.total_deadline().map_or(own, |t| own.min(t)))
    }

    /// How long a new connection may take: `connect_timeout`, cut to what is left of the total.
    fn connect_budget(&self, connect_timeout: Duration) -> Duration {
        self.total_deadline().map_or(connect_timeout, |d| {
            d.saturating_duration_since(Instant::now())
                .min(connect_timeout)
        })
    }

    fn expired(&self) -> bool {
        self.total_deadline().is_some_and(|d| Instant::now() >= d)
    }
}

/// What a retry sends again: the head as prepared for the upstream, and how to replay the body.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Template {
    /// The head of `req`, to send it again.
    fn of(req: &Request<ReqBody>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        }
    }

    fn request(&self, body: ReqBody) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn degraded(f: &Fallback) -> Response<ResBody> {
    let mut res = Response::new(ResBody::full(f.body.clone()));
    *res.status_mut() = f.status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, f.content_type.clone());
    res.extensions_mut().insert(Degraded);
    res
}

async fn proxy_request(
    cfg: Arc<ForwardConfig>,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, GatewayError> {
    let up = &cfg.upstream;
    let grpc = crate::grpc::is_grpc(req.headers());
    // A gRPC deadline shorter than the route's shortens both timeouts.
    let deadline = grpc.then(|| crate::grpc::timeout(req.headers())).flatten();
    let timing = Timing {
        started: Instant::now(),
        progress: req.body().progress(),
        timeout: deadline.map_or(cfg.timeout, |d| cfg.timeout.min(d)),
        total_timeout: deadline.map_or(cfg.total_timeout, |d| cfg.total_timeout.min(d)),
    };
    let (mut parts, mut body) = req.into_parts();
    if let Some(idle) = cfg.websocket {
        if super::tunnel::is_upgrade(&parts) {
            // Boxed: rare, and its state would otherwise make every request's future larger.
            return Box::pin(super::tunnel::open(&cfg, parts, body, idle)).await;
        }
    }
    let hash = {
        let client = parts.extensions.get::<ClientIp>().map(|c| c.0);
        let path = parts
            .extensions
            .get::<OriginalPath>()
            .map_or(parts.uri.path(), |p| p.0.as_str());
        up.request_hash(&parts, client, path)?
    };
    {
        let conn = parts.extensions.get::<Arc<ConnInfo>>().cloned();
        let conn = conn.as_deref();
        let hop = headers::Hop {
            peer: conn.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.peer.ip()),
            peer_header: conn.map(|c| &c.peer_header),
            https: conn.is_some_and(|c| c.listener.https),
            trusted_proxies: &cfg.trusted_proxies,
            host_rewrite: cfg.host_rewrite.as_ref(),
        };
        headers::prepare(&mut parts, &hop)?;
    }
    // The request's spans (sampled, export on): a client span per attempt.
    let recorder = if cfg.spans {
        parts
            .extensions
            .get::<Arc<crate::spans::Recorder>>()
            .cloned()
    } else {
        None
    };
    // Extensions are ours, not the upstream's.
    parts.extensions.clear();

    // A small body with a length is received whole before any upstream connection is used:
    // a client trickling it in holds gateway memory, never an upstream connection.
    let _request_buffer = match body.exact_len() {
        Some(n) if n > 0 && n <= BUFFER_WHOLE_LIMIT && !body.is_end_stream() => {
            let Some(lease) = BufferLease::try_new(n) else {
                crate::body::count_buffer_rejected();
                return Err(GatewayError::BufferFull);
            };
            match tokio::time::timeout(cfg.body_timeout, body.buffer_whole()).await {
                Ok(Ok(())) => Some(lease),
                Ok(Err(e)) => return Err(client_body_error(&*e)),
                Err(_) => return Err(GatewayError::BodyTimeout),
            }
        }
        _ => None,
    };

    // gRPC calls are POSTs: retried only under the connect-error rule (SPEC §8.3).
    let retry = cfg
        .retry
        .as_ref()
        .filter(|r| r.attempts > 0 && is_idempotent(&parts.method) && !grpc);
    if retry.is_some() {
        body.keep_for_replay();
    }
    let replay = body.replay();
    // Boxed: only retried routes have one, and it would otherwise widen every request's future.
    let template = retry.map(|_| {
        Box::new(Template {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        })
    });
    // `None` while an attempt holds it; given back by attempts that sent nothing.
    let mut req = Some(Request::from_parts(parts, body));

    let Some(admission) = up.enter() else {
        return match &cfg.fallback {
            Some(f) => Ok(degraded(f)),
            None => Err(GatewayError::Overloaded),
        };
    };
    up.count_request();

    let mut tried = TargetSet::new(up.shards.len());
    // Endpoints this request could not send to (connect error, or circuit full): not asked
    // again, so a dead endpoint costs one connect attempt per request, never a storm.
    let mut unusable: Vec<&Arc<Endpoint>> = Vec::new();
    let mut retries_left = retry.map_or(0, |r| r.attempts);
    let mut last_connect_error = None;
    let mut last_result: Option<Result<Response<ResBody>, GatewayError>> = None;
    let load = |i: usize| up.shards[i].serving().map_or(0, |e| e.in_flight());
    loop {
        if timing.expired() {
            return match last_result {
                Some(r) => finish(r, admission),
                None => Err(GatewayError::UpstreamTimeout),
            };
        }
        let pick = {
            let usable = |i: usize| {
                up.shards[i]
                    .endpoints
                    .iter()
                    .any(|e| e.is_up() && !unusable.iter().any(|u| Arc::ptr_eq(u, e)))
            };
            let ctx = PickCtx { hash, load: &load };
            let built = up.balancer.load();
            let fresh = built
                .algo
                .pick(&ctx, &mut |i| !tried.contains(i) && usable(i));
            // A retry goes to a target not tried yet; when none is up, to one already tried.
            fresh.or_else(|| {
                last_result
                    .as_ref()
                    .and_then(|_| built.algo.pick(&ctx, &mut |i| usable(i)))
            })
        };
        let Some(i) = pick else {
            if let Some(r) = last_result {
                return finish(r, admission);
            }
            return match (&cfg.fallback, last_connect_error) {
                (Some(f), _) => Ok(degraded(f)),
                (None, Some(e)) => Err(GatewayError::Connect(e)),
                (None, None) => Err(GatewayError::NoTarget),
            };
        };
        tried.insert(i);

        // The shard's endpoints in order: its primary, then its backups, each usable one once.
        let mut result = None;
        for ep in &up.shards[i].endpoints {
            if !ep.is_up() || unusable.iter().any(|u| Arc::ptr_eq(u, ep)) {
                continue;
            }
            let Some(mut attempt) = req.take() else { break };
            let begun = recorder.as_ref().map(|r| {
                let method = attempt.method().clone();
                (r.begin(attempt.headers_mut()), method)
            });
            let outcome = send(up, ep, attempt, &timing).await;
            if let (Some(r), Some((b, method))) = (&recorder, begun) {
                attempt_span(r, b, &method, up, ep, &outcome);
            }
            match outcome {
                Attempt::Done(r) => {
                    result = Some(r);
                    break;
                }
                Attempt::NotSent(back, why) => {
                    req = Some(back);
                    unusable.push(ep);
                    if let Some(e) = why {
                        tracing::debug!(upstream = %up.name, target = %ep.id, error = %e, "connect failed; trying the next endpoint");
                        last_connect_error = Some(e);
                    }
                }
                Attempt::Overloaded => {
                    return match &cfg.fallback {
                        Some(f) => Ok(degraded(f)),
                        None => Err(GatewayError::Overloaded),
                    };
                }
            }
        }
        let Some(result) = result else {
            if req.is_none() {
                return match last_result {
                    Some(r) => finish(r, admission),
                    None => Err(GatewayError::NoTarget),
                };
            }
            // Nothing could be sent to this shard: the balancer's next choice.
            continue;
        };

        let trigger = retry.is_some_and(|r| match &result {
            Ok(res) => r.on.status(res.status().as_u16()),
            Err(GatewayError::UpstreamTimeout) => r.on.timeout,
            Err(GatewayError::Upstream(_)) => r.on.reset,
            Err(_) => false,
        });
        let (Some(policy), Some(template)) = (retry, &template) else {
            return finish(result, admission);
        };
        if !trigger || retries_left == 0 || timing.expired() {
            return finish(result, admission);
        }
        let Some(body) = replay.body() else {
            // A streamed body larger than 64 KiB (or cut short) cannot be sent again.
            return finish(result, admission);
        };
        if !up.take_retry(policy.budget) {
            tracing::debug!(upstream = %up.name, "retry budget exhausted");
            return finish(result, admission);
        }
        retries_left -= 1;
        // The failed answer is kept as the last resort; its connection is not reused.
        last_result = Some(result);
        req = Some(template.request(body));
    }
}

/// Streams the server refused on HTTP/2 are sent again at most this often per attempt.
const MAX_REFUSALS: u32 = 2;

/// Whether an HTTP/2 stream was never processed, and why: `Some(true)` cut by a GOAWAY whose
/// last stream id is below it (the connection takes no more streams), `Some(false)` refused
/// alone (REFUSED_STREAM), `None` neither.
fn refusal(err: &hyper::Error) -> Option<bool> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<h2::Error>() {
            if h.is_go_away() && h.reason() == Some(h2::Reason::NO_ERROR) {
                return Some(true);
            }
            return (h.reason() == Some(h2::Reason::REFUSED_STREAM)).then_some(false);
        }
        cur = e.source();
    }
    None
}

/// What a failed client body means for the client's answer.
fn client_body_error(e: &(dyn std::error::Error + 'static)) -> GatewayError {
    if caused_by::<BodyTooLarge>(e) {
        GatewayError::BodyTooLarge
    } else if caused_by::<BodyTimedOut>(e) {
        GatewayError::BodyTimeout
    } else {
        GatewayError::ClientGone
    }
}

/// The length of a response small enough to read whole from the upstream (SPEC §8.2): a
/// `Content-Length` of at most 64 KiB (`exact`: hyper's reading of it), not to HEAD, not
/// 1xx/204/304, not a stream type.
fn whole_response_len(
    parts: &http::response::Parts,
    head: bool,
    exact: Option<u64>,
) -> Option<u64> {
    let status = parts.status.as_u16();
    if head || status < 200 || status == 204 || status == 304 {
        return None;
    }
    let n = exact?;
    if n == 0 || n > BUFFER_WHOLE_LIMIT {
        return None;
    }
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        let ct = ct.as_bytes();
        let starts = |p: &[u8]| ct.len() >= p.len() && ct[..p.len()].eq_ignore_ascii_case(p);
        if starts(b"text/event-stream") || starts(b"application/grpc") {
            return None;
        }
    }
    Some(n)
}

/// A small upstream response read whole: its connection went back to the pool already.
#[derive(Debug)]
pub struct BufferedBody {
    data: Option<Bytes>,
    endpoint: Arc<Endpoint>,
    _lease: BufferLease,
    head_time: Duration,
}

impl BufferedBody {
    /// The endpoint (`target` label) that answered.
    pub fn target(&self) -> &str {
        &self.endpoint.id
    }

    /// How long the upstream's response head took.
    pub fn head_time(&self) -> Duration {
        self.head_time
    }
}

impl Body for BufferedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Hand the upstream-level in-flight slot to the response body, so it is held until the
/// response is done.
fn finish(
    mut result: Result<Response<ResBody>, GatewayError>,
    admission: Option<InFlightGuard>,
) -> Result<Response<ResBody>, GatewayError> {
    if let (Ok(res), Some(guard)) = (&mut result, admission) {
        if let ResBody::Upstream(b) = res.body_mut() {
            b.upstream_slot = Some(guard);
        }
    }
    result
}

enum Attempt {
    Done(Result<Response<ResBody>, GatewayError>),
    /// Nothing was sent (connect error, or circuit open): the request comes back.
    NotSent(Request<ReqBody>, Option<io::Error>),
    /// Over `max_pending`.
    Overloaded,
}

/// Feed a result to the endpoint's breaker and outlier detection, and act on what changed.
fn record(up: &UpstreamRt, ep: &Endpoint, permit: Permit<'_>, failure: bool) {
    let r = permit.record(failure, clock::now_ms());
    if let Some(state) = r.circuit {
        circuit_moved(up, ep, state);
    }
    if r.wants_ejection {
        up.try_eject(ep);
    }
}

/// A circuit changed state (rare): log it, tell the status page, rebuild the up set.
fn circuit_moved(up: &UpstreamRt, ep: &Endpoint, state: CircuitState) {
    tracing::warn!(upstream = %up.name, target = %ep.id, circuit = state.as_str(), "circuit breaker changed state");
    let severity = match state.as_str() {
        "closed" => "good",
        "open" => "bad",
        _ => "info",
    };
    crate::events::push(
        crate::events::Kind::Circuit,
        severity,
        format!("{}/{}", up.name, ep.id),
        format!("circuit {}", state.as_str().replace('_', "-")),
    );
    up.changed();
}

/// The client span of one attempt (SPEC §8.4): the answer's status, or `error.type`.
fn attempt_span(
    r: &crate::spans::Recorder,
    begun: crate::spans::Begun,
    method: &Method,
    up: &UpstreamRt,
    ep: &Endpoint,
    outcome: &Attempt,
) {
    let (status, error) = match outcome {
        Attempt::Done(Ok(res)) => (Some(res.status().as_u16()), None),
        Attempt::Done(Err(e)) => (
            None,
            Some(match e {
                GatewayError::UpstreamTimeout => "timeout",
                GatewayError::Upstream(_) => "reset",
                GatewayError::Connect(_) => "connect_error",
                other => other.reason(),
            }),
        ),
        Attempt::NotSent(_, Some(e)) if e.to_string().contains("TLS") => (None, Some("tls_error")),
        Attempt::NotSent(_, Some(_)) => (None, Some("connect_error")),
        Attempt::NotSent(_, None) => (None, Some("circuit_open")),
        Attempt::Overloaded => (None, Some("concurrency_limit")),
    };
    let addr = ep.addr();
    r.end(
        begun,
        method,
        &up.name,
        &ep.id,
        addr,
        ep.addrs.host(),
        status,
        error,
    );
}

async fn send(
    up: &UpstreamRt,
    ep: &Arc<Endpoint>,
    mut req: Request<ReqBody>,
    timing: &Timing,
) -> Attempt {
    let (permit, moved) = ep.admit(clock::now_ms());
    if let Some(state) = moved {
        circuit_moved(up, ep, state);
    }
    let Some(permit) = permit else {
        return Attempt::NotSent(req, None);
    };
    if ep.pool.is_lean()
        && (req.method() == Method::GET || req.method() == Method::HEAD)
        && req.version() != Version::HTTP_10
        && req.body().is_end_stream()
    {
        return send_lean(up, ep, req, timing, permit).await;
    }
    let mut refusals = 0;
    loop {
        let (mut sender, reused) = match ep.pool.take_idle() {
            Some(s) => (s, true),
            None => {
                let Some(_pending) = up.enter_pending() else {
                    return Attempt::Overloaded;
                };
                let budget = timing.connect_budget(up.config.connect_timeout);
                // Boxed: a new connection is rare on a warm pool, and the connect future would
                // otherwise make every request's future larger.
                match Box::pin(ep.pool.connect(budget)).await {
                    Ok(s) => (s, false),
                    Err(e) => {
                        ep.metrics.connect_error.inc();
                        record(up, ep, permit, true);
                        return Attempt::NotSent(req, Some(e));
                    }
                }
            }
        };
        if reused && !sender.is_h2() && !sender.is_ready() {
            // Pooled connections are ready when pooled (`UpstreamBody::drop`); this one is
            // closing.
            continue;
        }
        crate::endpoint::pool::fit_request(&mut req, sender.is_h2(), up.config.tls.is_some());
        // On HTTP/2 a stream the server refuses (GOAWAY, REFUSED_STREAM) was never processed:
        // it is sent again on another connection, when its body can be sent again.
        let again = if sender.is_h2() && refusals < MAX_REFUSALS {
            let replay = req.body().replay();
            (!matches!(replay, Replay::No)).then(|| Box::new((Template::of(&req), replay)))
        } else {
            None
        };
        let in_flight = InFlight::new(ep.clone());
        let head = req.method() == Method::HEAD;
        let attempt = Instant::now();
        let sending = sender.try_send_request(req);
        tokio::pin!(sending);
        let outcome = within_attempt(sending, timing, attempt).await;
        return match outcome {
            None => {
                ep.metrics.timeout.inc();
                record(up, ep, permit, true);
                Attempt::Done(Err(GatewayError::UpstreamTimeout))
            }
            Some(Ok(res)) => {
                let head_time = attempt.elapsed();
                judge(up, ep, permit, &res, head_time);
                let (parts, body) = res.into_parts();
                let body = UpstreamBody {
                    inner: Inner::Hyper(body),
                    sender: Some(sender),
                    in_flight,
                    ended: false,
                    upstream_slot: None,
                    head_time,
                };
                deliver(ep, parts, body, head, timing.timeout).await
            }
            Some(Err(mut e)) => {
                if let Some(back) = e.take_message() {
                    // Not sent: the connection was closing. A pooled one may simply have been
                    // closed by the upstream while idle; try another.
                    req = back;
                    if reused {
                        continue;
                    }
                    ep.metrics.connect_error.inc();
                    record(up, ep, permit, true);
                    return Attempt::NotSent(req, Some(io::Error::other(e.into_error())));
                }
                let err = e.into_error();
                let refused = refusal(&err);
                if refused == Some(true) {
                    // Going away: the retry must not land on it before hyper marks it so.
                    sender.refused();
                }
                if let (true, Some(again)) = (refused.is_some(), again) {
                    let (template, replay) = *again;
                    if let Some(body) = replay.body() {
                        refusals += 1;
                        req = template.request(body);
                        drop(in_flight);
                        continue;
                    }
                }
                if caused_by::<BodyTooLarge>(&err) {
                    return Attempt::Done(Err(GatewayError::BodyTooLarge));
                }
                if caused_by::<BodyTimedOut>(&err) {
                    return Attempt::Done(Err(GatewayError::BodyTimeout));
                }
                if caused_by::<ClientBodyError>(&err) {
                    return Attempt::Done(Err(GatewayError::ClientGone));
                }
                ep.metrics.reset.inc();
                record(up, ep, permit, true);
                Attempt::Done(Err(GatewayError::Upstream(err.into())))
            }
        };
    }
}

/// `sending`'s output (pinned in the caller, so it is not moved), or `None` when the attempt's time ran out. While the client is still
/// sending its body no timer runs (`attempt_deadline` is `None`): look again later.
async fn within_attempt<F: Future>(
    mut sending: Pin<&mut F>,
    timing: &Timing,
    attempt: Instant,
) -> Option<F::Output> {
    loop {
        let (wake, last) = match timing.attempt_deadline(attempt) {
            Some(d) => (d, true),
            None => (Instant::now() + timing.timeout, false),
        };
        tokio::select! {
            biased;
            r = sending.as_mut() => return Some(r),
            () = tokio::time::sleep_until(wake) => {
                if last {
                    return None;
                }
            }
        }
    }
}

/// Count the answer's head in the endpoint's metrics and feed its breaker: a 5xx, or gRPC
/// UNAVAILABLE, DEADLINE_EXCEEDED or INTERNAL in a trailers-only answer, is a failure.
fn judge<B>(
    up: &UpstreamRt,
    ep: &Endpoint,
    permit: Permit<'_>,
    res: &Response<B>,
    head_time: Duration,
) {
    ep.metrics.duration.observe(head_time.as_secs_f64());
    let failure = res.status().is_server_error()
        || crate::grpc::status_of(res.headers()).is_some_and(crate::grpc::is_failure);
    if failure {
        ep.metrics.error.inc();
    } else {
        ep.metrics.ok.inc();
    }
    record(up, ep, permit, failure);
}

/// The answer, streamed, or read whole first when small (SPEC §8.2) so the upstream
/// connection is released whatever the client does (a client that never reads cannot pin it).
async fn deliver(
    ep: &Arc<Endpoint>,
    mut parts: http::response::Parts,
    body: UpstreamBody,
    head: bool,
    timeout: Duration,
) -> Attempt {
    headers::strip_hop_by_hop(&mut parts.headers);
    let exact = body.size_hint().exact();
    let Some(lease) = whole_response_len(&parts, head, exact).and_then(BufferLease::try_new) else {
        return Attempt::Done(Ok(Response::from_parts(parts, ResBody::Upstream(body))));
    };
    let head_time = body.head_time;
    use http_body_util::BodyExt;
    match tokio::time::timeout(timeout, body.collect()).await {
        Ok(Ok(c)) => Attempt::Done(Ok(Response::from_parts(
            parts,
            ResBody::Buffered(BufferedBody {
                data: Some(c.to_bytes()),
                endpoint: ep.clone(),
                _lease: lease,
                head_time,
            }),
        ))),
        Ok(Err(e)) => Attempt::Done(Err(GatewayError::Upstream(e))),
        Err(_) => {
            ep.metrics.timeout.inc();
            Attempt::Done(Err(GatewayError::UpstreamTimeout))
        }
    }
}

/// A bodiless GET or HEAD to a plain-text HTTP/1.1 endpoint, over the lean client
/// (`endpoint/h1.rs`): the same rules as `send`, without hyper's connection task. A pooled
/// connection the upstream closed while idle (nothing at all came back) is replaced by
/// another, as hyper's client does; GET and HEAD are safe to send again.
async fn send_lean(
    up: &UpstreamRt,
    ep: &Arc<Endpoint>,
    mut req: Request<ReqBody>,
    timing: &Timing,
    permit: Permit<'_>,
) -> Attempt {
    crate::endpoint::pool::fit_request(&mut req, false, false);
    let (parts, body) = req.into_parts();
    let head = parts.method == Method::HEAD;
    loop {
        let (conn, reused) = match ep.pool.take_lean() {
            Some(c) => (c, true),
            None => {
                let Some(_pending) = up.enter_pending() else {
                    return Attempt::Overloaded;
                };
                let budget = timing.connect_budget(up.config.connect_timeout);
                match Box::pin(ep.pool.connect_lean(budget)).await {
                    Ok(c) => (c, false),
                    Err(e) => {
                        ep.metrics.connect_error.inc();
                        record(up, ep, permit, true);
                        return Attempt::NotSent(Request::from_parts(parts, body), Some(e));
                    }
                }
            }
        };
        let in_flight = InFlight::new(ep.clone());
        let attempt = Instant::now();
        let sending = conn.exchange(&parts);
        tokio::pin!(sending);
        let outcome = within_attempt(sending, timing, attempt).await;
        return match outcome {
            None => {
                ep.metrics.timeout.inc();
                record(up, ep, permit, true);
                Attempt::Done(Err(GatewayError::UpstreamTimeout))
            }
            Some(Err(H1Error::NothingReceived(_))) if reused => continue,
            Some(Err(e)) => {
                ep.metrics.reset.inc();
                record(up, ep, permit, true);
                Attempt::Done(Err(GatewayError::Upstream(Box::new(e))))
            }
            Some(Ok((res_parts, res_body))) => {
                let head_time = attempt.elapsed();
                let res = Response::from_parts(res_parts, ());
                judge(up, ep, permit, &res, head_time);
                let body = UpstreamBody {
                    inner: Inner::Lean(res_body),
                    sender: None,
                    in_flight,
                    ended: false,
                    upstream_slot: None,
                    head_time,
                };
                deliver(ep, res.into_parts().0, body, head, timing.timeout).await
            }
        };
    }
}

/// Counts a request in flight to an endpoint while it lives.
#[derive(Debug)]
struct InFlight {
    endpoint: Arc<Endpoint>,
}

impl InFlight {
    fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.metrics.in_flight.inc();
        Self { endpoint }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.metrics.in_flight.dec();
    }
}

/// An upstream response body, streamed; its connection returns to the pool when it ends.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Inner,
    sender: Option<Sender>,
    in_flight: InFlight,
    ended: bool,
    /// The upstream-wide `max_in_flight` slot, held until the response is done.
    upstream_slot: Option<InFlightGuard>,
    head_time: Duration,
}

/// Where an upstream body comes from: hyper's client, or the lean one (`endpoint/h1.rs`).
#[derive(Debug)]
enum Inner {
    Hyper(Incoming),
    Lean(H1Body),
}

impl UpstreamBody {
    fn inner_end(&self) -> bool {
        match &self.inner {
            Inner::Hyper(b) => b.is_end_stream(),
            Inner::Lean(b) => b.is_end_stream(),
        }
    }

    /// The endpoint (`target` label) that answered.
    pub fn target(&self) -> &str {
        &self.in_flight.endpoint.id
    }

    /// How long the upstream's response head took.
    pub fn head_time(&self) -> Duration {
        self.head_time
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Inner::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            Inner::Lean(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
        };
        match &polled {
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Ok(_))) => self.ended = self.inner_end(),
            Poll::Ready(Some(Err(_))) => {
                // A body cut mid-way: the connection is not reusable.
                self.sender = None;
                self.in_flight.endpoint.metrics.reset.inc();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner_end()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(b) => b.size_hint(),
            Inner::Lean(b) => b.size_hint(),
        }
    }
}

/// How long a finished exchange may take to leave its connection reusable.
const POOL_READY_WAIT: Duration = Duration::from_secs(5);

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Inner::Lean(b) = &mut self.inner {
            // Read to its exact end, nothing after it, keep-alive: pooled.
            if let Some(conn) = b.reusable() {
                self.in_flight.endpoint.pool.put_back_lean(conn);
            }
            return;
        }
        // Only a body read to its end leaves the connection clean for the next request.
        let Some(sender) = self.sender.take() else {
            return;
        };
        if !(self.ended || self.inner_end()) {
            return;
        }
        let endpoint = self.in_flight.endpoint.clone();
        // An HTTP/2 stream slot frees itself when dropped.
        let Sender::H1(h1) = sender else { return };
        if h1.is_ready() {
            endpoint.pool.put_back(Sender::H1(h1));
            return;
        }
        // hyper's connection task has not caught up yet, or the upstream answered before the
        // request body was all sent: pool the connection once it is ready, if that is soon.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut h1 = h1;
                if let Ok(Ok(())) = tokio::time::timeout(POOL_READY_WAIT, h1.ready()).await {
                    endpoint.pool.put_back(Sender::H1(h1));
                }
            });
        }
    }
}
