//! Sample sharded backend services: what sits behind the gateway in the demo, the tests
//! and the benchmarks.
//!
//! A backend answers every path except its control paths with 200, `x-served-by: NAME`
//! and a JSON echo of what it received (SPEC §2), or with exactly `body_bytes` bytes of
//! filler. `GET /health` reports its health; `/_backend/*` changes it at run time:
//!
//! * `POST /_backend/health` `{"healthy": false}`
//! * `POST /_backend/faults` `{"fail_rate": 0.5, "delay_ms": 100}` (a failure is a 500)
//! * `GET /_backend/stats` -> `{"requests": N, "connections": N, "served_by": NAME}`
//!
//! Faults and the request count apply to non-control paths only.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How a backend behaves at start; faults can be changed later through `/_backend/faults`.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Reported in `x-served-by` and in the JSON echo.
    pub name: String,
    /// Delay before answering a non-control request.
    pub delay_ms: u64,
    /// Share of non-control requests answered with 500, 0.0..=1.0.
    pub fail_rate: f64,
    /// When set, answer with exactly this many bytes of filler instead of the JSON echo.
    pub body_bytes: Option<u64>,
    /// Serve TLS (ALPN h2 and http/1.1) instead of plain HTTP/1.1 + h2c.
    pub tls: Option<TlsOptions>,
}

/// `--tls-cert F --tls-key F [--client-ca F]`.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// With it, a client certificate from this CA is required.
    pub client_ca: Option<std::path::PathBuf>,
}

/// The TLS server config of `--tls-cert/--tls-key/--client-ca`.
fn tls_acceptor(t: &TlsOptions) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .map_err(|e| bad("--tls-cert", &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("--tls-cert", &e))?;
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| bad("--tls-key", &e))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls", &e))?;
    let builder = match &t.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad("--client-ca", &e))? {
                roots
                    .add(c.map_err(|e| bad("--client-ca", &e))?)
                    .map_err(|e| bad("--client-ca", &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad("--client-ca", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| bad("--tls-cert/--tls-key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Live state of one backend, shared by its connections and by in-process controllers.
#[derive(Debug)]
pub struct State {
    name: String,
    x_served_by: HeaderValue,
    healthy: AtomicBool,
    delay_ms: AtomicU64,
    /// `fail_rate` as parts per million, so it can live in an atomic.
    fail_ppm: AtomicU64,
    body_bytes: Option<u64>,
    requests: AtomicU64,
    connections: AtomicU64,
    open: AtomicU64,
}

impl State {
    fn new(opts: &Options) -> Self {
        let x_served_by = HeaderValue::from_str(&opts.name)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-name"));
        Self {
            name: opts.name.clone(),
            x_served_by,
            healthy: AtomicBool::new(true),
            delay_ms: AtomicU64::new(opts.delay_ms),
            fail_ppm: AtomicU64::new(rate_to_ppm(opts.fail_rate)),
            body_bytes: opts.body_bytes,
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open: AtomicU64::new(0),
        }
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Non-control requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether `GET /health` answers 200.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Set what `GET /health` answers.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Change the injected faults.
    pub fn set_faults(&self, fail_rate: Option<f64>, delay_ms: Option<u64>) {
        if let Some(rate) = fail_rate {
            self.fail_ppm.store(rate_to_ppm(rate), Ordering::Relaxed);
        }
        if let Some(delay) = delay_ms {
            self.delay_ms.store(delay, Ordering::Relaxed);
        }
    }
}

fn rate_to_ppm(rate: f64) -> u64 {
    (rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u64
}

/// A backend running on a tokio runtime; dropping the handle does not stop it, `shutdown` does.
pub struct Handle {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stop accepting, close every connection and wait for the server task to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Start a backend on an already-bound listener, on the current tokio runtime.
pub fn spawn(listener: TcpListener, opts: &Options) -> std::io::Result<Handle> {
    let addr = listener.local_addr()?;
    let state = Arc::new(State::new(opts));
    let (stop, stopped) = watch::channel(false);
    let tls = opts.tls.as_ref().map(tls_acceptor).transpose()?;
    let task = tokio::spawn(serve_with(listener, state.clone(), stopped, tls));
    Ok(Handle {
        addr,
        state,
        stop,
        task,
    })
}

/// Serve until `stop` turns true (or its sender is dropped); then close every connection.
pub async fn serve(listener: TcpListener, state: Arc<State>, stop: watch::Receiver<bool>) {
    serve_with(listener, state, stop, None).await;
}

/// `serve`, over TLS when `tls` is set (HTTP/2 or HTTP/1.1 by ALPN); in plain text HTTP/1.1
/// and h2c (prior knowledge) on the same port.
async fn serve_with(
    listener: TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                state.connections.fetch_add(1, Ordering::Relaxed);
                state.open.fetch_add(1, Ordering::Relaxed);
                let state = state.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    let _open = OpenConn(state.clone());
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(stream).await else { return };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                                .await;
                        }
                    }
                });
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// Counts a connection as open while it is served.
struct OpenConn(Arc<State>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthControl {
    healthy: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultControl {
    fail_rate: Option<f64>,
    delay_ms: Option<u64>,
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<ServeBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => {
            let healthy = state.is_healthy();
            let status = if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(
                status,
                &serde_json::json!({"healthy": healthy, "served_by": state.name}),
            )
        }
        (&Method::POST, "/_backend/health") => match read_json::<HealthControl>(req).await {
            Ok(c) => {
                state.set_healthy(c.healthy);
                json(StatusCode::OK, &serde_json::json!({"healthy": c.healthy}))
            }
            Err(e) => json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": e})),
        },
        (&Method::POST, "/_backend/faults") => match read_json::<FaultControl>(req).await {
            Ok(c) => {
                if c.fail_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": "fail_rate must be within 0..=1"}),
                    );
                }
                state.set_faults(c.fail_rate, c.delay_ms);
                json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "fail_rate": state.fail_ppm.load(Ordering::Relaxed) as f64 / 1e6,
                        "delay_ms": state.delay_ms.load(Ordering::Relaxed),
                    }),
                )
            }
            Err(e) => json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": e})),
        },
        (&Method::GET, "/_backend/stats") => json(
            StatusCode::OK,
            &serde_json::json!({
                "requests": state.requests(),
                "connections": state.connections(),
                "served_by": state.name,
            }),
        ),
        (_, p) if p.starts_with("/_backend/") => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "unknown control path"}),
        ),
        _ => serve_request(state, req).await,
    }
}

