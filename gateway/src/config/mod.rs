//! Configuration: the TOML file (`file.rs`), checked and turned into the runtime types below
//! (`validate.rs`). Parse, then validate, then publish: a config that fails here changes nothing.
//!
//! Every error names its place as `FILE:LINE:COL: message`; `gateway check` prints them all.

pub mod file;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;

pub use file::{BalancerKind, CheckMode, OnError, OnMissingKey, Store};

use crate::tls::CertMaterial;

/// Whether the config is loaded to be checked or to be run: an unset `*_env` variable is a
/// warning for `check` and an error for `run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Check,
    Run,
}

/// A validated config: everything the runtime needs, nothing left to interpret.
#[derive(Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    pub server: Server,
    pub admin: Option<Admin>,
    pub listeners: Vec<Listener>,
    pub limits: Limits,
    /// Sorted by name.
    pub upstreams: Vec<Upstream>,
    /// In file order: the first match wins.
    pub routes: Vec<Route>,
    pub jwt: BTreeMap<String, JwtPolicy>,
    pub api_keys: BTreeMap<String, ApiKeyPolicy>,
    pub integrity: BTreeMap<String, IntegrityPolicy>,
    pub rate_limits: BTreeMap<String, RateLimitPolicy>,
    pub redis: Option<RedisConfig>,
    pub cors: BTreeMap<String, CorsPolicy>,
    pub forward_auth: BTreeMap<String, ForwardAuthPolicy>,
    /// `[discovery]`: how DNS names are looked up.
    pub discovery: Discovery,
    /// Targets written as `host:port`, each name once: `run` resolves them before serving.
    pub hostnames: Vec<HostRef>,
    /// `[tracing]`.
    pub tracing: Tracing,
    /// `[access_log]`; `None`: the first-wave JSON line through the process log.
    pub access_log: Option<AccessLog>,
    /// The file as JSON with secrets redacted, for `GET /admin/config`.
    pub redacted: serde_json::Value,
}

/// Headers a `Connection` header can never remove (besides the identity headers), and
/// `request_headers` may not name (SPEC §8.2).
pub const PROTECTED_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// Identity headers the gateway sets from verified sources (SPEC §8.2) beyond the configured
/// `claims_to_headers`: removed from every incoming request.
pub const FIXED_IDENTITY_HEADERS: [&str; 3] = [
    "x-api-key-name",
    "x-client-cert-subject",
    "x-client-cert-sha256",
];

