//! What travels with a request between tiers (linkerd's `addrs.rs` idea): the connection it
//! came in on, the client address, the path before `strip_prefix`, the verified claims, the
//! degraded-answer mark, and the header names the gateway sets. Producers put these in the
//! request's (or response's) extensions, consumers read them; neither imports the other.

pub mod conn_state;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderName;

pub use conn_state::ConnState;

/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What every request of a connection knows about where it came in.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client: the TCP peer, or the source a trusted PROXY header gave.
    pub peer: SocketAddr,
    /// The TCP peer (the balancer, when a PROXY header was believed).
    pub tcp_peer: SocketAddr,
    /// The peer's address as a header value, made once per connection for `x-forwarded-for`.
    pub peer_header: http::HeaderValue,
    pub listener: Arc<ListenerInfo>,
    pub h2: bool,
    /// The connection's timers and counters (a WebSocket tunnel turns the head timer off).
    pub state: Option<Arc<ConnState>>,
    /// The client certificate verified at the handshake (listeners with `client_auth`).
    pub client_cert: Option<Arc<ClientCert>>,
}

/// A verified client certificate, as the upstream is told (`x-client-cert-subject`,
/// `x-client-cert-sha256`).
#[derive(Debug)]
pub struct ClientCert {
    pub subject: http::HeaderValue,
    pub sha256: http::HeaderValue,
}

pub const X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
pub const X_CLIENT_CERT_SHA256: HeaderName = HeaderName::from_static("x-client-cert-sha256");

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        tcp_peer: SocketAddr,
        listener: Arc<ListenerInfo>,
        h2: bool,
    ) -> Self {
        let ip = crate::client_addr::canonical(peer.ip());
        Self {
            peer,
            tcp_peer,
            peer_header: http::HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| http::HeaderValue::from_static("unknown")),
            listener,
            h2,
            state: None,
            client_cert: None,
        }
    }
}

#[derive(Debug)]
pub struct ListenerInfo {
    pub name: String,
    pub https: bool,
    pub redirect_https: Option<u16>,
    pub proxy_protocol: bool,
    /// Plain listener that also takes HTTP/2 with prior knowledge.
    pub h2c: bool,
    /// `gateway_h2_streams_reset_total{reason="body_timeout"}` of this listener.
    pub h2_body_timeouts: prometheus::IntCounter,
}

/// The client's address as the gateway believes it (SPEC §4, trusted proxies); set by the
/// observe layer for the layers after it.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

/// The path a request was routed on, before `strip_prefix` (kept only when a `path` hash key
/// needs it).
#[derive(Clone, Debug)]
pub struct OriginalPath(pub String);

/// The verified claims of a request's token, for `claims_to_headers` and `jwt.CLAIM` keys.
#[derive(Debug, Clone)]
pub struct Claims(pub serde_json::Map<String, serde_json::Value>);

/// Marks a response as the route's degraded answer (for the access log).
#[derive(Clone, Copy, Debug)]
pub struct Degraded;
