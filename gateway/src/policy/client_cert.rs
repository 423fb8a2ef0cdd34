//! (3) `client_cert = "required"` on a route (SPEC §8.4): after the API key, before integrity.
//! The certificate itself was verified at the TLS handshake (listener `client_auth`); a
//! request on a connection without one gets 403.

use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Request;
use tower::{Layer, Service};

use crate::ctx::ConnInfo;
use crate::error::GatewayError;

#[derive(Clone, Debug, Default)]
pub struct ClientCertLayer;

impl<S> Layer<S> for ClientCertLayer {
    type Service = ClientCert<S>;
    fn layer(&self, inner: S) -> ClientCert<S> {
        ClientCert { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ClientCert<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for ClientCert<S>
where
    S: Service<Request<B>, Response = R, Error = GatewayError>,
{
    type Response = R;
    type Error = GatewayError;
    type Future = Either<Ready<Result<R, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let verified = req
            .extensions()
            .get::<Arc<ConnInfo>>()
            .is_some_and(|c| c.client_cert.is_some());
        if !verified {
            return Either::Left(ready(Err(GatewayError::ClientCertRequired)));
        }
        Either::Right(self.inner.call(req))
    }
}