impl Config {
    /// Every header name the gateway sets from a verified source: removed from every incoming
    /// request on every route, and never removable by a `Connection` header.
    pub fn identity_headers(&self) -> Vec<HeaderName> {
        let mut out: Vec<HeaderName> = FIXED_IDENTITY_HEADERS
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        for p in self.jwt.values() {
            for (_, h) in &p.claims_to_headers {
                if !out.contains(h) {
                    out.push(h.clone());
                }
            }
        }
        for p in self.forward_auth.values() {
            for h in &p.copy_headers {
                if !out.contains(h) {
                    out.push(h.clone());
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub node_id: u16,
    pub worker_threads: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub trust_request_id: bool,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// The bearer token for `/admin/*`, read from `token_env`.
    pub token: Option<String>,
}

#[derive(Debug, PartialEq)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: Option<Tls>,
    pub redirect_https: Option<u16>,
    /// Every connection starts with a PROXY v1/v2 header (believed from `trusted_proxies`).
    pub proxy_protocol: bool,
    /// Plain listener: HTTP/2 with prior knowledge too (gRPC without TLS).
    pub h2c: bool,
}

#[derive(Debug, PartialEq)]
pub struct Tls {
    /// The first is served for unknown or absent SNI.
    pub certs: Vec<CertSource>,
    pub min_version: TlsVersion,
    /// Client certificates verified against a CA (mTLS at the edge).
    pub client_auth: Option<ClientAuth>,
}

/// `client_auth = { ca_file, required }`: the CA's certificates (read at load) and whether a
/// handshake without a client certificate fails.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientAuth {
    pub ca_file: PathBuf,
    pub ca_pem: Vec<u8>,
    pub required: bool,
}

#[derive(Debug)]
pub enum CertSource {
    /// Read and parsed at validation, so `check` catches a bad file.
    Files {
        cert: PathBuf,
        key: PathBuf,
        material: Arc<CertMaterial>,
    },
    /// A certificate for localhost and 127.0.0.1 made at start.
    SelfSigned,
}

/// Same certificate source: the same files holding the same bytes (a renewed certificate at
/// the same path is a change), or both self-signed.
impl PartialEq for CertSource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Files {
                    cert: c1,
                    key: k1,
                    material: m1,
                },
                Self::Files {
                    cert: c2,
                    key: k2,
                    material: m2,
                },
            ) => {
                c1 == c2
                    && k1 == k2
                    && m1.certified.cert == m2.certified.cert
                    && m1.key_der_hash == m2.key_der_hash
            }
            (Self::SelfSigned, Self::SelfSigned) => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub h2_max_concurrent_streams: u32,
    pub encoded_slashes: EncodedSlashes,
    /// A buffered request body must arrive whole within this; a streamed one may not pause longer.
    pub body_timeout: Duration,
    /// Response bytes the client takes none of for this long: stream reset / connection closed.
    pub send_timeout: Duration,
    /// Body bytes held in the gateway's own buffers at once.
    pub max_buffered_bytes: u64,
    /// WINDOW_UPDATE frames allowed per DATA frame sent (plus 1,000); 0 = rule off.
    pub h2_max_window_updates_per_data: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_header_bytes: 65_536,
            max_headers: 100,
            max_body_bytes: 10 << 20,
            h2_max_concurrent_streams: 256,
            encoded_slashes: EncodedSlashes::Reject,
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_buffered_bytes: 256 << 20,
            h2_max_window_updates_per_data: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    pub balancer: BalancerKind,
    pub hash_on: Option<KeySpec>,
    pub on_missing_key: OnMissingKey,
    pub connect_timeout: Duration,
    pub targets: Vec<Target>,
    /// Maglev only; `None` means the default size.
    pub maglev_table_size: Option<usize>,
    pub health: Option<HealthCheck>,
    pub outlier: Option<OutlierPolicy>,
    pub circuit_breaker: Option<BreakerPolicy>,
    pub max_in_flight: Option<u64>,
    pub max_pending: Option<u64>,
    /// Idle pooled connections kept per endpoint; more are closed.
    pub max_idle_per_target: usize,
    /// What the gateway speaks to the upstream.
    pub protocol: Protocol,
    /// TLS to the upstream (`None`: plain text).
    pub tls: Option<UpstreamTls>,
    /// HTTP/2 upstreams: streams per connection before another connection is opened.
    pub h2_max_streams_per_connection: u32,
    /// `discover`: the targets come from DNS (then `targets` is empty in the file's config
    /// and holds the discovered ones in a running generation's upstream).
    pub discover: Option<Discover>,
}

/// `discover` of an upstream (SPEC §8.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Discover {
    /// One target per A/AAAA address of `name`, on `port`.
    Dns { name: String, port: u16 },
    /// One target per SRV record of `name`.
    Srv { name: String },
}

impl Discover {
    pub fn name(&self) -> &str {
        match self {
            Self::Dns { name, .. } | Self::Srv { name } => name,
        }
    }

    /// `dns` or `dns_srv`, as written.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dns { .. } => "dns",
            Self::Srv { .. } => "dns_srv",
        }
    }
}

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// OTLP/HTTP protobuf endpoint; `None`: no export.
    pub otlp_endpoint: Option<http::Uri>,
    /// Sent with every export (from `headers_env`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub service_name: String,
    /// For requests without a parent.
    pub sample_ratio: f64,
    /// Spans waiting for export; past it new spans are dropped.
    pub max_queue: usize,
}

impl Default for Tracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            headers: Vec::new(),
            service_name: "gateway".into(),
            sample_ratio: 1.0,
            max_queue: 4096,
        }
    }
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub format: LogFormat,
    pub fields: Vec<LogField>,
    /// `None`: stdout.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    /// nginx's `combined`, then ` key=value` for the other fields.
    Combined,
}

