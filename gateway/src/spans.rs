//! Spans and their export (SPEC §8.4, `[tracing]`): a server span per request and a client span
//! per upstream attempt, sent as OTLP/HTTP protobuf (the `opentelemetry-proto` messages) from a
//! background task.
//!
//! Our own batching rather than the SDK's batch processor: the SDK does not say how many spans it
//! dropped (`gateway_spans_dropped_total` must), and the request path here is one push into a
//! bounded lock-free queue (`max_queue`; past it the span is dropped and counted). The task sends
//! at most every second or every 512 spans, with a 5 s timeout; a failed export drops its spans
//! (counted) and never slows a request. Only sampled requests build spans; with no
//! `otlp_endpoint` nothing is built at all (trace context is still propagated).
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
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus::IntCounter;
use prost::Message;

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

pub fn kv_str(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// An error status with its message.
pub fn error_status(message: impl Into<String>) -> Option<Status> {
    Some(Status {
        message: message.into(),
        code: status::StatusCode::Error as i32,
    })
}

/// The exporter of one `[tracing]`.
pub struct Exporter {
    cfg: Tracing,
    queue: ArrayQueue<Span>,
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
    pub fn record(&self, span: Span) {
        if self.queue.push(span).is_err() {
            self.dropped.inc();
        } else if self.queue.len() >= BATCH {
            self.wake.notify_one();
        }
    }

    fn request(&self, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv_str("service.name", self.cfg.service_name.clone())],
                    dropped_attributes_count: 0,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "gateway".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    async fn send(&self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        let body = self.request(spans).encode_to_vec();
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
            let batch: Vec<Span> = std::iter::from_fn(|| me.queue.pop()).take(BATCH).collect();
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
    attempts: Mutex<Vec<Span>>,
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
        error: Option<&str>,
    ) {
        let mut attributes = vec![
            kv_str("http.request.method", method.as_str()),
            kv_str(
                "server.address",
                host.map_or_else(|| addr.ip().to_string(), str::to_string),
            ),
            kv_int("server.port", i64::from(addr.port())),
            kv_str("network.peer.address", addr.ip().to_string()),
            kv_str("gateway.upstream", upstream),
            kv_str("gateway.target", target),
        ];
        if let Some(s) = status {
            attributes.push(kv_int("http.response.status_code", i64::from(s)));
        }
        let error_type = error
            .map(str::to_string)
            .or_else(|| status.filter(|s| *s >= 500).map(|s| s.to_string()));
        let status = match &error_type {
            Some(e) => {
                attributes.push(kv_str("error.type", e.clone()));
                error_status(e.clone())
            }
            None => None,
        };
        let span = Span {
            trace_id: self.trace.trace_id.to_vec(),
            span_id: begun.span_id.to_vec(),
            parent_span_id: self.trace.span_id.to_vec(),
            name: method.as_str().to_string(),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: begun.start_ns,
            end_time_unix_nano: now_ns(),
            attributes,
            status,
            flags: 0x100 | u32::from(self.trace.sampled),
            ..Default::default()
        };
        if let Ok(mut a) = self.attempts.lock() {
            a.push(span);
        }
    }

    /// Send the server span and the attempts' client spans.
    pub fn finish(&self, mut server: Span) {
        server.trace_id = self.trace.trace_id.to_vec();
        server.span_id = self.trace.span_id.to_vec();
        server.parent_span_id = self.trace.parent_id.map(|p| p.to_vec()).unwrap_or_default();
        server.kind = span::SpanKind::Server as i32;
        server.start_time_unix_nano = self.start_ns;
        server.end_time_unix_nano = now_ns();
        server.flags = 0x100 | u32::from(self.trace.sampled);
        self.exporter.record(server);
        if let Ok(mut a) = self.attempts.lock() {
            for s in a.drain(..) {
                self.exporter.record(s);
            }
        }
    }
}

/// A span event at `time`.
pub fn event(name: &str, attributes: Vec<KeyValue>) -> span::Event {
    span::Event {
        time_unix_nano: now_ns(),
        name: name.to_string(),
        attributes,
        dropped_attributes_count: 0,
    }
}

pub use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
