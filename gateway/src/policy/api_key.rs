//! API keys (`[api_keys.NAME]`, a route's `api_key`): the key in `header` must be one of the
//! policy's, which are stored as SHA-256 digests and compared in constant time (every entry,
//! whatever matches). The key's name goes upstream in `x-api-key-name` (an incoming copy is
//! always removed) and the key itself does not: the upstream has no use for it and every hop
//! that sees a secret is one more place for it to leak.
//!
//! Comes after JWT auth and before integrity and rate limiting.

use std::future::Ready;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{HeaderName, HeaderValue, Request};
use tower::{Layer, Service};

use super::jwt::verify::sha256;
use super::jwt::{AuthError, AuthFailures};
use crate::config::ApiKeyPolicy;
use crate::error::GatewayError;

pub const X_API_KEY_NAME: HeaderName = HeaderName::from_static("x-api-key-name");

/// Which key (by name) the presented one is, comparing against every stored digest.
pub fn identify<'a>(policy: &'a ApiKeyPolicy, presented: &[u8]) -> Option<&'a str> {
    let digest = sha256(presented);
    let mut found = None;
    for (name, stored) in &policy.keys {
        if aws_lc_rs::constant_time::verify_slices_are_equal(&digest, stored).is_ok() {
            found = Some(name.as_str());
        }
    }
    found
}

#[derive(Clone, Debug)]
pub struct ApiKeyLayer {
    policy: Arc<ApiKeyPolicy>,
    failures: Arc<AuthFailures>,
}

impl ApiKeyLayer {
    pub fn new(policy: Arc<ApiKeyPolicy>, failures: Arc<AuthFailures>) -> Self {
        Self { policy, failures }
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKey<S>;
    fn layer(&self, inner: S) -> ApiKey<S> {
        ApiKey {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApiKey<S> {
    inner: S,
    layer: ApiKeyLayer,
}

impl<S, B, R> Service<Request<B>> for ApiKey<S>
where
    S: Service<Request<B>, Response = R, Error = GatewayError>,
{
    type Response = R;
    type Error = GatewayError;
    type Future = Either<Ready<Result<R, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let policy = &self.layer.policy;
        // A forged `x-api-key-name` is gone already: the router strips every identity header.
        let name = req
            .headers()
            .get(&policy.header)
            .map(|v| identify(policy, v.as_bytes()));
        let refused = match name {
            None => Some(AuthError::Missing),
            Some(None) => Some(AuthError::UnknownApiKey),
            Some(Some(name)) => {
                let value = HeaderValue::from_str(name);
                req.headers_mut().remove(&policy.header);
                if let Ok(v) = value {
                    req.headers_mut().insert(X_API_KEY_NAME, v);
                }
                None
            }
        };
        if let Some(e) = refused {
            self.layer.failures.count(e);
            return Either::Left(std::future::ready(Err(GatewayError::Unauthorized(e))));
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_keys_by_their_digest() {
        let policy = ApiKeyPolicy {
            header: HeaderName::from_static("x-api-key"),
            keys: vec![
                ("billing".into(), sha256(b"k-123")),
                ("search".into(), sha256(b"k-456")),
            ],
        };
        assert_eq!(identify(&policy, b"k-456"), Some("search"));
        assert_eq!(identify(&policy, b"k-123"), Some("billing"));
        assert_eq!(identify(&policy, b"k-12"), None);
        assert_eq!(identify(&policy, b""), None);
    }
}
