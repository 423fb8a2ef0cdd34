//! The config file as written: serde structs 1:1 with the TOML of SPEC §3.
//!
//! Nothing here is interpreted. Values that need checking (durations, sizes, addresses,
//! CIDRs, names that refer to other tables) stay `Spanned` strings so that `validate.rs`
//! can report every problem with its `FILE:LINE:COL`. Unknown keys are refused here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A name as written, with where it was written.
pub type Name = Spanned<String>;

/// The whole file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub server: ServerFile,
    pub admin: Option<Spanned<AdminFile>>,
    #[serde(default)]
    pub listeners: Vec<Spanned<ListenerFile>>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub jwt: BTreeMap<Name, Spanned<JwtFile>>,
    #[serde(default)]
    pub api_keys: BTreeMap<Name, Spanned<ApiKeysFile>>,
    #[serde(default)]
    pub integrity: BTreeMap<Name, Spanned<IntegrityFile>>,
    #[serde(default)]
    pub rate_limits: BTreeMap<Name, Spanned<RateLimitFile>>,
    pub redis: Option<Spanned<RedisFile>>,
    #[serde(default)]
    pub cors: BTreeMap<Name, Spanned<CorsFile>>,
    #[serde(default)]
    pub forward_auth: BTreeMap<Name, Spanned<ForwardAuthFile>>,
    #[serde(default)]
    pub upstreams: BTreeMap<Name, Spanned<UpstreamFile>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteFile>>,
    pub discovery: Option<Spanned<DiscoveryFile>>,
    pub tracing: Option<Spanned<TracingFile>>,
    pub access_log: Option<Spanned<AccessLogFile>>,
}

/// `[tracing]`: span export (trace context is propagated without it).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    pub otlp_endpoint: Option<Spanned<String>>,
    pub headers_env: Option<Spanned<String>>,
    pub service_name: Option<Spanned<String>>,
    pub sample_ratio: Option<Spanned<f64>>,
    pub max_queue: Option<Spanned<i64>>,
}

/// `[access_log]`: the access log's format, fields and destination.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    pub format: Option<Spanned<String>>,
    pub fields: Option<Vec<Spanned<String>>>,
    pub path: Option<Spanned<String>>,
}

/// `[discovery]`: how DNS names of targets and `discover` are looked up.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryFile {
    pub resolvers: Option<Vec<Spanned<String>>>,
    pub min_refresh: Option<Spanned<String>>,
    pub max_refresh: Option<Spanned<String>>,
}

/// `[upstreams.X] discover = { ... }`: the targets come from DNS.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverFile {
    pub dns: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub dns_srv: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub node_id: Option<Spanned<i64>>,
    pub node_id_env: Option<Spanned<String>>,
    pub worker_threads: Option<Spanned<i64>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub trust_request_id: Option<bool>,
    pub drain_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub name: Name,
    pub listen: Spanned<String>,
    pub tls: Option<Spanned<TlsFile>>,
    pub proxy_protocol: Option<Spanned<bool>>,
    pub redirect_https: Option<Spanned<i64>>,
    pub h2c: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub certs: Option<Vec<Spanned<CertFile>>>,
    pub self_signed: Option<Spanned<bool>>,
    pub min_version: Option<Spanned<String>>,
    pub client_auth: Option<Spanned<ClientAuthFile>>,
}

/// `tls.client_auth` of a listener: client certificates at the edge.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthFile {
    pub ca_file: Spanned<String>,
    pub required: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_connections: Option<Spanned<i64>>,
    pub header_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<SizeValue>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<SizeValue>>,
    pub h2_max_concurrent_streams: Option<Spanned<i64>>,
    pub encoded_slashes: Option<Spanned<String>>,
    pub body_timeout: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<String>>,
    pub max_buffered_bytes: Option<Spanned<SizeValue>>,
    pub h2_max_window_updates_per_data: Option<Spanned<i64>>,
}

