//! (6) Talk to the target: the upstream service at the bottom of every route stack.
//!
//! Comes after the route's policies. It asks the balancer for a shard, the shard for its
//! serving endpoint (primary, else first up backup), takes a pooled connection and sends the
//! request with the route's per-attempt timeout. A connect error (nothing was sent) moves on to
//! the balancer's next choice, once per target. Bodies stream both ways; the connection goes
//! back to the pool when the response body ends.

pub mod forward;
pub mod pool;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use ipnet::IpNet;
use tokio::time::Instant;
use tower::Service;

use crate::balance::{key, Balancer, PickCtx};
use crate::body::{caused_by, BodyProgress, BodyTooLarge, ClientBodyError, ReqBody, ResBody};
use crate::config::{self, OnMissingKey};
use crate::edge::ConnInfo;
use crate::endpoint::{Endpoint, Shard};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::policy::observe::ClientIp;
use crate::route::rewrite::OriginalPath;
use pool::Sender;

/// One upstream of a config generation: its balancer over its shards.
#[derive(Debug)]
pub struct UpstreamRt {
    pub name: String,
    pub config: config::Upstream,
    pub balancer: Balancer,
    pub shards: Vec<Shard>,
}

impl UpstreamRt {
    pub fn build(cfg: &config::Upstream, metrics: &Metrics) -> Self {
        metrics.upstream(&cfg.name);
        let shards = cfg
            .targets
            .iter()
            .map(|t| {
                let mut endpoints = Vec::with_capacity(1 + t.backups.len());
                endpoints.push(Arc::new(Endpoint::new(
                    t.id.clone(),
                    t.addr,
                    None,
                    metrics.endpoint(&cfg.name, &t.id),
                )));
                for b in &t.backups {
                    let id = b.to_string();
                    endpoints.push(Arc::new(Endpoint::new(
                        id.clone(),
                        *b,
                        Some(t.id.clone()),
                        metrics.endpoint(&cfg.name, &id),
                    )));
                }
                Shard {
                    id: t.id.clone(),
                    weight: t.weight,
                    endpoints,
                }
            })
            .collect();
        Self {
            name: cfg.name.clone(),
            balancer: Balancer::new(cfg.balancer, &cfg.targets, cfg.maglev_table_size),
            config: cfg.clone(),
            shards,
        }
    }

    /// Rebuild the balancer if it depends on the up set and that changed (off the request
    /// path: called by whoever changes an endpoint's health).
    pub fn refresh_balancer(&self) -> bool {
        let up: Vec<bool> = self.shards.iter().map(Shard::is_up).collect();
        self.balancer.refresh(&up)
    }

    /// The key hash of a request for this upstream's balancer: `Ok(None)` when the balancer
    /// takes no key (or the key is missing and `on_missing_key = "random"`).
    pub fn request_hash(
        &self,
        parts: &http::request::Parts,
        client: Option<IpAddr>,
        path: &str,
    ) -> Result<Option<u64>, GatewayError> {
        let Some(spec) = &self.config.hash_on else {
            return Ok(None);
        };
        match key::extract(spec, parts, client, path) {
            Some(k) => Ok(Some(self.balancer.load().algo.hash_key(&k))),
            None if self.config.on_missing_key == OnMissingKey::Random => Ok(None),
            None => Err(GatewayError::MissingKey(spec.to_string())),
        }
    }
}

/// How one route forwards to its upstream.
#[derive(Debug)]
pub struct ForwardConfig {
    pub upstream: Arc<UpstreamRt>,
    pub timeout: Duration,
    pub total_timeout: Duration,
    pub host_rewrite: Option<HeaderValue>,
    pub trusted_proxies: Arc<[IpNet]>,
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
        Box::pin(forward(self.cfg.clone(), req))
    }
}

/// Which shards a request has tried, without allocating for upstreams of up to 128 targets.
struct Tried {
    small: u128,
    large: Vec<bool>,
}

