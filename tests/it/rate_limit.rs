//! Rate limits under real overload: one instance with local buckets, three instances sharing
//! one real redis-server, and Redis killed and restarted mid-run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;

use crate::client::{request, H1};
use crate::harness::{backend, closed_port, redis_server, Gateway};

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
}

impl Tally {
    fn get(&self) -> (u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.limited.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

/// `conns` connections per address sending back to back for `dur` (at most 200,000 each).
async fn hammer(
    addrs: &[SocketAddr],
    conns: usize,
    dur: Duration,
    headers: &'static [(&'static str, &'static str)],
) -> (u64, u64, u64, Duration) {
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for &addr in addrs {
        for _ in 0..conns {
            let tally = tally.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = H1::connect(addr).await;
                for _ in 0..200_000 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    match conn.send(request("GET", "/", headers, Bytes::new())).await {
                        Ok(r) if r.status == StatusCode::OK => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) if r.status == StatusCode::TOO_MANY_REQUESTS => {
                            tally.limited.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            tally.other.fetch_add(1, Ordering::Relaxed);
                            conn = H1::connect(addr).await;
                        }
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let (ok, limited, other) = tally.get();
    (ok, limited, other, elapsed)
}

fn config(upstream: SocketAddr, policy: &str, redis: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

{policy}
{redis}

[upstreams.app]
targets = [{{ addr = "{upstream}" }}]

[[routes]]
name = "r"
match = {{ path_prefix = "/" }}
upstream = "app"
rate_limit = "limit"
"#
    )
}

fn within(actual: u64, expected: f64, share: f64) -> bool {
    (actual as f64 - expected).abs() <= expected * share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_limit_admits_burst_plus_rate_and_says_so() {
    let b = backend("b").await;
    let gw = Gateway::start(&config(
        b.addr,
        "[rate_limits.limit]\nkey = \"ip\"\nrate = 100\nper = \"1s\"\nburst = 20",
        "",
    ));
    let addr = gw.addr("http");
    let (ok, limited, other, elapsed) = hammer(&[addr], 4, Duration::from_secs(3), &[]).await;
    let expected = 20.0 + 100.0 * elapsed.as_secs_f64();
    eprintln!(
        "local: admitted {ok} of {} in {elapsed:?}; burst + rate x t = {expected:.0}",
        ok + limited
    );
    assert_eq!(other, 0);
    assert!(limited > ok, "not overloaded: {ok} ok, {limited} limited");
    assert!(
        within(ok, expected, 0.05),
        "admitted {ok} in {elapsed:?}, expected {expected:.0} ± 5%"
    );
    assert_eq!(
        gw.metric("gateway_rate_limited_total{policy=\"limit\",route=\"r\"}")
            .await,
        limited as f64
    );

    // A refusal says why and when; an allowed answer carries the fields too.
    let mut conn = H1::connect(addr).await;
    let mut refused = None;
    for _ in 0..100 {
        let r = conn
            .send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap();
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("no 429 after 100 back-to-back requests");
    assert_eq!(r.header("ratelimit-policy"), "\"limit\";q=100;w=1");
    assert_eq!(r.header("ratelimit"), "\"limit\";r=0;t=1");
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(r.json()["error"], "rate limited");
    assert!(r.json()["request_id"].is_string());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = conn
        .send(request("GET", "/", &[], Bytes::new()))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("ratelimit-policy"), "\"limit\";q=100;w=1");
    assert!(r.header("ratelimit").starts_with("\"limit\";r="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_value_has_its_own_bucket() {
    let b = backend("b").await;
    let gw = Gateway::start(&config(
        b.addr,
        "[rate_limits.limit]\nkey = \"header.x-user-id\"\nrate = 1\nper = \"1m\"\nburst = 3",
        "",
    ));
    let mut conn = H1::connect(gw.addr("http")).await;
    let statuses = |user: Option<&'static str>| {
        let headers: Vec<(&str, &str)> = user.map(|u| ("x-user-id", u)).into_iter().collect();
        request("GET", "/", &headers, Bytes::new())
    };
    let mut run = Vec::new();
    for user in [Some("alice"), Some("bob"), None] {
        let mut seen = Vec::new();
        for _ in 0..5 {
            let res = conn.send(statuses(user)).await.unwrap();
            seen.push(res.status.as_u16());
        }
        run.push(seen);
    }
    for seen in &run {
        assert_eq!(seen, &[200, 200, 200, 429, 429], "{run:?}");
    }
    // The refusal waits a whole token: one per minute.
    let res = conn.send(statuses(Some("alice"))).await.unwrap();
    let retry: u64 = res.header("retry-after").parse().unwrap();
    assert!((50..=60).contains(&retry), "retry-after {retry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_sharing_redis_admit_one_global_limit() {
    let dir = tempfile::tempdir().unwrap();
    let redis_addr = closed_port();
    let _redis = redis_server(redis_addr, dir.path(), &[]);
    let b = backend("b").await;
    let policy = "[rate_limits.limit]\nkey = \"header.x-tenant\"\nrate = 100\nper = \"1s\"\nburst = 50\nstore = \"redis\"";
    let redis = format!("[redis]\nurl = \"redis://{redis_addr}\"\non_error = \"local\"");
    let gws: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(&config(b.addr, policy, &redis)))
        .collect();
    // Wait until each instance has reached Redis.
    for gw in &gws {
        let deadline = Instant::now() + Duration::from_secs(5);
        while gw
            .metric("gateway_rate_limit_store_fallback{policy=\"limit\"}")
            .await
            != 0.0
        {
            assert!(Instant::now() < deadline, "an instance never reached Redis");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.addr("http")).collect();
    let (ok, limited, other, elapsed) =
        hammer(&addrs, 2, Duration::from_secs(10), &[("x-tenant", "acme")]).await;
    let expected = 50.0 + 100.0 * elapsed.as_secs_f64();
    eprintln!(
        "redis, 3 instances: admitted {ok} of {} in {elapsed:?}; burst + rate x t = {expected:.0}",
        ok + limited
    );
    assert_eq!(other, 0);
    assert!(
        limited > 2 * ok,
        "not overloaded: {ok} ok, {limited} limited"
    );
    assert!(
        within(ok, expected, 0.10),
        "3 instances admitted {ok} in {elapsed:?}; the global limit allows {expected:.0} ± 10%"
    );
    for gw in &gws {
        assert_eq!(
            gw.metric("gateway_rate_limit_store_errors_total{policy=\"limit\"}")
                .await,
            0.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_degrades_as_configured_and_the_shared_limit_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let redis_addr = closed_port();
    let mut redis = Some(redis_server(redis_addr, dir.path(), &[]));
    let b = backend("b").await;
    let policy = "[rate_limits.limit]\nkey = \"route\"\nrate = 20\nper = \"1s\"\nburst = 10\nstore = \"redis\"";
    let redis_cfg = format!("[redis]\nurl = \"redis://{redis_addr}\"\non_error = \"local\"");
    let gws: Vec<Gateway> = (0..2)
        .map(|_| Gateway::start(&config(b.addr, policy, &redis_cfg)))
        .collect();
    let fallback = "gateway_rate_limit_store_fallback{policy=\"limit\"}";
    let wait_for = |want: f64| {
        let gws = &gws;
        async move {
            let deadline = Instant::now() + Duration::from_secs(6);
            for gw in gws {
                while gw.metric(fallback).await != want {
                    assert!(
                        Instant::now() < deadline,
                        "fallback gauge never became {want}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    wait_for(0.0).await;
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.addr("http")).collect();
    let (shared, _, other, t) = hammer(&addrs, 2, Duration::from_secs(2), &[]).await;
    assert_eq!(other, 0);
    let one_limit = 10.0 + 20.0 * t.as_secs_f64();
    eprintln!("redis up: {shared} admitted, one limit {one_limit:.0}");
    assert!(
        within(shared, one_limit, 0.15),
        "shared: {shared}, want {one_limit:.0}"
    );

    // Redis dies: each instance falls back to its own bucket (on_error = "local"), no errors
    // reach clients.
    drop(redis.take());
    let (local, _, other, t) = hammer(&addrs, 2, Duration::from_secs(2), &[]).await;
    assert_eq!(other, 0, "losing Redis must not fail requests");
    let per_instance = 10.0 + 20.0 * t.as_secs_f64();
    eprintln!("redis down (local): {local} admitted by 2 instances, one limit {per_instance:.0}");
    assert!(
        local as f64 > 1.5 * per_instance,
        "with on_error = local each instance admits its own limit: {local}, one limit {per_instance:.0}"
    );
    wait_for(1.0).await;
    for gw in &gws {
        assert!(
            gw.metric("gateway_rate_limit_store_errors_total{policy=\"limit\"}")
                .await
                >= 1.0
        );
        assert!(gw
            .lines
            .all()
            .iter()
            .any(|l| l.contains("redis: unreachable")));
    }

    // Redis is back on the same address: the shared limit is back.
    redis = Some(redis_server(redis_addr, dir.path(), &[]));
    wait_for(0.0).await;
    let (again, _, other, t) = hammer(&addrs, 2, Duration::from_secs(2), &[]).await;
    assert_eq!(other, 0);
    let one_limit = 10.0 + 20.0 * t.as_secs_f64();
    eprintln!("redis back: {again} admitted, one limit {one_limit:.0}");
    assert!(
        within(again, one_limit, 0.15),
        "recovered: {again}, want {one_limit:.0}"
    );
    assert!(gws[0]
        .lines
        .all()
        .iter()
        .any(|l| l.contains("redis: reachable again")));
    // Both transitions are events for the status page, in order.
    let ev = gws[0].events("store_fallback").await;
    let fallbacks: Vec<(&str, &str)> = ev
        .iter()
        .filter(|e| e["severity"] != "info")
        .map(|e| {
            (
                e["severity"].as_str().unwrap(),
                e["detail"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(fallbacks.len() >= 2, "{ev:?}");
    assert_eq!(fallbacks[0].0, "bad");
    assert!(fallbacks[0].1.contains("unreachable"), "{fallbacks:?}");
    assert_eq!(fallbacks.last().unwrap().0, "good");
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_allow_and_deny_do_what_they_say() {
    let b = backend("b").await;
    let nowhere = closed_port();
    let policy =
        "[rate_limits.limit]\nkey = \"ip\"\nrate = 1\nper = \"1m\"\nburst = 1\nstore = \"redis\"";
    for (on_error, want) in [
        ("allow", StatusCode::OK),
        ("deny", StatusCode::TOO_MANY_REQUESTS),
    ] {
        let gw = Gateway::start(&config(
            b.addr,
            policy,
            &format!("[redis]\nurl = \"redis://{nowhere}\"\non_error = \"{on_error}\""),
        ));
        let mut conn = H1::connect(gw.addr("http")).await;
        for _ in 0..5 {
            let res = conn
                .send(request("GET", "/", &[], Bytes::new()))
                .await
                .unwrap();
            assert_eq!(res.status, want, "on_error = {on_error}");
        }
        assert_eq!(
            gw.metric("gateway_rate_limit_store_fallback{policy=\"limit\"}")
                .await,
            1.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_does_not_turn_shared_limits_off_after_one_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let redis_addr = closed_port();
    let _redis = redis_server(redis_addr, dir.path(), &["--enable-debug-command", "local"]);
    let b = backend("b").await;
    let policy = "[rate_limits.limit]\nkey = \"header.x-k\"\nrate = 1000\nper = \"1s\"\nburst = 1000\nstore = \"redis\"";
    let redis_cfg = format!("[redis]\nurl = \"redis://{redis_addr}\"\non_error = \"deny\"");
    let gw = Gateway::start(&config(b.addr, policy, &redis_cfg));
    let fallback = "gateway_rate_limit_store_fallback{policy=\"limit\"}";
    let deadline = Instant::now() + Duration::from_secs(6);
    while gw.metric(fallback).await != 0.0 {
        assert!(Instant::now() < deadline, "redis never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = gw.addr("http");
    let ask = |k: String| async move {
        crate::client::send(
            addr,
            crate::client::request("GET", "/", &[("x-k", &k)], bytes::Bytes::new()),
        )
        .await
        .status
    };
    assert_eq!(ask("warm".into()).await, http::StatusCode::OK);
    // Redis stalls for 600 ms (longer than the 250 ms call timeout) while one new key asks.
    let mut slow = tokio::net::TcpStream::connect(redis_addr).await.unwrap();
    slow.write_all(b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$3\r\n0.6\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let during = ask("during-the-stall".into()).await;
    let mut reply = [0u8; 16];
    let _ = slow.read(&mut reply).await;
    // One timed-out call: that request had the on_error answer, the store stays on.
    assert_eq!(
        during,
        http::StatusCode::TOO_MANY_REQUESTS,
        "on_error = deny for the timed-out call"
    );
    assert_eq!(
        gw.metric(fallback).await,
        0.0,
        "one slow call turned shared limits off"
    );
    assert_eq!(
        gw.metric("gateway_rate_limit_store_errors_total{policy=\"limit\"}")
            .await,
        1.0
    );
    for k in 0..20 {
        assert_eq!(ask(format!("after-{k}")).await, http::StatusCode::OK);
    }
    assert!(!gw.lines.all().iter().any(|l| l.contains("unreachable")));
}
