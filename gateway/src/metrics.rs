//! The metric families of SPEC §6, registered once per process, and the handles the request
//! path uses: resolved once per route, target and listener when a config generation is built,
//! never looked up by label per request.
//!
//! Every family is exposed from start-up: a family with no series yet still gets its `# HELP`
//! and `# TYPE` lines, and the label sets known from config start at 0.

use std::collections::HashMap;
use std::sync::OnceLock;

use http::Method;
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Remove every series of `vec` whose labels `gone` says belong to something that left.
fn prune_vec<T: MetricVecBuilder>(vec: &MetricVec<T>, gone: &dyn Fn(&HashMap<&str, &str>) -> bool) {
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if gone(&labels) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// Seconds; SPEC §6.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upstream request outcomes (`outcome` label of `gateway_upstream_requests_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Timeout,
    ConnectError,
    Reset,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::Reset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::Reset => "reset",
        }
    }
}

/// Every family of SPEC §6.
pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_requests_total: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_up: IntGaugeVec,
    pub upstream_in_flight: IntGaugeVec,
    pub circuit_state: IntGaugeVec,
    pub outlier_ejections_total: IntCounterVec,
    pub concurrency_rejected_total: IntCounterVec,
    pub retries_total: IntCounterVec,
    pub retry_budget_exhausted_total: IntCounterVec,
    pub rate_limited_total: IntCounterVec,
    pub rate_limit_store_errors_total: IntCounterVec,
    pub rate_limit_store_fallback: IntGaugeVec,
    pub auth_failures_total: IntCounterVec,
    pub integrity_failures_total: IntCounterVec,
    pub jwks_refresh_total: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub connections_active: IntGaugeVec,
    pub connections_total: IntCounterVec,
    pub bytes_received_total: IntCounterVec,
    pub bytes_sent_total: IntCounterVec,
    pub tls_handshakes_total: IntCounterVec,
    pub tls_cert_expiry: IntGaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub buffered_bytes: IntGauge,
    pub buffer_rejected_total: IntCounter,
    pub h2_connections_closed_total: IntCounterVec,
    pub h2_streams_reset_total: IntCounterVec,
    pub upstream_tls_handshakes_total: IntCounterVec,
    pub upstream_connections: IntGaugeVec,
    pub grpc_responses_total: IntCounterVec,
    pub cors_preflights_total: IntCounterVec,
    pub forward_auth_total: IntCounterVec,
    pub discovery_targets: IntGaugeVec,
    pub spans_exported_total: IntCounter,
    pub spans_dropped_total: IntCounter,
    pub discovery_lookups_total: IntCounterVec,
    /// (name, help, type) of every family, to expose the ones with no series yet.
    families: Vec<(String, String, &'static str)>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

struct Reg<'a> {
    registry: &'a Registry,
    families: Vec<(String, String, &'static str)>,
}

impl Reg<'_> {
    fn add<C: Collector + Clone + 'static>(
        &mut self,
        c: C,
        name: &str,
        help: &str,
        kind: &'static str,
    ) -> C {
        // Names are static and unique: registration cannot fail.
        let _ = self.registry.register(Box::new(c.clone()));
        self.families.push((name.into(), help.into(), kind));
        c
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c =
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
        self.add(c, name, help, "counter")
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
        self.add(g, name, help, "gauge")
    }

    fn histogram(&mut self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let h = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
            labels,
        )
        .expect("static metric definition");
        self.add(h, name, help, "histogram")
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let mut r = Reg {
            registry: &registry,
            families: Vec::new(),
        };
        let m = Self {
            requests_total: r.counter(
                "gateway_requests_total",
                "Requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
            request_duration: r.histogram(
                "gateway_request_duration_seconds",
                "Time from the request head to the last byte of the response, by route.",
                &["route"],
            ),
            upstream_requests_total: r.counter(
                "gateway_upstream_requests_total",
                "Attempts sent to upstream targets, by outcome.",
                &["upstream", "target", "outcome"],
            ),
            upstream_duration: r.histogram(
                "gateway_upstream_duration_seconds",
                "Time from sending to an upstream target to its response head.",
                &["upstream", "target"],
            ),
            upstream_up: r.gauge(
                "gateway_upstream_up",
                "1 when the target is up (healthy, not ejected).",
                &["upstream", "target"],
            ),
            upstream_in_flight: r.gauge(
                "gateway_upstream_in_flight",
                "Requests in flight to the target.",
                &["upstream", "target"],
            ),
            circuit_state: r.gauge(
                "gateway_circuit_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                &["upstream", "target"],
            ),
            outlier_ejections_total: r.counter(
                "gateway_outlier_ejections_total",
                "Targets ejected by passive outlier detection.",
                &["upstream", "target"],
            ),
            concurrency_rejected_total: r.counter(
                "gateway_concurrency_rejected_total",
                "Requests refused by max_in_flight or max_pending.",
                &["upstream", "reason"],
            ),
            retries_total: r.counter(
                "gateway_retries_total",
                "Retries sent, by upstream.",
                &["upstream"],
            ),
            retry_budget_exhausted_total: r.counter(
                "gateway_retry_budget_exhausted_total",
                "Retries not sent because the retry budget was spent.",
                &["upstream"],
            ),
            rate_limited_total: r.counter(
                "gateway_rate_limited_total",
                "Requests refused with 429.",
                &["route", "policy"],
            ),
            rate_limit_store_errors_total: r.counter(
                "gateway_rate_limit_store_errors_total",
                "Errors talking to the shared rate-limit store.",
                &["policy"],
            ),
            rate_limit_store_fallback: r.gauge(
                "gateway_rate_limit_store_fallback",
                "1 while the policy runs on its on_error fallback.",
                &["policy"],
            ),
            auth_failures_total: r.counter(
                "gateway_auth_failures_total",
                "Requests refused by JWT or API-key auth.",
                &["route", "reason"],
            ),
            integrity_failures_total: r.counter(
                "gateway_integrity_failures_total",
                "Requests refused by integrity checks.",
                &["route", "reason"],
            ),
            jwks_refresh_total: r.counter(
                "gateway_jwks_refresh_total",
                "JWKS fetches, by outcome.",
                &["policy", "outcome"],
            ),
            jwks_keys: r.gauge(
                "gateway_jwks_keys",
                "Keys in the policy's current key set.",
                &["policy"],
            ),
            connections_active: r.gauge(
                "gateway_connections_active",
                "Open client connections.",
                &["listener"],
            ),
            connections_total: r.counter(
                "gateway_connections_total",
                "Client connections served, by protocol.",
                &["listener", "protocol"],
            ),
            bytes_received_total: r.counter(
                "gateway_bytes_received_total",
                "Bytes read from clients (after TLS).",
                &["listener"],
            ),
            bytes_sent_total: r.counter(
                "gateway_bytes_sent_total",
                "Bytes written to clients (before TLS).",
                &["listener"],
            ),
            tls_handshakes_total: r.counter(
                "gateway_tls_handshakes_total",
                "TLS handshakes, by outcome.",
                &["listener", "outcome"],
            ),
            tls_cert_expiry: r.gauge(
                "gateway_tls_cert_expiry_timestamp_seconds",
                "When the served certificate expires (Unix seconds).",
                &["listener", "cert"],
            ),
            config_reloads_total: r.counter(
                "gateway_config_reloads_total",
                "Config reloads, by outcome.",
                &["outcome"],
            ),
            build_info: r.gauge(
                "gateway_build_info",
                "Always 1; the version label says which build runs.",
                &["version"],
            ),
            buffered_bytes: r
                .gauge(
                    "gateway_buffered_bytes",
                    "Body bytes held in the gateway's own buffers.",
                    &[],
                )
                .with_label_values(&[] as &[&str]),
            buffer_rejected_total: r
                .counter(
                    "gateway_buffer_rejected_total",
                    "Requests refused with 503 because buffering them would pass max_buffered_bytes.",
                    &[],
                )
                .with_label_values(&[] as &[&str]),
            h2_connections_closed_total: r.counter(
                "gateway_h2_connections_closed_total",
                "HTTP/2 client connections closed for abuse, by reason.",
                &["listener", "reason"],
            ),
            h2_streams_reset_total: r.counter(
                "gateway_h2_streams_reset_total",
                "HTTP/2 streams the gateway reset, by reason.",
                &["listener", "reason"],
            ),
            upstream_tls_handshakes_total: r.counter(
                "gateway_upstream_tls_handshakes_total",
                "TLS handshakes with upstream targets, by outcome.",
                &["upstream", "outcome"],
            ),
            upstream_connections: r.gauge(
                "gateway_upstream_connections",
                "Open connections to the target, by protocol.",
                &["upstream", "target", "protocol"],
            ),
            grpc_responses_total: r.counter(
                "gateway_grpc_responses_total",
                "gRPC responses by grpc-status name (the upstream's, or the gateway's own).",
                &["route", "code"],
            ),
            cors_preflights_total: r.counter(
                "gateway_cors_preflights_total",
                "CORS preflights answered by the gateway, by outcome.",
                &["route", "outcome"],
            ),
            forward_auth_total: r.counter(
                "gateway_forward_auth_total",
                "Forward-auth verdicts, by outcome.",
                &["route", "policy", "outcome"],
            ),
            spans_exported_total: r
                .counter(
                    "gateway_spans_exported_total",
                    "Spans the OTLP collector accepted.",
                    &[],
                )
                .with_label_values(&[] as &[&str]),
            spans_dropped_total: r
                .counter(
                    "gateway_spans_dropped_total",
                    "Spans dropped: the export queue was full (max_queue) or an export failed.",
                    &[],
                )
                .with_label_values(&[] as &[&str]),
            discovery_targets: r.gauge(
                "gateway_discovery_targets",
                "Targets the upstream's discover lookups found (the set in use).",
                &["upstream"],
            ),
            discovery_lookups_total: r.counter(
                "gateway_discovery_lookups_total",
                "DNS lookups for the upstream (discover and host:port targets), by outcome.",
                &["upstream", "outcome"],
            ),
            families: r.families,
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for outcome in ["success", "error"] {
            m.config_reloads_total
                .with_label_values(&[outcome])
                .inc_by(0);
        }
        m
    }

    /// Remove the series of routes, upstreams, targets, policies and listeners that `config`
    /// no longer has (after a reload): dashboards must not show them as still there.
    /// `targets`: (upstream, target id) of every endpoint in use, discovered ones included.
    pub fn prune(&self, config: &crate::config::Config, targets: &[(&str, &str)]) {
        use std::collections::HashSet;
        let routes: HashSet<&str> = config
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .chain(["none"])
            .collect();
        let upstreams: HashSet<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        let targets: HashSet<(String, String)> = targets
            .iter()
            .map(|(u, t)| (u.to_string(), t.to_string()))
            .collect();
        let policies: HashSet<&str> = config
            .jwt
            .keys()
            .chain(config.rate_limits.keys())
            .chain(config.api_keys.keys())
            .chain(config.integrity.keys())
            .map(String::as_str)
            .collect();
        let listeners: HashSet<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        let gone = |labels: &HashMap<&str, &str>| {
            let missing = |name: &str, set: &HashSet<&str>| {
                labels.get(name).is_some_and(|v| !set.contains(v))
            };
            if missing("route", &routes)
                || missing("upstream", &upstreams)
                || missing("policy", &policies)
                || missing("listener", &listeners)
            {
                return true;
            }
            match (labels.get("upstream"), labels.get("target")) {
                (Some(u), Some(t)) => !targets.contains(&((*u).to_string(), (*t).to_string())),
                _ => false,
            }
        };
        prune_vec(&self.requests_total, &gone);
        prune_vec(&self.request_duration, &gone);
        prune_vec(&self.upstream_requests_total, &gone);
        prune_vec(&self.upstream_duration, &gone);
        prune_vec(&self.upstream_up, &gone);
        prune_vec(&self.upstream_in_flight, &gone);
        prune_vec(&self.circuit_state, &gone);
        prune_vec(&self.outlier_ejections_total, &gone);
        prune_vec(&self.concurrency_rejected_total, &gone);
        prune_vec(&self.retries_total, &gone);
        prune_vec(&self.retry_budget_exhausted_total, &gone);
        prune_vec(&self.rate_limited_total, &gone);
        prune_vec(&self.rate_limit_store_errors_total, &gone);
        prune_vec(&self.rate_limit_store_fallback, &gone);
        prune_vec(&self.auth_failures_total, &gone);
        prune_vec(&self.integrity_failures_total, &gone);
        prune_vec(&self.jwks_refresh_total, &gone);
        prune_vec(&self.jwks_keys, &gone);
        prune_vec(&self.connections_active, &gone);
        prune_vec(&self.connections_total, &gone);
        prune_vec(&self.bytes_received_total, &gone);
        prune_vec(&self.bytes_sent_total, &gone);
        prune_vec(&self.tls_handshakes_total, &gone);
        prune_vec(&self.tls_cert_expiry, &gone);
        prune_vec(&self.h2_connections_closed_total, &gone);
        prune_vec(&self.h2_streams_reset_total, &gone);
        prune_vec(&self.upstream_tls_handshakes_total, &gone);
        prune_vec(&self.upstream_connections, &gone);
        prune_vec(&self.grpc_responses_total, &gone);
        prune_vec(&self.cors_preflights_total, &gone);
        prune_vec(&self.forward_auth_total, &gone);
        prune_vec(&self.discovery_targets, &gone);
        prune_vec(&self.discovery_lookups_total, &gone);
    }

    /// `gateway_discovery_lookups_total` of an upstream, every outcome at 0.
    pub fn discovery_lookups(&self, upstream: &str) -> [IntCounter; 3] {
        ["success", "error", "empty"].map(|o| {
            let c = self
                .discovery_lookups_total
                .with_label_values(&[upstream, o]);
            c.inc_by(0);
            c
        })
    }

    /// Forget a listener's certificate series (its certificates are about to be set anew).
    pub fn clear_certs(&self, listener: &str) {
        prune_vec(&self.tls_cert_expiry, &|l: &HashMap<&str, &str>| {
            l.get("listener") == Some(&listener)
        });
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&families, &mut buf);
        let mut out = String::from_utf8(buf).unwrap_or_default();
        for (name, help, kind) in &self.families {
            if !families.iter().any(|f| f.name() == name) {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            }
        }
        out
    }

    /// `gateway_cors_preflights_total` of one route: (allowed, refused), both at 0.
    pub fn cors(&self, route: &str) -> (IntCounter, IntCounter) {
        let c = |o: &str| {
            let c = self.cors_preflights_total.with_label_values(&[route, o]);
            c.inc_by(0);
            c
        };
        (c("allowed"), c("refused"))
    }

    /// `gateway_forward_auth_total` of one route and policy, every outcome at 0.
    pub fn forward_auth(
        &self,
        route: &str,
        policy: &str,
    ) -> crate::policy::forward_auth::AuthCounters {
        let c = |o: &str| {
            let c = self
                .forward_auth_total
                .with_label_values(&[route, policy, o]);
            c.inc_by(0);
            c
        };
        crate::policy::forward_auth::AuthCounters {
            allow: c("allow"),
            deny: c("deny"),
            error: c("error"),
        }
    }

    /// Handles for one route.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            duration: self.request_duration.with_label_values(&[route]),
            requests: RequestCounters::new(route, self.requests_total.clone()),
            grpc: GrpcCounters {
                route: route.to_string(),
                vec: self.grpc_responses_total.clone(),
                by_code: Default::default(),
            },
        }
    }

    /// Handles for one upstream target (or backup), every outcome at 0.
    pub fn endpoint(&self, upstream: &str, target: &str) -> EndpointMetrics {
        let outcome = |o: Outcome| {
            let c = self
                .upstream_requests_total
                .with_label_values(&[upstream, target, o.as_str()]);
            c.inc_by(0);
            c
        };
        let up = self.upstream_up.with_label_values(&[upstream, target]);
        let circuit = self.circuit_state.with_label_values(&[upstream, target]);
        let ejections = self
            .outlier_ejections_total
            .with_label_values(&[upstream, target]);
        ejections.inc_by(0);
        let conns = |protocol: &str| {
            self.upstream_connections
                .with_label_values(&[upstream, target, protocol])
        };
        let tls = |outcome: &str| {
            let c = self
                .upstream_tls_handshakes_total
                .with_label_values(&[upstream, outcome]);
            c.inc_by(0);
            c
        };
        EndpointMetrics {
            conns_h1: conns("h1"),
            conns_h2: conns("h2"),
            tls_ok: tls("success"),
            tls_error: tls("error"),
            ok: outcome(Outcome::Ok),
            error: outcome(Outcome::Error),
            timeout: outcome(Outcome::Timeout),
            connect_error: outcome(Outcome::ConnectError),
            reset: outcome(Outcome::Reset),
            duration: self
                .upstream_duration
                .with_label_values(&[upstream, target]),
            in_flight: self
                .upstream_in_flight
                .with_label_values(&[upstream, target]),
            up,
            circuit,
            ejections,
        }
    }

    /// Handles for one listener, every label value at 0.
    pub fn listener(&self, listener: &str, tls: bool) -> ListenerMetrics {
        let tls_handshake = |outcome: &str| {
            let c = self
                .tls_handshakes_total
                .with_label_values(&[listener, outcome]);
            c.inc_by(0);
            c
        };
        let (tls_ok, tls_error) = if tls {
            (Some(tls_handshake("success")), Some(tls_handshake("error")))
        } else {
            (None, None)
        };
        let conns = |protocol: &str| {
            let c = self
                .connections_total
                .with_label_values(&[listener, protocol]);
            c.inc_by(0);
            c
        };
        let closed = |a: H2Abuse| {
            let c = self
                .h2_connections_closed_total
                .with_label_values(&[listener, a.as_str()]);
            c.inc_by(0);
            c
        };
        let reset = |reason: &str| {
            let c = self
                .h2_streams_reset_total
                .with_label_values(&[listener, reason]);
            c.inc_by(0);
            c
        };
        ListenerMetrics {
            h2_closed: H2Abuse::ALL.map(closed),
            h2_reset_send_timeout: reset("send_timeout"),
            h2_reset_body_timeout: reset("body_timeout"),
            active: self.connections_active.with_label_values(&[listener]),
            h1: conns("h1"),
            h2: conns("h2"),
            bytes_in: self.bytes_received_total.with_label_values(&[listener]),
            bytes_out: self.bytes_sent_total.with_label_values(&[listener]),
            tls_ok,
            tls_error,
        }
    }

    /// Registers the upstream-level series of one upstream at 0.
    pub fn upstream(&self, upstream: &str) {
        self.retries_total.with_label_values(&[upstream]).inc_by(0);
        self.retry_budget_exhausted_total
            .with_label_values(&[upstream])
            .inc_by(0);
        for reason in ["in_flight", "pending"] {
            self.concurrency_rejected_total
                .with_label_values(&[upstream, reason])
                .inc_by(0);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-route handles.
#[derive(Debug)]
pub struct RouteMetrics {
    pub duration: Histogram,
    pub requests: RequestCounters,
    pub grpc: GrpcCounters,
}

/// `gateway_grpc_responses_total` of one route, by status name: a code's child is resolved the
/// first time it is seen (codes appear as they are seen, SPEC §8.5).
pub struct GrpcCounters {
    route: String,
    vec: IntCounterVec,
    by_code: [OnceLock<IntCounter>; 18],
}

impl std::fmt::Debug for GrpcCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcCounters")
            .field("route", &self.route)
            .finish()
    }
}

