//! `GET /admin/status`: one snapshot of what the gateway is doing, for the status page.
//!
//! Rates and latencies are computed here over a short window from the same counters and
//! histograms `/metrics` exposes. No sampler runs in the background: each status request reads
//! the counters once (atomics, on the admin task) and keeps the reading in a small ring, so
//! the page's own polling makes the history its sparklines draw, and nothing at all is spent
//! while nobody looks. The request path is never touched: it only bumps the counters it bumps
//! anyway.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use serde_json::{json, Value};

use crate::metrics::{Metrics, BUCKETS};
use crate::server::Shared;

/// Readings closer together than this are merged (several viewers polling at once).
const MIN_SPACING: Duration = Duration::from_millis(900);
/// Readings kept: at one per second, the last five minutes.
const KEEP: usize = 300;
/// Rates and latencies are over about this much time (less right after the page opened).
const WINDOW: Duration = Duration::from_secs(5);
/// Points per sparkline.
const SPARK_POINTS: usize = 120;

#[derive(Clone, Default)]
struct ListenerReading {
    active: i64,
    h1: u64,
    h2: u64,
    bytes_in: u64,
    bytes_out: u64,
    tls_error: u64,
}

#[derive(Clone, Default)]
struct RouteReading {
    requests: u64,
    c4xx: u64,
    c5xx: u64,
    rate_limited: u64,
    auth_failures: u64,
    integrity_failures: u64,
    cors_refused: u64,
    forward_auth_denied: u64,
    /// Cumulative counts at each of `BUCKETS`, then +Inf.
    buckets: Vec<u64>,
}

#[derive(Clone, Default)]
struct TargetReading {
    attempts: u64,
    failures: u64,
}

struct Reading {
    at: Instant,
    listeners: HashMap<String, ListenerReading>,
    routes: HashMap<String, RouteReading>,
    /// By (upstream, target).
    targets: HashMap<(String, String), TargetReading>,
}

/// The readings behind the rates; touched only by `/admin/status`.
#[derive(Default)]
pub struct Sampler {
    ring: Mutex<VecDeque<Reading>>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sampler")
    }
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

fn counters(c: &impl Collector) -> Vec<prometheus::proto::Metric> {
    c.collect()
        .into_iter()
        .flat_map(|f| f.get_metric().to_vec())
        .collect()
}

fn read(metrics: &Metrics) -> Reading {
    let mut listeners: HashMap<String, ListenerReading> = HashMap::new();
    for m in counters(&metrics.connections_active) {
        listeners
            .entry(label(&m, "listener").to_string())
            .or_default()
            .active = m.get_gauge().get_value() as i64;
    }
    for m in counters(&metrics.connections_total) {
        let l = listeners
            .entry(label(&m, "listener").to_string())
            .or_default();
        let v = m.get_counter().get_value() as u64;
        match label(&m, "protocol") {
            "h2" => l.h2 += v,
            _ => l.h1 += v,
        }
    }
    for m in counters(&metrics.bytes_received_total) {
        listeners
            .entry(label(&m, "listener").to_string())
            .or_default()
            .bytes_in = m.get_counter().get_value() as u64;
    }
    for m in counters(&metrics.bytes_sent_total) {
        listeners
            .entry(label(&m, "listener").to_string())
            .or_default()
            .bytes_out = m.get_counter().get_value() as u64;
    }
    for m in counters(&metrics.tls_handshakes_total) {
        if label(&m, "outcome") == "error" {
            listeners
                .entry(label(&m, "listener").to_string())
                .or_default()
                .tls_error += m.get_counter().get_value() as u64;
        }
    }

    let mut routes: HashMap<String, RouteReading> = HashMap::new();
    for m in counters(&metrics.requests_total) {
        let r = routes.entry(label(&m, "route").to_string()).or_default();
        let v = m.get_counter().get_value() as u64;
        r.requests += v;
        match label(&m, "status").as_bytes().first() {
            Some(b'4') => r.c4xx += v,
            Some(b'5') => r.c5xx += v,
            _ => {}
        }
    }
    for m in counters(&metrics.rate_limited_total) {
        routes
            .entry(label(&m, "route").to_string())
            .or_default()
            .rate_limited += m.get_counter().get_value() as u64;
    }
    for m in counters(&metrics.auth_failures_total) {
        routes
            .entry(label(&m, "route").to_string())
            .or_default()
            .auth_failures += m.get_counter().get_value() as u64;
    }
    for m in counters(&metrics.integrity_failures_total) {
        routes
            .entry(label(&m, "route").to_string())
            .or_default()
            .integrity_failures += m.get_counter().get_value() as u64;
    }
    for m in counters(&metrics.cors_preflights_total) {
        if label(&m, "outcome") == "refused" {
            routes
                .entry(label(&m, "route").to_string())
                .or_default()
                .cors_refused += m.get_counter().get_value() as u64;
        }
    }
    for m in counters(&metrics.forward_auth_total) {
        if label(&m, "outcome") == "deny" {
            routes
                .entry(label(&m, "route").to_string())
                .or_default()
                .forward_auth_denied += m.get_counter().get_value() as u64;
        }
    }
    for m in counters(&metrics.request_duration) {
        let h = m.get_histogram();
        let mut b: Vec<u64> = h
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        b.push(h.get_sample_count());
        routes
            .entry(label(&m, "route").to_string())
            .or_default()
            .buckets = b;
    }

    let mut targets: HashMap<(String, String), TargetReading> = HashMap::new();
    for m in counters(&metrics.upstream_requests_total) {
        let t = targets
            .entry((
                label(&m, "upstream").to_string(),
                label(&m, "target").to_string(),
            ))
            .or_default();
        let v = m.get_counter().get_value() as u64;
        t.attempts += v;
        if label(&m, "outcome") != "ok" {
            t.failures += v;
        }
    }
    Reading {
        at: Instant::now(),
        listeners,
        routes,
        targets,
    }
}

