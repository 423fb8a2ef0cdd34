//! Spans and their export (SPEC §8.4, `[tracing]`): a server span per request and a client span
//! per upstream attempt, sent as OTLP/HTTP protobuf from a background task.
//!
//! Our own batching rather than the SDK's batch processor: the SDK does not say how many spans it
//! dropped (`gateway_spans_dropped_total` must), and the request path here is one push into a
//! bounded lock-free queue (`max_queue`; past it the span is dropped and counted). The task sends
//! at most every second or every 512 spans, with a 5 s timeout; a failed export drops its spans
//! (counted) and never slows a request. Only sampled requests build spans; with no
//! `otlp_endpoint` nothing is built at all (trace context is still propagated). Spans are kept
//! compact and encoded straight to protobuf (`otlp.rs`): building the `opentelemetry-proto`
//! message tree cost twice as much per request (docs/performance.md).
//!
//! An exporter belongs to the config generations whose `[tracing]` it was made for: a reload
//! that changes `[tracing]` starts another, and the old one exports what requests still running
//! on the old generation record, then stops.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;

mod otlp;
pub use otlp::{EventRec, Kind, SpanRec, Val};

use crate::config::Tracing;
use crate::metrics::Metrics;
use crate::trace::TraceContext;

/// Spans per export request, and the queue length that wakes the exporter early.
const BATCH: usize = 512;
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Nanoseconds since the Unix epoch (span timestamps).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An attribute.
pub fn kv_str(key: &'static str, value: impl Into<Val>) -> (&'static str, Val) {
    (key, value.into())
}

pub fn kv_int(key: &'static str, value: i64) -> (&'static str, Val) {
    (key, Val::Int(value))
}

/// The exporter of one `[tracing]`.
pub struct Exporter {
    cfg: Tracing,
    queue: ArrayQueue<SpanRec>,
    wake: tokio::sync::Notify,
    exported: IntCounter,
    dropped: IntCounter,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("endpoint", &self.cfg.otlp_endpoint)
            .field("queued", &self.queue.len())
            .finish()
    }
}

impl Exporter {
    /// An exporter and its task, when `cfg` has an endpoint (and a runtime is running).
    pub fn start(cfg: &Tracing, metrics: &Metrics) -> Option<Arc<Self>> {
        let endpoint = cfg.otlp_endpoint.as_ref()?;
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let tls = (endpoint.scheme_str() == Some("https"))
            .then(|| {
                crate::tls::client_config(&crate::tls::ClientTlsFiles {
                    ca: None,
                    client: None,
                    insecure_skip_verify: false,
                    alpn: vec![b"http/1.1".to_vec()],
                })
                .map_err(|e| tracing::warn!(error = %e, "OTLP export over TLS: no client config"))
                .ok()
                .map(|c| tokio_rustls::TlsConnector::from(Arc::new(c)))
            })
            .flatten();
        let me = Arc::new(Self {
            cfg: cfg.clone(),
            queue: ArrayQueue::new(cfg.max_queue.max(1)),
            wake: tokio::sync::Notify::new(),
            exported: metrics.spans_exported_total.clone(),
            dropped: metrics.spans_dropped_total.clone(),
            tls,
        });
        rt.spawn(run(me.clone()));
        Some(me)
    }

    pub fn config(&self) -> &Tracing {
        &self.cfg
    }

    /// Whether a request without a parent is sampled (`sample_ratio`).
    pub fn sample_new(&self) -> bool {
        let r = self.cfg.sample_ratio;
        r >= 1.0 || (r > 0.0 && fastrand::f64() < r)
    }

    /// Queue a finished span; a full queue drops it (counted).
    pub fn record(&self, span: SpanRec) {
        if self.queue.push(span).is_err() {
            self.dropped.inc();
        } else if self.queue.len() >= BATCH {
            self.wake.notify_one();
        }
    }

    async fn send(&self, spans: Vec<SpanRec>) {
        let n = spans.len() as u64;
        let body = otlp::encode_request(
            &self.cfg.service_name,
            ("gateway", env!("CARGO_PKG_VERSION")),
            &spans,
        );
        drop(spans);
        match tokio::time::timeout(EXPORT_TIMEOUT, self.post(body)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => self.exported.inc_by(n),
            outcome => {
                self.dropped.inc_by(n);
                let why = match outcome {
                    Ok(Ok(status)) => format!("the collector answered {status}"),
                    Ok(Err(e)) => e,
                    Err(_) => format!("no answer within {EXPORT_TIMEOUT:?}"),
                };
                tracing::warn!(spans = n, reason = %why, "span export failed; the spans are dropped");
            }
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<u16, String> {
        let uri = self
            .cfg
            .otlp_endpoint
            .clone()
            .ok_or_else(|| "no endpoint".to_string())?;
        let authority = uri
            .authority()
            .ok_or_else(|| "no host in otlp_endpoint".to_string())?
            .clone();
        let port = authority
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let stream = tokio::net::TcpStream::connect((authority.host(), port))
            .await
            .map_err(|e| format!("connect to {authority}: {e}"))?;
        let mut req = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority.as_str())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        for (k, v) in &self.cfg.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        match &self.tls {
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(authority.host().to_string())
                    .map_err(|e| e.to_string())?;
                let stream = tls
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS with {authority}: {e}"))?;
                post_on(stream, req).await
            }
            None => post_on(stream, req).await,
        }
    }
}

