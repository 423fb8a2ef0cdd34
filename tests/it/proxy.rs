//! The request path end to end: routing, forwarding, request ids, pooling, streaming.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use crate::client::{self, get, request, send, H1};
use crate::harness::{backend, closed_port, full, origin, simple_config, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_http1_and_adds_forwarded_headers() {
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(&[b.addr], ""));
    let res = client::send(
        gw.addr("http"),
        request(
            "GET",
            "/hello/world?x=1&y=%20",
            &[
                ("host", "api.example.com"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "gopher"),
                ("x-forwarded-host", "evil.example"),
            ],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("x-served-by"), "b1");
    let echo = res.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/hello/world");
    assert_eq!(echo["query"], "x=1&y=%20");
    let h = &echo["headers"];
    assert_eq!(
        h["host"], "api.example.com",
        "the upstream sees the client's Host"
    );
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "an untrusted peer's chain is replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert_eq!(h["x-request-id"], res.header("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_keep_the_chain_and_append_the_peer() {
    let b = backend("b1").await;
    let config = simple_config(&[b.addr], "").replace(
        "[admin]",
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n[admin]",
    );
    let gw = Gateway::start(&config);
    let res = client::send(
        gw.addr("http"),
        request(
            "GET",
            "/",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
            ],
            Bytes::new(),
        ),
    )
    .await;
    let h = &res.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    // The access log names the real client, not the proxy.
    let log = wait_access_log(&gw, res.header("x-request-id"));
    assert_eq!(log["client"], "203.0.113.9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removes_hop_by_hop_headers_both_ways() {
    let up = origin(|req: http::Request<hyper::body::Incoming>| async move {
        let seen: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
        Response::builder()
            .header("connection", "x-upstream-private")
            .header("x-upstream-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-seen", seen.join(","))
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let gw = Gateway::start(&simple_config(&[up], ""));
    let res = client::send(
        gw.addr("http"),
        request(
            "GET",
            "/",
            &[
                ("connection", "keep-alive, x-client-private"),
                ("x-client-private", "1"),
                ("keep-alive", "timeout=9"),
                ("te", "trailers"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("x-kept", "1"),
            ],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let seen = res.header("x-seen").to_string();
    for dropped in [
        "x-client-private",
        "keep-alive",
        "te",
        "proxy-authorization",
    ] {
        assert!(
            !seen.split(',').any(|h| h == dropped),
            "{dropped} reached the upstream: {seen}"
        );
    }
    assert!(seen.split(',').any(|h| h == "x-kept"), "{seen}");
    for dropped in ["x-upstream-private", "keep-alive", "proxy-connection"] {
        assert!(
            !res.headers.contains_key(dropped),
            "{dropped} reached the client"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_precedence_and_strips_prefixes() {
    let users = backend("users").await;
    let api = backend("api").await;
    let exact = backend("exact").await;
    let rest = backend("rest").await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.users]
targets = [{{ addr = "{}" }}]
[upstreams.api]
targets = [{{ addr = "{}" }}]
[upstreams.exact]
targets = [{{ addr = "{}" }}]
[upstreams.rest]
targets = [{{ addr = "{}" }}]

[[routes]]
name = "exact"
match = {{ path = "/api/users/me", methods = ["GET"] }}
upstream = "exact"

[[routes]]
name = "users"
match = {{ path_prefix = "/api/users/" }}
upstream = "users"
strip_prefix = "/api"

[[routes]]
name = "canary"
match = {{ path_prefix = "/api", headers = {{ "x-canary" = "yes" }} }}
upstream = "exact"

[[routes]]
name = "versioned"
match = {{ path_regex = "^/v[0-9]+/items$", host = "*.example.com" }}
upstream = "rest"

[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
upstream = "api"
strip_prefix = "/api"
"#,
        users.addr, api.addr, exact.addr, rest.addr
    );
    let gw = Gateway::start(&config);
    let addr = gw.addr("http");
    let served = |r: &client::Resp| {
        (
            r.header("x-served-by").to_string(),
            r.json()["path"].as_str().unwrap().to_string(),
        )
    };

    assert_eq!(
        served(&get(addr, "/api/users/7").await),
        ("users".into(), "/users/7".into())
    );
    assert_eq!(
        served(&get(addr, "/api/users").await),
        ("users".into(), "/users".into())
    );
    assert_eq!(
        served(&get(addr, "/api/users/me").await),
        ("exact".into(), "/api/users/me".into())
    );
    // POST is not one of the exact route's methods: the next route takes it.
    let post = send(
        addr,
        request("POST", "/api/users/me", &[], Bytes::from_static(b"{}")),
    )
    .await;
    assert_eq!(served(&post), ("users".into(), "/users/me".into()));
    assert_eq!(served(&get(addr, "/api").await), ("api".into(), "/".into()));
    assert_eq!(
        served(&get(addr, "/api/orders?id=3").await),
        ("api".into(), "/orders".into())
    );
    let canary = send(
        addr,
        request("GET", "/api/x", &[("x-canary", "yes")], Bytes::new()),
    )
    .await;
    assert_eq!(canary.header("x-served-by"), "exact");
    let versioned = send(
        addr,
        request(
            "GET",
            "/v2/items",
            &[("host", "shop.example.com")],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(versioned.header("x-served-by"), "rest");
    let other_host = send(
        addr,
        request("GET", "/v2/items", &[("host", "example.org")], Bytes::new()),
    )
    .await;
    assert_eq!(other_host.status, StatusCode::NOT_FOUND);

    // /apiary is not under /api; dot segments cannot climb out of a prefix.
    let apiary = get(addr, "/apiary").await;
    assert_eq!(apiary.status, StatusCode::NOT_FOUND);
    let v = apiary.json();
    assert_eq!(v["error"], "no route");
    assert_eq!(v["request_id"], apiary.header("x-request-id"));
    let dotted = get(addr, "/api/users/../orders/./1").await;
    assert_eq!(served(&dotted), ("api".into(), "/orders/1".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_unique_snowflakes_passed_up_and_echoed() {
    let b = backend("b1").await;
    let config =
        simple_config(&[b.addr], "").replace("[admin]", "[server]\nnode_id = 777\n\n[admin]");
    let gw = Gateway::start(&config);
    let mut conn = H1::connect(gw.addr("http")).await;
    let mut ids = HashSet::new();
    let epoch_ms: u64 = 1_577_836_800_000;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for _ in 0..200 {
        let res = conn
            .send(request(
                "GET",
                "/",
                &[("x-request-id", "client-chosen")],
                Bytes::new(),
            ))
            .await
            .unwrap();
        let id = res.header("x-request-id").to_string();
        assert_eq!(
            res.json()["headers"]["x-request-id"],
            id.as_str(),
            "upstream saw another id"
        );
        let n: u64 = id.parse().expect("a decimal u64");
        assert_eq!((n >> 12) & 1023, 777, "node id bits");
        let ms = (n >> 22) + epoch_ms;
        assert!(
            ms.abs_diff(now_ms) < 120_000,
            "timestamp bits: {ms} vs {now_ms}"
        );
        assert!(ids.insert(id), "duplicate request id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_incoming_request_ids_are_kept_when_configured() {
    let b = backend("b1").await;
    let config = simple_config(&[b.addr], "")
        .replace("[admin]", "[server]\ntrust_request_id = true\n\n[admin]");
    let gw = Gateway::start(&config);
    let res = send(
        gw.addr("http"),
        request("GET", "/", &[("x-request-id", "abc-123")], Bytes::new()),
    )
    .await;
    assert_eq!(res.header("x-request-id"), "abc-123");
    assert_eq!(res.json()["headers"]["x-request-id"], "abc-123");
    let bad = send(
        gw.addr("http"),
        request("GET", "/", &[("x-request-id", "a b\"c")], Bytes::new()),
    )
    .await;
    assert!(
        bad.header("x-request-id").parse::<u64>().is_ok(),
        "an unsafe id is replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_and_reused() {
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(&[b.addr], ""));
    for _ in 0..30 {
        // A fresh client connection each time: reuse must come from the gateway's pool.
        assert_eq!(get(gw.addr("http"), "/").await.status, StatusCode::OK);
    }
    assert_eq!(b.state.requests(), 30);
    assert_eq!(
        b.state.connections(),
        1,
        "every request should reuse the pooled connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_error_moves_on_to_the_next_target() {
    let dead = closed_port();
    let live = backend("live").await;
    let gw = Gateway::start(&simple_config(&[dead, live.addr], ""));
    for _ in 0..10 {
        let res = get(gw.addr("http"), "/").await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.header("x-served-by"), "live");
    }
    let metrics = get(gw.admin(), "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("gateway_upstream_requests_total")
                && l.contains("connect_error")
                && l.contains(&dead.to_string())
        })
        .unwrap();
    assert!(!line.ends_with(" 0"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_response_without_waiting_for_its_end() {
    // The origin sends a first chunk, then waits until the client has it before sending the
    // rest: only a proxy that streams can pass this.
    let (got_first_tx, got_first_rx) = tokio::sync::mpsc::channel::<()>(1);
    let got_first_rx = std::sync::Arc::new(tokio::sync::Mutex::new(got_first_rx));
    let up = origin(move |_req| {
        let got_first_rx = got_first_rx.clone();
        async move {
            let (mut tx, body) =
                http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
            tokio::spawn(async move {
                tx.send_data(Bytes::from_static(b"first chunk;"))
                    .await
                    .unwrap();
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), got_first_rx.lock().await.recv())
                        .await;
                tx.send_data(Bytes::from_static(b"second chunk"))
                    .await
                    .unwrap();
            });
            Response::new(body.boxed())
        }
    })
    .await;
    let gw = Gateway::start(&simple_config(&[up], ""));
    let stream = tokio::net::TcpStream::connect(gw.addr("http"))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let res = sender
        .send_request(request("GET", "/", &[], Bytes::new()))
        .await
        .unwrap();
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk must arrive before the origin finishes")
        .unwrap()
        .unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        Bytes::from_static(b"first chunk;")
    );
    got_first_tx.send(()).await.unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second chunk"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_passes_through_in_bounded_memory() {
    const SIZE: u64 = 256 << 20;
    let b = crate::harness::backend_with(backends::Options {
        name: "big".into(),
        body_bytes: Some(SIZE),
        ..Default::default()
    })
    .await;
    let gw = Gateway::start(&simple_config(&[b.addr], ""));
    let before = gw.peak_rss_kib();
    let stream = tokio::net::TcpStream::connect(gw.addr("http"))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let res = sender
        .send_request(request("GET", "/", &[], Bytes::new()))
        .await
        .unwrap();
    assert_eq!(res.headers()["content-length"], SIZE.to_string().as_str());
    let mut body = res.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(total, SIZE);
    let grew_mib = (gw.peak_rss_kib() - before) / 1024;
    assert!(
        grew_mib < 32,
        "peak RSS grew by {grew_mib} MiB for a {} MiB body",
        SIZE >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_one_json_access_log_line_per_request() {
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(&[b.addr], ""));
    let res = send(
        gw.addr("http"),
        request(
            "GET",
            "/logged/path?token=secret",
            &[("authorization", "Bearer secret"), ("cookie", "s=secret")],
            Bytes::new(),
        ),
    )
    .await;
    let log = wait_access_log(&gw, res.header("x-request-id"));
    assert_eq!(log["route"], "all");
    assert_eq!(log["method"], "GET");
    assert_eq!(log["path"], "/logged/path");
    assert_eq!(log["status"], 200);
    assert_eq!(log["upstream_target"], b.addr.to_string());
    assert_eq!(log["listener"], "http");
    assert_eq!(log["bytes"], res.body.len() as u64);
    assert!(log["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(log["timestamp"].is_string());
    let line = gw
        .lines
        .all()
        .into_iter()
        .find(|l| l.contains(res.header("x-request-id")) && l.contains("access"))
        .unwrap();
    assert!(
        !line.contains("secret"),
        "credentials leaked into the access log: {line}"
    );
}

/// The access log record of one request, waiting for the line to be written.
pub fn wait_access_log(gw: &Gateway, request_id: &str) -> serde_json::Value {
    let needle = format!("\"request_id\":\"{request_id}\"");
    let line = gw
        .lines
        .wait_for(Duration::from_secs(5), |l| {
            l.contains(&needle) && l.contains("\"access\"")
        })
        .unwrap_or_else(|| panic!("no access log for {request_id}"));
    serde_json::from_str(&line).unwrap()
}