/// The `q` quantile (0..1) of what was observed between two cumulative bucket readings,
/// interpolated inside its bucket as Prometheus' `histogram_quantile` does; in milliseconds.
fn quantile_ms(now: &[u64], before: &[u64], q: f64) -> Option<f64> {
    let delta: Vec<u64> = now
        .iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(before.get(i).copied().unwrap_or(0)))
        .collect();
    let total = *delta.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower_bound = 0.0;
    let mut lower_count = 0u64;
    for (i, &count) in delta.iter().enumerate() {
        let upper = BUCKETS.get(i).copied();
        if count as f64 >= rank {
            let Some(upper) = upper else {
                // In the +Inf bucket: all we know is "above the largest bound".
                return Some(lower_bound * 1000.0);
            };
            let in_bucket = (count - lower_count) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - lower_count as f64) / in_bucket
            } else {
                1.0
            };
            return Some((lower_bound + (upper - lower_bound) * frac) * 1000.0);
        }
        lower_count = count;
        if let Some(u) = upper {
            lower_bound = u;
        }
    }
    None
}

fn per_sec(now: u64, before: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    now.saturating_sub(before) as f64 / secs
}

/// Round to 2 decimals for the JSON (rates and latencies, not money).
fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Sampler {
    /// Take a reading (unless one was taken a moment ago) and build the snapshot.
    pub fn snapshot(&self, shared: &Shared) -> Value {
        let fresh = read(&shared.metrics);
        let Ok(mut ring) = self.ring.lock() else {
            return json!({"error": "status unavailable"});
        };
        if ring
            .back()
            .is_none_or(|last| fresh.at.duration_since(last.at) >= MIN_SPACING)
        {
            if ring.len() == KEEP {
                ring.pop_front();
            }
            ring.push_back(fresh);
        }
        build(shared, &ring)
    }
}

