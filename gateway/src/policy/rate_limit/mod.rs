//! Rate limiting (`[rate_limits.NAME]`, a route's `rate_limit`): GCRA with an emission
//! interval of `per / rate` and room for `burst` requests at once, one bucket per (policy, key
//! value), shared by every route that names the policy. `store = "local"` keeps buckets in
//! this process (governor); `store = "redis"` keeps them in Redis, shared by every instance
//! (`redis.rs`), with `[redis].on_error` deciding what happens while Redis is unreachable.
//!
//! Comes after auth and integrity (so `jwt.CLAIM` keys are verified claims) and before the
//! balancer. A refused request gets 429 with `Retry-After`, `RateLimit-Policy` and `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers, SPEC §4); allowed responses carry both fields too.
//! Requests without the key's value (no such header, claim or parameter) share one bucket of
//! the policy, so leaving the key out never escapes the limit.

pub mod local;
pub mod redis;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header::HeaderName, HeaderMap, HeaderValue, Request, Response};
use prometheus::IntCounter;
use tower::{Layer, Service};

use crate::body::{ReqBody, ResBody};
use crate::config::{RateLimitPolicy, Store};
use crate::ctx::ClientIp;
use crate::ctx::OriginalPath;
use crate::error::GatewayError;
use crate::key::{self, xxh3, KeySpec};
use local::LocalLimiter;
use redis::RedisLimiter;

pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The key hash of requests that do not carry the policy's key.
const MISSING_KEY: u64 = 0x6d69_7373_696e_6721;

/// What a limiter decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests the bucket would still take now.
    pub remaining: u64,
    /// Until the bucket is full again (allowed), or until the next request may pass (refused).
    pub wait: Duration,
}

impl Decision {
    pub fn allow(remaining: u64, until_full: Duration) -> Self {
        Self {
            allowed: true,
            remaining,
            wait: until_full,
        }
    }

    pub fn deny(retry_after: Duration) -> Self {
        Self {
            allowed: false,
            remaining: 0,
            wait: retry_after,
        }
    }
}

/// Whole seconds, rounded up (at least 1 when anything is left).
fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

/// A refused request: what the 429 says.
#[derive(Debug)]
pub struct Denied {
    pub policy: Arc<str>,
    policy_header: HeaderValue,
    retry_after: Duration,
}

impl Denied {
    pub fn add_headers(&self, h: &mut HeaderMap) {
        let secs = ceil_secs(self.retry_after).max(1);
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        h.insert(RATELIMIT_POLICY, self.policy_header.clone());
        if let Ok(v) =
            HeaderValue::from_maybe_shared(Bytes::from(format!("\"{}\";r=0;t={secs}", self.policy)))
        {
            h.insert(RATELIMIT, v);
        }
    }
}

/// A rate-limit policy, live: its buckets, in this process or in Redis.
pub struct RateLimiterRt {
    pub name: Arc<str>,
    pub policy: RateLimitPolicy,
    /// `"NAME";q=RATE;w=SECONDS`
    policy_header: HeaderValue,
    /// The buckets (`store = "local"`), or the fallback while Redis is unreachable.
    local: LocalLimiter,
    redis: Option<RedisLimiter>,
}