impl Tried {
    fn new(n: usize) -> Self {
        Self {
            small: 0,
            large: if n > 128 { vec![false; n] } else { Vec::new() },
        }
    }
    fn contains(&self, i: usize) -> bool {
        if self.large.is_empty() {
            self.small & (1 << i) != 0
        } else {
            self.large[i]
        }
    }
    fn insert(&mut self, i: usize) {
        if self.large.is_empty() {
            self.small |= 1 << i;
        } else {
            self.large[i] = true;
        }
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
}

async fn forward(
    cfg: Arc<ForwardConfig>,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, GatewayError> {
    let timing = Timing {
        started: Instant::now(),
        progress: req.body().progress(),
        timeout: cfg.timeout,
        total_timeout: cfg.total_timeout,
    };
    let (mut parts, body) = req.into_parts();
    let up = &cfg.upstream;
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
        let hop = forward::Hop {
            peer: conn.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.peer.ip()),
            peer_header: conn.map(|c| &c.peer_header),
            https: conn.is_some_and(|c| c.listener.https),
            trusted_proxies: &cfg.trusted_proxies,
            host_rewrite: cfg.host_rewrite.as_ref(),
        };
        forward::prepare(&mut parts, &hop)?;
    }
    // Extensions are ours, not the upstream's.
    parts.extensions.clear();
    let mut req = Request::from_parts(parts, body);

    let mut tried = Tried::new(up.shards.len());
    let mut last_connect_error = None;
    let load = |i: usize| up.shards[i].serving().map_or(0, |e| e.in_flight());
    loop {
        let pick = {
            let ctx = PickCtx { hash, load: &load };
            let built = up.balancer.load();
            built
                .algo
                .pick(&ctx, &mut |i| !tried.contains(i) && up.shards[i].is_up())
        };
        let Some(i) = pick else {
            return Err(match last_connect_error {
                Some(e) => GatewayError::Connect(e),
                None => GatewayError::NoTarget,
            });
        };
        tried.insert(i);
        // The shard's endpoints in order: its primary, then its backups, each up one once.
        // A connect failure (nothing sent) moves on to the next; when the whole shard failed,
        // to the balancer's next choice.
        for ep in up.shards[i].endpoints.iter().filter(|e| e.is_up()) {
            match send(ep, req, &timing, up.config.connect_timeout).await {
                Sent::Response(res) => return Ok(res),
                Sent::Failed(e) => return Err(e),
                Sent::ConnectFailed(back, e) => {
                    ep.metrics.connect_error.inc();
                    tracing::debug!(upstream = %up.name, target = %ep.id, error = %e, "connect failed; trying the next endpoint");
                    req = back;
                    last_connect_error = Some(e);
                    if timing.total_deadline().is_some_and(|d| Instant::now() >= d) {
                        return Err(GatewayError::UpstreamTimeout);
                    }
                }
            }
        }
    }
}

enum Sent {
    Response(Response<ResBody>),
    /// Nothing was sent: the request comes back for the next target.
    ConnectFailed(Request<ReqBody>, io::Error),
    Failed(GatewayError),
}

