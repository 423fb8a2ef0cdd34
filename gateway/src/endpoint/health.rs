//! Active health checks (SPEC §3 `health`): a GET on `path` to every target and backup, every
//! `interval` (±10% jitter, so a fleet of gateways does not probe in step), each within
//! `timeout`. `unhealthy_threshold` failures in a row take an endpoint down,
//! `healthy_threshold` successes in a row bring it back; 2xx and 3xx are healthy. Endpoints
//! start up. One prober per endpoint, off the request path, on its own connection.

use std::net::SocketAddr;
use std::sync::Weak;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Endpoint, ProbeResult};
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
            let result = probe(ep.addr, &policy.path, policy.timeout).await;
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

/// One probe: GET `path` on a fresh connection, within `timeout`.
pub async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> ProbeResult {
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?;
        let req = Request::get(path)
            .header(header::HOST, host)
            .header(header::USER_AGENT, "gateway-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        conn.abort();
        Ok::<u16, String>(res.status().as_u16())
    })
    .await;
    let (status, error) = match outcome {
        Ok(Ok(s)) => (Some(s), None),
        Ok(Err(e)) => (None, Some(e)),
        Err(_) => (None, Some(format!("timed out after {timeout:?}"))),
    };
    ProbeResult {
        at_ms: clock::now_ms(),
        ok: status.is_some_and(|s| (200..400).contains(&s)),
        status,
        error,
        duration_ms: started.elapsed().as_millis() as u64,
    }
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
        let r = probe(b.addr, "/health", Duration::from_secs(1)).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.status, Some(200));
        b.state.set_healthy(false);
        let r = probe(b.addr, "/health", Duration::from_secs(1)).await;
        assert!(!r.ok);
        assert_eq!(r.status, Some(503));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let r = probe(closed, "/health", Duration::from_secs(1)).await;
        assert!(!r.ok);
        assert!(r.error.unwrap().starts_with("connect"));
    }
}
