//! `max_body_bytes` on a declared length: a request whose Content-Length is over the limit is
//! answered 413 before anything is sent upstream. Bodies without a length (chunked) are
//! limited while they stream (`body.rs`); the upstream layer turns that into a 413 too.

use std::future::Ready;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Request;
use hyper::body::Body;
use tower::{Layer, Service};

use crate::body::ReqBody;
use crate::error::GatewayError;

#[derive(Clone, Copy, Debug)]
pub struct BodyLimitLayer {
    max: u64,
}

impl BodyLimitLayer {
    pub fn new(max: u64) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            inner,
            max: self.max,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BodyLimit<S> {
    inner: S,
    max: u64,
}

impl<S, R> Service<Request<ReqBody>> for BodyLimit<S>
where
    S: Service<Request<ReqBody>, Response = R, Error = GatewayError>,
{
    type Response = R;
    type Error = GatewayError;
    type Future = Either<Ready<Result<R, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // hyper reports a declared Content-Length as the body's exact size hint.
        if req.body().size_hint().lower() > self.max {
            return Either::Left(std::future::ready(Err(GatewayError::BodyTooLarge)));
        }
        Either::Right(self.inner.call(req))
    }
}
