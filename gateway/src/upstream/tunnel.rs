//! WebSocket tunnels, on routes with `websocket = true` (no other `Upgrade` is tunnelled).
//!
//! The upgrade request goes to a target the balancer picks, on a connection of its own (never
//! pooled), with `Connection: upgrade` and `Upgrade` kept. If the upstream answers 101, both
//! connections are handed over and bytes are copied both ways until either side closes, the
//! tunnel is idle (no byte either way) for `idle_timeout`, or the gateway drains. Anything
//! else the upstream answers goes back to the client as a normal response.
//!
//! A tunnel belongs to no config generation: reloads never touch it. On routes without
//! `websocket = true` the `Upgrade` header is removed like any hop-by-hop header, so the
//! upstream sees a plain request.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::headers;
use super::proxy::ForwardConfig;
use crate::balance::PickCtx;
use crate::body::{ReqBody, ResBody};
use crate::ctx::ClientIp;
use crate::ctx::ConnInfo;
use crate::ctx::OriginalPath;
use crate::error::GatewayError;

/// An HTTP/1.1 request asking to switch protocols.
/// Only WebSocket is tunnelled (SPEC §8.2): any other `Upgrade` (h2c included) is removed
/// with the hop-by-hop headers and the request forwarded as a plain one.
pub fn is_upgrade(parts: &http::request::Parts) -> bool {
    parts.version == http::Version::HTTP_11
        && parts.headers.get_all(UPGRADE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|p| {
                    p.trim()
                        .split('/')
                        .next()
                        .is_some_and(|p| p.eq_ignore_ascii_case("websocket"))
                })
            })
        })
        && parts
            .headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

pub async fn open(
    cfg: &ForwardConfig,
    mut parts: http::request::Parts,
    body: ReqBody,
    idle_timeout: Duration,
) -> Result<Response<ResBody>, GatewayError> {
    let up = &cfg.upstream;
    let upgrade = parts.headers.get(UPGRADE).cloned();
    let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let conn = parts.extensions.get::<Arc<ConnInfo>>().cloned();
    let hash = {
        let client = parts.extensions.get::<ClientIp>().map(|c| c.0);
        let path = parts
            .extensions
            .get::<OriginalPath>()
            .map_or(parts.uri.path(), |p| p.0.as_str());
        up.request_hash(&parts, client, path)?
    };
    {
        let c = conn.as_deref();
        let hop = headers::Hop {
            peer: c.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.peer.ip()),
            peer_header: c.map(|c| &c.peer_header),
            https: c.is_some_and(|c| c.listener.https),
            trusted_proxies: &cfg.trusted_proxies,
            host_rewrite: cfg.host_rewrite.as_ref(),
        };
        headers::prepare(&mut parts, &hop)?;
    }
    parts.extensions.clear();
    // The hop-by-hop pair an upgrade needs, put back after `prepare` removed it.
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(u) = &upgrade {
        parts.headers.insert(UPGRADE, u.clone());
    }
    let (Some(client_upgrade), Some(upgrade)) = (client_upgrade, upgrade) else {
        return Err(GatewayError::BadRequest(
            "upgrade not possible on this connection",
        ));
    };

    // A tunnel is a request in flight for as long as it lives (`max_in_flight`).
    let Some(slot) = up.enter() else {
        return Err(GatewayError::Overloaded);
    };
    let load = |i: usize| up.shards[i].serving().map_or(0, |e| e.in_flight());
    let pick = {
        let ctx = PickCtx { hash, load: &load };
        up.balancer
            .load()
            .algo
            .pick(&ctx, &mut |i| up.shards[i].is_up())
    };
    let Some(ep) = pick.and_then(|i| up.shards[i].serving().cloned()) else {
        return Err(GatewayError::NoTarget);
    };
    let stream = match tokio::time::timeout(
        up.config.connect_timeout,
        TcpStream::connect(ep.addrs.next()),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ep.metrics.connect_error.inc();
            return Err(GatewayError::Connect(e));
        }
        Err(_) => {
            ep.metrics.connect_error.inc();
            return Err(GatewayError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| GatewayError::Upstream(e.into()))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let req = Request::from_parts(parts, body);
    let answer = tokio::time::timeout(cfg.timeout, sender.send_request(req)).await;
    let mut res = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            ep.metrics.reset.inc();
            return Err(GatewayError::Upstream(e.into()));
        }
        Err(_) => {
            ep.metrics.timeout.inc();
            return Err(GatewayError::UpstreamTimeout);
        }
    };
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused (or not a WebSocket endpoint): an ordinary answer.
        ep.metrics.ok.inc();
        let (mut parts, body) = res.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(parts, ResBody::Tunnel(body)));
    }
    ep.metrics.ok.inc();
    let upstream_upgrade = hyper::upgrade::on(&mut res);
    let (mut head, _) = res.into_parts();
    headers::strip_hop_by_hop(&mut head.headers);
    head.headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    head.headers.insert(UPGRADE, upgrade);
    if let Some(state) = conn.as_ref().and_then(|c| c.state.as_ref()) {
        state.set_upgraded();
    }
    let state = conn.as_ref().and_then(|c| c.state.clone());
    let endpoint = ep.clone();
    tokio::spawn(async move {
        let _slot = slot;
        // Whatever happens below, the client connection learns that its tunnel ended.
        let _ended = TunnelEnded(state.clone());
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        endpoint.metrics.in_flight.inc();
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        // A route's idle_timeout = "0s": no idle limit (checked hourly, never closing).
        let (idle_timeout, unlimited) = if idle_timeout.is_zero() {
            (Duration::from_secs(3600), true)
        } else {
            (idle_timeout, false)
        };
        loop {
            let idle_until = state
                .as_ref()
                .map_or_else(tokio::time::Instant::now, |s| s.last_io())
                + idle_timeout;
            tokio::select! {
                r = &mut copy => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "tunnel ended with an error");
                    }
                    break;
                }
                () = tokio::time::sleep_until(idle_until) => {
                    let last = state.as_ref().map(|s| s.last_io());
                    if !unlimited && last.is_none_or(|l| l + idle_timeout <= tokio::time::Instant::now()) {
                        tracing::debug!("tunnel idle for idle_timeout: closing");
                        break;
                    }
                }
            }
        }
        endpoint.metrics.in_flight.dec();
    });
    Ok(Response::from_parts(head, ResBody::empty()))
}

/// Tells the client connection its tunnel ended, when dropped.
struct TunnelEnded(Option<Arc<crate::ctx::ConnState>>);

impl Drop for TunnelEnded {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.tunnel_ended();
        }
    }
}
