//! Everyday route policies (SPEC §8.4): request and response header rules, CORS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;

use crate::client::{request, send};
use crate::harness::{full, gateway_cmd, origin, Gateway};

type Seen = crate::harness::SeenLog;

/// An origin that records what it receives and answers with CORS headers of its own (which
/// the gateway must replace on CORS routes) and a `server` header.
async fn recording_origin() -> (std::net::SocketAddr, Seen) {
    crate::harness::recording_origin(|h| {
        h.insert("server", "origin/1.0".parse().unwrap());
        h.insert(
            "access-control-allow-origin",
            "https://upstream-says.example".parse().unwrap(),
        );
    })
    .await
}

fn config(up: std::net::SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[jwt.users]
algorithms = ["HS256"]
secret_env = "ROUTE_POLICY_SECRET"

[cors.web]
allow_origins = ["https://app.example.com"]
allow_methods = ["GET", "PUT"]
allow_headers = ["x-token", "content-type"]
expose_headers = ["x-trace"]
allow_credentials = true
max_age = "5m"

[upstreams.app]
targets = [{{ addr = "{up}" }}]

[[routes]]
name = "api"
match = {{ path_prefix = "/api", methods = ["GET", "PUT"] }}
upstream = "app"
cors = "web"
request_headers = {{ set = {{ "x-env" = "prod" }}, add = {{ "x-tag" = "gw" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ "strict-transport-security" = "max-age=31536000" }}, remove = ["server"] }}

[[routes]]
name = "private"
match = {{ path_prefix = "/private" }}
upstream = "app"
cors = "web"
jwt = "users"
response_headers = {{ set = {{ "strict-transport-security" = "max-age=31536000" }} }}
"#
    )
}