/// An access-log field (SPEC §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogField {
    Time,
    RequestId,
    TraceId,
    ClientIp,
    Method,
    Host,
    Path,
    Protocol,
    Status,
    BytesSent,
    DurationMs,
    UpstreamMs,
    Route,
    Upstream,
    Target,
    Listener,
    UserAgent,
    Referer,
    Error,
}

impl LogField {
    pub const ALL: [LogField; 19] = [
        Self::Time,
        Self::RequestId,
        Self::TraceId,
        Self::ClientIp,
        Self::Method,
        Self::Host,
        Self::Path,
        Self::Protocol,
        Self::Status,
        Self::BytesSent,
        Self::DurationMs,
        Self::UpstreamMs,
        Self::Route,
        Self::Upstream,
        Self::Target,
        Self::Listener,
        Self::UserAgent,
        Self::Referer,
        Self::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Time => "time",
            Self::RequestId => "request_id",
            Self::TraceId => "trace_id",
            Self::ClientIp => "client_ip",
            Self::Method => "method",
            Self::Host => "host",
            Self::Path => "path",
            Self::Protocol => "protocol",
            Self::Status => "status",
            Self::BytesSent => "bytes_sent",
            Self::DurationMs => "duration_ms",
            Self::UpstreamMs => "upstream_ms",
            Self::Route => "route",
            Self::Upstream => "upstream",
            Self::Target => "target",
            Self::Listener => "listener",
            Self::UserAgent => "user_agent",
            Self::Referer => "referer",
            Self::Error => "error",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// `[discovery]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// DNS servers; empty: `/etc/resolv.conf`.
    pub resolvers: Vec<SocketAddr>,
    /// A record's TTL is clamped into `[min_refresh, max_refresh]`.
    pub min_refresh: Duration,
    pub max_refresh: Duration,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            resolvers: Vec::new(),
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(30),
        }
    }
}

/// `protocol` of an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2: by ALPN over TLS, with prior knowledge in plain text.
    H2,
    /// TLS: ALPN `h2`, else `http/1.1`; plain text: HTTP/1.1.
    Auto,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2 => "h2",
            Self::Auto => "auto",
        }
    }
}

/// TLS to an upstream, checked and built at load (a bad CA or key file fails `check`).
#[derive(Clone)]
pub struct UpstreamTls {
    /// rustls client config with the roots, the client certificate and the ALPN list.
    pub client: Arc<rustls::ClientConfig>,
    /// The name checked and sent as SNI (else the target's host).
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
    /// The bytes of the files named (CA, client certificate, client key): a change of any is a
    /// change of the upstream.
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name
            && self.insecure_skip_verify == other.insecure_skip_verify
            && self.files == other.files
            && self.client.alpn_protocols == other.client.alpn_protocols
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field(
                "files",
                &self.files.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Active health checks of every target and backup of an upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// `grpc = true`: grpc.health.v1.Health/Check over HTTP/2 instead of a GET on `path`.
    pub grpc: bool,
    /// The service asked about (`""`: the server as a whole).
    pub service: String,
}

/// Passive outlier detection.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// Per-target circuit breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    pub error_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub half_open_requests: u32,
}

/// A route's retries.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    pub budget: f64,
    pub on: RetryOn,
}

/// What a retry is for (connect errors always move on, whatever this says).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub reset: bool,
    pub timeout: bool,
    pub any_5xx: bool,
    pub statuses: Vec<u16>,
}

impl RetryOn {
    pub fn status(&self, status: u16) -> bool {
        (self.any_5xx && (500..600).contains(&status)) || self.statuses.contains(&status)
    }
}

/// A `[jwt.NAME]` policy.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtPolicy {
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub source: JwtSource,
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub leeway: Duration,
    pub max_token_bytes: usize,
    /// (claim, header) pairs; incoming copies of these headers are always removed first.
    pub claims_to_headers: Vec<(String, HeaderName)>,
}

