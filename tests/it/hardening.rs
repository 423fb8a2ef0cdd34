//! Hardening round two (SPEC §8.2): one normalised path, identity headers nobody can forge,
//! secrets never printed, only WebSocket upgrades, HTTP/2 WINDOW_UPDATE floods cut.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::client::{h2_send, raw, tls_connect};
use crate::harness::Gateway;

const SECRET: &str = "hardening-test-secret-0123456789abcdef";

type Seen = crate::harness::SeenLog;

async fn recording_origin() -> (std::net::SocketAddr, Seen) {
    crate::harness::recording_origin(|_| {}).await
}

fn token(sub: &str) -> String {
    crate::harness::hs256_token(SECRET.as_bytes(), sub)
}

/// A JWT-protected `/admin` beside an open `/` to the same upstream, over HTTP/1.1 and TLS
/// (HTTP/2); `/Docs` is a case-insensitive protected prefix.
fn protected_config(up: std::net::SocketAddr, extra_limits: &str) -> String {
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

[limits]
{extra_limits}

[jwt.users]
algorithms = ["HS256"]
secret_env = "HARDENING_SECRET"
claims_to_headers = {{ sub = "x-user-id" }}

[upstreams.app]
targets = [{{ addr = "{up}" }}]

[[routes]]
name = "admin"
match = {{ path_prefix = "/admin" }}
upstream = "app"
jwt = "users"

[[routes]]
name = "docs"
match = {{ path_prefix = "/docs", case_sensitive = false }}
upstream = "app"
jwt = "users"

[[routes]]
name = "open"
match = {{ path_prefix = "/" }}
upstream = "app"
"#
    )
}

