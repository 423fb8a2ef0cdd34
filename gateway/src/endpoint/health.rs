//! Active health checks (SPEC §3 `health`): a GET on `path` to every target and backup, every
//! `interval` (±10% jitter, so a fleet of gateways does not probe in step), each within
//! `timeout`. `unhealthy_threshold` failures in a row take an endpoint down,
//! `healthy_threshold` successes in a row bring it back; 2xx and 3xx are healthy. Endpoints
//! start up. One prober per endpoint, off the request path, on its own connection.

use std::sync::Weak;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request};

use super::{Endpoint, ProbeResult};
use crate::body::ReqBody;
use crate::clock;
use crate::config::HealthCheck;

/// What the prober tells when an endpoint flips: the upstream's name (for logs and events)
/// and a notifier (the upstream rebuilds its set of usable targets). The upstream implements
/// it; the prober never sees the upstream itself.
pub trait Watcher: Send + Sync {
    fn name(&self) -> &str;
    fn changed(&self);
}

/// Probe `endpoint` for as long as it (and its watcher) live.
pub fn spawn(upstream: Weak<dyn Watcher>, endpoint: Weak<Endpoint>, policy: HealthCheck) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(token) = endpoint
        .upgrade()
        .map(|e| e.prober.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1)
    else {
        return;
    };
    rt.spawn(async move {
        let (mut successes, mut failures) = (0u32, 0u32);
        // The first probe soon, but not all at once.
        let mut wait = jitter(policy.interval) / 4;
        loop {
            tokio::time::sleep(wait).await;
            wait = jitter(policy.interval);
            let Some(ep) = endpoint.upgrade() else { return };
            if ep.prober.load(std::sync::atomic::Ordering::Acquire) != token {
                // A newer config generation probes this endpoint now.
                return;
            }
            let result = probe(&ep, &policy).await;
            let ok = result.ok;
            ep.set_last_probe(result);
            if ok {
                successes += 1;
                failures = 0;
            } else {
                failures += 1;
                successes = 0;
            }
            let flip = if !ep.is_healthy() && successes >= policy.healthy_threshold {
                Some(true)
            } else if ep.is_healthy() && failures >= policy.unhealthy_threshold {
                Some(false)
            } else {
                None
            };
            if let Some(healthy) = flip {
                if ep.set_healthy(healthy) {
                    let up = upstream.upgrade();
                    let name = up.as_ref().map_or("", |u| u.name());
                    let last = ep.last_probe();
                    let why = last.as_ref().map_or(String::new(), |p| match (&p.error, p.status) {
                        (Some(e), _) => format!(": {e}"),
                        (None, Some(s)) => format!(": probe answered {s}"),
                        (None, None) => String::new(),
                    });
                    let subject = format!("{name}/{}", ep.id);
                    if healthy {
                        tracing::info!(upstream = name, target = %ep.id, "health: target is up again");
                        crate::events::push(crate::events::Kind::Health, "good", subject, format!("up again after {successes} good probes"));
                    } else {
                        tracing::warn!(upstream = name, target = %ep.id, "health: target is down");
                        crate::events::push(crate::events::Kind::Health, "bad", subject, format!("down after {failures} failed probes{why}"));
                    }
                    if let Some(up) = up {
                        up.changed();
                    }
                }
            }
        }
    });
}

fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    let spread = ms / 10;
    Duration::from_millis(ms - spread + fastrand::u64(0..=2 * spread))
}

/// One probe over the endpoint's own protocol (plain or TLS, HTTP/1.1 on a fresh connection,
/// or a stream of an HTTP/2 one): a GET on `path`, or with `grpc = true` a
/// `grpc.health.v1.Health/Check` for `service` (SERVING passes), within `timeout`.
pub async fn probe(ep: &Endpoint, policy: &HealthCheck) -> ProbeResult {
    use http_body_util::BodyExt;
    let started = Instant::now();
    let outcome = tokio::time::timeout(policy.timeout, async {
        let mut sender = ep
            .pool
            .probe_sender(policy.timeout)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let host = HeaderValue::from_str(&ep.addrs.authority()).map_err(|e| e.to_string())?;
        let mut req = if policy.grpc {
            // HealthCheckRequest { service = 1 }, in gRPC's length-prefixed framing.
            let service = policy.service.as_bytes();
            let mut msg = Vec::with_capacity(service.len() + 8);
            if !service.is_empty() {
                msg.push(0x0a);
                push_varint(&mut msg, service.len() as u64);
                msg.extend_from_slice(service);
            }
            let mut framed = Vec::with_capacity(msg.len() + 5);
            framed.push(0);
            framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            framed.extend_from_slice(&msg);
            Request::post("/grpc.health.v1.Health/Check")
                .header(header::HOST, host)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header(header::USER_AGENT, "gateway-health-check")
                .body(ReqBody::from_bytes(Bytes::from(framed)))
                .map_err(|e| e.to_string())?
        } else {
            Request::get(policy.path.as_str())
                .header(header::HOST, host)
                .header(header::USER_AGENT, "gateway-health-check")
                .body(ReqBody::empty())
                .map_err(|e| e.to_string())?
        };
        super::pool::fit_request(&mut req, sender.is_h2(), ep.pool.is_tls());
        let res = sender
            .try_send_request(req)
            .await
            .map_err(|e| e.into_error().to_string())?;
        let status = res.status().as_u16();
        if !policy.grpc {
            return Ok::<(u16, Option<String>), String>((status, None));
        }
        let header_status = res.headers().get("grpc-status").cloned();
        let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
        let grpc_status = body
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(header_status)
            .and_then(|v| v.to_str().ok().and_then(|s| s.parse::<u32>().ok()));
        let bytes = body.to_bytes();
        // HealthCheckResponse { status = 1 }: SERVING is 1.
        let serving = bytes.len() >= 7 && bytes[5] == 0x08 && bytes[6] == 1;
        match (grpc_status, serving) {
            (Some(0), true) => Ok((status, None)),
            (Some(0), false) => Ok((503, Some("health service: not SERVING".into()))),
            (code, _) => Ok((503, Some(format!("health service: grpc-status {code:?}")))),
        }
    })
    .await;
    let (status, error) = match outcome {
        Ok(Ok((s, None))) => (Some(s), None),
        Ok(Ok((s, Some(why)))) => (Some(s), Some(why)),
        Ok(Err(e)) => (None, Some(e)),
        Err(_) => (None, Some(format!("timed out after {:?}", policy.timeout))),
    };
    ProbeResult {
        at_ms: clock::now_ms(),
        ok: error.is_none() && status.is_some_and(|s| (200..400).contains(&s)),
        status,
        error,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Probe a sample backend: healthy, then down through its control endpoint.
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_report_status_and_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = backends::spawn(
            listener,
            &backends::Options {
                name: "p".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let policy = HealthCheck {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            grpc: false,
            service: String::new(),
        };
        let endpoint = |addr| {
            Endpoint::new(
                "p".into(),
                std::sync::Arc::new(crate::endpoint::Addrs::fixed(addr, None)),
                None,
                crate::metrics::EndpointMetrics::detached(),
                &crate::endpoint::tests::upstream_cfg(),
            )
        };
        let ep = endpoint(b.addr);
        let r = probe(&ep, &policy).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.status, Some(200));
        b.state.set_healthy(false);
        let r = probe(&ep, &policy).await;
        assert!(!r.ok);
        assert_eq!(r.status, Some(503));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let r = probe(&endpoint(closed), &policy).await;
        assert!(!r.ok);
        assert!(r.error.unwrap().starts_with("connect"));
    }
}