/// `[rate_limits.NAME]`: GCRA with an emission interval of `per / rate` and room for `burst`
/// requests at once; one bucket per (policy, key value).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitPolicy {
    pub key: KeySpec,
    pub rate: u64,
    pub per: Duration,
    pub burst: u64,
    pub store: Store,
}

impl RateLimitPolicy {
    /// The time one request's token takes to come back (`per / rate`), at least 1 µs.
    pub fn emission_interval(&self) -> Duration {
        (self.per / self.rate.clamp(1, u64::from(u32::MAX)) as u32).max(Duration::from_micros(1))
    }
}

/// `[redis]`: where `store = "redis"` limits live, and what happens when it is unreachable.
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    pub url: String,
    pub on_error: OnError,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

/// Where a JWT policy's keys come from.
#[derive(Clone)]
pub enum JwtSource {
    /// An HMAC secret read from `secret_env`.
    Secret(Vec<u8>),
    /// A JWKS file, read (and checked) at load, watched for changes while running.
    File {
        path: PathBuf,
        keys: crate::jwks::KeySet,
    },
    /// A JWKS URL (https), fetched at start and refreshed in the background.
    Url(String),
}

/// Same source: same secret, same file path (its content is watched), same URL.
impl PartialEq for JwtSource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Secret(a), Self::Secret(b)) => a == b,
            (Self::File { path: a, .. }, Self::File { path: b, .. }) => a == b,
            (Self::Url(a), Self::Url(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Debug for JwtSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret(<redacted>)"),
            Self::File { path, keys } => {
                write!(f, "File({}, {} keys)", path.display(), keys.keys.len())
            }
            Self::Url(u) => write!(f, "Url({u})"),
        }
    }
}

/// An `[api_keys.NAME]` policy: SHA-256 digests of the keys, by name.
#[derive(Clone, PartialEq)]
pub struct ApiKeyPolicy {
    pub header: HeaderName,
    pub keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for ApiKeyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyPolicy")
            .field("header", &self.header)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// An `[integrity.NAME]` policy.
#[derive(Clone, PartialEq)]
pub struct IntegrityPolicy {
    pub content_digest: CheckMode,
    pub signature: CheckMode,
    /// (keyid, HMAC secret) from `signature_keys_file`.
    pub keys: Vec<(String, Vec<u8>)>,
    pub required_components: Vec<String>,
    pub max_skew: Duration,
    pub max_nonces: usize,
    pub json: bool,
}

impl std::fmt::Debug for IntegrityPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrityPolicy")
            .field("content_digest", &self.content_digest)
            .field("signature", &self.signature)
            .field("keys", &self.keys.len())
            .field("required_components", &self.required_components)
            .finish_non_exhaustive()
    }
}

/// The degraded answer of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub status: http::StatusCode,
    pub content_type: HeaderValue,
    pub body: bytes::Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What hashing and the `target` metric label use (default: the address).
    pub id: String,
    /// The address; for a target written as `host:port`, the unspecified address with the
    /// port (its addresses are looked up at run time: `host`).
    pub addr: SocketAddr,
    /// The DNS name the target was written with (`addr = "host:port"`) or discovered under
    /// (SRV host, `discover` name), lower-case without the trailing dot: what upstream TLS
    /// verifies, and, with `resolve`, what its addresses come from.
    pub host: Option<String>,
    /// The target follows `host`'s addresses (a hostname `addr` or an SRV record), rather
    /// than standing for one address.
    pub resolve: bool,
    pub weight: u32,
    pub backups: Vec<SocketAddr>,
    pub slots: Vec<RangeInclusive<u16>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub matcher: Match,
    pub upstream: String,
    pub strip_prefix: Option<String>,
    /// The policies the route names (each a table of the config).
    pub policies: RoutePolicies,
    /// Per attempt: the upstream's response head must start within it.
    pub timeout: Duration,
    /// All attempts together.
    pub total_timeout: Duration,
    pub host_rewrite: Option<HeaderValue>,
    pub retry: Option<RetryPolicy>,
    pub fallback: Option<Fallback>,
    pub allow_ips: Vec<IpNet>,
    pub deny_ips: Vec<IpNet>,
    /// Upgrade requests (`Upgrade: websocket`) are tunnelled to the upstream.
    pub websocket: bool,
    /// Overrides `[limits] idle_timeout` while the route's requests are in flight (and for
    /// its WebSocket tunnels); `Some(ZERO)`: no idle limit (SSE, long gRPC streams).
    pub idle_timeout: Option<Duration>,
    /// Set, added and removed on the request after the policies, before forwarding.
    pub request_headers: Option<HeaderRules>,
    /// Set, added and removed on every response of the route.
    pub response_headers: Option<HeaderRules>,
    /// The `[cors.NAME]` the route answers with.
    pub cors: Option<String>,
    /// `client_cert = "required"`: 403 without a verified client certificate.
    pub client_cert_required: bool,
    /// `compress = true`: gzip, br or zstd by `Accept-Encoding`.
    pub compress: bool,
    /// The `[forward_auth.NAME]` the route asks first.
    pub forward_auth: Option<String>,
}

