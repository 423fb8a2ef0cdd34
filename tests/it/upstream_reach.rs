//! Reaching real services (SPEC §8.3): TLS and mutual TLS to nginx, HTTP/2 upstreams with
//! multiplexing, gRPC end to end with Python's grpcio, h2c listeners with curl.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{
    closed_port, gateway_cmd, require_package, require_python_module, Gateway, Proc,
};

/// A test CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM
/// files in `dir`: (ca, server cert, server key, client cert, client key).
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "gateway test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost");
    let (client_cert, client_key) = leaf(vec!["gateway-client".into()], "gateway-client");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

/// nginx serving HTTPS on a free loopback port, answering every request with its own text;
/// with `verify_client`, only clients with a certificate from the test CA are served.
pub(crate) fn nginx_https(dir: &Path, pki: &Pki, verify_client: bool) -> (Proc, SocketAddr) {
    require_package("nginx");
    let addr = closed_port();
    let client = if verify_client {
        format!(
            "ssl_client_certificate {};\n    ssl_verify_client on;",
            pki.ca.display()
        )
    } else {
        String::new()
    };
    let conf = format!(
        r#"worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  server {{
    listen {addr} ssl http2;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    {client}
    location / {{
      default_type text/plain;
      return 200 "nginx over tls: $ssl_protocol $ssl_client_s_dn $server_protocol\n";
    }}
  }}
}}
"#,
        dir = dir.display(),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("nginx")
        .args([
            "-p",
            dir.to_str().unwrap(),
            "-c",
            path.to_str().unwrap(),
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let proc = Proc(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (proc, addr)
}

fn tls_upstream_config(targets: &[SocketAddr], tls: &str, protocol: &str) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.secure]
protocol = "{protocol}"
tls = {tls}
targets = [{}]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "secure"
"#,
        targets.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_nginx_is_verified_against_the_ca_and_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (_nginx, addr) = nginx_https(dir.path(), &pki, false);
    for protocol in ["http1", "h2", "auto"] {
        let gw = Gateway::start(&tls_upstream_config(
            &[addr],
            &format!(
                "{{ ca_file = \"{}\", server_name = \"localhost\" }}",
                pki.ca.display()
            ),
            protocol,
        ));
        let res = crate::client::get(gw.addr("http"), "/hello").await;
        let body = String::from_utf8_lossy(&res.body).to_string();
        assert_eq!(res.status, 200, "{protocol}: {body}");
        assert!(
            body.starts_with("nginx over tls: TLSv1.3"),
            "{protocol}: {body}"
        );
        let want = if protocol == "http1" {
            "HTTP/1.1"
        } else {
            "HTTP/2.0"
        };
        assert!(
            body.contains(want),
            "{protocol} should speak {want}: {body}"
        );
        let ok = gw
            .metric(
                "gateway_upstream_tls_handshakes_total{outcome=\"success\",upstream=\"secure\"}",
            )
            .await;
        assert!(ok >= 1.0);
    }
    // Health probes speak the upstream's protocol: over TLS, nginx stays up.
    let gw = Gateway::start(
        &tls_upstream_config(
            &[addr],
            &format!(
                "{{ ca_file = \"{}\", server_name = \"localhost\" }}",
                pki.ca.display()
            ),
            "auto",
        )
        .replace(
            "[upstreams.secure]\n",
            "[upstreams.secure]\nhealth = { path = \"/\", interval = \"200ms\", unhealthy_threshold = 1 }\n",
        ),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let up = gw
        .metric(&format!(
            "gateway_upstream_up{{target=\"{addr}\",upstream=\"secure\"}}"
        ))
        .await;
    assert_eq!(up, 1.0, "an HTTPS upstream probed over TLS stays up");
    assert!(!gw.lines.all().iter().any(|l| l.contains("target is down")));
    // A name the certificate does not hold fails verification: 502, the reason logged.
    let gw = Gateway::start(&tls_upstream_config(
        &[addr],
        &format!(
            "{{ ca_file = \"{}\", server_name = \"orders.internal\" }}",
            pki.ca.display()
        ),
        "http1",
    ));
    let res = crate::client::get(gw.addr("http"), "/hello").await;
    assert_eq!(res.status, 502);
    let logged = gw.lines.wait_for(Duration::from_secs(5), |l| {
        l.contains("upstream TLS handshake failed")
    });
    assert!(
        logged
            .as_deref()
            .is_some_and(|l| l.to_ascii_lowercase().contains("not valid for name")),
        "{logged:?}"
    );
    let failed = gw
        .metric("gateway_upstream_tls_handshakes_total{outcome=\"error\",upstream=\"secure\"}")
        .await;
    assert!(failed >= 1.0);
    // Against the system roots the test CA is unknown.
    let gw = Gateway::start(&tls_upstream_config(
        &[addr],
        "{ server_name = \"localhost\" }",
        "http1",
    ));
    assert_eq!(crate::client::get(gw.addr("http"), "/").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_nginx_needs_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (_nginx, addr) = nginx_https(dir.path(), &pki, true);
    // With the client certificate: served, and nginx saw our subject.
    let gw = Gateway::start(&tls_upstream_config(
        &[addr],
        &format!(
            "{{ ca_file = \"{}\", server_name = \"localhost\", client_cert = \"{}\", client_key = \"{}\" }}",
            pki.ca.display(),
            pki.client_cert.display(),
            pki.client_key.display()
        ),
        "auto",
    ));
    let res = crate::client::get(gw.addr("http"), "/").await;
    let body = String::from_utf8_lossy(&res.body).to_string();
    assert_eq!(res.status, 200, "{body}");
    assert!(body.contains("CN=gateway-client"), "{body}");
    // Without it nginx refuses the request (400 "No required SSL certificate was sent").
    let gw = Gateway::start(&tls_upstream_config(
        &[addr],
        &format!(
            "{{ ca_file = \"{}\", server_name = \"localhost\" }}",
            pki.ca.display()
        ),
        "http1",
    ));
    let res = crate::client::get(gw.addr("http"), "/").await;
    assert_eq!(res.status, 400, "{:?}", res.body);
    assert!(String::from_utf8_lossy(&res.body).contains("No required SSL certificate"));
}

#[test]
fn check_refuses_bad_tls_files_and_warns_on_insecure_skip_verify() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        tls_upstream_config(
            &["127.0.0.1:9".parse().unwrap()],
            &format!("{{ ca_file = \"{}\" }}", bad.display()),
            "http1",
        ),
    )
    .unwrap();
    let (code, _, err) = gateway_cmd(&["check", "-c", cfg.to_str().unwrap()], dir.path());
    assert_ne!(code, 0);
    assert!(err.contains("ca_file"), "{err}");
    std::fs::write(
        &cfg,
        tls_upstream_config(
            &["127.0.0.1:9".parse().unwrap()],
            "{ insecure_skip_verify = true }",
            "auto",
        ),
    )
    .unwrap();
    let (code, out, err) = gateway_cmd(&["check", "-c", cfg.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("insecure_skip_verify"),
        "check warns: {out}{err}"
    );
}

/// Python's grpcio (server and client, installed on demand) driving `tests/reference/grpc`.
fn grpc_ready() {
    require_python_module("grpc", "grpcio");
    require_python_module("grpc_tools", "grpcio-tools");
    require_python_module("grpc_health", "grpcio-health-checking");
}

fn grpc_script() -> PathBuf {
    crate::harness::repo_root().join("tests/reference/grpc/grpc_echo.py")
}

/// The grpcio echo server on a free loopback port (h2c), ready to serve.
fn grpc_server() -> (Proc, SocketAddr) {
    use std::io::BufRead;
    grpc_ready();
    let addr = closed_port();
    let mut child = Command::new("python3")
        .arg(grpc_script())
        .args(["server", &addr.port().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the grpcio server");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the grpcio server did not start");
    (Proc(child), addr)
}

/// Run grpcio client checks against `target`; their results by name.
fn grpc_client(target: &str, checks: &str, token: &str) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(grpc_script())
        .args(["client", target, checks, token])
        .output()
        .expect("run the grpcio client");
    assert!(
        out.status.success(),
        "grpcio client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "grpcio client output ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn grpc_gateway(upstream: SocketAddr, pki: &Pki, tables: &str, route: &str) -> Gateway {
    let (config, env) = grpc_gateway_config(upstream, pki, tables, route);
    Gateway::start_with_env(&config, &env)
}

fn grpc_gateway_config(
    upstream: SocketAddr,
    pki: &Pki,
    tables: &str,
    route: &str,
) -> (String, Vec<(&'static str, &'static str)>) {
    (
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "h2c"
listen = "127.0.0.1:0"
h2c = true

[[listeners]]
name = "https"
listen = "127.0.0.1:0"
tls = {{ certs = [{{ cert = "{cert}", key = "{key}" }}] }}
{tables}
[upstreams.grpc]
protocol = "h2"
targets = [{{ addr = "{upstream}" }}]

[[routes]]
name = "echo"
match = {{ path_prefix = "/gwtest.Echo" }}
upstream = "grpc"
{route}
"#,
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
        ),
        vec![("GRPC_TEST_SECRET", "grpc-test-secret-0123456789abcdef")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_of_every_kind_pass_through_h2c_and_tls_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (mut server, upstream) = grpc_server();
    let gw = grpc_gateway(upstream, &pki, "", "");
    let targets = [
        format!("h2c://{}", gw.addr("h2c")),
        format!("tls://{}?ca={}", gw.addr("https"), pki.ca.display()),
    ];
    for target in &targets {
        let r = grpc_client(
            target,
            "unary,client_stream,server_stream,bidi,deadline,fail",
            "",
        );
        assert_eq!(r["unary"]["text"], "echo:hi", "{target}: {r}");
        assert_eq!(
            r["unary"]["trailers"]["x-echo-trailer"], "acme",
            "{target}: metadata in, trailers out: {r}"
        );
        assert_eq!(r["client_stream"]["text"], "8 messages", "{target}: {r}");
        assert_eq!(r["client_stream"]["count"], 8 << 20, "{target}: {r}");
        assert_eq!(r["server_stream"]["parts"], 5, "{target}: {r}");
        assert_eq!(
            r["server_stream"]["bytes"],
            5 * (512 << 10),
            "{target}: {r}"
        );
        assert_eq!(
            r["bidi"]["texts"].as_array().map(Vec::len),
            Some(20),
            "{target}: {r}"
        );
        assert_eq!(r["bidi"]["texts"][19], "echo:19");
        assert_eq!(r["deadline"]["code"], "DEADLINE_EXCEEDED", "{target}: {r}");
        assert_eq!(r["fail"]["code"], "FAILED_PRECONDITION", "{target}: {r}");
    }
    let text = gw.metrics_text().await;
    assert!(
        text.contains("gateway_grpc_responses_total{code=\"OK\",route=\"echo\"}"),
        "{text}"
    );
    assert!(text
        .contains("gateway_grpc_responses_total{code=\"FAILED_PRECONDITION\",route=\"echo\"} 2"));
    // Few upstream connections for many calls: HTTP/2 multiplexing.
    let conns = gw
        .metric(&format!(
            "gateway_upstream_connections{{protocol=\"h2\",target=\"{upstream}\",upstream=\"grpc\"}}"
        ))
        .await;
    assert!(
        (1.0..=2.0).contains(&conns),
        "{conns} upstream HTTP/2 connections"
    );
    // The server dies: UNAVAILABLE, from the gateway, in trailers-only form.
    drop(server.0.kill());
    let _ = server.0.wait();
    let r = grpc_client(&targets[0], "unary", "");
    assert_eq!(r["unary"]["code"], "UNAVAILABLE", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_keep_their_policies_with_grpc_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (_server, upstream) = grpc_server();
    // JWT from the `authorization` metadata.
    let gw = grpc_gateway(
        upstream,
        &pki,
        "[jwt.users]\nalgorithms = [\"HS256\"]\nsecret_env = \"GRPC_TEST_SECRET\"\n",
        "jwt = \"users\"",
    );
    let target = format!("h2c://{}", gw.addr("h2c"));
    let r = grpc_client(&target, "unary", "");
    assert_eq!(r["unary"]["code"], "UNAUTHENTICATED", "{r}");
    let token = crate::harness::hs256_token(b"grpc-test-secret-0123456789abcdef", "u1");
    let r = grpc_client(&target, "unary", &token);
    assert_eq!(r["unary"]["text"], "echo:hi", "{r}");
    let text = gw.metrics_text().await;
    assert!(
        text.contains("gateway_grpc_responses_total{code=\"UNAUTHENTICATED\",route=\"echo\"} 1"),
        "{}",
        text.lines()
            .filter(|l| l.contains("grpc"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A rate limit keyed on a metadata header.
    let gw = grpc_gateway(
        upstream,
        &pki,
        "[rate_limits.tenant]\nkey = \"header.x-tenant\"\nrate = 1\nper = \"1m\"\nburst = 3\n",
        "rate_limit = \"tenant\"",
    );
    let r = grpc_client(&format!("h2c://{}", gw.addr("h2c")), "many10", "");
    assert_eq!(r["many10"]["code"], "RESOURCE_EXHAUSTED", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_with_prior_knowledge_to_an_h2c_listener() {
    require_package("curl");
    let b = crate::harness::backend("b").await;
    let gw = Gateway::start(
        &crate::harness::simple_config(&[b.addr], "")
            .replace("name = \"http\"\n", "name = \"http\"\nh2c = true\n"),
    );
    let url = format!("http://{}/x", gw.addr("http"));
    for (flag, want) in [
        ("--http2-prior-knowledge", "HTTP/2 200"),
        ("--http1.1", "HTTP/1.1 200"),
    ] {
        let out = Command::new("curl")
            .args(["-s", "-i", flag, &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.starts_with(want), "{flag}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_share_a_handful_of_http2_upstream_connections() {
    let b = crate::harness::backend_with(backends::Options {
        name: "h2".into(),
        delay_ms: 300,
        ..Default::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "https"
listen = "127.0.0.1:0"
tls = {{ self_signed = true }}

[upstreams.app]
protocol = "h2"
targets = [{{ addr = "{}" }}]

[[routes]]
name = "all"
upstream = "app"
"#,
        b.addr
    ));
    let mut calls = Vec::new();
    for _ in 0..4 {
        let tls = crate::client::tls_connect(
            gw.addr("https"),
            "localhost",
            &[b"h2"],
            rustls::ALL_VERSIONS,
        )
        .await;
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        for _ in 0..250 {
            let mut sender = sender.clone();
            calls.push(tokio::spawn(async move {
                let req = http::Request::builder()
                    .uri("https://localhost/m")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                sender.ready().await.ok()?;
                let res = sender.send_request(req).await.ok()?;
                Some(res.status())
            }));
        }
    }
    let mut ok = 0;
    for c in calls {
        if c.await.unwrap() == Some(http::StatusCode::OK) {
            ok += 1;
        }
    }
    let conns = b.state.connections();
    eprintln!("h2 upstream: 1000 streams, {ok} ok, {conns} upstream connections");
    assert_eq!(ok, 1000);
    assert!(conns <= 20, "{conns} upstream connections for 1000 streams");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_take_a_target_down_and_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (_server, upstream) = grpc_server();
    let (config, env) = grpc_gateway_config(upstream, &pki, "", "");
    let health = "health = { grpc = true, service = \"gwtest.Echo\", interval = \"200ms\", timeout = \"1s\", healthy_threshold = 1, unhealthy_threshold = 1 }";
    let gw = Gateway::start_with_env(
        &config.replace(
            "[upstreams.grpc]\n",
            &format!("[upstreams.grpc]\n{health}\n"),
        ),
        &env,
    );
    let up = format!("gateway_upstream_up{{target=\"{upstream}\",upstream=\"grpc\"}}");
    let wait_for = |want: f64| {
        let (gw, up) = (&gw, up.clone());
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while gw.metric(&up).await != want {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{up} never became {want}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for(1.0).await;
    let direct = format!("h2c://{upstream}");
    grpc_client(&direct, "health:NOT_SERVING", "");
    wait_for(0.0).await;
    grpc_client(&direct, "health:SERVING", "");
    wait_for(1.0).await;
    let events = gw.events("health").await;
    assert!(
        events.iter().any(|e| e["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not SERVING"))),
        "{events:?}"
    );
}

/// An HTTP/2 origin (hyper, prior knowledge) that says GOAWAY on each connection after
/// `per_conn` requests, as servers being redeployed or rebalancing do.
async fn goaway_origin(
    per_conn: usize,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let served = Arc::new(AtomicUsize::new(0));
                let enough = Arc::new(tokio::sync::Notify::new());
                let (s, e) = (served.clone(), enough.clone());
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        let (s, e) = (s.clone(), e.clone());
                        async move {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            if s.fetch_add(1, Ordering::Relaxed) + 1 == per_conn {
                                e.notify_one();
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    },
                );
                let conn =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = enough.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_from_an_http2_upstream_loses_no_request() {
    let (origin, conns) = goaway_origin(25).await;
    let gw = Gateway::start(
        &crate::harness::simple_config(&[origin], "")
            .replace("[upstreams.app]\n", "[upstreams.app]\nprotocol = \"h2\"\n"),
    );
    let addr = gw.addr("http");
    let mut calls = Vec::new();
    for _ in 0..8 {
        calls.push(tokio::spawn(async move {
            let mut ok = 0;
            let mut conn = crate::client::H1::connect(addr).await;
            for _ in 0..50 {
                let r = conn
                    .send(crate::client::request("GET", "/", &[], bytes::Bytes::new()))
                    .await
                    .unwrap();
                if r.status == 200 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for c in calls {
        ok += c.await.unwrap();
    }
    let opened = conns.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("GOAWAY every 25 requests: 400 requests, {ok} ok, {opened} upstream connections");
    assert_eq!(ok, 400, "requests failed across upstream GOAWAYs");
    assert!(
        opened >= 8,
        "the origin did not go away as planned: {opened}"
    );
}