async fn send(
    ep: &Arc<Endpoint>,
    mut req: Request<ReqBody>,
    timing: &Timing,
    connect_timeout: Duration,
) -> Sent {
    loop {
        let (mut sender, reused) = match ep.pool.take_idle() {
            Some(s) => (s, true),
            None => {
                let budget = timing.total_deadline().map_or(connect_timeout, |d| {
                    d.saturating_duration_since(Instant::now())
                        .min(connect_timeout)
                });
                match ep.pool.connect(budget).await {
                    Ok(s) => (s, false),
                    Err(e) => return Sent::ConnectFailed(req, e),
                }
            }
        };
        if reused && !sender.is_ready() {
            // Pooled connections are ready when pooled (`UpstreamBody::drop`); this one is
            // closing.
            continue;
        }
        let in_flight = InFlight::new(ep.clone());
        let attempt = Instant::now();
        let sending = sender.try_send_request(req);
        tokio::pin!(sending);
        let outcome = loop {
            // While the client is still sending its body, no timer runs: look again later.
            let (wake, last) = match timing.attempt_deadline(attempt) {
                Some(d) => (d, true),
                None => (Instant::now() + timing.timeout, false),
            };
            tokio::select! {
                biased;
                r = &mut sending => break Some(r),
                () = tokio::time::sleep_until(wake) => {
                    if last {
                        break None;
                    }
                }
            }
        };
        match outcome {
            None => {
                ep.metrics.timeout.inc();
                return Sent::Failed(GatewayError::UpstreamTimeout);
            }
            Some(Ok(res)) => {
                ep.metrics.duration.observe(attempt.elapsed().as_secs_f64());
                if res.status().is_server_error() {
                    ep.metrics.error.inc();
                } else {
                    ep.metrics.ok.inc();
                }
                let (mut parts, body) = res.into_parts();
                forward::strip_hop_by_hop(&mut parts.headers);
                let body = UpstreamBody {
                    inner: body,
                    sender: Some(sender),
                    in_flight,
                    ended: false,
                };
                return Sent::Response(Response::from_parts(parts, ResBody::Upstream(body)));
            }
            Some(Err(mut e)) => {
                if let Some(back) = e.take_message() {
                    // Not sent: the connection was closing. A pooled one may simply have been
                    // closed by the upstream while idle; try another.
                    req = back;
                    if reused {
                        continue;
                    }
                    return Sent::ConnectFailed(req, io::Error::other(e.into_error()));
                }
                let err = e.into_error();
                if caused_by::<BodyTooLarge>(&err) {
                    return Sent::Failed(GatewayError::BodyTooLarge);
                }
                if caused_by::<ClientBodyError>(&err) {
                    return Sent::Failed(GatewayError::ClientGone);
                }
                ep.metrics.reset.inc();
                return Sent::Failed(GatewayError::Upstream(err));
            }
        }
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
    inner: Incoming,
    sender: Option<Sender>,
    in_flight: InFlight,
    ended: bool,
}

impl UpstreamBody {
    /// The endpoint (`target` label) that answered.
    pub fn target(&self) -> &str {
        &self.in_flight.endpoint.id
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Ok(_))) => self.ended = self.inner.is_end_stream(),
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
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Only a body read to its end leaves the connection clean for the next request.
        let Some(sender) = self.sender.take() else {
            return;
        };
        if !(self.ended || self.inner.is_end_stream()) {
            return;
        }
        let endpoint = self.in_flight.endpoint.clone();
        if sender.is_ready() {
            endpoint.pool.put_back(sender);
            return;
        }
        // hyper's connection task has not caught up yet, or the upstream answered before the
        // request body was all sent: pool the connection once it is ready, if that is soon.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut sender = sender;
                if let Ok(Ok(())) = tokio::time::timeout(POOL_READY_WAIT, sender.ready()).await {
                    endpoint.pool.put_back(sender);
                }
            });
        }
    }
}

/// How long a finished exchange may take to leave its connection reusable.
const POOL_READY_WAIT: Duration = Duration::from_secs(5);

/// Closes idle pooled connections that went stale, every `REAP_EVERY`, for as long as the
/// upstream's config generation lives.
pub fn spawn_reaper(upstream: &Arc<UpstreamRt>) {
    const REAP_EVERY: Duration = Duration::from_secs(10);
    let weak = Arc::downgrade(upstream);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            loop {
                tokio::time::sleep(REAP_EVERY).await;
                let Some(up) = weak.upgrade() else { return };
                for shard in &up.shards {
                    for ep in &shard.endpoints {
                        ep.pool.reap();
                    }
                }
            }
        });
    }
}
