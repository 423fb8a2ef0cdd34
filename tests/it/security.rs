//! The hardened edge and the security policies, attacked the way a careful attacker would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::client::raw;
use crate::harness::{full, origin, simple_config, Gateway};

/// An origin that records every request it receives: (method, path, body).
async fn logging_origin() -> (
    std::net::SocketAddr,
    Arc<Mutex<Vec<(String, String, Bytes)>>>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = origin(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            log.lock().unwrap().push((
                parts.method.to_string(),
                parts.uri.path().to_string(),
                body,
            ));
            http::Response::new(full("origin says ok"))
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smuggling_corpus_never_gets_anything_past_the_gateway() {
    let (up, seen) = logging_origin().await;
    let gw = Gateway::start(&simple_config(&[up], ""));
    let addr = gw.addr("http");
    let corpus: &[(&str, &str)] = &[
        ("CL.TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("TE.CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2d\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n\r\n0\r\n\r\n"),
        ("TE.TE twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("TE list", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\nABCD"),
        ("TE space before colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("TE obs-fold", "POST / HTTP/1.1\r\nHost: a\r\nX: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\nABCD"),
        ("two Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nABCD"),
        ("differing Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nABCD"),
        ("Content-Length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nABCD"),
        ("Content-Length plus", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nABCD"),
        ("Content-Length hex", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n\r\nABCD"),
        ("no Host", "GET / HTTP/1.1\r\nX: y\r\n\r\n"),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("absolute-form mismatch", "GET http://evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n  two\r\n\r\n"),
        ("NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n"),
        ("CR in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n"),
        ("space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
        ("bad chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("chunk size overflow", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n"),
        ("encoded traversal", "GET /api/..%2Fadmin HTTP/1.1\r\nHost: a\r\n\r\n"),
    ];
    for (name, payload) in corpus {
        let before = seen.lock().unwrap().len();
        let text = raw(addr, payload.as_bytes(), Duration::from_millis(800)).await;
        let status = text.get(9..12).unwrap_or("");
        assert!(
            text.is_empty() || status.starts_with('4') || status == "501",
            "{name}: answered {:?}",
            text.lines().next()
        );
        let now = seen.lock().unwrap().clone();
        assert_eq!(
            now.len(),
            before,
            "{name}: something reached the origin: {:?}",
            &now[before..]
        );
    }
    // Bare LF line ends: parsed, and re-framed upstream with CRLF, nothing smuggled.
    let text = raw(
        addr,
        b"GET /bare-lf HTTP/1.1\nHost: a\nConnection: close\n\n",
        Duration::from_millis(800),
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    // A legitimate pipelined pair still works, proving the refusals above are not blanket.
    let text = raw(
        addr,
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nPOST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        Duration::from_millis(800),
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let paths: Vec<String> = seen.lock().unwrap().iter().map(|r| r.1.clone()).collect();
    assert!(!paths.iter().any(|p| p.contains("smuggled")), "{paths:?}");
    assert!(
        paths.contains(&"/one".to_string()) && paths.contains(&"/two".to_string()),
        "{paths:?}"
    );
}

/// An origin that answers with the `x-forwarded-for` it was sent.
async fn xff_origin() -> std::net::SocketAddr {
    origin(|req: http::Request<hyper::body::Incoming>| async move {
        let xff = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        http::Response::new(
            http_body_util::Full::new(Bytes::from(format!("xff={xff}")))
                .map_err(|e| match e {})
                .boxed(),
        )
    })
    .await
}

/// Connect to `to` from the loopback address `from` (127.0.0.0/8 is all ours).
async fn connect_from(from: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

async fn exchange(mut s: tokio::net::TcpStream, bytes: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    s.write_all(bytes).await.unwrap();
    crate::client::read_until_quiet(&mut s, Duration::from_millis(1500)).await
}

fn v2_header(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x21);
    let mut body = Vec::new();
    match (src, dst) {
        (std::net::SocketAddr::V4(s), std::net::SocketAddr::V4(d)) => {
            out.push(0x11);
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
        }
        (std::net::SocketAddr::V6(s), std::net::SocketAddr::V6(d)) => {
            out.push(0x21);
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("mixed families"),
    }
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    // A TLV, as AWS and GCP balancers add (PP2_TYPE_AUTHORITY): skipped.
    body.extend_from_slice(&[0x02, 0x00, 0x07]);
    body.extend_from_slice(b"a.b.com");
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn proxy_config(up: std::net::SocketAddr, trusted: &str, route_extra: &str) -> String {
    format!(
        r#"
[server]
trusted_proxies = [{trusted}]

[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "lb"
listen = "127.0.0.1:0"
proxy_protocol = true

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.u]
targets = [{{ addr = "{up}" }}]

[[routes]]
name = "r"
upstream = "u"
{route_extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_are_believed_only_from_trusted_proxies() {
    let up = xff_origin().await;
    let gw = Gateway::start(&proxy_config(
        up,
        r#""127.0.0.1/32""#,
        r#"deny_ips = ["203.0.113.0/24"]"#,
    ));
    let lb = gw.addr("lb");
    let get = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let with = |header: &[u8]| [header, get].concat();

    // v1 from the trusted balancer: the header's source is the client.
    let out = exchange(
        connect_from("127.0.0.1", lb).await,
        &with(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n"),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("xff=198.51.100.7"),
        "{out}"
    );
    // v2, IPv6 source, with a TLV.
    let v2 = v2_header(
        "[2001:db8::9]:5555".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    let out = exchange(connect_from("127.0.0.1", lb).await, &with(&v2)).await;
    assert!(out.contains("xff=2001:db8::9"), "{out}");
    // v2 LOCAL (the balancer's own health check): the TCP peer.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let out = exchange(connect_from("127.0.0.1", lb).await, &with(&local)).await;
    assert!(out.contains("xff=127.0.0.1"), "{out}");
    // The real client is what IP lists see.
    let out = exchange(
        connect_from("127.0.0.1", lb).await,
        &with(b"PROXY TCP4 203.0.113.5 127.0.0.1 40000 80\r\n"),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");

    // From a peer that is not a trusted proxy the header is read and ignored.
    let out = exchange(
        connect_from("127.0.0.2", lb).await,
        &with(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n"),
    )
    .await;
    assert!(out.contains("xff=127.0.0.2"), "{out}");

    // No header, or a bad one: closed without an answer.
    for bad in [
        &b""[..],
        b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 198.51.100.7 127.0.0.1 40000\r\n",
        b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80 and a very long tail that goes on and on past the limit of one hundred and seven bytes\r\n",
    ] {
        let out = exchange(connect_from("127.0.0.1", lb).await, &with(bad)).await;
        assert_eq!(out, "", "{:?}", String::from_utf8_lossy(bad));
    }
    // A listener without proxy_protocol takes a PROXY line as a bad request.
    let out = exchange(
        connect_from("127.0.0.1", gw.addr("http")).await,
        &with(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n"),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // curl's own v1 header (a real client), from a trusted source address.
    crate::harness::require_tool("curl", "curl");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--haproxy-protocol",
            "--interface",
            "127.0.0.1",
            &format!("http://{lb}/"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "xff=127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_with_send_proxy_v2_passes_the_real_client_through() {
    crate::harness::require_tool("haproxy", "haproxy");
    let up = xff_origin().await;
    let gw = Gateway::start(&proxy_config(
        up,
        r#""127.0.0.1/32""#,
        r#"allow_ips = ["127.0.0.7/32"]"#,
    ));
    let dir = tempfile::tempdir().unwrap();
    let front = crate::harness::closed_port();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  log stderr format short local0 warning\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\nfrontend f\n  bind {front}\n  default_backend b\n\nbackend b\n  server gw {} send-proxy-v2 source 127.0.0.1\n",
            gw.addr("lb")
        ),
    )
    .unwrap();
    let _haproxy = crate::harness::Proc(
        std::process::Command::new("haproxy")
            .args(["-f", cfg.to_str().unwrap(), "-db"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(front).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "haproxy did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let get = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let out = exchange(connect_from("127.0.0.7", front).await, get).await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("xff=127.0.0.7"),
        "{out}"
    );
    // Another client behind the same balancer is not on the allow list.
    let out = exchange(connect_from("127.0.0.8", front).await, get).await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_lists_see_the_real_client_and_cannot_be_spoofed() {
    let up = xff_origin().await;
    let gw = Gateway::start(&format!(
        r#"
[server]
trusted_proxies = ["127.0.0.4/32"]

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[[listeners]]
name = "v6"
listen = "[::1]:0"

[upstreams.u]
targets = [{{ addr = "{up}" }}]

[[routes]]
name = "r"
upstream = "u"
allow_ips = ["127.0.0.0/29", "::1/128", "198.51.100.0/24"]
deny_ips = ["127.0.0.3/32", "198.51.100.66/32"]
"#
    ));
    let addr = gw.addr("http");
    let req = |xff: &str| {
        format!("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{xff}\r\n").into_bytes()
    };
    let status = |out: &str| out.get(9..12).unwrap_or("").to_string();
    // Allowed and denied by the TCP peer.
    assert_eq!(
        status(&exchange(connect_from("127.0.0.2", addr).await, &req("")).await),
        "200"
    );
    assert_eq!(
        status(&exchange(connect_from("127.0.0.3", addr).await, &req("")).await),
        "403"
    );
    assert_eq!(
        status(&exchange(connect_from("127.0.0.9", addr).await, &req("")).await),
        "403"
    );
    // IPv6: ::1 is on the list.
    let v6 = tokio::net::TcpStream::connect(gw.addr("v6")).await.unwrap();
    assert_eq!(status(&exchange(v6, &req("")).await), "200");
    // An untrusted client cannot pick its address with X-Forwarded-For.
    let out = exchange(
        connect_from("127.0.0.9", addr).await,
        &req("X-Forwarded-For: 127.0.0.2\r\n"),
    )
    .await;
    assert_eq!(status(&out), "403", "{out}");
    let out = exchange(
        connect_from("127.0.0.2", addr).await,
        &req("X-Forwarded-For: 127.0.0.3\r\n"),
    )
    .await;
    assert_eq!(status(&out), "200", "{out}");
    assert!(
        out.contains("xff=127.0.0.2"),
        "the spoofed hop must be dropped: {out}"
    );
    // Through the trusted proxy, the last untrusted hop is the client.
    let out = exchange(
        connect_from("127.0.0.4", addr).await,
        &req("X-Forwarded-For: 10.9.9.9, 198.51.100.66\r\n"),
    )
    .await;
    assert_eq!(status(&out), "403", "{out}");
    let out = exchange(
        connect_from("127.0.0.4", addr).await,
        &req("X-Forwarded-For: 198.51.100.5\r\n"),
    )
    .await;
    assert_eq!(status(&out), "200", "{out}");
    assert!(out.contains("xff=198.51.100.5, 127.0.0.4"), "{out}");
}
