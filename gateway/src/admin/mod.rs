//! The admin listener (SPEC §5): `/metrics`, `/healthz`, `/readyz`, and `/admin/*` behind the
//! optional bearer token. Off the request path: it reads the same shared state the proxy
//! writes, without taking any lock the proxy takes.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::server::Shared;

pub mod explain;
pub mod status;

/// Admin connections open at once; more are closed at accept (SPEC §8.2).
pub const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Serve the admin API until the process ends, or until a binary upgrade hands the port to
/// the new process (then: no more accepts, and open connections close after their current
/// response).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut stop = shared.admin_stop_signal();
    loop {
        let accepted = tokio::select! {
            biased;
            // Handed over (or the process state is gone): stop.
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_ADMIN_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!("admin connection limit reached: closing a new connection");
            continue;
        }
        let shared = shared.clone();
        let open = open.clone();
        let mut stop = shared.admin_stop_signal();
        // Slow heads and idle keep-alive connections are both cut at `header_timeout`.
        let header_timeout = shared.runtime.load().config.limits.header_timeout;
        tokio::spawn(async move {
            let svc_shared = shared.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let shared = svc_shared.clone();
                async move {
                    if req.method() == Method::POST && req.uri().path() == "/admin/reload" {
                        return Ok::<_, Infallible>(reload(&shared, req).await);
                    }
                    Ok::<_, Infallible>(handle(&shared, req))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            let stopped = tokio::select! {
                _ = conn.as_mut() => false,
                r = stop.wait_for(|s| *s) => r.is_ok(),
            };
            if stopped {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
    tracing::info!("admin port handed to the new process: no longer accepting on it");
}

/// The 401 for `/admin/*` without the right bearer token (when `token_env` is set).
fn unauthorized(shared: &Shared, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    if !req.uri().path().starts_with("/admin/") {
        return None;
    }
    let rt = shared.runtime.load();
    let token = rt.config.admin.as_ref().and_then(|a| a.token.as_deref())?;
    if bearer_matches(req, token) {
        return None;
    }
    let mut res = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({"error": "admin token required"}),
    );
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"gateway-admin\""),
    );
    Some(res)
}

/// `POST /admin/reload` (`?dry_run=true`: only report what would change).
async fn reload(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(denied) = unauthorized(shared, &req) {
        return denied;
    }
    let dry_run = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "dry_run" || p == "dry_run=true" || p == "dry_run=1")
    });
    // A candidate config may come in the body (dry runs), at most 1 MiB.
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": "the candidate config is larger than 1 MiB"}),
            )
        }
    };
    let candidate = if body.is_empty() {
        None
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(t) => Some(t),
            Err(_) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "the candidate config is not UTF-8"}),
                )
            }
        }
    };
    let report = crate::server::reload::reload_from(
        shared,
        crate::server::reload::Trigger::Admin,
        dry_run,
        candidate,
    )
    .await;
    let status = if report.outcome == crate::server::reload::Outcome::Error {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    json_response(status, &report.to_json())
}

fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(denied) = unauthorized(shared, &req) {
        return denied;
    }
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/metrics") => {
            let mut res = Response::new(Full::new(Bytes::from(shared.metrics.render())));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            res
        }
        (&Method::GET, "/") | (&Method::GET, "/index.html") => {
            // The page itself holds no data: what it shows comes from the two endpoints
            // below, which need the admin token when one is set.
            let mut res = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                ),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            res
        }
        (&Method::GET, "/admin/status") => {
            json_response(StatusCode::OK, &shared.status.snapshot(shared))
        }
        (&Method::GET, "/admin/events") => {
            let since = query_u64(req.uri().query(), "since").unwrap_or(0);
            let limit = query_u64(req.uri().query(), "limit").map_or(200, |l| l.min(500) as usize);
            let (events, last_id) = crate::events::since(since, limit);
            json_response(
                StatusCode::OK,
                &json!({ "events": events, "last_id": last_id, "capacity": crate::events::CAPACITY }),
            )
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            // After a hand-over the port is the new (ready) process's: a request that was
            // already on one of our connections must not report our drain.
            if shared.is_draining() && !shared.is_handed_over() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (&Method::GET, "/admin/config") => {
            let rt = shared.runtime.load();
            json_response(
                StatusCode::OK,
                &json!({
                    "generation": rt.generation,
                    "pid": std::process::id(),
                    "path": rt.config.path.display().to_string(),
                    "config": rt.config.redacted,
                }),
            )
        }
        (&Method::GET, "/admin/upstreams") => json_response(StatusCode::OK, &upstreams(shared)),
        (&Method::GET, "/admin/explain") => {
            let rt = shared.runtime.load();
            match crate::admin::explain::explain(&rt, req.uri().query()) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({ "error": e })),
            }
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// One endpoint's state as the admin API and the status page show it: the one serialiser for
/// both (`/admin/upstreams`, `/admin/status`).
pub fn endpoint_state(
    e: &crate::endpoint::Endpoint,
    now_ms: u64,
) -> serde_json::Map<String, Value> {
    let probe = e.last_probe().map(|p| {
        json!({
            "at": crate::clock::rfc3339(p.at_ms),
            "ago_s": (now_ms.saturating_sub(p.at_ms) as f64 / 10.0).round() / 100.0,
            "ok": p.ok,
            "status": p.status,
            "error": p.error,
            "duration_ms": p.duration_ms,
        })
    });
    let ejected_until = e.outlier.as_ref().and_then(|o| o.ejected_until(now_ms));
    let healthy = e.is_healthy();
    let circuit = e.circuit();
    let state = if !healthy {
        "down"
    } else if ejected_until.is_some() {
        "ejected"
    } else if circuit == crate::endpoint::breaker::CircuitState::Open {
        "open"
    } else if !e.is_up() {
        "down"
    } else {
        "up"
    };
    let mut m = serde_json::Map::new();
    m.insert("id".into(), json!(e.id));
    m.insert("addr".into(), json!(e.addr().to_string()));
    if e.addrs.resolves() {
        m.insert("host".into(), json!(e.addrs.authority()));
        m.insert(
            "addrs".into(),
            json!(e
                .addrs
                .all()
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()),
        );
    }
    m.insert("state".into(), json!(state));
    m.insert("up".into(), json!(e.is_up()));
    m.insert("healthy".into(), json!(healthy));
    m.insert("circuit".into(), json!(circuit.as_str()));
    m.insert("in_flight".into(), json!(e.in_flight()));
    m.insert(
        "ejected_until".into(),
        json!(ejected_until.map(crate::clock::rfc3339)),
    );
    m.insert(
        "ejections".into(),
        json!(e.outlier.as_ref().map_or(0, |o| o.ejections())),
    );
    m.insert("last_probe".into(), probe.unwrap_or(Value::Null));
    m.insert("idle_connections".into(), json!(e.pool.idle_count()));
    m
}

/// `GET /admin/upstreams`: each upstream, each target and backup, as the gateway sees them.
pub fn upstreams(shared: &Shared) -> serde_json::Value {
    let rt = shared.runtime.load();
    let list: Vec<_> = rt
        .upstreams
        .iter()
        .map(|u| {
            let targets: Vec<_> = u
                .shards
                .iter()
                .map(|s| {
                    let now = crate::clock::now_ms();
                    let endpoint =
                        |e: &crate::endpoint::Endpoint| Value::Object(endpoint_state(e, now));
                    let mut t = endpoint(&s.endpoints[0]);
                    t["weight"] = json!(s.weight);
                    t["shard_up"] = json!(s.is_up());
                    t["serving"] = json!(s.serving().map(|e| e.id.as_str()));
                    t["backups"] = s.endpoints[1..].iter().map(|e| endpoint(e)).collect();
                    t
                })
                .collect();
            json!({
                "name": u.name,
                "balancer": u.config.balancer.as_str(),
                "targets": targets,
                "discovery": crate::discovery::status_json(&u.name),
            })
        })
        .collect();
    json!({ "generation": rt.generation, "upstreams": list })
}

/// The status page (`GET /` on the admin port): HTML, CSS and JS in one file, in the binary.
const STATUS_PAGE: &str = include_str!("status.html");

/// `name=N` from a query string.
fn query_u64(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// Constant-time comparison of the bearer token.
fn bearer_matches(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