impl GrpcCounters {
    /// Count one response with grpc-status `code` (unknown codes as `UNKNOWN_CODE`).
    pub fn inc(&self, code: u32) {
        let i = (code as usize).min(17);
        self.by_code[i]
            .get_or_init(|| {
                let name = crate::grpc::CODE_NAMES
                    .get(i)
                    .copied()
                    .unwrap_or("UNKNOWN_CODE");
                self.vec.with_label_values(&[self.route.as_str(), name])
            })
            .inc();
    }
}

/// `gateway_requests_total` of one route, by method and status: each (method, status) child is
/// resolved the first time it is seen and cached, so the request path does no label lookup.
pub struct RequestCounters {
    route: String,
    vec: IntCounterVec,
    by_method: [OnceLock<Box<[OnceLock<IntCounter>]>>; METHODS.len() + 1],
}

impl std::fmt::Debug for RequestCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestCounters")
            .field("route", &self.route)
            .finish()
    }
}

/// The nine standard methods; anything else is labelled `OTHER`.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// The bounded `method` label value of a method.
pub fn method_label(method: &Method) -> (usize, &'static str) {
    match METHODS.iter().position(|m| m == method) {
        Some(i) => (i, METHOD_LABELS[i]),
        None => (METHODS.len(), "OTHER"),
    }
}

