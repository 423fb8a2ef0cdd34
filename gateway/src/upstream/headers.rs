//! What the upstream sees: the request rewritten for forwarding (origin-form URI, Host,
//! `x-forwarded-*`, hop-by-hop headers removed) and the response cleaned on its way back.
//!
//! Client address (SPEC §4): the TCP peer, or, only when the peer is a trusted proxy, the
//! last untrusted address of `X-Forwarded-For`. Incoming `x-forwarded-*` from untrusted peers
//! are dropped and replaced.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Uri, Version};
use ipnet::IpNet;

use crate::error::GatewayError;

use crate::client_addr::{canonical, is_trusted};
use crate::ctx::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1, plus the legacy ones).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// One of `HOP_BY_HOP` (a match on the lowercase name: a length switch and one compare).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
    )
}

/// Headers a `Connection` header may not remove: the gateway's own and those that frame
/// the message (removing them would change what the upstream or the client reads).
fn is_protected(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONTENT_LENGTH
        || crate::config::PROTECTED_HEADERS.contains(&name.as_str())
}

/// Remove hop-by-hop headers and every header the `Connection` header names (except the
/// protected ones).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names (standard names compare as
    // small integers) instead of a hash lookup per hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !is_protected(n))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// What forwarding needs to know about the hop the request came in on.
pub struct Hop<'a> {
    pub peer: IpAddr,
    /// The peer's address, formatted once per connection.
    pub peer_header: Option<&'a HeaderValue>,
    pub https: bool,
    pub trusted_proxies: &'a [IpNet],
    pub host_rewrite: Option<&'a HeaderValue>,
}

/// Rewrite a request's head for the upstream (HTTP/1.1, origin-form).
pub fn prepare(parts: &mut Parts, hop: &Hop<'_>) -> Result<(), GatewayError> {
    // The host the client asked for: HTTP/2's :authority and absolute-form carry it in the URI.
    let authority_host = parts
        .uri
        .authority()
        .map(|a| HeaderValue::from_str(a.as_str()))
        .transpose()
        .map_err(|_| GatewayError::BadRequest("invalid authority"))?;
    if let Some(auth) = &authority_host {
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (None, _) => {
                parts.headers.insert(header::HOST, auth.clone());
            }
            (Some(h), None) if h.as_bytes().eq_ignore_ascii_case(auth.as_bytes()) => {}
            (Some(_), None) if parts.version == Version::HTTP_2 => {
                // RFC 9113 §8.3.1: :authority wins over a Host header.
                parts.headers.insert(header::HOST, auth.clone());
            }
            _ => {
                return Err(GatewayError::BadRequest(
                    "request target authority differs from Host",
                ))
            }
        }
    }
    let client_host = parts.headers.get(header::HOST).cloned();

    strip_hop_by_hop(&mut parts.headers);

    let trusted = is_trusted(hop.peer, hop.trusted_proxies);
    let peer = match hop.peer_header {
        Some(h) => h.clone(),
        None => HeaderValue::from_str(&canonical(hop.peer).to_string())
            .map_err(|_| GatewayError::BadRequest("invalid peer address"))?,
    };
    // x-forwarded-for: the trusted chain plus the peer, or just the peer.
    if trusted && parts.headers.contains_key(X_FORWARDED_FOR) {
        let mut chain = Vec::with_capacity(64);
        for v in parts.headers.get_all(X_FORWARDED_FOR) {
            if !chain.is_empty() {
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(v.as_bytes());
        }
        chain.extend_from_slice(b", ");
        chain.extend_from_slice(peer.as_bytes());
        let joined = HeaderValue::from_bytes(&chain).unwrap_or(peer);
        parts.headers.insert(X_FORWARDED_FOR, joined);
    } else {
        parts.headers.insert(X_FORWARDED_FOR, peer);
    }
    if !(trusted && parts.headers.contains_key(X_FORWARDED_PROTO)) {
        parts.headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if hop.https { "https" } else { "http" }),
        );
    }
    if !(trusted && parts.headers.contains_key(X_FORWARDED_HOST)) {
        match &client_host {
            Some(h) => {
                parts.headers.insert(X_FORWARDED_HOST, h.clone());
            }
            None => {
                parts.headers.remove(X_FORWARDED_HOST);
            }
        }
    }
    if let Some(h) = hop.host_rewrite {
        parts.headers.insert(header::HOST, h.clone());
    }

    // HTTP/2 may split Cookie into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }

    // Origin-form for the upstream.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    parts.version = Version::HTTP_11;
    Ok(())
}

fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_hop_by_hop_match_is_the_list() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for other in ["host", "content-length", "x-connection", "t", "upgrades"] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(other)), "{other}");
        }
    }

    use super::*;
    use http::Request;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn connection_cannot_remove_host_length_or_request_id() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            "host, content-length, x-request-id, x-other"
                .parse()
                .unwrap(),
        );
        h.insert("host", "a".parse().unwrap());
        h.insert("content-length", "3".parse().unwrap());
        h.insert("x-request-id", "1".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3);
        assert!(!h.contains_key("x-other"));
    }

    #[test]
    fn http2_cookies_are_joined_for_http1() {
        let mut p = req("https://a.example/", &[]);
        p.version = Version::HTTP_2;
        p.headers.append("cookie", "a=1".parse().unwrap());
        p.headers.append("cookie", "b=2".parse().unwrap());
        let hop = hop("127.0.0.1", true);
        prepare(&mut p, &hop).unwrap();
        let all: Vec<_> = p.headers.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; b=2"]);
    }

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "foo".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    fn hop(peer: &str, https: bool) -> Hop<'static> {
        Hop {
            peer: peer.parse().unwrap(),
            peer_header: None,
            https,
            trusted_proxies: &[],
            host_rewrite: None,
        }
    }

    #[test]
    fn prepares_forwarded_headers_for_an_untrusted_peer() {
        let mut p = req(
            "/x?y=1",
            &[
                ("host", "api.example.com"),
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-proto", "ftp"),
                ("x-forwarded-host", "evil"),
            ],
        );
        let hop = hop("127.0.0.1", true);
        prepare(&mut p, &hop).unwrap();
        assert_eq!(p.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(p.headers["x-forwarded-proto"], "https");
        assert_eq!(p.headers["x-forwarded-host"], "api.example.com");
        assert_eq!(p.headers["host"], "api.example.com");
        assert_eq!(p.uri, "/x?y=1");
    }

    #[test]
    fn appends_the_peer_to_a_trusted_chain_and_rewrites_host() {
        let mut p = req(
            "/",
            &[
                ("host", "a.example"),
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-proto", "https"),
            ],
        );
        let trusted = nets(&["127.0.0.0/8"]);
        let rewrite = HeaderValue::from_static("users.internal");
        let hop = Hop {
            trusted_proxies: &trusted,
            host_rewrite: Some(&rewrite),
            ..hop("127.0.0.1", false)
        };
        prepare(&mut p, &hop).unwrap();
        assert_eq!(p.headers["x-forwarded-for"], "1.1.1.1, 127.0.0.1");
        assert_eq!(p.headers["x-forwarded-proto"], "https");
        assert_eq!(p.headers["x-forwarded-host"], "a.example");
        assert_eq!(p.headers["host"], "users.internal");
    }

    #[test]
    fn http2_authority_becomes_the_host_and_origin_form() {
        let mut p = req("https://api.example.com:8443/a?b", &[]);
        p.version = Version::HTTP_2;
        let hop = hop("::1", true);
        prepare(&mut p, &hop).unwrap();
        assert_eq!(p.headers["host"], "api.example.com:8443");
        assert_eq!(p.uri, "/a?b");
        assert_eq!(p.version, Version::HTTP_11);
    }

    #[test]
    fn absolute_form_with_another_host_is_refused() {
        let mut p = req("http://a.example/", &[("host", "b.example")]);
        let hop = hop("127.0.0.1", false);
        assert!(prepare(&mut p, &hop).is_err());
    }
}