/// A size: bytes as an integer, or a string with a unit (`"10MiB"`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    pub algorithms: Vec<Spanned<String>>,
    pub jwks_file: Option<Spanned<String>>,
    pub jwks_url: Option<Spanned<String>>,
    pub secret_env: Option<Spanned<String>>,
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub leeway: Option<Spanned<String>>,
    pub max_token_bytes: Option<Spanned<i64>>,
    pub claims_to_headers: Option<BTreeMap<String, Spanned<String>>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysFile {
    pub header: Option<Spanned<String>>,
    pub keys_file: Spanned<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckMode {
    Required,
    IfPresent,
    Off,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrityFile {
    pub content_digest: Option<CheckMode>,
    pub signature: Option<CheckMode>,
    pub signature_keys_file: Option<Spanned<String>>,
    pub required_components: Option<Vec<Spanned<String>>>,
    pub max_skew: Option<Spanned<String>>,
    pub max_nonces: Option<Spanned<i64>>,
    pub json: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Store {
    Local,
    Redis,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub key: Spanned<String>,
    pub rate: Spanned<i64>,
    pub per: Spanned<String>,
    pub burst: Spanned<i64>,
    pub store: Option<Spanned<Store>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    Local,
    Allow,
    Deny,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    pub url_env: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub on_error: Option<OnError>,
}

/// The balancer names of SPEC §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    RoundRobin,
    WeightedRoundRobin,
    Random,
    LeastRequest,
    Hash,
    ConsistentHash,
    Maglev,
    Slots,
}

impl BalancerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::Random => "random",
            Self::LeastRequest => "least_request",
            Self::Hash => "hash",
            Self::ConsistentHash => "consistent_hash",
            Self::Maglev => "maglev",
            Self::Slots => "slots",
        }
    }

    /// Whether the balancer needs a `hash_on` key.
    pub fn is_hashed(self) -> bool {
        matches!(
            self,
            Self::Hash | Self::ConsistentHash | Self::Maglev | Self::Slots
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingKey {
    Reject,
    Random,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub balancer: Option<Spanned<BalancerKind>>,
    pub hash_on: Option<Spanned<String>>,
    pub on_missing_key: Option<Spanned<OnMissingKey>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub targets: Option<Spanned<Vec<Spanned<TargetFile>>>>,
    pub discover: Option<Spanned<DiscoverFile>>,
    pub health: Option<Spanned<HealthFile>>,
    pub outlier: Option<Spanned<OutlierFile>>,
    pub circuit_breaker: Option<Spanned<CircuitBreakerFile>>,
    pub max_in_flight: Option<Spanned<i64>>,
    pub max_pending: Option<Spanned<i64>>,
    pub maglev_table_size: Option<Spanned<i64>>,
    pub max_idle_per_target: Option<Spanned<i64>>,
    pub protocol: Option<Spanned<String>>,
    pub tls: Option<Spanned<UpstreamTlsFile>>,
    pub h2_max_streams_per_connection: Option<Spanned<i64>>,
}

/// `[upstreams.X] tls = { ... }`: TLS to the upstream.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    pub ca_file: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
    pub insecure_skip_verify: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    pub addr: Spanned<String>,
    pub id: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
    pub backups: Option<Vec<Spanned<String>>>,
    pub slots: Option<Vec<Spanned<SlotsValue>>>,
}

/// A slot range as written: `"0-5460"`, `"42"` or `42`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SlotsValue {
    One(i64),
    Range(String),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub healthy_threshold: Option<Spanned<i64>>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
    pub grpc: Option<Spanned<bool>>,
    pub service: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub base_ejection: Option<Spanned<String>>,
    pub max_ejection: Option<Spanned<String>>,
    pub max_ejection_percent: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerFile {
    pub error_ratio: Option<Spanned<f64>>,
    pub min_requests: Option<Spanned<i64>>,
    pub window: Option<Spanned<String>>,
    pub open_for: Option<Spanned<String>>,
    pub half_open_requests: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Name,
    #[serde(rename = "match")]
    pub matcher: Option<Spanned<MatchFile>>,
    pub upstream: Name,
    pub strip_prefix: Option<Spanned<String>>,
    pub jwt: Option<Name>,
    pub api_key: Option<Name>,
    pub integrity: Option<Name>,
    pub rate_limit: Option<Name>,
    pub timeout: Option<Spanned<String>>,
    pub total_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub retry: Option<Spanned<RetryFile>>,
    pub fallback: Option<Spanned<FallbackFile>>,
    pub compress: Option<Spanned<bool>>,
    pub allow_ips: Option<Spanned<Vec<Spanned<String>>>>,
    pub deny_ips: Option<Spanned<Vec<Spanned<String>>>>,
    pub websocket: Option<Spanned<bool>>,
    pub host_rewrite: Option<Spanned<String>>,
    pub client_cert: Option<Spanned<String>>,
    pub request_headers: Option<Spanned<HeaderRulesFile>>,
    pub response_headers: Option<Spanned<HeaderRulesFile>>,
    pub cors: Option<Name>,
    pub forward_auth: Option<Name>,
}

/// `[forward_auth.NAME]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthFile {
    pub url: Spanned<String>,
    pub tls: Option<Spanned<UpstreamTlsFile>>,
    pub timeout: Option<Spanned<String>>,
    pub forward_headers: Option<Vec<Spanned<String>>>,
    pub copy_headers: Option<Vec<Spanned<String>>>,
    pub on_error: Option<Spanned<String>>,
    pub cache: Option<Spanned<String>>,
}

/// `request_headers` / `response_headers` of a route.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesFile {
    pub set: Option<BTreeMap<Name, Spanned<String>>>,
    pub add: Option<BTreeMap<Name, Spanned<String>>>,
    pub remove: Option<Vec<Spanned<String>>>,
}

/// `[cors.NAME]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    pub allow_origins: Spanned<Vec<Spanned<String>>>,
    pub allow_methods: Option<Vec<Spanned<String>>>,
    pub allow_headers: Option<Vec<Spanned<String>>>,
    pub expose_headers: Option<Vec<Spanned<String>>>,
    pub allow_credentials: Option<Spanned<bool>>,
    pub max_age: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub path_regex: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub headers: Option<BTreeMap<Name, Spanned<String>>>,
    pub case_sensitive: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    pub attempts: Spanned<i64>,
    pub budget: Option<Spanned<f64>>,
    pub on: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackFile {
    pub status: Spanned<i64>,
    pub content_type: Option<String>,
    pub body: Option<String>,
}
