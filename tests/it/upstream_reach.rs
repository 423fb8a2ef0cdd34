//! Reaching real services (SPEC §8.3): TLS and mutual TLS to nginx, HTTP/2 upstreams with
//! multiplexing, gRPC end to end with Python's grpcio, h2c listeners with curl.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{closed_port, gateway_cmd, require_package, Gateway, Proc};

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
fn nginx_https(dir: &Path, pki: &Pki, verify_client: bool) -> (Proc, SocketAddr) {
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