async fn post_on<I>(io: I, req: http::Request<Full<bytes::Bytes>>) -> Result<u16, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let _ = res.into_body().collect().await;
    Ok(status)
}

/// The exporter's task: batches out of the queue at most every second (sooner when a batch is
/// full); stops once no generation and no request holds the exporter and the queue is empty.
async fn run(me: Arc<Exporter>) {
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(1), me.wake.notified()).await;
        let last = Arc::strong_count(&me) == 1;
        while !me.queue.is_empty() {
            let batch: Vec<SpanRec> = std::iter::from_fn(|| me.queue.pop()).take(BATCH).collect();
            me.send(batch).await;
        }
        if last {
            return;
        }
    }
}

/// A sampled request's spans in the making: the server span's ids, and a client span per
/// upstream attempt (the upstream tier adds them; the observe layer sends them all at the end).
#[derive(Debug)]
pub struct Recorder {
    pub exporter: Arc<Exporter>,
    pub trace: TraceContext,
    pub start_ns: u64,
    attempts: Mutex<Vec<SpanRec>>,
}

/// A client span begun.
#[derive(Debug, Clone, Copy)]
pub struct Begun {
    span_id: [u8; 8],
    start_ns: u64,
}

impl Recorder {
    pub fn new(exporter: Arc<Exporter>, trace: TraceContext) -> Self {
        Self {
            exporter,
            trace,
            start_ns: now_ns(),
            attempts: Mutex::new(Vec::new()),
        }
    }

    /// A new client span: `traceparent` on the attempt carries its id.
    pub fn begin(&self, headers: &mut HeaderMap) -> Begun {
        let span_id = crate::trace::random_span_id();
        headers.insert(crate::trace::TRACEPARENT, self.trace.header_with(span_id));
        Begun {
            span_id,
            start_ns: now_ns(),
        }
    }

    /// The attempt is over: `status` (the upstream's answer) or `error` (`error.type`).
    #[allow(clippy::too_many_arguments)]
    pub fn end(
        &self,
        begun: Begun,
        method: &Method,
        upstream: &str,
        target: &str,
        addr: std::net::SocketAddr,
        host: Option<&str>,
        status: Option<u16>,
        error: Option<&'static str>,
    ) {
        let peer = Val::ip(addr.ip());
        let mut attributes = Vec::with_capacity(9);
        attributes.push(("http.request.method", Val::Method(method.clone())));
        attributes.push((
            "server.address",
            host.map_or_else(|| peer.clone(), |h| Val::Owned(h.to_string())),
        ));
        attributes.push(kv_int("server.port", i64::from(addr.port())));
        attributes.push(("network.peer.address", peer));
        attributes.push(("gateway.upstream", Val::Owned(upstream.to_string())));
        attributes.push(("gateway.target", Val::Owned(target.to_string())));
        if let Some(s) = status {
            attributes.push(kv_int("http.response.status_code", i64::from(s)));
        }
        let error_type: Option<Val> = match (error, status) {
            (Some(e), _) => Some(Val::Static(e)),
            (None, Some(s)) if s >= 500 => Some(Val::Owned(s.to_string())),
            _ => None,
        };
        if let Some(e) = &error_type {
            attributes.push(("error.type", e.clone()));
        }
        let span = SpanRec {
            trace_id: self.trace.trace_id,
            span_id: begun.span_id,
            parent_span_id: Some(self.trace.span_id),
            name: Val::Method(method.clone()),
            name_suffix: None,
            kind: Kind::Client,
            start_ns: begun.start_ns,
            end_ns: now_ns(),
            attributes,
            events: Vec::new(),
            error: error_type,
            flags: 0x100 | u32::from(self.trace.sampled),
        };
        if let Ok(mut a) = self.attempts.lock() {
            a.push(span);
        }
    }

    /// Send the server span and the attempts' client spans.
    /// `server` comes with its name, attributes, events and status; the ids, kind, times and
    /// flags are set here.
    pub fn finish(&self, mut server: SpanRec) {
        server.trace_id = self.trace.trace_id;
        server.span_id = self.trace.span_id;
        server.parent_span_id = self.trace.parent_id;
        server.kind = Kind::Server;
        server.start_ns = self.start_ns;
        server.end_ns = now_ns();
        server.flags = 0x100 | u32::from(self.trace.sampled);
        self.exporter.record(server);
        if let Ok(mut a) = self.attempts.lock() {
            for s in a.drain(..) {
                self.exporter.record(s);
            }
        }
    }
}

/// A span event now.
pub fn event(name: &'static str, attributes: Vec<(&'static str, Val)>) -> EventRec {
    EventRec {
        time_ns: now_ns(),
        name,
        attributes,
    }
}