const METHOD_LABELS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl RequestCounters {
    fn new(route: &str, vec: IntCounterVec) -> Self {
        Self {
            route: route.to_string(),
            vec,
            by_method: Default::default(),
        }
    }

    /// Count one answered request.
    pub fn inc(&self, method: &Method, status: u16) {
        let (idx, label) = method_label(method);
        let status = status.clamp(100, 999);
        let table = self.by_method[idx].get_or_init(|| {
            (100..=999)
                .map(|_| OnceLock::new())
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        let slot = &table[usize::from(status - 100)];
        slot.get_or_init(|| {
            let buf = itoa_status(status);
            let s = std::str::from_utf8(&buf).unwrap_or("000");
            self.vec.with_label_values(&[self.route.as_str(), label, s])
        })
        .inc();
    }
}

fn itoa_status(status: u16) -> [u8; 3] {
    [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]
}

/// Per-target handles.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    pub ok: IntCounter,
    pub error: IntCounter,
    pub timeout: IntCounter,
    pub connect_error: IntCounter,
    pub reset: IntCounter,
    pub duration: Histogram,
    pub in_flight: IntGauge,
    pub up: IntGauge,
    pub circuit: IntGauge,
    pub ejections: IntCounter,
    /// `gateway_upstream_connections{protocol="h1"|"h2"}`.
    pub conns_h1: IntGauge,
    pub conns_h2: IntGauge,
    /// `gateway_upstream_tls_handshakes_total{outcome}` of the endpoint's upstream.
    pub tls_ok: IntCounter,
    pub tls_error: IntCounter,
}

impl EndpointMetrics {
    /// Handles registered nowhere (clients that are no upstream target, like forward auth's).
    pub fn detached() -> Self {
        let c = || IntCounter::new("detached", "detached").expect("static metric definition");
        let g = || IntGauge::new("detached", "detached").expect("static metric definition");
        let h = || {
            Histogram::with_opts(HistogramOpts::new("detached", "detached"))
                .expect("static metric definition")
        };
        Self {
            ok: c(),
            error: c(),
            timeout: c(),
            connect_error: c(),
            reset: c(),
            duration: h(),
            in_flight: g(),
            up: g(),
            circuit: g(),
            ejections: c(),
            conns_h1: g(),
            conns_h2: g(),
            tls_ok: c(),
            tls_error: c(),
        }
    }

    pub fn outcome(&self, o: Outcome) -> &IntCounter {
        match o {
            Outcome::Ok => &self.ok,
            Outcome::Error => &self.error,
            Outcome::Timeout => &self.timeout,
            Outcome::ConnectError => &self.connect_error,
            Outcome::Reset => &self.reset,
        }
    }
}

/// Per-listener handles.
/// Why the gateway closed an abusive HTTP/2 connection (`reason` label, SPEC §8.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H2Abuse {
    RapidReset,
    WindowUpdateFlood,
    PingFlood,
    SettingsFlood,
    ContinuationFlood,
    Stalled,
}

