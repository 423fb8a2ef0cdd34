//! Hot reload under load: SIGHUP, `POST /admin/reload` and the file watch; refused bad
//! configs; dry runs with the key-movement diff; state that carries over; listeners that come
//! and go; HTTP/2 connections that outlive reloads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;

use crate::client::{get, request, send, tls_connect, H1};
use crate::harness::{backend, gateway_cmd, Gateway};

async fn generation(gw: &Gateway) -> u64 {
    get(gw.admin(), "/admin/config").await.json()["generation"]
        .as_u64()
        .unwrap()
}

async fn wait_generation(gw: &Gateway, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while generation(gw).await < at_least {
        assert!(
            Instant::now() < deadline,
            "generation {at_least} never came; log:\n{}",
            gw.lines.all().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post_reload(gw: &Gateway, query: &str) -> crate::client::Resp {
    send(
        gw.admin(),
        request("POST", &format!("/admin/reload{query}"), &[], Bytes::new()),
    )
    .await
}

/// Config version `i`: a stable route and upstream that every version keeps (with its target
/// list and timeout changing), plus one extra route/upstream/listener that only version `i`
/// has.
fn version(i: usize, stable: &[SocketAddr], extra: SocketAddr) -> String {
    let targets: Vec<String> = stable
        .iter()
        .take(if i.is_multiple_of(2) { 2 } else { 3 })
        .enumerate()
        .map(|(k, a)| format!("{{ addr = \"{a}\", id = \"s{k}\" }}"))
        .collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[[listeners]]
name = "https"
listen = "127.0.0.1:0"
tls = {{ self_signed = true }}

[[listeners]]
name = "extra{i}"
listen = "127.0.0.1:0"

[upstreams.stable]
targets = [{}]
health = {{ interval = "200ms", timeout = "100ms" }}

[upstreams.extra{i}]
targets = [{{ addr = "{extra}" }}]

[[routes]]
name = "extra{i}"
match = {{ path_prefix = "/extra{i}" }}
upstream = "extra{i}"

[[routes]]
name = "stable"
match = {{ path_prefix = "/" }}
upstream = "stable"
timeout = "{}s"
"#,
        targets.join(", "),
        3 + i
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_under_load_cost_no_failed_request() {
    let stable = [
        backend("s0").await,
        backend("s1").await,
        backend("s2").await,
    ];
    let extra = backend("extra").await;
    let addrs: Vec<SocketAddr> = stable.iter().map(|b| b.addr).collect();
    let gw = Gateway::start(&version(0, &addrs, extra.addr));
    let http = gw.addr("http");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    // Keep-alive clients, one that opens a new connection per request, and one HTTP/2
    // connection held open across every reload.
    for k in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut conn = H1::connect(http).await;
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let res = if k == 0 {
                    Ok(get(http, "/stable").await)
                } else {
                    conn.send(request("GET", "/stable", &[], Bytes::new()))
                        .await
                };
                match res {
                    Ok(r) if r.status == StatusCode::OK => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("failed: {:?}", other.map(|r| r.status));
                        failed.fetch_add(1, Ordering::Relaxed);
                        conn = H1::connect(http).await;
                    }
                }
            }
        }));
    }
    let https = gw.addr("https");
    let (stop2, ok2, failed2) = (stop.clone(), ok.clone(), failed.clone());
    load.push(tokio::spawn(async move {
        let tls = tls_connect(https, "localhost", &[b"h2"], &[&rustls::version::TLS13]).await;
        let (mut h2, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        for _ in 0..200_000 {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            let req = http::Request::builder()
                .uri(format!("https://localhost:{}/stable", https.port()))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap();
            match h2.send_request(req).await {
                Ok(r) if r.status() == StatusCode::OK => {
                    use http_body_util::BodyExt;
                    let _ = r.into_body().collect().await;
                    ok2.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    eprintln!("h2 failed: {:?}", other.map(|r| r.status()));
                    failed2.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }));

    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..=10 {
        let before = ok.load(Ordering::Relaxed);
        gw.write_config(&version(i, &addrs, extra.addr));
        // Three ways in turn: SIGHUP, the admin API, the file watch alone.
        match i % 3 {
            0 => gw.sighup(),
            1 => {
                let res = post_reload(&gw, "").await;
                assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
            }
            _ => {}
        }
        wait_generation(&gw, 1 + i as u64).await;
        // The new version's extra route and listener work, the previous one's are gone.
        let res = get(http, &format!("/extra{i}/x")).await;
        assert_eq!(res.header("x-served-by"), "extra", "extra{i}");
        let old = get(http, &format!("/extra{}/x", i - 1)).await;
        assert_ne!(
            old.header("x-served-by"),
            "extra",
            "route extra{} survived",
            i - 1
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            if let Some(a) = gw.latest_addr(&format!("extra{i}")) {
                break a;
            }
            assert!(Instant::now() < deadline, "listener extra{i} never bound");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(get(listener, "/").await.status, StatusCode::OK);
        if let Some(prev) = gw.latest_addr(&format!("extra{}", i - 1)) {
            let deadline = Instant::now() + Duration::from_secs(3);
            while tokio::net::TcpStream::connect(prev).await.is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "removed listener extra{} still accepts",
                    i - 1
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Traffic kept flowing through the reload.
        let deadline = Instant::now() + Duration::from_secs(5);
        while ok.load(Ordering::Relaxed) < before + 50 {
            assert!(
                Instant::now() < deadline,
                "traffic stalled after reload {i}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("10 reloads under load: {ok} requests, {failed} failed");
    assert!(ok > 1000, "too little load: {ok}");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    // Every generation after the first came from one successful reload, none failed. An
    // explicit reload (SIGHUP, the admin API) delayed past the file watch's 300 ms settle
    // finds the file applied already and reloads once more: counted, and a generation too.
    let metrics = gw.metrics_text().await;
    let generations = generation(&gw).await;
    let reload_lines = || {
        let mut lines: Vec<String> = metrics
            .lines()
            .filter(|l| l.contains("reloads"))
            .map(str::to_string)
            .collect();
        lines.extend(gw.lines.all().into_iter().filter(|l| l.contains("reload")));
        lines.join("\n")
    };
    assert!(
        generations >= 11,
        "generation {generations}:\n{}",
        reload_lines()
    );
    assert!(
        metrics.contains(&format!(
            "gateway_config_reloads_total{{outcome=\"success\"}} {}",
            generations - 1
        )),
        "generation {generations}:\n{}",
        reload_lines()
    );
    assert!(
        metrics.contains("gateway_config_reloads_total{outcome=\"error\"} 0"),
        "{}",
        reload_lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_with_its_errors_and_the_running_one_stays() {
    let b = backend("b").await;
    let good = crate::harness::simple_config(&[b.addr], "");
    let gw = Gateway::start(&good);
    gw.write_config(&good.replace(
        "upstream = \"app\"",
        "upstream = \"nope\"\ntimeout = \"soon\"",
    ));
    let res = post_reload(&gw, "").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let v = res.json();
    assert_eq!(v["outcome"], "error");
    let errors: Vec<String> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("gateway.toml:") && e.contains("nope")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("soon")), "{errors:?}");
    assert_eq!(generation(&gw).await, 1);
    assert_eq!(get(gw.addr("http"), "/").await.status, StatusCode::OK);
    // Refused at least once (the file watch may have tried it too).
    let metrics = gw.metrics_text().await;
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_config_reloads_total{outcome=\"error\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused >= 1.0);
    assert!(metrics.contains("gateway_config_reloads_total{outcome=\"success\"} 0"));
    assert!(gw
        .lines
        .all()
        .iter()
        .any(|l| l.contains("config reload refused")));
}

fn sharded(targets: &[SocketAddr], extra: &str) -> String {
    let ts: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{ addr = \"{a}\", id = \"users-{i}\" }}"))
        .collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.users]
balancer = "consistent_hash"
hash_on = "header.x-user-id"
targets = [{}]
health = {{ interval = "200ms", timeout = "100ms", unhealthy_threshold = 1 }}

{extra}

[[routes]]
name = "users"
upstream = "users"
"#,
        ts.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_and_gateway_diff_say_which_keys_move_before_they_do() {
    let bs = [
        backend("u0").await,
        backend("u1").await,
        backend("u2").await,
        backend("u3").await,
    ];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let old = sharded(&addrs[..3], "");
    let new = sharded(&addrs, "");
    let gw = Gateway::start(&old);
    // The candidate goes in the body: the file (watched) stays as it is.
    let res = send(
        gw.admin(),
        request(
            "POST",
            "/admin/reload?dry_run=true",
            &[],
            Bytes::from(new.clone()),
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let v = res.json();
    assert_eq!(v["outcome"], "dry_run");
    let moves = &v["diff"]["key_moves"][0];
    assert_eq!(moves["upstream"], "users");
    let moved = moves["moved"].as_f64().unwrap();
    assert!((moved - 0.25).abs() < 0.03, "{moves}");
    assert_eq!(moves["to"][0]["target"], "users-3");
    assert_eq!(moves["from"].as_array().unwrap().len(), 3);
    assert!(moves["summary"]
        .as_str()
        .unwrap()
        .starts_with("users: moves "));
    assert_eq!(generation(&gw).await, 1, "a dry run changes nothing");

    // The CLI says the same from two files.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.toml"), &old).unwrap();
    std::fs::write(dir.path().join("new.toml"), &new).unwrap();
    let (code, out, err) = gateway_cmd(&["diff", "-c", "old.toml", "-c", "new.toml"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("~ upstream users changed"), "{out}");
    assert!(out.contains("keys: users: moves 2"), "{out}");
    assert!(out.contains("% to users-3"), "{out}");

    // The shares are real: after the reload, the keys that changed shard are about that many.
    let mut conn = H1::connect(gw.addr("http")).await;
    let mut before = Vec::new();
    for k in 0..400 {
        let id = format!("{k}");
        let r = conn
            .send(request(
                "GET",
                "/",
                &[("x-user-id", id.as_str())],
                Bytes::new(),
            ))
            .await
            .unwrap();
        before.push(r.header("x-served-by").to_string());
    }
    // Put it in place: the file watch reloads it.
    gw.write_config(&new);
    wait_generation(&gw, 2).await;
    let mut changed = 0;
    for (k, was) in before.iter().enumerate() {
        let id = format!("{k}");
        let r = conn
            .send(request(
                "GET",
                "/",
                &[("x-user-id", id.as_str())],
                Bytes::new(),
            ))
            .await
            .unwrap();
        if r.header("x-served-by") != was {
            assert_eq!(
                r.header("x-served-by"),
                "u3",
                "a key moved between old shards"
            );
            changed += 1;
        }
    }
    let share = changed as f64 / 400.0;
    assert!(
        (share - moved).abs() < 0.08,
        "{share} moved, predicted {moved}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_rate_limit_state_carry_over_a_reload() {
    let bs = [backend("u0").await, backend("u1").await];
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let limit =
        "[rate_limits.per_user]\nkey = \"header.x-user-id\"\nrate = 1\nper = \"1m\"\nburst = 2";
    let cfg = sharded(&addrs, limit).replace(
        "upstream = \"users\"\n",
        "upstream = \"users\"\nrate_limit = \"per_user\"\n",
    );
    let gw = Gateway::start(&cfg);
    bs[1].state.set_healthy(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = get(gw.admin(), "/admin/upstreams").await.json();
        if v["upstreams"][0]["targets"][1]["healthy"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "u1 never went down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = H1::connect(gw.addr("http")).await;
    for _ in 0..2 {
        let r = conn
            .send(request("GET", "/", &[("x-user-id", "alice")], Bytes::new()))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    // An unrelated change: a new route.
    gw.write_config(&format!(
        "{cfg}\n[[routes]]\nname = \"other\"\nmatch = {{ path = \"/other\" }}\nupstream = \"users\"\n"
    ));
    let res = post_reload(&gw, "").await;
    assert_eq!(res.json()["outcome"], "success", "{:?}", res.body);
    let v = get(gw.admin(), "/admin/upstreams").await.json();
    assert_eq!(v["generation"], 2);
    assert_eq!(
        v["upstreams"][0]["targets"][1]["healthy"], false,
        "the probe state must survive the reload"
    );
    let r = conn
        .send(request("GET", "/", &[("x-user-id", "alice")], Bytes::new()))
        .await
        .unwrap();
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the bucket must survive"
    );
    // A changed limit starts fresh buckets.
    gw.write_config(&cfg.replace("burst = 2", "burst = 3"));
    assert_eq!(post_reload(&gw, "").await.json()["outcome"], "success");
    let r = conn
        .send(request("GET", "/", &[("x-user-id", "alice")], Bytes::new()))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

/// A WebSocket echo origin (tokio-tungstenite): every text message comes back prefixed.
pub(crate) async fn ws_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                        if ws
                            .send(tokio_tungstenite::tungstenite::Message::text(format!(
                                "echo: {t}"
                            )))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn ws_config(origin: SocketAddr, extra_route: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[limits]
idle_timeout = "3s"

[upstreams.ws]
targets = [{{ addr = "{origin}" }}]

[[routes]]
name = "ws"
match = {{ path_prefix = "/ws" }}
upstream = "ws"
websocket = true

[[routes]]
name = "plain"
match = {{ path_prefix = "/plain" }}
upstream = "ws"
{extra_route}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_stays_open_across_reloads_and_closes_when_idle() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let origin = ws_echo().await;
    let gw = Gateway::start(&ws_config(origin, ""));
    let addr = gw.addr("http");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, res) = tokio_tungstenite::client_async(format!("ws://{addr}/ws/chat"), stream)
        .await
        .expect("the WebSocket handshake through the gateway");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..4 {
        if i > 0 {
            // Reload with a different route set each time.
            gw.write_config(&ws_config(
                origin,
                &format!("\n[[routes]]\nname = \"r{i}\"\nmatch = {{ path = \"/r{i}\" }}\nupstream = \"ws\"\n"),
            ));
            let res = post_reload(&gw, "").await;
            assert_eq!(res.json()["outcome"], "success");
        }
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an echo")
            .expect("the tunnel is open")
            .unwrap();
        assert_eq!(
            reply.into_text().unwrap().as_str(),
            format!("echo: hello {i}")
        );
    }
    assert!(generation(&gw).await >= 4);

    // A route without `websocket = true` does not upgrade: the origin sees a plain GET.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        tokio_tungstenite::client_async(format!("ws://{addr}/plain"), stream)
            .await
            .is_err(),
        "upgraded on a route without websocket = true"
    );

    // Idle for longer than idle_timeout: the gateway closes the tunnel.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let closed = match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
        Ok(None) | Ok(Some(Err(_))) => true,
        Ok(Some(Ok(Message::Close(_)))) => true,
        Ok(Some(Ok(_))) => false,
        Err(_) => false,
    };
    assert!(closed, "an idle tunnel must be closed after idle_timeout");
}