impl std::fmt::Debug for RateLimiterRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiterRt")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RateLimiterRt {
    /// `redis`: the shared Redis store, for `store = "redis"` policies.
    pub fn new(
        name: &str,
        policy: RateLimitPolicy,
        redis: Option<&Arc<redis::RedisStore>>,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let w = ceil_secs(policy.per).max(1);
        let policy_header = HeaderValue::from_maybe_shared(Bytes::from(format!(
            "\"{name}\";q={};w={w}",
            policy.rate
        )))
        .unwrap_or_else(|_| HeaderValue::from_static("\"invalid\""));
        let redis = match (policy.store, redis) {
            (Store::Redis, Some(store)) => Some(RedisLimiter::new(name, &policy, store, metrics)),
            _ => None,
        };
        metrics
            .rate_limit_store_errors_total
            .with_label_values(&[name]);
        metrics.rate_limit_store_fallback.with_label_values(&[name]);
        Self {
            name: name.into(),
            local: LocalLimiter::new(&policy),
            policy,
            policy_header,
            redis,
        }
    }

    /// Decide without waiting, when possible: always for local buckets; for Redis when this
    /// instance holds leased tokens, a cached refusal, or Redis is known to be down.
    pub fn check_now(&self, key: u64) -> Option<Decision> {
        match &self.redis {
            None => Some(self.local.check(key)),
            Some(r) => r.check_now(key, &self.local),
        }
    }

    /// Decide, asking Redis if needed.
    pub async fn check(&self, key: u64) -> Decision {
        match &self.redis {
            None => self.local.check(key),
            Some(r) => match r.check_now(key, &self.local) {
                Some(d) => d,
                None => r.check_remote(key, &self.local).await,
            },
        }
    }

    /// Drop state of keys idle long enough to be back at a full bucket (background).
    pub fn evict_idle(&self) {
        self.local.evict_idle();
        if let Some(r) = &self.redis {
            r.evict_idle();
        }
    }

    /// How many keys this process holds state for (local buckets plus Redis leases).
    pub fn keys(&self) -> usize {
        self.local.len() + self.redis.as_ref().map_or(0, |r| r.len())
    }

    fn denied(&self, d: &Decision) -> GatewayError {
        GatewayError::RateLimited(Box::new(Denied {
            policy: self.name.clone(),
            policy_header: self.policy_header.clone(),
            retry_after: d.wait,
        }))
    }

    fn allowed_header(&self, d: &Decision) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(Bytes::from(format!(
            "\"{}\";r={};t={}",
            self.name,
            d.remaining,
            ceil_secs(d.wait)
        )))
        .ok()
    }
}

/// Evict idle keys of these limiters every 10 s, while any of them lives.
pub fn spawn_eviction(limiters: &[Arc<RateLimiterRt>]) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Vec<_> = limiters.iter().map(Arc::downgrade).collect();
    if weak.is_empty() {
        return;
    }
    rt.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let mut alive = false;
            for w in &weak {
                if let Some(l) = w.upgrade() {
                    l.evict_idle();
                    alive = true;
                }
            }
            if !alive {
                return;
            }
        }
    });
}

/// The route's rate-limit layer.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiterRt>,
    /// The key hash when the policy's key is `route`.
    route_key: u64,
    limited: IntCounter,
}

