//! `gateway demo`: the sample sharded backends and the gateway with `config/demo.toml`, on
//! loopback, in one process; prints what to try; Ctrl-C stops everything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{self, Config, Mode};

/// The demo config, built in so `gateway demo` works from any directory.
pub const DEMO_TOML: &str = include_str!("../../config/demo.toml");

/// The demo CA and the HTTPS sample service's certificate (demo only: the key is public).
const DEMO_CA: &str = include_str!("../../config/certs/demo-ca.pem");
const DEMO_SERVER_CERT: &str = include_str!("../../config/certs/demo-server.pem");
const DEMO_SERVER_KEY: &str = include_str!("../../config/certs/demo-server.key");

/// The demo's JWT secret (demo only: anyone can read it here).
pub const DEMO_JWT_SECRET_ENV: &str = "GATEWAY_DEMO_JWT_SECRET";
const DEMO_JWT_SECRET: &str = "demo-only-secret-do-not-use-in-production-0123456789";

/// Run the demo until Ctrl-C / SIGTERM.
pub fn run(path: Option<PathBuf>) -> Result<(), String> {
    if std::env::var_os(DEMO_JWT_SECRET_ENV).is_none() {
        std::env::set_var(DEMO_JWT_SECRET_ENV, DEMO_JWT_SECRET);
    }
    let default = PathBuf::from("config/demo.toml");
    let mut certs = PathBuf::from("config/certs");
    let loaded = match path {
        Some(p) => config::load(&p, Mode::Run),
        None if default.exists() => config::load(&default, Mode::Run),
        None => {
            // Outside a checkout the demo's certificates come from the binary, written to a
            // temporary directory the built-in config then names.
            certs = tempdir_with_certs()?;
            config::load_str(
                Path::new("config/demo.toml (built in)"),
                &DEMO_TOML.replace("config/certs/", &format!("{}/", certs.display())),
                Mode::Run,
            )
        }
    }
    .map_err(|errors| errors.join("\n"))?;
    let config = loaded.config;
    let token = demo_token();
    crate::telemetry::raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let backends = start_backends(&config, &certs).await?;
        let bound = crate::server::bind(&config)?;
        print_banner(&config, &bound, backends.len(), token.as_deref());
        let result = crate::server::serve(config, bound, backends::shutdown_signal()).await;
        for b in backends {
            b.shutdown().await;
        }
        println!("demo stopped");
        result
    })
}

/// The demo's certificates, written to a fresh directory under the system's temp dir.
fn tempdir_with_certs() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("gateway-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, text) in [
        ("demo-ca.pem", DEMO_CA),
        ("demo-server.pem", DEMO_SERVER_CERT),
        ("demo-server.key", DEMO_SERVER_KEY),
    ] {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(dir)
}

/// One sample backend per target and backup address of the config, named after the target
/// (`users-0`) or as its replica (`users-0-replica`). Upstreams reached over TLS get HTTPS
/// backends with the demo certificate.
async fn start_backends(config: &Config, certs: &Path) -> Result<Vec<backends::Handle>, String> {
    let mut handles = Vec::new();
    for u in &config.upstreams {
        for t in &u.targets {
            let mut names = vec![(t.addr, t.id.clone())];
            for (k, b) in t.backups.iter().enumerate() {
                let name = if k == 0 {
                    format!("{}-replica", t.id)
                } else {
                    format!("{}-replica{}", t.id, k + 1)
                };
                names.push((*b, name));
            }
            for (addr, name) in names {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("backend {name}: cannot listen on {addr}: {e}"))?;
                let opts = backends::Options {
                    name,
                    tls: u.tls.as_ref().map(|_| backends::TlsOptions {
                        cert: certs.join("demo-server.pem"),
                        key: certs.join("demo-server.key"),
                        client_ca: None,
                    }),
                    ..backends::Options::default()
                };
                handles.push(backends::spawn(listener, &opts).map_err(|e| e.to_string())?);
            }
        }
    }
    Ok(handles)
}

/// A day-long token for the demo's `[jwt.demo]` policy, if the config has it.
fn demo_token() -> Option<String> {
    let secret = std::env::var(DEMO_JWT_SECRET_ENV).ok()?;
    let spec = crate::token::TokenSpec {
        alg: "HS256".into(),
        sub: Some("demo-user-7".into()),
        aud: vec!["demo-api".into()],
        iss: Some("https://demo.gateway.local".into()),
        ttl: std::time::Duration::from_secs(86_400),
        ..Default::default()
    };
    crate::token::mint(&spec, secret.as_bytes()).ok()
}

fn print_banner(
    config: &Config,
    bound: &crate::server::Bound,
    backends: usize,
    token: Option<&str>,
) {
    let mut out = String::new();
    out.push_str(&format!(
        "\ngateway demo: {backends} sample backends and the gateway are up ({})\n\n",
        config.summary()
    ));
    let mut https: Option<SocketAddr> = None;
    let mut http: Option<SocketAddr> = None;
    for l in &config.listeners {
        let addr = bound.addr(&l.name).unwrap_or(l.listen);
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        out.push_str(&format!("  listener {:<8} {scheme}://{addr}\n", l.name));
        if l.tls.is_some() {
            https.get_or_insert(addr);
        } else if l.redirect_https.is_none() {
            http.get_or_insert(addr);
        }
    }
    if let Some(a) = &config.admin {
        out.push_str(&format!(
            "  status page       http://{}/   (open it in a browser)\n  admin             http://{}/metrics  /readyz  /admin/status  /admin/events  /admin/upstreams  /admin/config\n",
            a.listen, a.listen
        ));
    }
    out.push_str("\nTry:\n");
    if let Some(addr) = https {
        out.push_str(&format!(
            "  curl -sk --http2 -H 'x-user-id: 42' https://localhost:{}/api/users/42   # HTTP/2 over TLS (self-signed)\n",
            addr.port()
        ));
    }
    if let Some(addr) = http {
        out.push_str(&format!(
            "  curl -s -H 'x-user-id: 7' http://{addr}/api/users/7            # HTTP/1.1; the key picks the shard\n"
        ));
        if let Some(t) = token {
            out.push_str(&format!(
                "  curl -s -H 'authorization: Bearer {t}' http://{addr}/api/orders/7   # JWT required; weighted 3:1 over two targets\n"
            ));
            out.push_str(&format!(
                "  curl -si http://{addr}/api/orders/7                        # without the token: 401\n"
            ));
        }
        out.push_str(&format!(
            "  curl -s http://{addr}/api/inventory/items                  # to an HTTPS service, certificate verified\n"
        ));
        out.push_str(&format!(
            "  curl -s http://{addr}/api/catalog/books                    # to an HTTP/2 service, multiplexed\n"
        ));
        out.push_str(&format!(
            "  curl -si http://{addr}/nowhere                             # 404 with a request id\n"
        ));
    }
    if let Some(a) = &config.admin {
        out.push_str(&format!(
            "  curl -s 'http://{}/admin/explain?path=/api/users/42&header.x-user-id=42'   # which shard, and why\n  curl -s http://{}/metrics | grep '^gateway_requests_total'\n  curl -s http://{}/admin/upstreams\n",
            a.listen, a.listen, a.listen
        ));
    }
    if let Some(t) = token {
        out.push_str(&format!("\nDemo JWT (HS256, sub demo-user-7, 24 h): {t}\n"));
    }
    out.push_str("\nAccess logs: RUST_LOG=info gateway demo.  Ctrl-C stops everything.\n");
    println!("{out}");
}
