//! (3) Forward auth (SPEC §8.4): after the body limit, before JWT. A `GET` to the auth service
//! with the client's `forward_headers` and `X-Forwarded-Method/-Uri/-Host/-Proto/-For` and
//! `x-request-id`; 2xx lets the request on (with `copy_headers` from the answer set on it),
//! 3xx/4xx goes back to the client as it came (status, `Content-Type`, body up to 64 KiB,
//! `WWW-Authenticate`, `Location`, `Set-Cookie`), 5xx, a timeout or no answer follow
//! `on_error`. 2xx verdicts may be cached, keyed on the forwarded header values, method, host
//! and normalised path (at most 10,000). The auth service is reached through the upstream
//! tier's pooled client (`Subrequest`, given by the runtime), so this tier imports no later one.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response};
use prometheus::IntCounter;
use tower::{Layer, Service};

use crate::body::{ReqBody, ResBody};
use crate::config::ForwardAuthPolicy;
use crate::ctx::{ClientIp, X_REQUEST_ID};
use crate::error::GatewayError;

/// Answers from the auth service larger than this are not passed on (the JSON error instead).
pub const MAX_AUTH_BODY: usize = 64 * 1024;
const CACHE_ENTRIES: usize = 10_000;

/// The auth service's answer: its head and its body.
pub type AuthAnswer =
    Pin<Box<dyn Future<Output = io::Result<(http::response::Parts, Bytes)>> + Send>>;

/// One exchange with the auth service: the answer's head and its body (read whole, at most
/// `MAX_AUTH_BODY` + 1 bytes so an oversized one can be told).
pub trait Subrequest: Send + Sync + std::fmt::Debug {
    fn send(&self, req: Request<ReqBody>) -> AuthAnswer;
}

/// `gateway_forward_auth_total{route,policy,outcome}` handles.
#[derive(Debug, Clone)]
pub struct AuthCounters {
    pub allow: IntCounter,
    pub deny: IntCounter,
    pub error: IntCounter,
}

type Verdict = (Instant, Arc<Vec<(HeaderName, HeaderValue)>>);

/// A forward-auth policy ready to ask.
pub struct ForwardAuthRt {
    policy: ForwardAuthPolicy,
    client: Arc<dyn Subrequest>,
    cache: Option<quick_cache::sync::Cache<u64, Verdict>>,
}

impl std::fmt::Debug for ForwardAuthRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardAuthRt")
            .field("addr", &self.policy.addr)
            .finish_non_exhaustive()
    }
}

impl ForwardAuthRt {
    pub fn new(policy: ForwardAuthPolicy, client: Arc<dyn Subrequest>) -> Self {
        let cache = (!policy.cache.is_zero()).then(|| quick_cache::sync::Cache::new(CACHE_ENTRIES));
        Self {
            policy,
            client,
            cache,
        }
    }

    fn cache_key(&self, parts: &http::request::Parts) -> u64 {
        let mut k = Vec::with_capacity(128);
        for n in &self.policy.forward_headers {
            for v in parts.headers.get_all(n) {
                k.extend_from_slice(v.as_bytes());
                k.push(0);
            }
            k.push(1);
        }
        k.extend_from_slice(parts.method.as_str().as_bytes());
        k.push(0);
        if let Some(h) = crate::route::table::request_host(&parts.uri, &parts.headers) {
            k.extend_from_slice(h.as_bytes());
        }
        k.push(0);
        k.extend_from_slice(parts.uri.path().as_bytes());
        crate::key::xxh3(&k)
    }

    /// The subrequest for a client request.
    fn subrequest(&self, parts: &http::request::Parts) -> Request<ReqBody> {
        let p = &self.policy;
        let mut req = Request::new(ReqBody::empty());
        *req.uri_mut() = p
            .path_and_query
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("/"));
        let h = req.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&p.authority) {
            h.insert(header::HOST, v);
        }
        for n in &p.forward_headers {
            for v in parts.headers.get_all(n) {
                h.append(n.clone(), v.clone());
            }
        }
        let xf = |name: &'static str| HeaderName::from_static(name);
        if let Ok(v) = HeaderValue::from_str(parts.method.as_str()) {
            h.insert(xf("x-forwarded-method"), v);
        }
        let uri = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        if let Ok(v) = HeaderValue::from_str(uri) {
            h.insert(xf("x-forwarded-uri"), v);
        }
        if let Some(host) = parts.uri.authority().map(|a| a.as_str()).or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        }) {
            if let Ok(v) = HeaderValue::from_str(host) {
                h.insert(xf("x-forwarded-host"), v);
            }
        }
        let https = parts
            .extensions
            .get::<Arc<crate::ctx::ConnInfo>>()
            .is_some_and(|c| c.listener.https);
        h.insert(
            xf("x-forwarded-proto"),
            HeaderValue::from_static(if https { "https" } else { "http" }),
        );
        if let Some(ip) = parts.extensions.get::<ClientIp>() {
            if let Ok(v) = HeaderValue::from_str(&ip.0.to_string()) {
                h.insert(xf("x-forwarded-for"), v);
            }
        }
        if let Some(id) = parts.headers.get(X_REQUEST_ID) {
            h.insert(X_REQUEST_ID, id.clone());
        }
        req
    }
}

