//! (3) CORS (SPEC §8.4): after the IP lists, before the body limit. A preflight (`OPTIONS` with
//! `Origin` and `Access-Control-Request-Method`, routed as if its method were the requested
//! one) is answered here and never forwarded: 204 with the allow headers when the origin, the
//! method and every requested header are allowed, else 403. Other requests go on; their
//! responses, the gateway's own errors included, are decorated by the observe layer
//! (`decorate`), which replaces any `Access-Control-*` header the upstream sent.

use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use prometheus::IntCounter;
use tower::{Layer, Service};

use crate::body::{ReqBody, ResBody};
use crate::config::CorsPolicy;
use crate::error::GatewayError;

/// A CORS policy ready to answer: header values made once per config generation.
#[derive(Debug)]
pub struct CorsRt {
    policy: CorsPolicy,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
    allowed: IntCounter,
    refused: IntCounter,
}

fn join(list: &[String]) -> Option<HeaderValue> {
    (!list.is_empty())
        .then(|| HeaderValue::from_str(&list.join(", ")).ok())
        .flatten()
}

impl CorsRt {
    /// `allowed` / `refused`: `gateway_cors_preflights_total{route,outcome}`.
    pub fn new(policy: CorsPolicy, allowed: IntCounter, refused: IntCounter) -> Self {
        let methods: Vec<String> = policy.methods.iter().map(|m| m.to_string()).collect();
        Self {
            allow_methods: join(&methods).unwrap_or(HeaderValue::from_static("GET, HEAD, POST")),
            allow_headers: join(&policy.headers),
            expose: join(&policy.expose),
            max_age: HeaderValue::from(policy.max_age.as_secs()),
            policy,
            allowed,
            refused,
        }
    }

    pub fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        self.policy.any_origin
            || origin.to_str().is_ok_and(|o| {
                self.policy
                    .origins
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(o))
            })
    }

    /// What `Access-Control-Allow-Origin` says for an allowed origin.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.policy.any_origin && !self.policy.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// The answer to a preflight: 204 with the allow headers, or the refusal.
    pub fn preflight(&self, headers: &HeaderMap) -> Result<Response<ResBody>, GatewayError> {
        let origin = headers.get(header::ORIGIN);
        let method = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        let requested_ok = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .all(|h| {
                self.policy
                    .headers
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(h))
            });
        let ok = match (origin, &method) {
            (Some(o), Some(m)) => {
                self.origin_allowed(o) && self.policy.methods.contains(m) && requested_ok
            }
            _ => false,
        };
        let Some(origin) = origin.filter(|_| ok) else {
            self.refused.inc();
            return Err(GatewayError::CorsRefused);
        };
        self.allowed.inc();
        let mut res = Response::new(ResBody::empty());
        *res.status_mut() = StatusCode::NO_CONTENT;
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        if let Some(v) = &self.allow_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if self.policy.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if !self.policy.any_origin {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        Ok(res)
    }

    /// Decorate a response to a request that carried `origin` (not a preflight): the upstream's
    /// `Access-Control-*` headers are replaced by the policy's.
    pub fn decorate(&self, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
        let upstream_cors: Vec<header::HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for k in upstream_cors {
            h.remove(k);
        }
        if let Some(o) = origin.filter(|o| self.origin_allowed(o)) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(o));
            if let Some(v) = &self.expose {
                h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
            }
            if self.policy.credentials {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        }
        if !self.policy.any_origin {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

pub use crate::route::is_preflight;

#[derive(Clone, Debug)]
pub struct CorsLayer {
    rt: Arc<CorsRt>,
}

impl CorsLayer {
    pub fn new(rt: Arc<CorsRt>) -> Self {
        Self { rt }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;
    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            inner,
            rt: self.rt.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Cors<S> {
    inner: S,
    rt: Arc<CorsRt>,
}

impl<S> Service<Request<ReqBody>> for Cors<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = GatewayError>,
{
    type Response = Response<ResBody>;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Response<ResBody>, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if is_preflight(req.method(), req.headers()) {
            return Either::Left(ready(self.rt.preflight(req.headers())));
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rt(origins: &[&str], credentials: bool) -> CorsRt {
        CorsRt::new(
            CorsPolicy {
                any_origin: origins == ["*"],
                origins: origins
                    .iter()
                    .filter(|o| **o != "*")
                    .map(|o| o.to_string())
                    .collect(),
                methods: vec![Method::GET, Method::POST],
                headers: vec!["x-token".into()],
                expose: vec!["x-trace".into()],
                credentials,
                max_age: Duration::from_secs(600),
            },
            IntCounter::new("a", "a").unwrap(),
            IntCounter::new("r", "r").unwrap(),
        )
    }

    fn pre(origin: &str, method: &str, headers: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            method.parse().unwrap(),
        );
        if !headers.is_empty() {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                headers.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn preflights_pass_only_when_origin_method_and_headers_are_allowed() {
        let c = rt(&["https://app.example.com"], true);
        let ok = c
            .preflight(&pre("https://app.example.com", "POST", "X-Token"))
            .unwrap();
        assert_eq!(ok.status(), 204);
        let h = ok.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-methods"], "GET, POST");
        assert_eq!(h["access-control-allow-headers"], "x-token");
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["vary"], "Origin");
        assert!(c
            .preflight(&pre("https://evil.example", "POST", ""))
            .is_err());
        assert!(c
            .preflight(&pre("https://app.example.com", "DELETE", ""))
            .is_err());
        assert!(c
            .preflight(&pre("https://app.example.com", "GET", "x-other"))
            .is_err());
    }

    #[test]
    fn responses_get_the_policy_headers_and_lose_the_upstreams() {
        let c = rt(&["*"], false);
        let mut h = HeaderMap::new();
        h.insert(
            "access-control-allow-origin",
            "https://upstream.example".parse().unwrap(),
        );
        h.insert("access-control-max-age", "99".parse().unwrap());
        c.decorate(Some(&"https://any.example".parse().unwrap()), &mut h);
        assert_eq!(h["access-control-allow-origin"], "*");
        assert_eq!(h["access-control-expose-headers"], "x-trace");
        assert!(h.get("access-control-max-age").is_none());
        assert!(h.get("vary").is_none(), "no Vary: Origin with *");
    }
}