/// A `[forward_auth.NAME]` policy (SPEC §8.4): an auth service asked before the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardAuthPolicy {
    /// Where the auth service listens, and the path and query asked.
    pub addr: SocketAddr,
    pub path_and_query: String,
    /// The `Host` sent (the URL's authority).
    pub authority: String,
    pub https: bool,
    pub tls: Option<UpstreamTls>,
    pub timeout: Duration,
    /// Lower-case client header names passed to the auth service.
    pub forward_headers: Vec<HeaderName>,
    /// Headers of its 2xx answer set on the upstream request.
    pub copy_headers: Vec<HeaderName>,
    /// Unreachable, timed out or 5xx: allow (true) or deny with 503 (false).
    pub allow_on_error: bool,
    /// How long a 2xx verdict is kept (zero: never).
    pub cache: Duration,
}

/// `set` replaces, `add` appends, `remove` deletes; values are literal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    /// Apply the rules to a header map: remove, then set, then add.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

/// A `[cors.NAME]` policy (SPEC §8.4).
#[derive(Debug, Clone, PartialEq)]
pub struct CorsPolicy {
    /// Exact origins; `any` for `["*"]`.
    pub origins: Vec<String>,
    pub any_origin: bool,
    pub methods: Vec<Method>,
    /// Lower-case names.
    pub headers: Vec<String>,
    pub expose: Vec<String>,
    pub credentials: bool,
    pub max_age: Duration,
}

/// Names of the policy tables a route uses; `None` is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePolicies {
    pub jwt: Option<String>,
    pub api_key: Option<String>,
    pub integrity: Option<String>,
    pub rate_limit: Option<String>,
}

/// What to do with `%2F` and `%5C` in a request path (`[limits] encoded_slashes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncodedSlashes {
    /// 400.
    #[default]
    Reject,
    /// Kept (upper-case hex), never a separator.
    Keep,
}

#[derive(Debug, Clone, Default)]
pub struct Match {
    pub host: Option<HostMatch>,
    pub path: Option<String>,
    /// Without a trailing `/`; matches whole segments.
    pub path_prefix: Option<String>,
    pub path_regex: Option<regex::Regex>,
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `case_sensitive = false`: path, prefix and regex compare ASCII case-insensitively.
    pub case_insensitive: bool,
}

/// Same rule; a regex compares by its source text.
impl PartialEq for Match {
    fn eq(&self, other: &Self) -> bool {
        self.host == other.host
            && self.path == other.path
            && self.path_prefix == other.path_prefix
            && self.path_regex.as_ref().map(regex::Regex::as_str)
                == other.path_regex.as_ref().map(regex::Regex::as_str)
            && self.methods == other.methods
            && self.headers == other.headers
            && self.case_insensitive == other.case_insensitive
    }
}

/// A host to match, lower-case, without port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com` (stored with the leading dot).
    Suffix(String),
}

/// What loading produced: the config and any warnings (already formatted).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// A target written as `host:port`, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRef {
    pub host: String,
    pub port: u16,
    /// `FILE:LINE:COL`.
    pub at: String,
}

