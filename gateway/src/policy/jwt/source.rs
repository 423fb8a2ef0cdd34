//! Where a JWT policy's keys come from, kept current off the request path.
//!
//! * `jwks_file`: re-read when the file changes (checked every 2 s); a bad file keeps the last
//!   good keys.
//! * `jwks_url`: fetched at start with retries, refreshed in the background before it expires
//!   (at 80% of its `Cache-Control: max-age`, between 1 min and 24 h; 5 min without one), and on
//!   an unknown `kid` (with a cooldown, `verify.rs`); a failed fetch keeps the last good set
//!   (stale-if-error). Every fetch counts in `gateway_jwks_refresh_total{outcome}`.

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::keys::KeySet;
use super::verify::JwtPolicyRt;
use crate::config::JwtSource;

const FILE_POLL: Duration = Duration::from_secs(2);
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
const MIN_REFRESH: Duration = Duration::from_secs(60);
const MAX_REFRESH: Duration = Duration::from_secs(86_400);
const MAX_JWKS_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Start keeping `policy`'s keys current, for as long as it lives.
pub fn spawn(policy: &Arc<JwtPolicyRt>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(policy);
    match &policy.policy.source {
        JwtSource::Secret(_) => {}
        JwtSource::File { path, .. } => {
            let path = path.clone();
            rt.spawn(watch_file(weak, path));
        }
        JwtSource::Url(url) => {
            let url = url.clone();
            rt.spawn(refresh_url(weak, url));
        }
    }
}

async fn watch_file(policy: Weak<JwtPolicyRt>, path: std::path::PathBuf) {
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    let mut last = stamp(&path);
    loop {
        tokio::time::sleep(FILE_POLL).await;
        let Some(p) = policy.upgrade() else { return };
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        let loaded = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| KeySet::from_jwks(&b, 0));
        match loaded {
            Ok((keys, skipped)) => {
                for s in skipped {
                    tracing::warn!(policy = %p.name, file = %path.display(), "jwks: skipping {s}");
                }
                tracing::info!(policy = %p.name, file = %path.display(), keys = keys.keys.len(), "jwks: file changed, keys reloaded");
                p.refresh_ok.inc();
                p.set_keys(keys);
            }
            Err(e) => {
                p.refresh_error.inc();
                tracing::warn!(policy = %p.name, file = %path.display(), error = %e, "jwks: file unreadable, keeping the last good keys");
            }
        }
    }
}

async fn refresh_url(policy: Weak<JwtPolicyRt>, url: String) {
    let Some(wanted) = policy.upgrade().map(|p| p.refresh_wanted.clone()) else {
        return;
    };
    let mut failures = 0u32;
    loop {
        let Some(p) = policy.upgrade() else { return };
        let wait = match fetch(&url).await {
            Ok((body, max_age)) => match KeySet::from_jwks(&body, 0) {
                Ok((keys, skipped)) => {
                    for s in skipped {
                        tracing::warn!(policy = %p.name, %url, "jwks: skipping {s}");
                    }
                    tracing::info!(policy = %p.name, %url, keys = keys.keys.len(), "jwks: fetched");
                    failures = 0;
                    p.refresh_ok.inc();
                    p.set_keys(keys);
                    max_age
                        .unwrap_or(DEFAULT_MAX_AGE)
                        .mul_f64(0.8)
                        .clamp(MIN_REFRESH, MAX_REFRESH)
                }
                Err(e) => {
                    failures += 1;
                    p.refresh_error.inc();
                    p.refreshed.notify_waiters();
                    tracing::warn!(policy = %p.name, %url, error = %e, "jwks: bad document, keeping the last good keys");
                    backoff(failures)
                }
            },
            Err(e) => {
                failures += 1;
                p.refresh_error.inc();
                // Whoever waits for this refresh stops waiting: the old keys are all there is.
                p.refreshed.notify_waiters();
                tracing::warn!(policy = %p.name, %url, error = %e, attempt = failures, "jwks: fetch failed, keeping the last good keys");
                backoff(failures)
            }
        };
        drop(p);
        // Wait for the next refresh, or for a request that met an unknown kid.
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wanted.notified() => {}
        }
    }
}

/// Retries at start come fast (0.5, 1, 2 s ...), then settle at one a minute.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.min(7))).min(MIN_REFRESH)
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                });
            Arc::new(config)
        })
        .clone()
}

/// GET an https URL: the body (at most 1 MiB) and its `Cache-Control: max-age`.
pub async fn fetch(url: &str) -> Result<(Bytes, Option<Duration>), String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(url))
        .await
        .map_err(|_| format!("timed out after {FETCH_TIMEOUT:?}"))?
}

async fn fetch_inner(url: &str) -> Result<(Bytes, Option<Duration>), String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("URL without host")?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let server_name = rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
    .map_err(|e| format!("bad host: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(tls_config())
        .connect(server_name, stream)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let req = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "gateway-jwks")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        driver.abort();
        return Err(format!("HTTP {}", res.status()));
    }
    let max_age = res
        .headers()
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|d| d.trim().strip_prefix("max-age="))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .map(Duration::from_secs);
    let body = Limited::new(res.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((body, max_age))
}
