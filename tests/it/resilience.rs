//! Resilience with real faults: health probes, process kills, breakers, retry budgets,
//! fallbacks, outlier ejection, concurrency limits.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;

use crate::client::{get, request, H1};
use crate::harness::{backend, backend_with, closed_port, Gateway, Proc, BACKEND_BIN};

fn config(targets: &[SocketAddr], upstream_extra: &str, route_extra: &str) -> String {
    let ts: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{ addr = \"{a}\", id = \"t{i}\" }}"))
        .collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.app]
connect_timeout = "300ms"
targets = [{}]
{upstream_extra}

[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"
timeout = "2s"
{route_extra}
"#,
        ts.join(", ")
    )
}

async fn upstream_target(gw: &Gateway, id: &str) -> serde_json::Value {
    let v = get(gw.admin(), "/admin/upstreams").await.json();
    v["upstreams"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_target_leaves_rotation_within_interval_times_threshold_and_returns() {
    let bs = [backend("a").await, backend("b").await, backend("c").await];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let gw = Gateway::start(&config(
        &addrs,
        "health = { path = \"/health\", interval = \"200ms\", timeout = \"100ms\", healthy_threshold = 2, unhealthy_threshold = 2 }",
        "",
    ));
    let mut conn = H1::connect(gw.addr("http")).await;
    bs[1].state.set_healthy(false);
    let marked = Instant::now();
    // interval × threshold (+ jitter): out of rotation well within a second.
    while upstream_target(&gw, "t1").await["healthy"] == true {
        assert!(
            marked.elapsed() < Duration::from_secs(2),
            "t1 still healthy 2 s after its probes started failing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let down_after = marked.elapsed();
    assert!(
        down_after >= Duration::from_millis(100),
        "marked down after {down_after:?}: before two failed probes could have run"
    );
    let before = bs[1].state.requests();
    for _ in 0..30 {
        let res = conn
            .send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::OK);
        assert_ne!(res.header("x-served-by"), "b");
    }
    assert_eq!(bs[1].state.requests(), before);
    let t = upstream_target(&gw, "t1").await;
    assert_eq!(t["up"], false);
    assert_eq!(t["healthy"], false);
    assert_eq!(t["last_probe"]["status"], 503);
    assert_eq!(t["last_probe"]["ok"], false);
    assert_eq!(
        gw.metric("gateway_upstream_up{target=\"t1\",upstream=\"app\"}")
            .await,
        0.0
    );

    bs[1].state.set_healthy(true);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut saw_b = false;
    for _ in 0..30 {
        let res = conn
            .send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap();
        saw_b |= res.header("x-served-by") == "b";
    }
    assert!(saw_b, "a recovered target must come back");
    assert_eq!(upstream_target(&gw, "t1").await["healthy"], true);
    assert!(gw
        .lines
        .all()
        .iter()
        .any(|l| l.contains("health: target is down")));
}

/// A sample backend as a separate process (so the test can kill it).
fn backend_process(name: &str) -> (Proc, SocketAddr) {
    let addr = closed_port();
    let child = Command::new(BACKEND_BIN)
        .args(["--listen", &addr.to_string(), "--name", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "backend {name} did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    (Proc(child), addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_process_under_load_costs_no_failed_get() {
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for name in ["p0", "p1", "p2"] {
        let (p, a) = backend_process(name);
        procs.push(p);
        addrs.push(a);
    }
    let gw = Gateway::start(&config(
        &addrs,
        "health = { interval = \"500ms\", timeout = \"200ms\", unhealthy_threshold = 2 }\noutlier = { consecutive_failures = 3, base_ejection = \"10s\" }",
        "retry = { attempts = 2, on = [\"reset\", \"timeout\", \"5xx\"] }",
    ));
    let addr = gw.addr("http");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = H1::connect(addr).await;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                n += 1;
                match conn.send(request("GET", "/load", &[], Bytes::new())).await {
                    Ok(res) if res.status == StatusCode::OK => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        conn = H1::connect(addr).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // SIGKILL: no goodbye, in-flight requests are cut.
    let mut dead = procs.remove(1);
    dead.0.kill().unwrap();
    dead.0.wait().unwrap();
    let dead_errors =
        "gateway_upstream_requests_total{outcome=\"connect_error\",target=\"t1\",upstream=\"app\"}";
    // Outlier detection ejects it after 3 failures; from then on it is not tried at all.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let settled = gw.metric(dead_errors).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 200, "too little load: {ok}");
    assert_eq!(failed, 0, "{failed} failed requests of {}", ok + failed);
    assert!(settled >= 1.0, "the dead target was never tried: {settled}");
    assert_eq!(
        gw.metric(dead_errors).await,
        settled,
        "connect attempts to the dead target kept growing after it was ejected"
    );
    assert_eq!(upstream_target(&gw, "t1").await["up"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_costs_one_connect_per_request_not_a_storm() {
    // Keyed balancing, one target answering 500 and one refusing connections, retries on
    // 5xx: every request tries the 500 once, then finds nothing else to send to.
    let sick = backend("sick").await;
    sick.state.set_faults(Some(1.0), None);
    let dead = closed_port();
    let gw = Gateway::start(&config(
        &[sick.addr, dead],
        "balancer = \"hash\"\nhash_on = \"header.x-key\"",
        "retry = { attempts = 3, on = [\"5xx\"], budget = 1.0 }",
    ));
    let mut conn = H1::connect(gw.addr("http")).await;
    let started = Instant::now();
    for k in 0..10 {
        let key = format!("k{k}");
        let res = conn
            .send(request(
                "GET",
                "/",
                &[("x-key", key.as_str())],
                Bytes::new(),
            ))
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "requests spun until their total timeout"
    );
    let dead_errors = gw.metric("gateway_upstream_requests_total{outcome=\"connect_error\",target=\"t1\",upstream=\"app\"}",
    )
    .await;
    assert!(
        dead_errors <= 10.0,
        "{dead_errors} connects to the dead target for 10 requests"
    );
    // Each request reached the sick target at most 1 + 3 retries times.
    assert!(sick.state.requests() <= 40, "{}", sick.state.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_stops_traffic_half_opens_and_closes() {
    let sick = backend("sick").await;
    let well = backend("well").await;
    sick.state.set_faults(Some(1.0), None);
    let gw = Gateway::start(&config(
        &[sick.addr, well.addr],
        "circuit_breaker = { error_ratio = 0.5, min_requests = 5, window = \"10s\", open_for = \"1s\", half_open_requests = 2 }",
        "",
    ));
    let mut conn = H1::connect(gw.addr("http")).await;
    for _ in 0..20 {
        conn.send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap();
    }
    // Round robin sent it 5 (the failures that opened it), then nothing.
    assert_eq!(sick.state.requests(), 5);
    assert_eq!(upstream_target(&gw, "t0").await["circuit"], "open");
    assert_eq!(
        gw.metric("gateway_circuit_state{target=\"t0\",upstream=\"app\"}")
            .await,
        1.0
    );
    for _ in 0..20 {
        let res = conn
            .send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap();
        assert_eq!(
            res.status,
            StatusCode::OK,
            "while open the sick target gets nothing"
        );
    }
    assert_eq!(
        sick.state.requests(),
        5,
        "an open circuit sends nothing to its target"
    );

    // It recovers; after open_for the circuit lets half_open_requests through and closes.
    sick.state.set_faults(Some(0.0), None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        assert_eq!(
            conn.send(request("GET", "/", &[], Bytes::new()))
                .await
                .unwrap()
                .status,
            StatusCode::OK
        );
    }
    assert!(
        sick.state.requests() >= 7,
        "half-open then closed: traffic returns"
    );
    assert_eq!(upstream_target(&gw, "t0").await["circuit"], "closed");
    // Each transition is an event for the status page: open, half-open, closed.
    let ev = gw.events("circuit").await;
    let circuit: Vec<&str> = ev
        .iter()
        .filter(|e| e["subject"] == "app/t0")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        circuit,
        ["circuit open", "circuit half-open", "circuit closed"],
        "{ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_when_every_target_fails() {
    let bs = [backend("a").await, backend("b").await, backend("c").await];
    for b in &bs {
        b.state.set_faults(Some(1.0), None);
    }
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let gw = Gateway::start(&config(
        &addrs,
        "",
        "retry = { attempts = 2, budget = 0.2, on = [\"5xx\"] }",
    ));
    let mut conn = H1::connect(gw.addr("http")).await;
    for _ in 0..100 {
        let res = conn
            .send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let sent: u64 = bs.iter().map(|b| b.state.requests()).sum();
    let retries = sent - 100;
    // Without a budget that would be 200 retries; the budget allows max(3, 0.2 x requests).
    assert!((15..=21).contains(&retries), "{retries} retries");
    assert_eq!(
        gw.metric("gateway_retries_total{upstream=\"app\"}").await,
        retries as f64
    );
    assert!(
        gw.metric("gateway_retry_budget_exhausted_total{upstream=\"app\"}")
            .await
            > 50.0
    );
    // A POST is never retried on a status.
    let before = bs.iter().map(|b| b.state.requests()).sum::<u64>();
    conn.send(request("POST", "/", &[], Bytes::from_static(b"x")))
        .await
        .unwrap();
    assert_eq!(
        bs.iter().map(|b| b.state.requests()).sum::<u64>(),
        before + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_replay_small_bodies_to_another_target() {
    let flaky = backend("flaky").await;
    let good = backend("good").await;
    flaky.state.set_faults(Some(1.0), None);
    let gw = Gateway::start(&config(
        &[flaky.addr, good.addr],
        "",
        "retry = { attempts = 1, budget = 1.0, on = [\"503\", \"500\"] }",
    ));
    let mut conn = H1::connect(gw.addr("http")).await;
    for _ in 0..6 {
        let res = conn
            .send(request("PUT", "/doc", &[], Bytes::from(vec![b'z'; 5000])))
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.header("x-served-by"), "good");
        assert_eq!(res.json()["body_bytes"], 5000, "the body is replayed whole");
    }
    assert!(flaky.state.requests() >= 3);
    // A body over 64 KiB is not kept, so it is not sent twice: the failure stands.
    let good_before = good.state.requests();
    let mut saw_500 = false;
    for _ in 0..2 {
        let res = conn
            .send(request(
                "PUT",
                "/big",
                &[],
                Bytes::from(vec![b'z'; 100 * 1024]),
            ))
            .await
            .unwrap();
        saw_500 |= res.status == StatusCode::INTERNAL_SERVER_ERROR;
    }
    assert!(saw_500, "a large body is not replayed to another target");
    assert!(good.state.requests() <= good_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_is_served_when_no_target_is_up() {
    let a = backend("a").await;
    a.state.set_healthy(false);
    let gw = Gateway::start(&config(
        &[a.addr],
        "health = { interval = \"100ms\", unhealthy_threshold = 1 }",
        "fallback = { status = 503, content_type = \"application/json\", body = '{\"error\":\"app degraded\"}' }",
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let res = get(gw.addr("http"), "/x").await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.header("content-type"), "application/json");
    assert_eq!(res.body, Bytes::from_static(br#"{"error":"app degraded"}"#));
    assert!(res.headers.contains_key("x-request-id"));
    assert_eq!(a.state.requests(), 0);
    let log = crate::proxy::wait_access_log(&gw, res.header("x-request-id"));
    assert_eq!(log["error"], "fallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_eject_a_target_for_a_while() {
    let sick = backend("sick").await;
    let well = backend("well").await;
    sick.state.set_faults(Some(1.0), None);
    let gw = Gateway::start(&config(
        &[sick.addr, well.addr],
        "outlier = { consecutive_failures = 3, base_ejection = \"1s\", max_ejection = \"10s\", max_ejection_percent = 50 }",
        "",
    ));
    let mut conn = H1::connect(gw.addr("http")).await;
    for _ in 0..20 {
        conn.send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap();
    }
    assert_eq!(sick.state.requests(), 3);
    let t = upstream_target(&gw, "t0").await;
    assert!(t["ejected_until"].is_string(), "{t}");
    assert_eq!(t["ejections"], 1);
    let ejection = gw
        .events("ejection")
        .await
        .first()
        .cloned()
        .expect("an ejection event");
    assert_eq!(ejection["subject"], "app/t0");
    assert_eq!(ejection["severity"], "bad");
    assert!(ejection["detail"].as_str().unwrap().contains("until"));
    assert_eq!(
        gw.metric("gateway_outlier_ejections_total{target=\"t0\",upstream=\"app\"}")
            .await,
        1.0
    );
    // The other target may not be ejected too: 50% of 2 targets is one.
    well.state.set_faults(Some(1.0), None);
    for _ in 0..10 {
        conn.send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap();
    }
    assert!(upstream_target(&gw, "t1").await["ejected_until"].is_null());
    // After base_ejection it is back in rotation.
    well.state.set_faults(Some(0.0), None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..4 {
        conn.send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap();
    }
    assert!(sick.state.requests() > 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_refuses_at_once_and_the_fallback_answers() {
    let slow = backend_with(backends::Options {
        name: "slow".into(),
        delay_ms: 600,
        ..Default::default()
    })
    .await;
    let gw = Gateway::start(&config(
        &[slow.addr],
        "max_in_flight = 2",
        "fallback = { status = 503, body = \"busy\", content_type = \"text/plain\" }",
    ));
    let addr = gw.addr("http");
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let res = get(addr, "/").await;
            (res.status, res.body, started.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, body, took) = t.await.unwrap();
        if status == StatusCode::OK {
            ok += 1;
        } else {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(body, Bytes::from_static(b"busy"));
            assert!(
                took < Duration::from_millis(300),
                "refused at once, not queued: {took:?}"
            );
            refused += 1;
        }
    }
    assert_eq!((ok, refused), (2, 3));
    assert_eq!(
        gw.metric("gateway_concurrency_rejected_total{reason=\"in_flight\",upstream=\"app\"}")
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_failover_with_health_checks_keeps_keys_on_their_shard() {
    let mut primaries = Vec::new();
    let mut replicas = Vec::new();
    for i in 0..2 {
        primaries.push(backend(&format!("s{i}")).await);
        replicas.push(backend(&format!("s{i}-replica")).await);
    }
    let cfg = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.kv]
balancer = "consistent_hash"
hash_on = "header.x-key"
health = {{ interval = "150ms", timeout = "100ms", healthy_threshold = 1, unhealthy_threshold = 1 }}
targets = [
  {{ addr = "{}", id = "s0", backups = ["{}"] }},
  {{ addr = "{}", id = "s1", backups = ["{}"] }},
]

[[routes]]
name = "kv"
upstream = "kv"
"#,
        primaries[0].addr, replicas[0].addr, primaries[1].addr, replicas[1].addr
    );
    let gw = Gateway::start(&cfg);
    let mut conn = H1::connect(gw.addr("http")).await;
    let mut home = std::collections::HashMap::new();
    for k in 0..40 {
        let res = conn
            .send(request(
                "GET",
                "/",
                &[("x-key", &format!("k{k}"))],
                Bytes::new(),
            ))
            .await
            .unwrap();
        home.insert(k, res.header("x-served-by").to_string());
    }
    assert!(home.values().any(|s| s == "s0") && home.values().any(|s| s == "s1"));
    primaries[0].state.set_healthy(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for k in 0..40 {
        let res = conn
            .send(request(
                "GET",
                "/",
                &[("x-key", &format!("k{k}"))],
                Bytes::new(),
            ))
            .await
            .unwrap();
        let want = if home[&k] == "s0" { "s0-replica" } else { "s1" };
        assert_eq!(res.header("x-served-by"), want, "key k{k}");
    }
    primaries[0].state.set_healthy(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for k in 0..40 {
        let res = conn
            .send(request(
                "GET",
                "/",
                &[("x-key", &format!("k{k}"))],
                Bytes::new(),
            ))
            .await
            .unwrap();
        assert_eq!(
            res.header("x-served-by"),
            home[&k],
            "key k{k} after fail-back"
        );
    }
}
