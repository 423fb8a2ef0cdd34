//! (3) `request_headers` (SPEC §8.4): the last policy before the upstream tier, after the rate
//! limit. `set` replaces, `add` appends, `remove` deletes; values are literal. Names that could
//! forge identity or change framing are refused by `check`. (`response_headers` are applied by
//! the observe layer to every answer of the route, the gateway's own included.)

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use crate::config::HeaderRules;

#[derive(Clone, Debug)]
pub struct RequestHeadersLayer {
    rules: Arc<HeaderRules>,
}

impl RequestHeadersLayer {
    pub fn new(rules: HeaderRules) -> Self {
        Self {
            rules: Arc::new(rules),
        }
    }
}

impl<S> Layer<S> for RequestHeadersLayer {
    type Service = RequestHeaders<S>;
    fn layer(&self, inner: S) -> RequestHeaders<S> {
        RequestHeaders {
            inner,
            rules: self.rules.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestHeaders<S> {
    inner: S,
    rules: Arc<HeaderRules>,
}

impl<S, B> Service<Request<B>> for RequestHeaders<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        self.rules.apply(req.headers_mut());
        self.inner.call(req)
    }
}