async fn serve_request(state: &State, req: Request<Incoming>) -> Response<ServeBody> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail_ppm = state.fail_ppm.load(Ordering::Relaxed);
    let failed = fail_ppm > 0 && fastrand::u64(0..1_000_000) < fail_ppm;

    let (parts, mut body) = req.into_parts();
    // Count the body without keeping it.
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_bytes += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }

    if failed {
        let mut res = json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": "injected failure", "served_by": state.name}),
        );
        res.headers_mut()
            .insert("x-served-by", state.x_served_by.clone());
        return res;
    }

    let mut res = match state.body_bytes {
        Some(n) => {
            let mut res = Response::new(ServeBody::filler(n));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            res
        }
        None => {
            let mut headers: BTreeMap<&str, String> = BTreeMap::new();
            for (name, value) in parts.headers.iter() {
                let v = String::from_utf8_lossy(value.as_bytes());
                headers
                    .entry(name.as_str())
                    .and_modify(|e| {
                        e.push_str(", ");
                        e.push_str(&v);
                    })
                    .or_insert_with(|| v.into_owned());
            }
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "served_by": state.name,
                    "method": parts.method.as_str(),
                    "path": parts.uri.path(),
                    "query": parts.uri.query(),
                    "headers": headers,
                    "body_bytes": body_bytes,
                }),
            )
        }
    };
    res.headers_mut()
        .insert("x-served-by", state.x_served_by.clone());
    res
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, String> {
    let body = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| format!("reading body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("bad JSON: {e}"))
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<ServeBody> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut res = Response::new(ServeBody::full(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// 64 KiB of filler, shared by every filler response: `--body-bytes` costs no allocation.
static FILLER: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A response body: a single buffer, or N bytes of filler streamed in 64 KiB frames.
pub struct ServeBody {
    full: Option<Bytes>,
    filler_left: u64,
}

impl ServeBody {
    fn full(b: Bytes) -> Self {
        Self {
            full: Some(b),
            filler_left: 0,
        }
    }
    fn filler(n: u64) -> Self {
        Self {
            full: None,
            filler_left: n,
        }
    }
}

impl Body for ServeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(b) = this.full.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if this.filler_left > 0 {
            let n = this.filler_left.min(FILLER.len() as u64) as usize;
            this.filler_left -= n as u64;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILLER[..n])))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none() && self.filler_left == 0
    }

    fn size_hint(&self) -> SizeHint {
        let n = self.full.as_ref().map_or(0, |b| b.len() as u64) + self.filler_left;
        SizeHint::with_exact(n)
    }
}

/// Run a backend until Ctrl-C or SIGTERM; what the `backend` binary does.
pub fn run_until_signal(listen: SocketAddr, opts: &Options) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind(listen).await?;
        let handle = spawn(listener, opts)?;
        eprintln!(
            "backend {} listening on {}://{}",
            handle.state.name(),
            if opts.tls.is_some() { "https" } else { "http" },
            handle.addr
        );
        shutdown_signal().await;
        handle.shutdown().await;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