/// Read, parse and validate `path`. On failure, every error formatted as `FILE:LINE:COL: message`.
pub fn load(path: &Path, mode: Mode) -> Result<Loaded, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read config: {e}", path.display())])?;
    load_str(path, &text, mode)
}

/// Parse and validate config text that came from `path` (used for messages and relative files).
pub fn load_str(path: &Path, text: &str, mode: Mode) -> Result<Loaded, Vec<String>> {
    let source = Source::new(path, text);
    let file: file::File = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let msg = e.message().trim().to_string();
            return Err(vec![source.format(e.span(), &msg)]);
        }
    };
    validate::validate(&source, file, mode)
}

/// The config text with its line index, to turn byte spans into `LINE:COL`.
pub(crate) struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            path,
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }

    /// `FILE:LINE:COL` of a span.
    fn at(&self, span: &Range<usize>) -> String {
        let (line, col) = self.line_col(span.start);
        format!("{}:{line}:{col}", self.path.display())
    }

    fn format(&self, span: Option<Range<usize>>, message: &str) -> String {
        match span {
            Some(s) => format!("{}: {message}", self.at(&s)),
            None => format!("{}: {message}", self.path.display()),
        }
    }
}

impl Config {
    /// One line for `gateway check` and the start-up log.
    pub fn summary(&self) -> String {
        let targets: usize = self.upstreams.iter().map(|u| u.targets.len()).sum();
        let backups: usize = self
            .upstreams
            .iter()
            .flat_map(|u| &u.targets)
            .map(|t| t.backups.len())
            .sum();
        let discovering = self
            .upstreams
            .iter()
            .filter(|u| u.discover.is_some())
            .count();
        let discovered = if discovering > 0 {
            format!(", {discovering} discovering by DNS")
        } else {
            String::new()
        };
        format!(
            "{} listener{}, {} route{}, {} upstream{} ({} target{}, {} backup{}{discovered}), admin {}",
            self.listeners.len(),
            plural(self.listeners.len()),
            self.routes.len(),
            plural(self.routes.len()),
            self.upstreams.len(),
            plural(self.upstreams.len()),
            targets,
            plural(targets),
            backups,
            plural(backups),
            self.admin
                .as_ref()
                .map_or_else(|| "off".to_string(), |a| a.listen.to_string()),
        )
    }

    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Where a key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySpec {
    /// The client address (the TCP peer, or what trusted proxies say).
    Ip,
    /// A request header's value.
    Header(HeaderName),
    /// A claim of the verified JWT.
    Jwt(String),
    /// A query parameter, percent-decoded.
    Query(String),
    /// A cookie's value.
    Cookie(String),
    /// The request path as received.
    Path,
    /// The route's name (rate limits only).
    Route,
}

impl KeySpec {
    /// Parse `ip`, `header.NAME`, `jwt.CLAIM`, `query.NAME`, `cookie.NAME`, `path` or `route`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let named = |prefix: &str| -> Result<Option<String>, String> {
            match text.strip_prefix(prefix) {
                None => Ok(None),
                Some("") => Err(format!("key {text:?} needs a name after {prefix:?}")),
                Some(name) => Ok(Some(name.to_string())),
            }
        };
        match text {
            "ip" => return Ok(Self::Ip),
            "path" => return Ok(Self::Path),
            "route" => return Ok(Self::Route),
            _ => {}
        }
        if let Some(name) = named("header.")? {
            let header = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("key {text:?}: {name:?} is not a valid header name"))?;
            return Ok(Self::Header(header));
        }
        if let Some(claim) = named("jwt.")? {
            return Ok(Self::Jwt(claim));
        }
        if let Some(q) = named("query.")? {
            return Ok(Self::Query(q));
        }
        if let Some(c) = named("cookie.")? {
            return Ok(Self::Cookie(c));
        }
        Err(format!(
            "unknown key {text:?}: use ip, header.NAME, jwt.CLAIM, query.NAME, cookie.NAME, path or route"
        ))
    }
}

/// Redis Cluster's slot count: `slots` balancers split `0..SLOT_COUNT` among their targets.
pub const SLOT_COUNT: usize = 16384;

/// Whether `n` is prime (Maglev table sizes must be).
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}