impl RateLimitLayer {
    pub fn new(
        limiter: Arc<RateLimiterRt>,
        route: &str,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let limited = metrics
            .rate_limited_total
            .with_label_values(&[route, &limiter.name]);
        Self {
            route_key: xxh3(route.as_bytes()),
            limiter,
            limited,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

/// The key hash of a request under `spec`.
fn key_hash(spec: &KeySpec, route_key: u64, parts: &http::request::Parts) -> u64 {
    if *spec == KeySpec::Route {
        return route_key;
    }
    let client: Option<IpAddr> = parts.extensions.get::<ClientIp>().map(|c| c.0);
    let path = parts
        .extensions
        .get::<OriginalPath>()
        .map_or(parts.uri.path(), |p| p.0.as_str());
    key::extract(spec, parts, client, path).map_or(MISSING_KEY, |k| xxh3(&k))
}

type BoxResponse = Pin<Box<dyn Future<Output = Result<Response<ResBody>, GatewayError>> + Send>>;

impl<S> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = GatewayError;
    type Future = RateLimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let key = key_hash(&self.layer.limiter.policy.key, self.layer.route_key, &parts);
        let req = Request::from_parts(parts, body);
        match self.layer.limiter.check_now(key) {
            Some(d) if d.allowed => RateLimitFuture::Allowed {
                header: self.layer.limiter.allowed_header(&d),
                policy: Some(self.layer.limiter.policy_header.clone()),
                inner: self.inner.call(req),
            },
            Some(d) => {
                self.layer.limited.inc();
                RateLimitFuture::Denied {
                    error: Some(self.layer.limiter.denied(&d)),
                }
            }
            None => {
                // Redis has to be asked: the one path that waits (and allocates).
                let layer = self.layer.clone();
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                RateLimitFuture::Waiting {
                    fut: Box::pin(async move {
                        let d = layer.limiter.check(key).await;
                        if !d.allowed {
                            layer.limited.inc();
                            return Err(layer.limiter.denied(&d));
                        }
                        let header = layer.limiter.allowed_header(&d);
                        let mut res = inner.call(req).await?;
                        add_allowed(&mut res, &layer.limiter.policy_header, header);
                        Ok(res)
                    }),
                }
            }
        }
    }
}

fn add_allowed(res: &mut Response<ResBody>, policy: &HeaderValue, header: Option<HeaderValue>) {
    res.headers_mut().insert(RATELIMIT_POLICY, policy.clone());
    if let Some(h) = header {
        res.headers_mut().insert(RATELIMIT, h);
    }
}

pin_project_lite::pin_project! {
    #[project = RlProj]
    pub enum RateLimitFuture<F> {
        Allowed { #[pin] inner: F, policy: Option<HeaderValue>, header: Option<HeaderValue> },
        Denied { error: Option<GatewayError> },
        Waiting { fut: BoxResponse },
    }
}

impl<F> Future for RateLimitFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, GatewayError>>,
{
    type Output = Result<Response<ResBody>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RlProj::Allowed {
                inner,
                policy,
                header,
            } => {
                let mut res = std::task::ready!(inner.poll(cx))?;
                if let Some(p) = policy.take() {
                    add_allowed(&mut res, &p, header.take());
                }
                Poll::Ready(Ok(res))
            }
            RlProj::Denied { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or(GatewayError::BadRequest("rate limit polled twice")))),
            RlProj::Waiting { fut } => fut.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rate: u64, per: Duration, burst: u64) -> RateLimitPolicy {
        RateLimitPolicy {
            key: KeySpec::Ip,
            rate,
            per,
            burst,
            store: Store::Local,
        }
    }

    #[test]
    fn the_policy_header_names_quota_and_window() {
        let m = crate::metrics::Metrics::new();
        let rl = RateLimiterRt::new(
            "per_user",
            policy(100, Duration::from_secs(1), 50),
            None,
            &m,
        );
        assert_eq!(rl.policy_header, "\"per_user\";q=100;w=1");
        let d = Decision::allow(7, Duration::from_millis(1500));
        assert_eq!(
            rl.allowed_header(&d).unwrap(),
            "\"per_user\";r=7;t=2",
            "t rounds up"
        );
        let mut h = HeaderMap::new();
        let GatewayError::RateLimited(denied) =
            rl.denied(&Decision::deny(Duration::from_millis(20)))
        else {
            panic!()
        };
        denied.add_headers(&mut h);
        assert_eq!(h["retry-after"], "1");
        assert_eq!(h["ratelimit"], "\"per_user\";r=0;t=1");
        assert_eq!(h["ratelimit-policy"], "\"per_user\";q=100;w=1");
    }

    #[test]
    fn burst_then_rate_then_refusal() {
        let m = crate::metrics::Metrics::new();
        let rl = RateLimiterRt::new("p", policy(10, Duration::from_secs(1), 5), None, &m);
        let allowed = (0..20).filter(|_| rl.check_now(1).unwrap().allowed).count();
        assert_eq!(
            allowed, 5,
            "the burst, then nothing until a token comes back"
        );
        let refused = rl.check_now(1).unwrap();
        assert!(!refused.allowed);
        assert!(refused.wait <= Duration::from_millis(100) && refused.wait > Duration::ZERO);
        // Another key has its own bucket.
        assert!(rl.check_now(2).unwrap().allowed);
        std::thread::sleep(Duration::from_millis(110));
        assert!(
            rl.check_now(1).unwrap().allowed,
            "one token back after per/rate"
        );
    }
}