/// The auth service's refusal as the client gets it.
fn refusal(
    parts: &http::response::Parts,
    body: Bytes,
    request_id: &HeaderValue,
) -> Response<ResBody> {
    if body.len() > MAX_AUTH_BODY {
        let mut res = crate::error::json_error(parts.status, "access denied", request_id);
        copy_refusal_headers(&parts.headers, res.headers_mut(), false);
        return res;
    }
    let mut res = Response::new(ResBody::from(body));
    *res.status_mut() = parts.status;
    copy_refusal_headers(&parts.headers, res.headers_mut(), true);
    res
}

fn copy_refusal_headers(from: &HeaderMap, to: &mut HeaderMap, content_type: bool) {
    let mut names = vec![
        header::WWW_AUTHENTICATE,
        header::LOCATION,
        header::SET_COOKIE,
    ];
    if content_type {
        names.push(header::CONTENT_TYPE);
    }
    for n in names {
        for v in from.get_all(&n) {
            to.append(n.clone(), v.clone());
        }
    }
}

#[derive(Clone, Debug)]
pub struct ForwardAuthLayer {
    rt: Arc<ForwardAuthRt>,
    counters: AuthCounters,
}

impl ForwardAuthLayer {
    pub fn new(rt: Arc<ForwardAuthRt>, counters: AuthCounters) -> Self {
        Self { rt, counters }
    }
}

impl<S> Layer<S> for ForwardAuthLayer {
    type Service = ForwardAuth<S>;
    fn layer(&self, inner: S) -> ForwardAuth<S> {
        ForwardAuth {
            inner,
            rt: self.rt.clone(),
            counters: self.counters.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ForwardAuth<S> {
    inner: S,
    rt: Arc<ForwardAuthRt>,
    counters: AuthCounters,
}

impl<S> Service<Request<ReqBody>> for ForwardAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, GatewayError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let rt = self.rt.clone();
        let counters = self.counters.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let key = rt.cache.as_ref().map(|_| rt.cache_key(&parts));
            if let (Some(cache), Some(k)) = (&rt.cache, key) {
                if let Some((until, copied)) = cache.get(&k) {
                    if Instant::now() < until {
                        counters.allow.inc();
                        for (n, v) in copied.iter() {
                            parts.headers.insert(n.clone(), v.clone());
                        }
                        return inner.call(Request::from_parts(parts, body)).await;
                    }
                    cache.remove(&k);
                }
            }
            let sub = rt.subrequest(&parts);
            let answer = tokio::time::timeout(rt.policy.timeout, rt.client.send(sub)).await;
            let (head, bytes) = match answer {
                Ok(Ok(a)) if !a.0.status.is_server_error() => a,
                other => {
                    counters.error.inc();
                    let why = match other {
                        Ok(Ok(a)) => format!("answered {}", a.0.status),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no answer within {:?}", rt.policy.timeout),
                    };
                    tracing::warn!(auth = %rt.policy.addr, reason = %why, allow = rt.policy.allow_on_error, "forward auth service failed");
                    if rt.policy.allow_on_error {
                        return inner.call(Request::from_parts(parts, body)).await;
                    }
                    return Err(GatewayError::AuthUnavailable);
                }
            };
            if head.status.is_success() {
                counters.allow.inc();
                let mut copied = Vec::new();
                for n in &rt.policy.copy_headers {
                    if let Some(v) = head.headers.get(n) {
                        parts.headers.insert(n.clone(), v.clone());
                        copied.push((n.clone(), v.clone()));
                    }
                }
                if let (Some(cache), Some(k)) = (&rt.cache, key) {
                    cache.insert(k, (Instant::now() + rt.policy.cache, Arc::new(copied)));
                }
                return inner.call(Request::from_parts(parts, body)).await;
            }
            counters.deny.inc();
            let id = parts
                .headers
                .get(X_REQUEST_ID)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("-"));
            Ok(refusal(&head, bytes, &id))
        })
    }
}