#[derive(Debug, Clone, Copy)]
enum Want {
    /// 400, nothing forwarded.
    Refused,
    /// The protected route's 401 (or 400): never forwarded without a token.
    Protected,
    /// Forwarded by the open route with exactly this path.
    Forwarded(&'static str),
}

/// Every encoding trick we know, with what must happen to it.
const CORPUS: &[(&str, Want)] = &[
    ("/admin", Want::Protected),
    ("/admin/users", Want::Protected),
    ("/%61dmin", Want::Protected),
    ("/%61%64%6D%69%6E", Want::Protected),
    ("/%41dmin", Want::Forwarded("/Admin")),
    ("//admin", Want::Protected),
    ("///admin//x", Want::Protected),
    ("/admin;x", Want::Protected),
    ("/admin;jsessionid=1/x", Want::Protected),
    ("/;x/admin", Want::Protected),
    ("/open/..;/admin", Want::Protected),
    ("/open/..;x=y/admin", Want::Protected),
    ("/open/../admin", Want::Protected),
    ("/open/%2e%2e/admin", Want::Protected),
    ("/open/.%2E/admin", Want::Protected),
    ("/./admin", Want::Protected),
    ("/%2e/admin", Want::Protected),
    ("/\\admin", Want::Refused),
    ("/%5Cadmin", Want::Refused),
    ("/%5cadmin", Want::Refused),
    ("/open%2F..%2Fadmin", Want::Refused),
    ("/open/..%2fadmin", Want::Refused),
    ("/admin%00", Want::Refused),
    ("/admin%00.json", Want::Refused),
    ("/%c0%ae%c0%ae/admin", Want::Refused),
    ("/%e0%80%ae/admin", Want::Refused),
    ("/%ff/admin", Want::Refused),
    ("/admin%", Want::Refused),
    ("/admin%2", Want::Refused),
    ("/%zzadmin", Want::Refused),
    ("/../admin", Want::Refused),
    ("/open/../../admin", Want::Refused),
    ("/%2561dmin", Want::Forwarded("/%2561dmin")),
    ("/ADMIN", Want::Forwarded("/ADMIN")),
    ("/DOCS/x", Want::Protected),
    ("/dOcS", Want::Protected),
    ("/%64ocs", Want::Protected),
    ("/administrator", Want::Forwarded("/administrator")),
    ("/open/%7euser", Want::Forwarded("/open/~user")),
    ("/open/a%20b", Want::Forwarded("/open/a%20b")),
    ("/open/caf%c3%a9", Want::Forwarded("/open/caf%C3%A9")),
    ("/open;v=1/x", Want::Forwarded("/open;v=1/x")),
    ("/open/a%3bb", Want::Forwarded("/open/a%3Bb")),
    ("/open/./x/", Want::Forwarded("/open/x/")),
];

fn status_of(text: &str) -> u16 {
    text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_corpus_never_reaches_a_protected_route_without_a_token() {
    let (up, seen) = recording_origin().await;
    let gw = Gateway::start_with_env(&protected_config(up, ""), &[("HARDENING_SECRET", SECRET)]);
    let http = gw.addr("http");
    let https = gw.addr("https");
    for (path, want) in CORPUS {
        // HTTP/1.1, origin-form, written raw (no client library tidies the path).
        let before = seen.lock().unwrap().len();
        let text = raw(
            http,
            format!("GET {path}?q=%2e%2e HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_millis(600),
        )
        .await;
        check(path, *want, status_of(&text), &seen, before, "HTTP/1.1");

        // HTTP/1.1, absolute-form.
        let before = seen.lock().unwrap().len();
        let text = raw(
            http,
            format!("GET http://a{path}?q=%2e%2e HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_millis(600),
        )
        .await;
        check(
            path,
            *want,
            status_of(&text),
            &seen,
            before,
            "absolute-form",
        );

        // HTTP/2 over TLS: `:path` as given, where the client library can carry it at all
        // (what it cannot, h2 refuses on the server side too).
        let Ok(uri) = format!("https://localhost{path}?q=%2e%2e").parse::<http::Uri>() else {
            continue;
        };
        let before = seen.lock().unwrap().len();
        let tls = tls_connect(https, "localhost", &[b"h2"], rustls::ALL_VERSIONS).await;
        let req = http::Request::builder()
            .uri(uri)
            .version(http::Version::HTTP_2)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = h2_send(tls, req).await;
        check(path, *want, res.status.as_u16(), &seen, before, "HTTP/2");
    }
    // The same paths with a valid token reach the protected route, normalised.
    let before = seen.lock().unwrap().len();
    let text = raw(
        http,
        format!(
            "GET /open/..;/admin/x%2dy HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token("u1")
        )
        .as_bytes(),
        Duration::from_millis(600),
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
    let got = seen.lock().unwrap()[before].target.clone();
    assert_eq!(got, "/admin/x-y");
}

fn check(path: &str, want: Want, status: u16, seen: &Seen, before: usize, how: &str) {
    let now = seen.lock().unwrap();
    let forwarded: Vec<&String> = now[before..].iter().map(|r| &r.target).collect();
    match want {
        Want::Refused => {
            assert_eq!(status, 400, "{how} {path}: expected 400, got {status}");
            assert!(
                forwarded.is_empty(),
                "{how} {path}: forwarded {forwarded:?}"
            );
        }
        Want::Protected => {
            assert!(
                status == 401 || status == 400,
                "{how} {path}: expected 401 or 400, got {status}"
            );
            assert!(
                forwarded.is_empty(),
                "{how} {path}: forwarded {forwarded:?}"
            );
        }
        Want::Forwarded(p) => {
            assert_eq!(status, 200, "{how} {path}: expected 200, got {status}");
            assert_eq!(
                forwarded,
                vec![&format!("{p}?q=%2e%2e")],
                "{how} {path}: the upstream must see the normalised path, the query untouched"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_can_be_kept_but_never_become_separators() {
    let (up, seen) = recording_origin().await;
    let gw = Gateway::start_with_env(
        &protected_config(up, r#"encoded_slashes = "keep""#),
        &[("HARDENING_SECRET", SECRET)],
    );
    let http = gw.addr("http");
    for (path, status, fwd) in [
        (
            "/repos/group%2fproject",
            200,
            Some("/repos/group%2Fproject"),
        ),
        ("/admin%2Fx", 200, Some("/admin%2Fx")),
        ("/open/..%2Fadmin", 400, None),
        ("/open/%2e%2e%5Cadmin", 400, None),
    ] {
        let before = seen.lock().unwrap().len();
        let text = raw(
            http,
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_millis(600),
        )
        .await;
        assert_eq!(status_of(&text), status, "{path}: {text}");
        let now = seen.lock().unwrap();
        let got: Vec<&str> = now[before..].iter().map(|r| r.target.as_str()).collect();
        assert_eq!(got, fwd.into_iter().collect::<Vec<_>>(), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_cannot_be_forged_or_removed_with_connection() {
    let (up, seen) = recording_origin().await;
    let gw = Gateway::start_with_env(&protected_config(up, ""), &[("HARDENING_SECRET", SECRET)]);
    let http = gw.addr("http");
    let https = gw.addr("https");
    let header = |i: usize, name: &str| -> Option<String> {
        seen.lock().unwrap()[i]
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    // Forged on a route without any policy: removed, all of them.
    let before = seen.lock().unwrap().len();
    let text = raw(
        http,
        b"GET /open HTTP/1.1\r\nHost: a\r\nX-User-Id: admin\r\nX-Api-Key-Name: ops\r\nX-Client-Cert-Subject: CN=root\r\nX-Client-Cert-Sha256: 00\r\nConnection: close\r\n\r\n",
        Duration::from_millis(600),
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
    for h in [
        "x-user-id",
        "x-api-key-name",
        "x-client-cert-subject",
        "x-client-cert-sha256",
    ] {
        assert_eq!(header(before, h), None, "forged {h} reached the upstream");
    }
    // With a valid token, `Connection: x-user-id` cannot strip what the gateway set, nor the
    // request id, nor trace context.
    let before = seen.lock().unwrap().len();
    let text = raw(
        http,
        format!(
            "GET /admin/me HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nX-User-Id: forged\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nConnection: x-user-id, X-Request-Id, traceparent, close\r\n\r\n",
            token("alice")
        )
        .as_bytes(),
        Duration::from_millis(600),
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
    assert_eq!(header(before, "x-user-id").as_deref(), Some("alice"));
    assert!(header(before, "x-request-id").is_some());
    assert!(header(before, "traceparent").is_some());
    // HTTP/2: forged copies go too.
    let before = seen.lock().unwrap().len();
    let tls = tls_connect(https, "localhost", &[b"h2"], rustls::ALL_VERSIONS).await;
    let req = http::Request::builder()
        .uri("https://localhost/open/h2")
        .version(http::Version::HTTP_2)
        .header("x-user-id", "admin")
        .header("x-api-key-name", "ops")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = h2_send(tls, req).await;
    assert_eq!(res.status, 200);
    assert_eq!(header(before, "x-user-id"), None);
    assert_eq!(header(before, "x-api-key-name"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_are_tunnelled_and_h2c_is_never_forwarded() {
    let (up, seen) = recording_origin().await;
    let gw = Gateway::start(&crate::harness::simple_config(&[up], "websocket = true"));
    let http = gw.addr("http");
    let before = seen.lock().unwrap().len();
    let text = raw(
        http,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        Duration::from_millis(600),
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
    let now = seen.lock().unwrap();
    let h = &now[before].headers;
    assert!(h.get("upgrade").is_none(), "Upgrade: h2c was forwarded");
    assert!(
        h.get("http2-settings").is_none(),
        "HTTP2-Settings was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_never_prints_an_environment_value() {
    let b = crate::harness::backend("b").await;
    let secret = "s3cr3t-value-that-must-not-leak";
    let gw = Gateway::start_with_env(
        &crate::harness::simple_config(&[b.addr], ""),
        &[("JWT_SECRET", secret)],
    );
    let admin = gw.admin();
    let candidate = format!(
        "[server]\nnode_id_env = \"JWT_SECRET\"\n\n[[listeners]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\n\n[redis]\nurl_env = \"JWT_SECRET\"\n\n[upstreams.app]\ntargets = [{{ addr = \"{}\" }}]\n\n[[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n",
        b.addr
    );
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{admin}/admin/reload?dry_run=true"))
        .header("host", "admin")
        .body(Full::new(Bytes::from(candidate)))
        .unwrap();
    let res = crate::client::send(admin, req).await;
    let body = String::from_utf8_lossy(&res.body).to_string();
    assert!(
        body.contains("JWT_SECRET"),
        "the error names the variable: {body}"
    );
    assert!(!body.contains(secret), "the secret leaked: {body}");
    assert!(
        !gw.lines.all().iter().any(|l| l.contains(secret)),
        "the secret reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_ambiguous_request_closes_its_connection() {
    let (up, seen) = recording_origin().await;
    let gw = Gateway::start(&crate::harness::simple_config(&[up], ""));
    // The second request rides in the first's body: after the 400 nothing more is read.
    let text = raw(
        gw.addr("http"),
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_millis(800),
    )
    .await;
    assert_eq!(status_of(&text), 400, "{text}");
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "a second answer: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_update_flood_ends_in_goaway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = crate::harness::backend("b").await;
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "https"
listen = "127.0.0.1:0"
tls = {{ self_signed = true }}

[upstreams.app]
targets = [{{ addr = "{}" }}]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "app"
"#,
        b.addr
    ));
    let mut tls = tls_connect(
        gw.addr("https"),
        "localhost",
        &[b"h2"],
        rustls::ALL_VERSIONS,
    )
    .await;
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    tls.write_all(&wire).await.unwrap();
    // 20,000 WINDOW_UPDATE frames on the connection, no request: nothing to send back.
    let wu = [0u8, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let batch: Vec<u8> = wu.repeat(500);
    let mut sent = 0;
    for _ in 0..40 {
        if tls.write_all(&batch).await.is_err() {
            break;
        }
        sent += 500;
    }
    // Read what came back until the connection ends: a GOAWAY with ENHANCE_YOUR_CALM.
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let mut i = 0;
    let mut goaway = None;
    while i + 9 <= got.len() {
        let len =
            (usize::from(got[i]) << 16) | (usize::from(got[i + 1]) << 8) | usize::from(got[i + 2]);
        if got[i + 3] == 0x7 && i + 9 + 8 <= got.len() {
            goaway = Some(u32::from_be_bytes([
                got[i + 13],
                got[i + 14],
                got[i + 15],
                got[i + 16],
            ]));
        }
        i += 9 + len;
    }
    assert_eq!(
        goaway,
        Some(0xb),
        "no GOAWAY ENHANCE_YOUR_CALM after {sent} WINDOW_UPDATEs"
    );
    let text = gw.metrics_text().await;
    assert!(
        text.contains(
            "gateway_h2_connections_closed_total{listener=\"https\",reason=\"window_update_flood\"} 1"
        ),
        "{}",
        text.lines().filter(|l| l.contains("h2_connections_closed")).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_paths_that_are_not_normal_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        "[[listeners]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\n\n[upstreams.app]\ntargets = [{ addr = \"127.0.0.1:9\" }]\n\n[[routes]]\nname = \"a\"\nmatch = { path_prefix = \"/%61dmin\" }\nupstream = \"app\"\n",
    )
    .unwrap();
    let (code, _out, err) =
        crate::harness::gateway_cmd(&["check", "-c", cfg.to_str().unwrap()], dir.path());
    assert_ne!(code, 0);
    assert!(err.contains(":10:"), "FILE:LINE:COL expected: {err}");
    assert!(err.contains("not a normalised path"), "{err}");
    assert!(
        err.contains("/admin"),
        "the hint names the normal form: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_uploads_hold_no_upstream_connection() {
    use tokio::io::AsyncWriteExt;
    let b = crate::harness::backend("b").await;
    let gw = Gateway::start(&crate::harness::simple_config(&[b.addr], ""));
    let http = gw.addr("http");
    // 200 clients announce 1,000-byte bodies and send 10 bytes of them.
    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789")
            .await
            .unwrap();
        clients.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        b.state.connections(),
        0,
        "a body still arriving took an upstream connection"
    );
    // One of them finishes: it is served.
    let mut s = clients.pop().unwrap();
    s.write_all(&[b'x'; 990]).await.unwrap();
    let text = crate::client::read_until_quiet(&mut s, Duration::from_millis(500)).await;
    assert_eq!(status_of(&text), 200, "{text}");
    assert_eq!(b.state.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_pauses_past_body_timeout_gets_408() {
    use tokio::io::AsyncWriteExt;
    let b = crate::harness::backend("b").await;
    let gw = Gateway::start(&crate::harness::simple_config(&[b.addr], "").replace(
        "[upstreams.app]",
        "[limits]\nbody_timeout = \"1s\"\n\n[upstreams.app]",
    ));
    let http = gw.addr("http");
    // Small (received whole) and streamed (chunked) bodies alike.
    for head in [
        "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let text = crate::client::read_until_quiet(&mut s, Duration::from_secs(3)).await;
        assert_eq!(status_of(&text), 408, "{head:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffering_past_max_buffered_bytes_gets_503_with_retry_after() {
    use tokio::io::AsyncWriteExt;
    let b = crate::harness::backend("b").await;
    let gw = Gateway::start(&crate::harness::simple_config(&[b.addr], "").replace(
        "[upstreams.app]",
        "[limits]\nmax_buffered_bytes = \"100KiB\"\n\n[upstreams.app]",
    ));
    let http = gw.addr("http");
    // Two 60 KiB bodies held at once (the first still arriving) pass 100 KiB.
    let mut first = tokio::net::TcpStream::connect(http).await.unwrap();
    first
        .write_all(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 61440\r\n\r\nabc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = vec![b'y'; 61440];
    let mut req =
        b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 61440\r\nConnection: close\r\n\r\n"
            .to_vec();
    req.extend_from_slice(&body);
    let text = raw(http, &req, Duration::from_millis(800)).await;
    assert_eq!(status_of(&text), 503, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert_eq!(b.state.requests(), 0);
    let rejected = gw.metric("gateway_buffer_rejected_total ").await;
    assert_eq!(rejected, 1.0);
    let held = gw.metric("gateway_buffered_bytes ").await;
    assert_eq!(held, 61440.0, "the first body's buffer is counted");
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.metric("gateway_buffered_bytes ").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_count_against_max_connections() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let origin = crate::reload::ws_echo().await;
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[limits]
max_connections = 2

[upstreams.ws]
targets = [{{ addr = "{origin}" }}]

[[routes]]
name = "ws"
match = {{ path_prefix = "/ws" }}
upstream = "ws"
websocket = true
"#
    ));
    let url = format!("ws://{}/ws", gw.addr("http"));
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        {
            Ok(Ok((ws, _))) => open.push(ws),
            _ => refused += 1,
        }
    }
    assert_eq!(open.len(), 2, "tunnels past max_connections were opened");
    assert_eq!(refused, 98);
    // The two that are open work.
    for ws in &mut open {
        ws.send(Message::text("hi")).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), "echo: hi");
    }
    // Closing one frees its place.
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tokio_tungstenite::connect_async(&url).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_removes_the_series_of_what_it_removed() {
    let a = crate::harness::backend("a").await;
    let b = crate::harness::backend("b").await;
    let two_routes = |targets: &str, extra_route: &str| {
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.app]
targets = [{targets}]

[[routes]]
name = "keep"
match = {{ path_prefix = "/keep" }}
upstream = "app"
{extra_route}
"#
        )
    };
    let gw = Gateway::start(&two_routes(
        &format!(
            "{{ addr = \"{}\", id = \"t-a\" }}, {{ addr = \"{}\", id = \"t-b\" }}",
            a.addr, b.addr
        ),
        "\n[[routes]]\nname = \"gone\"\nmatch = { path_prefix = \"/gone\" }\nupstream = \"app\"\n",
    ));
    crate::client::get(gw.addr("http"), "/gone").await;
    crate::client::get(gw.addr("http"), "/keep").await;
    let text = gw.metrics_text().await;
    assert!(text.contains("route=\"gone\""));
    assert!(text.contains("target=\"t-b\""));
    gw.write_config(&two_routes(
        &format!("{{ addr = \"{}\", id = \"t-a\" }}", a.addr),
        "",
    ));
    gw.sighup();
    gw.lines
        .wait_for(Duration::from_secs(10), |l| l.contains("config reloaded"))
        .expect("reloaded");
    let text = gw.metrics_text().await;
    assert!(
        !text.contains("route=\"gone\""),
        "the removed route's series stay"
    );
    assert!(
        !text.contains("target=\"t-b\""),
        "the removed target's series stay"
    );
    assert!(text.contains("route=\"keep\""));
    assert!(text.contains("target=\"t-a\""));
}
