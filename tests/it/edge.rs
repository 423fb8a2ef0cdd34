//! The edge: TLS with ALPN and SNI, limits, slowloris, error statuses, graceful drain.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::client::{
    self, closed_within, get, h2_send, raw, read_until_quiet, request, send, tls_connect,
};
use crate::harness::{backend, backend_with, closed_port, require_tool, simple_config, Gateway};

fn tls_config(backend: std::net::SocketAddr, tls: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "https"
listen = "127.0.0.1:0"
tls = {tls}

[upstreams.app]
targets = [{{ addr = "{backend}" }}]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "app"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_http2_over_tls_when_alpn_offers_h2() {
    let b = backend("b1").await;
    let gw = Gateway::start(&tls_config(b.addr, "{ self_signed = true }"));
    let addr = gw.addr("https");
    let tls = tls_connect(
        addr,
        "localhost",
        &[b"h2", b"http/1.1"],
        &[&rustls::version::TLS13],
    )
    .await;
    let req = http::Request::builder()
        .uri(format!("https://localhost:{}/h2/path", addr.port()))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let res = h2_send(tls, req).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.version, http::Version::HTTP_2);
    let echo = res.json();
    assert_eq!(echo["path"], "/h2/path");
    assert_eq!(
        echo["headers"]["host"],
        format!("localhost:{}", addr.port())
    );
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

    // TLS 1.2 with http/1.1 only works too.
    let tls = tls_connect(
        addr,
        "localhost",
        &[b"http/1.1"],
        &[&rustls::version::TLS12],
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let res = sender
        .send_request(request("GET", "/h1", &[], Bytes::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), http::Version::HTTP_11);

    let metrics = String::from_utf8_lossy(&get_admin_metrics(&gw).await).into_owned();
    assert!(
        metrics.contains("gateway_connections_total{listener=\"https\",protocol=\"h2\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_connections_total{listener=\"https\",protocol=\"h1\"} 1"));
    assert!(
        metrics.contains("gateway_tls_handshakes_total{listener=\"https\",outcome=\"success\"} 2")
    );
}

async fn get_admin_metrics(gw: &Gateway) -> Bytes {
    match gw.admin {
        Some(a) => get(a, "/metrics").await.body,
        None => Bytes::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_http2_from_the_https_listener() {
    require_tool("curl", "curl");
    let b = backend("b1").await;
    let gw = Gateway::start(&tls_config(b.addr, "{ self_signed = true }"));
    let url = format!("https://localhost:{}/via/curl", gw.addr("https").port());
    let out = tokio::process::Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "-",
            "-w",
            "\n%{http_version} %{http_code}",
            &url,
        ])
        .output()
        .await
        .expect("curl is installed by .ci/run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n2 200"), "{text}");
    assert!(text.contains("\"path\":\"/via/curl\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_unknown_names_get_the_first() {
    let b = backend("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut certs = Vec::new();
    for name in ["a.test", "b.test"] {
        let g = rcgen::generate_simple_self_signed(vec![name.to_string(), format!("*.{name}")])
            .unwrap();
        let cert = dir.path().join(format!("{name}.pem"));
        let key = dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, g.cert.pem()).unwrap();
        std::fs::write(&key, g.signing_key.serialize_pem()).unwrap();
        certs.push((cert, key, g.cert.der().clone()));
    }
    let tls = format!(
        "{{ certs = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}] }}",
        certs[0].0.display(),
        certs[0].1.display(),
        certs[1].0.display(),
        certs[1].1.display()
    );
    let gw = Gateway::start(&tls_config(b.addr, &tls));
    let addr = gw.addr("https");
    let v13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let served = |tls: &tokio_rustls::client::TlsStream<TcpStream>| client::peer_cert(tls);
    assert_eq!(
        served(&tls_connect(addr, "b.test", &[b"h2"], v13).await),
        certs[1].2
    );
    assert_eq!(
        served(&tls_connect(addr, "x.b.test", &[b"h2"], v13).await),
        certs[1].2
    );
    assert_eq!(
        served(&tls_connect(addr, "a.test", &[b"h2"], v13).await),
        certs[0].2
    );
    assert_eq!(
        served(&tls_connect(addr, "unknown.example", &[b"h2"], v13).await),
        certs[0].2
    );
    // An IP address sends no SNI at all.
    assert_eq!(
        served(&tls_connect(addr, "127.0.0.1", &[b"h2"], v13).await),
        certs[0].2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_1_3_refuses_tls_1_2() {
    let b = backend("b1").await;
    let gw = Gateway::start(&tls_config(
        b.addr,
        "{ self_signed = true, min_version = \"1.3\" }",
    ));
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let stream = TcpStream::connect(gw.addr("https")).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let err = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, stream)
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("protocol") || err.to_string().contains("alert"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_never_reach_the_upstream() {
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "\n[limits]\nmax_body_bytes = \"1KiB\"\n",
    ));
    let addr = gw.addr("http");
    // Declared length over the limit.
    let res = send(
        addr,
        request("POST", "/", &[], Bytes::from(vec![b'x'; 2048])),
    )
    .await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.json()["error"], "request body too large");
    assert_eq!(b.state.requests(), 0);
    // At the limit is fine.
    let ok = send(
        addr,
        request("POST", "/", &[], Bytes::from(vec![b'x'; 1024])),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["body_bytes"], 1024);
    // Chunked, no length: caught while streaming.
    let mut chunked = b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'y'; 0x200]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let text = raw(addr, &chunked, Duration::from_secs(3)).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_or_too_many_headers_get_431() {
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "\n[limits]\nmax_header_bytes = 8192\nmax_headers = 20\n",
    ));
    let addr = gw.addr("http");
    let big = "x".repeat(9000);
    let text = raw(
        addr,
        format!("GET / HTTP/1.1\r\nhost: t\r\nx-big: {big}\r\n\r\n").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let text = raw(
        addr,
        format!("GET / HTTP/1.1\r\nhost: t\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    let fine: String = (0..10).map(|i| format!("x-h{i}: v\r\n")).collect();
    let text = raw(
        addr,
        format!("GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n{fine}\r\n").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(b.state.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_502_and_504() {
    let dead = closed_port();
    let slow = backend_with(backends::Options {
        name: "slow".into(),
        delay_ms: 3000,
        ..Default::default()
    })
    .await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.dead]
connect_timeout = "500ms"
targets = [{{ addr = "{dead}" }}]
[upstreams.slow]
targets = [{{ addr = "{}" }}]

[[routes]]
name = "dead"
match = {{ path_prefix = "/dead" }}
upstream = "dead"

[[routes]]
name = "slow"
match = {{ path_prefix = "/slow" }}
upstream = "slow"
timeout = "300ms"
"#,
        slow.addr
    );
    let gw = Gateway::start(&config);
    let res = get(gw.addr("http"), "/dead").await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    assert_eq!(res.json()["error"], "upstream failed");
    assert_eq!(res.json()["request_id"], res.header("x-request-id"));
    let started = Instant::now();
    let res = get(gw.addr("http"), "/slow").await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.json()["error"], "upstream timed out");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_cut_but_idle_keep_alive_is_not() {
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "\n[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"4s\"\n",
    ));
    let addr = gw.addr("http");

    // A client that trickles its head one byte at a time is closed at header_timeout.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nhost: t\r\nx-slow: ";
    assert!(
        trickled_until_closed(&mut slow, head).await,
        "a trickled head must be cut"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A client that connects and sends nothing is cut too.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);

    // A kept-alive connection idle for longer than header_timeout still works.
    let mut conn = client::H1::connect(addr).await;
    assert_eq!(
        conn.send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        conn.send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    // ... and is closed once idle past idle_timeout.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(conn
        .send(request("GET", "/", &[], Bytes::new()))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_at_accept() {
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "\n[limits]\nmax_connections = 2\n",
    ));
    let addr = gw.addr("http");
    let mut c1 = client::H1::connect(addr).await;
    let mut c2 = client::H1::connect(addr).await;
    assert_eq!(
        c1.send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    assert_eq!(
        c2.send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let text = client::read_until_quiet(&mut third, Duration::from_secs(2)).await;
    assert!(
        text.is_empty(),
        "the third connection got an answer: {text}"
    );
    drop(c1);
    // Once one closes, new connections are served again.
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = raw(
            addr,
            b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
            Duration::from_secs(1),
        )
        .await;
        if t.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
    }
    assert!(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listeners_speak_http1_only() {
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(&[b.addr], ""));
    // An HTTP/2 prior-knowledge preface (h2c) is not answered as HTTP/2.
    let text = raw(
        gw.addr("http"),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(!text.contains("\0\0"), "answered with HTTP/2 frames");
    assert_eq!(b.state.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_listeners_answer_308_to_https() {
    let b = backend("b1").await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
redirect_https = 8443

[upstreams.app]
targets = [{{ addr = "{}" }}]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "app"
"#,
        b.addr
    );
    let gw = Gateway::start(&config);
    let res = send(
        gw.addr("http"),
        request(
            "GET",
            "/a/b?c=d",
            &[("host", "api.example.com:8080")],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        res.header("location"),
        "https://api.example.com:8443/a/b?c=d"
    );
    assert_eq!(b.state.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let slow = backend_with(backends::Options {
        name: "slow".into(),
        delay_ms: 1500,
        ..Default::default()
    })
    .await;
    let mut gw = Gateway::start(&simple_config(&[slow.addr], "timeout = \"10s\"\n"));
    let addr = gw.addr("http");
    let admin = gw.admin();
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);
    let in_flight = tokio::spawn(async move { get(addr, "/slow").await });
    // Let the request reach the backend, then ask the gateway to stop.
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.state.requests() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A connection accepted before the drain that has not asked anything yet.
    let mut early = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.sigterm();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: not ready any more, and no new connections are accepted.
    assert_eq!(
        get(admin, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting while draining"
    );
    // It still gets an answer to its first request (HTTP/1 has no GOAWAY: closing it
    // unasked would fail a request already on the wire), then the connection closes.
    early
        .write_all(b"GET /early HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut early, &mut answer),
    )
    .await
    .expect("the early connection is answered and closed")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    // The in-flight request finishes normally.
    let res = in_flight.await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("x-served-by"), "slow");
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("the gateway exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(gw.lines.all().iter().any(|l| l.contains("drained")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_413_lingers_so_a_client_still_sending_is_not_reset() {
    use tokio::io::AsyncReadExt;
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "\n[limits]\nmax_body_bytes = \"1KiB\"\n",
    ));
    let mut stream = TcpStream::connect(gw.addr("http")).await.unwrap();
    const BODY: usize = 200 * 1024;
    stream
        .write_all(
            format!("POST / HTTP/1.1\r\nhost: t\r\ncontent-length: {BODY}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    // The 413 comes back before the body is sent...
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // ... and a client that keeps sending it (many do) must not be reset: the gateway reads
    // and drops it before closing. Without lingering the second write here fails (EPIPE).
    for i in 0..BODY / 8192 {
        if let Err(e) = stream.write_all(&[b'z'; 8192]).await {
            panic!("write {i} after the 413 failed: {e}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stream.shutdown().await.unwrap();
    let end = tokio::time::timeout(
        Duration::from_secs(10),
        client::read_until_quiet(&mut stream, Duration::from_secs(6)),
    )
    .await;
    assert!(end.is_ok());
    assert_eq!(b.state.requests(), 0);
}

/// An HTTP/2 connection over TLS to the `https` listener of `gw`.
async fn h2_conn(
    gw: &Gateway,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>> {
    let tls = tls_connect(
        gw.addr("https"),
        "localhost",
        &[b"h2"],
        &[&rustls::version::TLS13],
    )
    .await;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

fn h2_get(gw: &Gateway, path: &str) -> http::Request<http_body_util::Full<Bytes>> {
    http::Request::builder()
        .uri(format!(
            "https://localhost:{}{path}",
            gw.addr("https").port()
        ))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap()
}

async fn active_connections(gw: &Gateway, listener: &str) -> i64 {
    let text = gw.metrics_text().await;
    let prefix = format!("gateway_connections_active{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_close_when_idle_and_when_no_request_comes() {
    let b = backend("b1").await;
    let config = tls_config(b.addr, "{ self_signed = true }")
        + "\n[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\n";
    let gw = Gateway::start(&config);
    // Used, then idle: closed after idle_timeout.
    let mut used = h2_conn(&gw).await;
    assert_eq!(
        used.send_request(h2_get(&gw, "/")).await.unwrap().status(),
        StatusCode::OK
    );
    // Never used: closed after header_timeout.
    let unused = h2_conn(&gw).await;
    assert_eq!(active_connections(&gw, "https").await, 2);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        unused.is_closed() || active_connections(&gw, "https").await == 1,
        "an h2 connection without a request must close at header_timeout"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        active_connections(&gw, "https").await,
        0,
        "an idle h2 connection must close at idle_timeout"
    );
    assert!(used.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_with_too_many_headers_get_431_from_the_gateway() {
    let b = backend("b1").await;
    let config = tls_config(b.addr, "{ self_signed = true }") + "\n[limits]\nmax_headers = 20\n";
    let gw = Gateway::start(&config);
    let mut h2 = h2_conn(&gw).await;
    let mut req = h2_get(&gw, "/");
    for i in 0..40 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            "v".parse().unwrap(),
        );
    }
    let res = h2.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(
        b.state.requests(),
        0,
        "the request must not reach the upstream"
    );
    assert_eq!(
        h2.send_request(h2_get(&gw, "/")).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_after_idle_timeout() {
    let big = backend_with(backends::Options {
        name: "big".into(),
        body_bytes: Some(1 << 30),
        ..Default::default()
    })
    .await;
    let gw = Gateway::start(&simple_config(
        &[big.addr],
        "\n[limits]\nidle_timeout = \"2s\"\n",
    ));
    let mut stuck = TcpStream::connect(gw.addr("http")).await.unwrap();
    stuck
        .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    // Read nothing: the gateway's writes stall once the socket buffers are full.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(active_connections(&gw, "http").await, 1);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        active_connections(&gw, "http").await,
        0,
        "a stalled connection must be dropped"
    );
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_does_not_count_against_the_route_timeout() {
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(&[b.addr], "timeout = \"1s\"\n"));
    let mut s = TcpStream::connect(gw.addr("http")).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // 2.5 s of upload, well past the 1 s timeout, which runs from the body's end.
    for _ in 0..5 {
        s.write_all(b"5\r\nhello\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let text = client::read_until_quiet(&mut s, Duration::from_secs(3)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"body_bytes\":25"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_leaves_the_pooled_connection_usable() {
    // An origin that answers at once, without reading the request body.
    let up = crate::harness::origin(|_req: http::Request<hyper::body::Incoming>| async move {
        http::Response::new(crate::harness::full("early"))
    })
    .await;
    let gw = Gateway::start(&simple_config(&[up], "timeout = \"3s\"\n"));
    let addr = gw.addr("http");
    // A slow chunked upload that the origin answers before it ends.
    let mut upload = TcpStream::connect(addr).await.unwrap();
    upload
        .write_all(
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
    let uploader = tokio::spawn(async move {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if upload.write_all(b"5\r\nhello\r\n").await.is_err() {
                break;
            }
        }
        let _ = upload.write_all(b"0\r\n\r\n").await;
        upload
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile other requests to the same upstream are served promptly.
    for _ in 0..5 {
        let started = Instant::now();
        let res = get(addr, "/").await;
        assert_eq!(res.status, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }
    let mut upload = uploader.await.unwrap();
    let text = client::read_until_quiet(&mut upload, Duration::from_secs(1)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_aborts_its_upload_is_not_an_upstream_failure() {
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(&[b.addr], ""));
    let mut s = TcpStream::connect(gw.addr("http")).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\n\r\npartial")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    let line = gw
        .lines
        .wait_for(Duration::from_secs(5), |l| {
            l.contains("\"access\"") && l.contains("\"status\":499")
        })
        .expect("an access line with status 499");
    assert!(line.contains("client_gone"), "{line}");
    let text = gw.metrics_text().await;
    assert!(
        text.contains(&format!(
            "gateway_upstream_requests_total{{outcome=\"reset\",target=\"{}\",upstream=\"app\"}} 0",
            b.addr
        )),
        "{text}"
    );
    assert!(!gw
        .lines
        .all()
        .iter()
        .any(|l| l.contains("upstream failure")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_connections_do_not_starve_normal_clients() {
    const SLOW: usize = 2000;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "\n[limits]\nheader_timeout = \"2s\"\n",
    ));
    let addr = gw.addr("http");
    let stop = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(AtomicU64::new(0));
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            panic!("connection {i} of {SLOW} refused");
        };
        let (stop, cut) = (stop.clone(), cut.clone());
        slow.push(tokio::spawn(async move {
            // Slowloris: a head that never ends, one byte every 250 ms (at most 40 bytes).
            let head = b"GET / HTTP/1.1\r\nhost: t\r\nx-slow: ";
            for byte in head.iter().chain(std::iter::repeat(&b'a')).take(40) {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if s.write_all(&[*byte]).await.is_err()
                    || closed_within(&mut s, Duration::from_millis(250)).await
                {
                    cut.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }));
    }
    let mut open = 0;
    for _ in 0..20 {
        open = active_connections(&gw, "http").await;
        if open >= SLOW as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        open >= (SLOW as i64) * 9 / 10,
        "only {open} of {SLOW} slow connections were accepted"
    );
    // Meanwhile normal clients, on fresh connections, are all served.
    let mut served = 0;
    for _ in 0..100 {
        let res = client::get(addr, "/").await;
        assert_eq!(res.status, StatusCode::OK);
        served += 1;
    }
    // Every slow head is cut at header_timeout (40 bytes take 10 s to trickle).
    let deadline = Instant::now() + Duration::from_secs(8);
    while cut.load(Ordering::Relaxed) < SLOW as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in slow {
        t.await.unwrap();
    }
    assert_eq!(cut.load(Ordering::Relaxed), SLOW as u64);
    assert_eq!(served, 100);
    let deadline = Instant::now() + Duration::from_secs(3);
    while active_connections(&gw, "http").await > 0 {
        assert!(Instant::now() < deadline, "connections left open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "2000 slowloris connections: gateway peak RSS {} KiB",
        gw.peak_rss_kib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_idle_timeout_lets_a_quiet_stream_live() {
    use http_body_util::BodyExt;
    // Server-sent events: a first event, 3 s of silence, a second one.
    let up = crate::harness::origin(|_req: http::Request<hyper::body::Incoming>| async move {
        let (mut tx, body) =
            http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
        tokio::spawn(async move {
            let _ = tx.send_data(Bytes::from_static(b"data: one\n\n")).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = tx.send_data(Bytes::from_static(b"data: two\n\n")).await;
        });
        http::Response::builder()
            .header("content-type", "text/event-stream")
            .body(body.boxed())
            .unwrap()
    })
    .await;
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[limits]
idle_timeout = "1s"

[upstreams.app]
targets = [{{ addr = "{up}" }}]

[[routes]]
name = "events"
match = {{ path_prefix = "/events" }}
upstream = "app"
timeout = "10s"
idle_timeout = "0s"

[[routes]]
name = "longer"
match = {{ path_prefix = "/longer" }}
upstream = "app"
timeout = "10s"
idle_timeout = "5s"

[[routes]]
name = "default"
match = {{ path_prefix = "/" }}
upstream = "app"
timeout = "10s"
"#
    );
    let gw = Gateway::start(&config);
    let addr = gw.addr("http");
    let fetch = |path: &'static str| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        client::read_until_quiet(&mut s, Duration::from_secs(5)).await
    };
    let (events, longer, default) = tokio::join!(fetch("/events"), fetch("/longer"), fetch("/"));
    assert!(
        events.contains("data: one") && events.contains("data: two"),
        "{events}"
    );
    assert!(
        longer.contains("data: one") && longer.contains("data: two"),
        "{longer}"
    );
    // [limits] idle_timeout = 1s: the quiet stream is dropped as stalled.
    assert!(
        default.contains("data: one") && !default.contains("data: two"),
        "{default}"
    );
}

/// Read one response (head and Content-Length body) from a raw stream.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                let rest = out.split_off(end + 4 + len);
                assert!(rest.is_empty(), "one response at a time here");
                return String::from_utf8_lossy(&out).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
}

// An HTTP/1 connection idle for 250 ms is parked (hyper's buffers freed, the socket kept) and
// woken by its client's next bytes: whatever arrives then, in whatever pieces, is served as if
// the connection had never paused; the head deadline and idle_timeout still hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_park_and_wake_for_the_next_request() {
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "\n[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"3s\"\n",
    ));
    let addr = gw.addr("http");
    let park = Duration::from_millis(600);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.contains("\"path\":\"/one\""));
    // Parked; the next head trickles in over three writes.
    tokio::time::sleep(park).await;
    for piece in [&b"GET /tw"[..], b"o HTTP/1.1\r\nho", b"st: t\r\n\r\n"] {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let two = read_response(&mut s).await;
    assert!(two.starts_with("HTTP/1.1 200"), "{two}");
    assert!(two.contains("\"path\":\"/two\""), "{two}");
    // Parked again; two pipelined requests in one write, then a POST with a body.
    tokio::time::sleep(park).await;
    s.write_all(b"GET /three HTTP/1.1\r\nhost: t\r\n\r\nGET /four HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut both = String::new();
    while both.matches("HTTP/1.1 200").count() < 2 {
        both.push_str(&read_until_quiet(&mut s, Duration::from_millis(500)).await);
        assert!(
            both.contains("/three"),
            "pipelined requests after a park: {both}"
        );
    }
    assert!(both.contains("\"path\":\"/four\""), "{both}");
    tokio::time::sleep(park).await;
    s.write_all(b"POST /five HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let five = read_response(&mut s).await;
    assert!(five.contains("\"path\":\"/five\""), "{five}");
    // A head that starts after a park and stalls is still cut at header_timeout.
    tokio::time::sleep(park).await;
    s.write_all(b"GET /six HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(800));

    // A parked connection is closed at idle_timeout, counted from its last request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut idle).await;
    let started = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(6)).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    assert_eq!(active_connections(&gw, "http").await, 0);

    // Over TLS too (the socket is watched under the TLS session).
    let gw = Gateway::start(&tls_config(b.addr, "{ self_signed = true }"));
    let mut tls = tls_connect(
        gw.addr("https"),
        "localhost",
        &[b"http/1.1"],
        &[&rustls::version::TLS13],
    )
    .await;
    for path in ["/a", "/b", "/c"] {
        tls.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let res = read_response(&mut tls).await;
        assert!(res.contains(&format!("\"path\":\"{path}\"")), "{res}");
        tokio::time::sleep(park).await;
    }
}

// SIGTERM closes parked keep-alive connections at once (as hyper closes idle ones) and the
// gateway exits without waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_parked_connections() {
    let b = backend("b1").await;
    let mut gw = Gateway::start(&simple_config(&[b.addr], ""));
    let addr = gw.addr("http");
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut s).await;
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    gw.sigterm();
    for s in &mut conns {
        assert!(closed_within(s, Duration::from_secs(3)).await);
    }
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("the gateway exits after draining");
    assert!(status.success(), "{status:?}");
}

// A WebSocket upgrade on a connection that was parked: the fresh HTTP/1 connection that
// wakes for it hands the socket to the tunnel as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_can_still_upgrade_to_a_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let b = backend("b1").await;
    let origin = crate::reload::ws_echo().await;
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.ws]
targets = [{{ addr = "{origin}" }}]

[upstreams.app]
targets = [{{ addr = "{}" }}]

[[routes]]
name = "ws"
match = {{ path_prefix = "/ws" }}
upstream = "ws"
websocket = true

[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"
"#,
        b.addr
    ));
    let addr = gw.addr("http");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (mut ws, res) = tokio_tungstenite::client_async(format!("ws://{addr}/ws/chat"), s)
        .await
        .expect("the WebSocket handshake on a parked connection");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hi")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an echo")
        .expect("the tunnel is open")
        .unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "echo: hi");
}

// A head pipelined behind a request and then trickled in is cut too: once the request before
// it is answered, its next bytes start the head deadline (hyper's own header timer is off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_pipelined_head_is_cut_at_header_timeout() {
    let b = backend("b1").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "\n[limits]\nheader_timeout = \"1s\"\nidle_timeout = \"30s\"\n",
    ));
    let mut s = TcpStream::connect(gw.addr("http")).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: t\r\n\r\nGET /b HTTP/1.1\r\nho")
        .await
        .unwrap();
    let first = read_response(&mut s).await;
    assert!(first.contains("\"path\":\"/a\""), "{first}");
    let started = Instant::now();
    assert!(
        trickled_until_closed(&mut s, b"").await,
        "a trickled pipelined head must be cut"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

/// Write `head`, then `a`s, one byte at a time with pauses, until the server closes (`true`)
/// or 40 bytes past the head went unanswered (`false`).
async fn trickled_until_closed(s: &mut TcpStream, head: &[u8]) -> bool {
    for byte in head.iter().chain(std::iter::repeat_n(&b'a', 40)) {
        if s.write_all(&[*byte]).await.is_err()
            || closed_within(s, Duration::from_millis(100)).await
        {
            return true;
        }
    }
    false
}