fn start(up: std::net::SocketAddr) -> Gateway {
    Gateway::start_with_env(
        &config(up),
        &[(
            "ROUTE_POLICY_SECRET",
            "route-policy-secret-0123456789abcdef",
        )],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_shape_requests_and_every_response_of_the_route() {
    let (up, seen) = recording_origin().await;
    let gw = start(up);
    let addr = gw.addr("http");
    let res = send(
        addr,
        request(
            "GET",
            "/api/x",
            &[("x-debug", "1"), ("x-env", "dev"), ("x-tag", "client")],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(res.status, 200);
    let h = seen.lock().unwrap()[0].headers.clone();
    assert_eq!(h["x-env"], "prod", "set replaces");
    let tags: Vec<&str> = h
        .get_all("x-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["client", "gw"], "add appends");
    assert!(h.get("x-debug").is_none(), "remove deletes");
    assert_eq!(res.header("strict-transport-security"), "max-age=31536000");
    assert!(
        res.headers.get("server").is_none(),
        "the upstream's server header is removed"
    );
    // The gateway's own answers on the route get them too.
    let res = send(addr, request("GET", "/private/x", &[], Bytes::new())).await;
    assert_eq!(res.status, 401);
    assert_eq!(res.header("strict-transport-security"), "max-age=31536000");
    // /admin/explain lists the route's policies in the order they run.
    let v = crate::client::get(gw.admin(), "/admin/explain?path=/private/x")
        .await
        .json();
    assert_eq!(
        v["order"],
        serde_json::json!([
            "request_id",
            "cors:web",
            "body_limit",
            "jwt:users",
            "balance",
            "upstream",
            "response_headers"
        ]),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_never_forwarded_and_responses_decorated() {
    let (up, seen) = recording_origin().await;
    let gw = start(up);
    let addr = gw.addr("http");
    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        let mut h = vec![
            ("origin", origin),
            ("access-control-request-method", method),
        ];
        if !headers.is_empty() {
            h.push(("access-control-request-headers", headers));
        }
        send(addr, request("OPTIONS", "/api/items", &h, Bytes::new()))
    };
    // Allowed: 204 with the policy; matched as a PUT (the route takes GET and PUT, not OPTIONS).
    let res = preflight("https://app.example.com", "PUT", "X-Token, content-type").await;
    assert_eq!(res.status, 204, "{:?}", res.body);
    assert_eq!(
        res.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert_eq!(res.header("access-control-allow-methods"), "GET, PUT");
    assert_eq!(
        res.header("access-control-allow-headers"),
        "x-token, content-type"
    );
    assert_eq!(res.header("access-control-max-age"), "300");
    assert_eq!(res.header("access-control-allow-credentials"), "true");
    assert_eq!(res.header("vary"), "Origin");
    // Refused: another origin, a method or a header not allowed.
    for (o, m, h) in [
        ("https://evil.example", "PUT", ""),
        ("https://app.example.com", "GET", "x-secret"),
    ] {
        let res = preflight(o, m, h).await;
        assert_eq!(res.status, 403, "{o} {m} {h}");
        assert!(res.headers.get("access-control-allow-origin").is_none());
    }
    assert!(seen.lock().unwrap().is_empty(), "a preflight was forwarded");
    // An actual request from an allowed origin: the upstream's CORS headers are replaced.
    let res = send(
        addr,
        request(
            "GET",
            "/api/items",
            &[("origin", "https://app.example.com")],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert_eq!(res.header("access-control-expose-headers"), "x-trace");
    assert_eq!(res.header("access-control-allow-credentials"), "true");
    assert!(res.header("vary").contains("Origin"));
    // From another origin: no allow headers, the upstream's removed, Vary still there.
    let res = send(
        addr,
        request(
            "GET",
            "/api/items",
            &[("origin", "https://evil.example")],
            Bytes::new(),
        ),
    )
    .await;
    assert!(res.headers.get("access-control-allow-origin").is_none());
    assert!(res.header("vary").contains("Origin"));
    // The gateway's own errors are decorated too (a browser can read the 401).
    let res = send(
        addr,
        request(
            "GET",
            "/private/x",
            &[("origin", "https://app.example.com")],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(res.status, 401);
    assert_eq!(
        res.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    let text = gw.metrics_text().await;
    assert!(
        text.contains("gateway_cors_preflights_total{outcome=\"allowed\",route=\"api\"} 1"),
        "{text}"
    );
    assert!(text.contains("gateway_cors_preflights_total{outcome=\"refused\",route=\"api\"} 2"));
    // The status page's data shows the refusals per route.
    let status = crate::client::get(gw.admin(), "/admin/status").await.json();
    let api = status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "api")
        .unwrap()
        .clone();
    assert_eq!(api["cors_refused_total"], 2, "{api}");
    assert!(api["policies"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("cors:web")));
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[test]
fn check_refuses_dangerous_header_rules_and_star_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("g.toml");
    for (route_extra, tables, want) in [
        (
            "request_headers = { set = { \"x-request-id\" = \"1\" } }",
            "",
            "may not name \"x-request-id\"",
        ),
        ("request_headers = { remove = [\"Host\"] }", "", "may not name \"host\""),
        (
            "response_headers = { set = { \"transfer-encoding\" = \"chunked\" } }",
            "",
            "may not name \"transfer-encoding\"",
        ),
        (
            "request_headers = { set = { \"x-user\" = \"a\" } }",
            "[jwt.j]\nalgorithms = [\"HS256\"]\nsecret_env = \"NOPE\"\nclaims_to_headers = { sub = \"x-user\" }\n",
            "may not name \"x-user\"",
        ),
        (
            "cors = \"open\"",
            "[cors.open]\nallow_origins = [\"*\"]\nallow_credentials = true\n",
            "allow_credentials = true with allow_origins = [\"*\"]",
        ),
        ("cors = \"missing\"", "", "cors policy \"missing\" is not defined"),
    ] {
        std::fs::write(
            &cfg,
            format!(
                "[[listeners]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\n\n{tables}\n[upstreams.app]\ntargets = [{{ addr = \"127.0.0.1:9\" }}]\n\n[[routes]]\nname = \"r\"\nupstream = \"app\"\n{route_extra}\n"
            ),
        )
        .unwrap();
        let (code, out, err) = gateway_cmd(&["check", "-c", cfg.to_str().unwrap()], dir.path());
        assert_ne!(code, 0, "{route_extra}: {out}");
        assert!(err.contains(want), "{route_extra}: {err}");
        assert!(err.contains("g.toml:"), "FILE:LINE:COL: {err}");
    }
}

/// A listener with `client_auth` (certificates from the test CA of `upstream_reach::pki`),
/// routes with and without `client_cert = "required"`, and curl (OpenSSL) as the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified_and_their_identity_goes_upstream() {
    crate::harness::require_package("curl");
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::upstream_reach::pki(dir.path());
    let (up, seen) = recording_origin().await;
    let start = |required: bool| {
        Gateway::start(&format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "mtls"
listen = "127.0.0.1:0"
tls = {{ certs = [{{ cert = "{cert}", key = "{key}" }}], client_auth = {{ ca_file = "{ca}", required = {required} }} }}

[upstreams.app]
targets = [{{ addr = "{up}" }}]
hash_on = "header.x-client-cert-sha256"
balancer = "consistent_hash"
on_missing_key = "random"

[[routes]]
name = "partners"
match = {{ path_prefix = "/partners" }}
upstream = "app"
client_cert = "required"

[[routes]]
name = "open"
upstream = "app"
"#,
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
            ca = pki.ca.display(),
        ))
    };
    let curl = |addr: std::net::SocketAddr, path: &str, with_cert: bool| {
        let mut c = std::process::Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&pki.ca)
            .arg(format!("https://localhost:{}{path}", addr.port()));
        if with_cert {
            c.arg("--cert")
                .arg(&pki.client_cert)
                .arg("--key")
                .arg(&pki.client_key);
        }
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // required = true: no certificate, no handshake.
    let gw = start(true);
    let addr = gw.addr("mtls");
    assert_eq!(
        curl(addr, "/open", false),
        "000",
        "the handshake must fail without a certificate"
    );
    assert_eq!(curl(addr, "/partners/x", true), "200");
    let h = seen.lock().unwrap().last().unwrap().headers.clone();
    assert_eq!(h["x-client-cert-subject"], "CN=gateway-client");
    let der = std::fs::read_to_string(&pki.client_cert).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(der.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    let want: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(h["x-client-cert-sha256"], want.as_str());
    // required = false: in without one, but routes that require it answer 403.
    let gw = start(false);
    let addr = gw.addr("mtls");
    assert_eq!(curl(addr, "/open", false), "200");
    assert_eq!(curl(addr, "/partners/x", false), "403");
    assert_eq!(curl(addr, "/partners/x", true), "200");
    // A certificate from another CA fails the handshake in both modes.
    let other = tempfile::tempdir().unwrap();
    let stranger = crate::upstream_reach::pki(other.path());
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&stranger.client_cert)
        .arg("--key")
        .arg(&stranger.client_key)
        .arg(format!("https://localhost:{}/open", addr.port()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000");
}

/// An origin with bodies to compress (or not): `/json` 10 KiB of JSON with a strong ETag,
/// `/sse` an event stream, `/no-transform`, `/encoded` already gzip, `/small` 100 bytes.
async fn compressible_origin() -> std::net::SocketAddr {
    origin(|req: http::Request<hyper::body::Incoming>| async move {
        let json: String = format!(
            "[{}]",
            (0..200)
                .map(|i| format!("{{\"id\":{i},\"name\":\"item number {i}\"}}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let (ct, body, extra): (&str, String, Option<(&str, &str)>) = match req.uri().path() {
            "/json" => ("application/json", json, Some(("etag", "\"v1\""))),
            "/sse" => ("text/event-stream", json, None),
            "/no-transform" => (
                "application/json",
                json,
                Some(("cache-control", "no-transform")),
            ),
            "/encoded" => ("application/json", json, Some(("content-encoding", "gzip"))),
            "/small" => ("application/json", "x".repeat(100), None),
            _ => ("image/png", json, None),
        };
        let mut res = http::Response::new(
            http_body_util::Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed(),
        );
        res.headers_mut()
            .insert("content-type", ct.parse().unwrap());
        if let Some((k, v)) = extra {
            res.headers_mut().insert(k, v.parse().unwrap());
        }
        res
    })
    .await
}

/// curl (its own gzip, brotli and zstd decoders): (status, headers lower-cased, decoded body).
fn curl_get(url: &str, accept: &str, extra: &[&str]) -> (String, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("h.txt");
    let out = std::process::Command::new("curl")
        .args(["-s", "--compressed", "-D"])
        .arg(&headers)
        .args(["-H", &format!("accept-encoding: {accept}")])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let h = std::fs::read_to_string(&headers)
        .unwrap_or_default()
        .to_ascii_lowercase();
    (h.lines().next().unwrap_or("").to_string(), h, out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_compressed_by_accept_encoding_with_the_spec_exclusions() {
    use http_body_util::BodyExt;
    crate::harness::require_package("curl");
    let up = compressible_origin().await;
    let gw = Gateway::start(&crate::harness::simple_config(&[up], "compress = true"));
    let base = format!("http://{}", gw.addr("http"));
    let plain = {
        let (_, _, body) = curl_get(&format!("{base}/json"), "identity", &[]);
        body
    };
    assert!(plain.len() > 5000);
    for (accept, want) in [
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip, br", "br"),
        ("gzip;q=1, br;q=0.5", "gzip"),
    ] {
        let (status, h, body) = curl_get(&format!("{base}/json"), accept, &[]);
        assert!(status.contains("200"), "{status}");
        assert!(
            h.contains(&format!("content-encoding: {want}")),
            "{accept}: {h}"
        );
        assert!(!h.contains("content-length"), "{accept}: {h}");
        assert!(h.contains("vary: accept-encoding"), "{h}");
        assert!(
            h.contains("etag: w/\"v1\""),
            "the strong ETag is made weak: {h}"
        );
        assert_eq!(body, plain, "{accept}: curl decodes the original bytes");
    }
    // Not compressed: no acceptable coding, a stream type, no-transform, already encoded,
    // small, not a compressible type, HEAD, a Range request.
    for (path, accept, extra, vary) in [
        ("/json", "identity", vec![], true),
        ("/sse", "gzip", vec![], false),
        ("/no-transform", "gzip", vec![], true),
        ("/encoded", "gzip", vec![], false),
        ("/small", "gzip", vec![], false),
        ("/image", "gzip", vec![], false),
        ("/json", "gzip", vec!["-I"], false),
        ("/json", "gzip", vec!["-H", "range: bytes=0-10"], false),
    ] {
        let (_, h, _) = curl_get(&format!("{base}{path}"), accept, &extra);
        let encoded_by_us = h.contains("content-encoding: gzip") && path != "/encoded";
        assert!(!encoded_by_us, "{path} {accept} {extra:?}: {h}");
        assert_eq!(
            h.contains("vary: accept-encoding"),
            vary,
            "{path} {extra:?}: {h}"
        );
    }
    // Streamed: a hyper client reads the gzip stream frame by frame.
    let res = crate::client::send(
        gw.addr("http"),
        crate::client::request("GET", "/json", &[("accept-encoding", "gzip")], Bytes::new()),
    )
    .await;
    assert_eq!(res.header("content-encoding"), "gzip");
    assert!(
        res.body.len() < plain.len() / 3,
        "{} compressed bytes",
        res.body.len()
    );
    let _ = http_body_util::Full::new(res.body).collect().await;
}

/// A forward-auth service: `authorization: Bearer good` → 200 with `x-user: alice`;
/// `Bearer redirect` → 302 to the login page; `Bearer boom` → 500; `Bearer slow` → waits 2 s;
/// anything else → 401 with a body and `WWW-Authenticate`. Counts what it was asked and
/// records the forwarded headers.
async fn auth_service() -> (std::net::SocketAddr, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = origin(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(crate::harness::Seen {
                method: req.method().to_string(),
                target: req.uri().to_string(),
                headers: req.headers().clone(),
            });
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let mut res = http::Response::new(full(""));
            match auth.as_str() {
                "Bearer good" => {
                    res.headers_mut().insert("x-user", "alice".parse().unwrap());
                }
                "Bearer redirect" => {
                    *res.status_mut() = http::StatusCode::FOUND;
                    res.headers_mut()
                        .insert("location", "https://sso.example/login".parse().unwrap());
                    res.headers_mut()
                        .insert("set-cookie", "state=xyz; Path=/".parse().unwrap());
                }
                "Bearer boom" => *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR,
                "Bearer slow" => tokio::time::sleep(Duration::from_secs(2)).await,
                _ => {
                    res = http::Response::new(full("{\"error\":\"sign in first\"}"));
                    *res.status_mut() = http::StatusCode::UNAUTHORIZED;
                    res.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    res.headers_mut()
                        .insert("www-authenticate", "Bearer realm=\"sso\"".parse().unwrap());
                }
            }
            res
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_asks_the_auth_service_and_follows_its_answer() {
    let (up, upstream_seen) = recording_origin().await;
    let (auth, auth_seen) = auth_service().await;
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[forward_auth.sso]
url = "http://{auth}/verify?app=demo"
timeout = "500ms"
copy_headers = ["x-user"]

[forward_auth.lenient]
url = "http://{auth}/verify"
timeout = "500ms"
on_error = "allow"
cache = "30s"

[upstreams.app]
targets = [{{ addr = "{up}" }}]

[[routes]]
name = "strict"
match = {{ path_prefix = "/strict" }}
upstream = "app"
forward_auth = "sso"

[[routes]]
name = "lenient"
upstream = "app"
forward_auth = "lenient"
"#
    ));
    let addr = gw.addr("http");
    let ask = |path: &'static str, auth: &'static str, extra: Vec<(&'static str, &'static str)>| {
        let mut h = vec![("authorization", auth)];
        h.extend(extra);
        send(addr, request("GET", path, &h, Bytes::new()))
    };
    // 2xx: on to the upstream, with the copied header (a forged one is gone).
    let res = ask(
        "/strict/orders?id=7",
        "Bearer good",
        vec![("x-user", "mallory")],
    )
    .await;
    assert_eq!(res.status, 200);
    let h = upstream_seen
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .headers
        .clone();
    assert_eq!(h["x-user"], "alice");
    let asked = auth_seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(asked.method, "GET");
    assert_eq!(asked.headers["x-forwarded-method"], "GET");
    assert_eq!(asked.headers["x-forwarded-uri"], "/strict/orders?id=7");
    assert_eq!(asked.headers["x-forwarded-proto"], "http");
    assert_eq!(asked.headers["x-forwarded-for"], "127.0.0.1");
    assert!(asked.headers.get("x-request-id").is_some());
    // 4xx: the auth service's answer, as it gave it; the upstream is not called.
    let before = upstream_seen.lock().unwrap().len();
    let res = ask("/strict/x", "Bearer nope", vec![]).await;
    assert_eq!(res.status, 401);
    assert_eq!(res.header("www-authenticate"), "Bearer realm=\"sso\"");
    assert_eq!(
        res.body,
        Bytes::from_static(b"{\"error\":\"sign in first\"}")
    );
    // 3xx: the redirect and its cookie.
    let res = ask("/strict/x", "Bearer redirect", vec![]).await;
    assert_eq!(res.status, 302);
    assert_eq!(res.header("location"), "https://sso.example/login");
    assert_eq!(res.header("set-cookie"), "state=xyz; Path=/");
    // 5xx and timeouts: on_error = deny → 503.
    assert_eq!(ask("/strict/x", "Bearer boom", vec![]).await.status, 503);
    assert_eq!(ask("/strict/x", "Bearer slow", vec![]).await.status, 503);
    assert_eq!(
        upstream_seen.lock().unwrap().len(),
        before,
        "a refused request reached the upstream"
    );
    // on_error = allow lets the request on when the service fails.
    assert_eq!(ask("/lenient", "Bearer boom", vec![]).await.status, 200);
    // The verdict cache: a second identical request is not asked again.
    let n = auth_seen.lock().unwrap().len();
    assert_eq!(ask("/lenient/c", "Bearer good", vec![]).await.status, 200);
    assert_eq!(ask("/lenient/c", "Bearer good", vec![]).await.status, 200);
    assert_eq!(
        auth_seen.lock().unwrap().len(),
        n + 1,
        "the cached verdict was asked again"
    );
    let text = gw.metrics_text().await;
    let status = crate::client::get(gw.admin(), "/admin/status").await.json();
    let strict = status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "strict")
        .unwrap()
        .clone();
    assert_eq!(strict["forward_auth_denied_total"], 2, "{strict}");
    for line in [
        "gateway_forward_auth_total{outcome=\"allow\",policy=\"sso\",route=\"strict\"} 1",
        "gateway_forward_auth_total{outcome=\"deny\",policy=\"sso\",route=\"strict\"} 2",
        "gateway_forward_auth_total{outcome=\"error\",policy=\"sso\",route=\"strict\"} 2",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_response_is_compressed_as_it_streams_in_flat_memory() {
    use http_body_util::BodyExt;
    // An origin streaming 100 MiB of JSON-ish text in 64 KiB chunks, no Content-Length.
    let up = origin(|_req: http::Request<hyper::body::Incoming>| async move {
        let chunk = Bytes::from(
            "{\"id\":12345,\"name\":\"a streamed record\",\"ok\":true},".repeat(64 * 1024 / 50),
        );
        let frames =
            futures_util::stream::iter((0..(100 * 1024 * 1024 / chunk.len())).map(move |_| {
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))
            }));
        let mut res = http::Response::new(http_body_util::StreamBody::new(frames).boxed());
        res.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        res
    })
    .await;
    let gw = Gateway::start(&crate::harness::simple_config(&[up], "compress = true"));
    let req = request("GET", "/big", &[("accept-encoding", "zstd")], Bytes::new());
    let stream = tokio::net::TcpStream::connect(gw.addr("http"))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.headers()["content-encoding"], "zstd");
    let mut body = res.into_body();
    let mut compressed = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            compressed += d.len();
        }
    }
    let rss_mib = gw.peak_rss_kib() / 1024;
    eprintln!(
        "100 MiB streamed through zstd: {compressed} bytes out, gateway peak RSS {rss_mib} MiB"
    );
    assert!(compressed > 0 && compressed < 10 << 20, "{compressed}");
    assert!(
        rss_mib < 80,
        "peak RSS {rss_mib} MiB: the body was held, not streamed"
    );
}

/// Headless Chromium: a page on one origin calls the gateway on another with a non-simple
/// `fetch` (PUT, `authorization`, JSON). The allowed origin gets its answer; the browser
/// blocks the refused one; no preflight reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_an_allowed_origin_may_call_and_others_are_blocked() {
    let page = || {
        origin(|_req: http::Request<hyper::body::Incoming>| async move {
            let mut res = http::Response::new(full("<!doctype html><title>app</title><p>app</p>"));
            res.headers_mut()
                .insert("content-type", "text/html".parse().unwrap());
            res
        })
    };
    let (allowed_page, other_page) = (page().await, page().await);
    let (up, seen) = recording_origin().await;
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[cors.app]
allow_origins = ["http://{allowed_page}"]
allow_methods = ["GET", "PUT"]
allow_headers = ["authorization", "content-type"]
expose_headers = ["x-request-id"]

[upstreams.app]
targets = [{{ addr = "{up}" }}]

[[routes]]
name = "api"
match = {{ path_prefix = "/api", methods = ["GET", "PUT"] }}
upstream = "app"
cors = "app"
"#
    ));
    let api = format!("http://{}/api/items", gw.addr("http"));
    let call = format!(
        "fetch('{api}', {{method: 'PUT', headers: {{'authorization': 'Bearer t', 'content-type': 'application/json'}}, body: '{{\"n\":1}}'}})\
         .then(r => r.status + ' ' + (r.headers.get('x-request-id') ? 'id' : 'no-id'))\
         .catch(e => 'blocked: ' + e.message)"
    );
    let mut browser = crate::status_page::Browser::start().await;
    browser.navigate(&format!("http://{allowed_page}/")).await;
    let got = browser.eval(&call).await;
    assert_eq!(
        got,
        serde_json::json!("200 id"),
        "the allowed origin's call"
    );
    let methods: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(
        methods,
        ["PUT"],
        "the preflight was answered by the gateway, the PUT forwarded"
    );
    browser.navigate(&format!("http://{other_page}/")).await;
    let got = browser.eval(&call).await;
    assert!(
        got.as_str().is_some_and(|s| s.starts_with("blocked")),
        "another origin must be blocked by the browser: {got}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "nothing more reached the backend"
    );
    let text = gw.metrics_text().await;
    assert!(
        text.contains("gateway_cors_preflights_total{outcome=\"allowed\",route=\"api\"} 1"),
        "{text}"
    );
    assert!(text.contains("gateway_cors_preflights_total{outcome=\"refused\",route=\"api\"} 1"));
}

/// Python's own decoders (`gzip`, `brotli`, `zstandard`) read what the gateway wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pythons_decoders_read_every_coding_back_to_the_origins_bytes() {
    crate::harness::require_python_module("brotli", "brotli");
    crate::harness::require_python_module("zstandard", "zstandard");
    let up = compressible_origin().await;
    let gw = Gateway::start(&crate::harness::simple_config(&[up], "compress = true"));
    let plain = send(
        gw.addr("http"),
        request(
            "GET",
            "/json",
            &[("accept-encoding", "identity")],
            Bytes::new(),
        ),
    )
    .await
    .body;
    for coding in ["gzip", "br", "zstd"] {
        let res = send(
            gw.addr("http"),
            request("GET", "/json", &[("accept-encoding", coding)], Bytes::new()),
        )
        .await;
        assert_eq!(res.header("content-encoding"), coding);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("body");
        std::fs::write(&file, &res.body).unwrap();
        let decode = match coding {
            "gzip" => "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(open(sys.argv[1],'rb').read()))",
            "br" => "import brotli,sys; sys.stdout.buffer.write(brotli.decompress(open(sys.argv[1],'rb').read()))",
            _ => "import zstandard,sys; sys.stdout.buffer.write(zstandard.ZstdDecompressor().decompressobj().decompress(open(sys.argv[1],'rb').read()))",
        };
        let out = std::process::Command::new("python3")
            .args(["-c", decode])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{coding}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, plain.to_vec(), "{coding}: decoded bytes differ");
    }
}