impl H2Abuse {
    pub const ALL: [H2Abuse; 6] = [
        H2Abuse::RapidReset,
        H2Abuse::WindowUpdateFlood,
        H2Abuse::PingFlood,
        H2Abuse::SettingsFlood,
        H2Abuse::ContinuationFlood,
        H2Abuse::Stalled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RapidReset => "rapid_reset",
            Self::WindowUpdateFlood => "window_update_flood",
            Self::PingFlood => "ping_flood",
            Self::SettingsFlood => "settings_flood",
            Self::ContinuationFlood => "continuation_flood",
            Self::Stalled => "stalled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// `gateway_h2_connections_closed_total`, one per `H2Abuse` in order.
    pub h2_closed: [IntCounter; 6],
    /// `gateway_h2_streams_reset_total{reason="send_timeout"|"body_timeout"}`.
    pub h2_reset_send_timeout: IntCounter,
    pub h2_reset_body_timeout: IntCounter,
    pub active: IntGauge,
    pub h1: IntCounter,
    pub h2: IntCounter,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub tls_ok: Option<IntCounter>,
    pub tls_error: Option<IntCounter>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exposed_before_any_traffic() {
        let m = Metrics::new();
        let text = m.render();
        for name in [
            "gateway_requests_total",
            "gateway_request_duration_seconds",
            "gateway_upstream_requests_total",
            "gateway_circuit_state",
            "gateway_rate_limit_store_fallback",
            "gateway_tls_cert_expiry_timestamp_seconds",
            "gateway_build_info",
            "gateway_buffered_bytes",
            "gateway_buffer_rejected_total",
            "gateway_h2_connections_closed_total",
            "gateway_h2_streams_reset_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(text.contains("gateway_config_reloads_total{outcome=\"error\"} 0"));
    }

    #[test]
    fn request_counters_label_methods_and_statuses_boundedly() {
        let m = Metrics::new();
        let r = m.route("users");
        r.requests.inc(&Method::GET, 200);
        r.requests.inc(&Method::GET, 200);
        r.requests.inc(&Method::from_bytes(b"BREW").unwrap(), 418);
        let text = m.render();
        assert!(text
            .contains("gateway_requests_total{method=\"GET\",route=\"users\",status=\"200\"} 2"));
        assert!(text
            .contains("gateway_requests_total{method=\"OTHER\",route=\"users\",status=\"418\"} 1"));
    }

    #[test]
    fn endpoint_outcomes_start_at_zero() {
        let m = Metrics::new();
        let _e = m.endpoint("users", "users-0");
        let text = m.render();
        for o in Outcome::ALL {
            assert!(text.contains(&format!(
                "gateway_upstream_requests_total{{outcome=\"{}\",target=\"users-0\",upstream=\"users\"}} 0",
                o.as_str()
            )));
        }
    }
}