fn build(shared: &Shared, ring: &VecDeque<Reading>) -> Value {
    let rt = shared.runtime.load();
    let Some(now) = ring.back() else {
        return json!({});
    };
    // The reading about WINDOW ago (or the oldest): rates are over now − then.
    let then = ring
        .iter()
        .rev()
        .find(|r| now.at.duration_since(r.at) >= WINDOW)
        .or_else(|| ring.front())
        .unwrap_or(now);
    let secs = now.at.duration_since(then.at).as_secs_f64();
    // Consecutive pairs for the sparklines, newest last.
    let pairs: Vec<(&Reading, &Reading)> = ring
        .iter()
        .zip(ring.iter().skip(1))
        .skip(ring.len().saturating_sub(SPARK_POINTS + 1))
        .collect();
    let spark = |f: &dyn Fn(&Reading, &Reading, f64) -> f64| -> Vec<f64> {
        pairs
            .iter()
            .map(|(a, b)| r2(f(a, b, b.at.duration_since(a.at).as_secs_f64())))
            .collect()
    };

    // The addresses really bound (a configured port 0 is an ephemeral port).
    let bound: HashMap<String, String> = shared
        .listeners
        .lock()
        .map(|m| {
            m.iter()
                .filter_map(|(n, h)| Some((n.clone(), h.socket.local_addr().ok()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let empty_l = ListenerReading::default();
    let listeners: Vec<Value> = rt
        .config
        .listeners
        .iter()
        .map(|l| {
            let n = now.listeners.get(&l.name).unwrap_or(&empty_l);
            let t = then.listeners.get(&l.name).unwrap_or(&empty_l);
            let name = l.name.clone();
            json!({
                "name": l.name,
                "listen": bound.get(&l.name).cloned().unwrap_or_else(|| l.listen.to_string()),
                "tls": l.tls.is_some(),
                "proxy_protocol": l.proxy_protocol,
                "active_connections": n.active,
                "new_connections_per_s": { "h1": r2(per_sec(n.h1, t.h1, secs)), "h2": r2(per_sec(n.h2, t.h2, secs)) },
                "bytes_in_per_s": r2(per_sec(n.bytes_in, t.bytes_in, secs)),
                "bytes_out_per_s": r2(per_sec(n.bytes_out, t.bytes_out, secs)),
                "tls_handshake_errors": n.tls_error,
                "tls_handshake_errors_per_s": r2(per_sec(n.tls_error, t.tls_error, secs)),
                "spark": {
                    "connections_per_s": spark(&|a, b, s| {
                        let (a, b) = (a.listeners.get(&name).unwrap_or(&empty_l), b.listeners.get(&name).unwrap_or(&empty_l));
                        per_sec(b.h1 + b.h2, a.h1 + a.h2, s)
                    }),
                    "bytes_out_per_s": spark(&|a, b, s| {
                        let (a, b) = (a.listeners.get(&name).unwrap_or(&empty_l), b.listeners.get(&name).unwrap_or(&empty_l));
                        per_sec(b.bytes_out, a.bytes_out, s)
                    }),
                },
            })
        })
        .collect();

    let empty_r = RouteReading::default();
    let routes: Vec<Value> = rt
        .config
        .routes
        .iter()
        .map(|route| {
            let n = now.routes.get(&route.name).unwrap_or(&empty_r);
            let t = then.routes.get(&route.name).unwrap_or(&empty_r);
            let done = n.requests.saturating_sub(t.requests);
            let share = |x: u64, y: u64| {
                if done == 0 {
                    0.0
                } else {
                    r2(x.saturating_sub(y) as f64 * 100.0 / done as f64)
                }
            };
            let p = &route.policies;
            let mut policies: Vec<String> = Vec::new();
            if let Some(j) = &p.jwt {
                policies.push(format!("jwt:{j}"));
            }
            if let Some(k) = &p.api_key {
                policies.push(format!("api_key:{k}"));
            }
            if let Some(i) = &p.integrity {
                policies.push(format!("integrity:{i}"));
            }
            if let Some(r) = &p.rate_limit {
                policies.push(format!("rate_limit:{r}"));
            }
            if route.retry.is_some() {
                policies.push("retry".into());
            }
            if route.fallback.is_some() {
                policies.push("fallback".into());
            }
            if !route.allow_ips.is_empty() || !route.deny_ips.is_empty() {
                policies.push("ip_filter".into());
            }
            if route.websocket {
                policies.push("websocket".into());
            }
            if let Some(c) = &route.cors {
                policies.push(format!("cors:{c}"));
            }
            if let Some(f) = &route.forward_auth {
                policies.push(format!("forward_auth:{f}"));
            }
            if route.client_cert_required {
                policies.push("client_cert".into());
            }
            if route.compress {
                policies.push("compress".into());
            }
            let name = route.name.clone();
            json!({
                "name": route.name,
                "match": describe_match(&route.matcher),
                "upstream": route.upstream,
                "policies": policies,
                "requests_total": n.requests,
                "requests_per_s": r2(per_sec(n.requests, t.requests, secs)),
                "p50_ms": quantile_ms(&n.buckets, &t.buckets, 0.5).map(r2),
                "p99_ms": quantile_ms(&n.buckets, &t.buckets, 0.99).map(r2),
                "share_4xx_pct": share(n.c4xx, t.c4xx),
                "share_5xx_pct": share(n.c5xx, t.c5xx),
                "errors_5xx_total": n.c5xx,
                "rate_limited_per_s": r2(per_sec(n.rate_limited, t.rate_limited, secs)),
                "auth_failures_per_s": r2(per_sec(n.auth_failures, t.auth_failures, secs)),
                "integrity_failures_per_s": r2(per_sec(n.integrity_failures, t.integrity_failures, secs)),
                "auth_failures_total": n.auth_failures,
                "integrity_failures_total": n.integrity_failures,
                "rate_limited_total": n.rate_limited,
                "cors_refused_per_s": r2(per_sec(n.cors_refused, t.cors_refused, secs)),
                "cors_refused_total": n.cors_refused,
                "forward_auth_denied_per_s": r2(per_sec(n.forward_auth_denied, t.forward_auth_denied, secs)),
                "forward_auth_denied_total": n.forward_auth_denied,
                "spark": {
                    "requests_per_s": spark(&|a, b, s| {
                        let (a, b) = (a.routes.get(&name).unwrap_or(&empty_r), b.routes.get(&name).unwrap_or(&empty_r));
                        per_sec(b.requests, a.requests, s)
                    }),
                    "errors_5xx_per_s": spark(&|a, b, s| {
                        let (a, b) = (a.routes.get(&name).unwrap_or(&empty_r), b.routes.get(&name).unwrap_or(&empty_r));
                        per_sec(b.c5xx, a.c5xx, s)
                    }),
                },
            })
        })
        .collect();

    let empty_t = TargetReading::default();
    let now_ms = crate::clock::now_ms();
    let upstreams: Vec<Value> = rt
        .upstreams
        .iter()
        .map(|u| {
            let key = |id: &str| (u.name.clone(), id.to_string());
            let rate = |id: &str| {
                let k = key(id);
                let n = now.targets.get(&k).unwrap_or(&empty_t);
                let t = then.targets.get(&k).unwrap_or(&empty_t);
                (
                    per_sec(n.attempts, t.attempts, secs),
                    per_sec(n.failures, t.failures, secs),
                )
            };
            let total: f64 = u
                .shards
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .map(|e| rate(&e.id).0)
                .sum();
            let endpoint = |e: &crate::endpoint::Endpoint, role: &str| {
                let (attempts, failures) = rate(&e.id);
                let mut m = super::endpoint_state(e, now_ms);
                m.insert("role".into(), json!(role));
                m.insert("requests_per_s".into(), json!(r2(attempts)));
                m.insert("failures_per_s".into(), json!(r2(failures)));
                m.insert(
                    "traffic_share_pct".into(),
                    json!(if total > 0.0 { r2(attempts * 100.0 / total) } else { 0.0 }),
                );
                Value::Object(m)
            };
            let shards: Vec<Value> = u
                .shards
                .iter()
                .map(|s| {
                    json!({
                        "weight": s.weight,
                        "up": s.is_up(),
                        "serving": s.serving().map(|e| e.id.as_str()),
                        "primary": endpoint(&s.endpoints[0], "primary"),
                        "backups": s.endpoints[1..].iter().map(|e| endpoint(e, "backup")).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "name": u.name,
                "balancer": u.config.balancer.as_str(),
                "health_checks": u.config.health.is_some(),
                "shards": shards,
                "discovery": crate::discovery::status_json(&u.name),
            })
        })
        .collect();

    let redis = rt
        .redis
        .as_ref()
        .map(|r| json!({ "fallback": r.is_down() }));
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_s": shared.started.elapsed().as_secs(),
        "config": rt.config.path.display().to_string(),
        "generation": rt.generation,
        "draining": shared.is_draining(),
        "window_s": r2(secs),
        "sample_interval_s": 1,
        "listeners": listeners,
        "routes": routes,
        "upstreams": upstreams,
        "redis": redis,
        "events": crate::events::latest(20),
        "last_event_id": crate::events::since(u64::MAX, 0).1,
    })
}

/// The route's match, as a person would write it.
fn describe_match(m: &crate::config::Match) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &m.host {
        parts.push(format!("host {h:?}"));
    }
    if let Some(p) = &m.path {
        parts.push(format!("path {p}"));
    }
    if let Some(p) = &m.path_prefix {
        parts.push(format!("prefix {p}/"));
    }
    if let Some(r) = &m.path_regex {
        parts.push(format!("regex {}", r.as_str()));
    }
    if let Some(ms) = &m.methods {
        let ms: Vec<&str> = ms.iter().map(|m| m.as_str()).collect();
        parts.push(ms.join("|"));
    }
    for (n, _) in &m.headers {
        parts.push(format!("header {n}"));
    }
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket_like_prometheus() {
        // 100 requests between two readings: 50 under 1 ms, 49 in (1, 2.5] ms, 1 in (5, 10].
        let before = vec![0u64; BUCKETS.len() + 1];
        let mut now = vec![0u64; BUCKETS.len() + 1];
        // Cumulative: 0.5ms:0, 1ms:50, 2.5ms:99, 5ms:99, 10ms:100, ...
        now[0] = 0;
        now[1] = 50;
        now[2] = 99;
        now[3] = 99;
        for c in now.iter_mut().skip(4) {
            *c = 100;
        }
        let p50 = quantile_ms(&now, &before, 0.5).unwrap();
        assert!((p50 - 1.0).abs() < 1e-9, "{p50}");
        let p99 = quantile_ms(&now, &before, 0.99).unwrap();
        assert!((p99 - 2.5).abs() < 1e-9, "{p99}");
        let p995 = quantile_ms(&now, &before, 0.995).unwrap();
        assert!(p995 > 5.0 && p995 <= 10.0, "{p995}");
        // Nothing new: no latency to report.
        assert_eq!(quantile_ms(&now, &now, 0.5), None);
    }
}
