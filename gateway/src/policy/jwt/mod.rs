//! JWT authentication (`[jwt.NAME]`, a route's `jwt`): the bearer token must verify against
//! the policy's keys, algorithms, issuer, audiences and times, or the request gets 401 with
//! `WWW-Authenticate: Bearer error="invalid_token", error_description="..."`.
//!
//! Comes after the body limit and before API keys, integrity and rate limiting. Incoming
//! copies of the `claims_to_headers` headers never get this far (the router strips every
//! identity header on every route), so a client cannot forge them; after verification they
//! carry the claims, and the claims are kept for `jwt.CLAIM` keys.

pub use crate::jwks as keys;
pub mod source;
pub mod verify;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderMap, HeaderValue, Request};
use prometheus::IntCounter;
use tower::{Layer, Service};

use crate::error::GatewayError;
pub use verify::{AuthError, Claims, JwtPolicyRt};

/// `gateway_auth_failures_total{route, reason}` of one route, every reason from start-up.
#[derive(Debug)]
pub struct AuthFailures {
    by_reason: Vec<(AuthError, IntCounter)>,
}

impl AuthFailures {
    pub fn new(metrics: &crate::metrics::Metrics, route: &str) -> Self {
        Self {
            by_reason: AuthError::ALL
                .iter()
                .map(|&e| {
                    let c = metrics
                        .auth_failures_total
                        .with_label_values(&[route, e.reason()]);
                    c.inc_by(0);
                    (e, c)
                })
                .collect(),
        }
    }

    pub fn count(&self, e: AuthError) {
        if let Some((_, c)) = self.by_reason.iter().find(|(r, _)| *r == e) {
            c.inc();
        }
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[derive(Clone, Debug)]
pub struct JwtLayer {
    policy: Arc<JwtPolicyRt>,
    failures: Arc<AuthFailures>,
}

impl JwtLayer {
    pub fn new(policy: Arc<JwtPolicyRt>, failures: Arc<AuthFailures>) -> Self {
        Self { policy, failures }
    }
}

impl<S> Layer<S> for JwtLayer {
    type Service = Jwt<S>;
    fn layer(&self, inner: S) -> Jwt<S> {
        Jwt {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Jwt<S> {
    inner: S,
    layer: JwtLayer,
}

impl<S, B, R> Service<Request<B>> for Jwt<S>
where
    S: Service<Request<B>, Response = R, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = R;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<R, GatewayError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let policy = self.layer.policy.clone();
        let failures = self.layer.failures.clone();
        // The ready inner service goes with this request; a clone stays for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Forged claim headers are gone already: the router strips every identity header.
        let token = bearer(req.headers()).map(str::to_owned);
        Box::pin(async move {
            let verified = match token {
                None => Err(AuthError::Missing),
                Some(t) => policy.verify(&t).await,
            };
            let claims = match verified {
                Ok(c) => c,
                Err(e) => {
                    failures.count(e);
                    return Err(GatewayError::Unauthorized(e));
                }
            };
            for (claim, h) in &policy.policy.claims_to_headers {
                if let Some(v) = claims.0.get(claim).and_then(claim_header) {
                    req.headers_mut().insert(h.clone(), v);
                }
            }
            req.extensions_mut().insert(claims);
            inner.call(req).await
        })
    }
}

/// A claim as a header value: strings as they are, numbers and booleans as text, the rest as
/// JSON; `None` if it cannot be a header value (control characters).
fn claim_header(v: &serde_json::Value) -> Option<HeaderValue> {
    let text = match v {
        serde_json::Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
        serde_json::Value::Null => return None,
        other => std::borrow::Cow::Owned(other.to_string()),
    };
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bearer_tokens_case_insensitively() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "bearer  abc.def.ghi ".parse().unwrap(),
        );
        assert_eq!(bearer(&h), Some("abc.def.ghi"));
        h.insert(header::AUTHORIZATION, "Basic Zm9v".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn claims_become_header_values_safely() {
        assert_eq!(claim_header(&serde_json::json!("u-1")).unwrap(), "u-1");
        assert_eq!(claim_header(&serde_json::json!(42)).unwrap(), "42");
        assert_eq!(
            claim_header(&serde_json::json!(["a", "b"])).unwrap(),
            "[\"a\",\"b\"]"
        );
        assert!(claim_header(&serde_json::json!("a\r\nx-evil: 1")).is_none());
    }
}
