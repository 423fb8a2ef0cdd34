//! (6) The forward-auth policy's client (`policy::forward_auth::Subrequest`): the same pooled
//! connections (plain or TLS) as upstreams, to the auth service's one address.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::Request;
use http_body_util::BodyExt;

use crate::body::ReqBody;
use crate::config::{ForwardAuthPolicy, Protocol};
use crate::endpoint::pool::{fit_request, Pool, PoolOptions, Sender};
use crate::metrics::EndpointMetrics;
use crate::policy::forward_auth::{AuthAnswer, Subrequest, MAX_AUTH_BODY};

/// A pool of connections to one auth service.
#[derive(Debug)]
pub struct AuthClient {
    pool: Arc<Pool>,
    tls: bool,
    connect_timeout: Duration,
}

impl AuthClient {
    pub fn new(policy: &ForwardAuthPolicy, metrics: &EndpointMetrics) -> Self {
        let cfg = PoolOptions {
            protocol: Protocol::Http1,
            tls: policy.tls.clone(),
            max_idle: 16,
            max_streams: 100,
        };
        Self {
            pool: Arc::new(Pool::new(
                Arc::new(crate::endpoint::Addrs::fixed(policy.addr, None)),
                &cfg,
                metrics,
            )),
            tls: policy.https,
            connect_timeout: policy.timeout,
        }
    }
}

impl Subrequest for AuthClient {
    fn send(&self, mut req: Request<ReqBody>) -> AuthAnswer {
        let pool = self.pool.clone();
        let tls = self.tls;
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let mut sender = match pool.take_idle() {
                Some(s) if s.is_ready() => s,
                _ => pool.connect(timeout).await?,
            };
            fit_request(&mut req, sender.is_h2(), tls);
            let res = sender
                .try_send_request(req)
                .await
                .map_err(|e| io::Error::other(e.into_error()))?;
            let (parts, mut body) = res.into_parts();
            let mut buf = BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(io::Error::other)?;
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > MAX_AUTH_BODY {
                        // Too large to pass on; the connection is not reused.
                        return Ok((parts, buf.freeze()));
                    }
                }
            }
            if let Sender::H1(_) = &sender {
                pool.put_back(sender);
            }
            Ok((parts, buf.freeze()))
        })
    }
}
