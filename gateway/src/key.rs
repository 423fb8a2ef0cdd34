//! Hash and rate-limit keys (SPEC §3 "Keys"): which part of a request a balancer (4) or a
//! rate limit (3) reads. Neutral, so both tiers use it without importing each other. The key is the value's bytes as received: no trimming, no case folding.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use http::header;
use http::request::Parts;
use percent_encoding::percent_decode;

pub use crate::config::KeySpec;

/// XXH3-64 with seed 0: the fixed, documented hash of `hash` and Maglev keys (and of rate-limit
/// buckets), so every replica, every restart and any other system that reads SPEC §3 maps a
/// key the same way.
pub fn xxh3(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The key's bytes in a request, or `None` when the request has none. `client` is the client
/// address (after trusted proxies), `path` the path the route matched.
pub fn extract<'a>(
    spec: &KeySpec,
    parts: &'a Parts,
    client: Option<IpAddr>,
    path: &'a str,
) -> Option<Cow<'a, [u8]>> {
    match spec {
        KeySpec::Ip => client.map(|ip| Cow::Owned(ip.to_string().into_bytes())),
        KeySpec::Header(name) => parts.headers.get(name).map(|v| Cow::Borrowed(v.as_bytes())),
        KeySpec::Query(name) => query_value(parts.uri.query()?, name),
        KeySpec::Cookie(name) => cookie_value(parts, name).map(Cow::Borrowed),
        KeySpec::Path => Some(Cow::Borrowed(path.as_bytes())),
        KeySpec::Jwt(claim) => {
            let claims = parts
                .extensions
                .get::<std::sync::Arc<crate::ctx::Claims>>()?;
            match claims.0.get(claim)? {
                serde_json::Value::String(s) => Some(Cow::Borrowed(s.as_bytes())),
                serde_json::Value::Null => None,
                other => Some(Cow::Owned(other.to_string().into_bytes())),
            }
        }
        KeySpec::Route => None,
    }
}

/// The first value of query parameter `name` (names and values percent-decoded).
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, [u8]>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k: Cow<'_, [u8]> = percent_decode(k.as_bytes()).into();
        (*k == *name.as_bytes()).then(|| percent_decode(v.as_bytes()).into())
    })
}

/// The value of cookie `name` in the request's Cookie header(s).
fn cookie_value<'a>(parts: &'a Parts, name: &str) -> Option<&'a [u8]> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            // The space after ';' is separator; the value is kept as sent.
            let pair = pair.trim_ascii_start();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        })
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip => f.write_str("ip"),
            Self::Header(h) => write!(f, "header.{h}"),
            Self::Jwt(c) => write!(f, "jwt.{c}"),
            Self::Query(q) => write!(f, "query.{q}"),
            Self::Cookie(c) => write!(f, "cookie.{c}"),
            Self::Path => f.write_str("path"),
            Self::Route => f.write_str("route"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_form_and_prints_it_back() {
        for text in [
            "ip",
            "path",
            "route",
            "header.x-user-id",
            "jwt.sub",
            "query.user",
            "cookie.session",
        ] {
            let key = KeySpec::parse(text).unwrap();
            assert_eq!(key.to_string(), text);
        }
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn key(spec: &str, p: &Parts) -> Option<Vec<u8>> {
        extract(
            &KeySpec::parse(spec).unwrap(),
            p,
            Some("10.1.2.3".parse().unwrap()),
            p.uri.path(),
        )
        .map(|c| c.into_owned())
    }

    #[test]
    fn extracts_each_kind_of_key_as_received() {
        let p = parts(
            "/a/b?user=%C3%A9l%20i&x=1&user=second&flag",
            &[
                ("x-user-id", " 42 "),
                ("cookie", "a=1; session=abc=d"),
                ("cookie", "z=9"),
            ],
        );
        assert_eq!(key("ip", &p).unwrap(), b"10.1.2.3");
        assert_eq!(key("header.x-user-id", &p).unwrap(), b" 42 ", "no trimming");
        assert_eq!(
            key("query.user", &p).unwrap(),
            "él i".as_bytes(),
            "percent-decoded, first value"
        );
        assert_eq!(key("query.flag", &p).unwrap(), b"");
        assert_eq!(key("cookie.session", &p).unwrap(), b"abc=d");
        assert_eq!(key("cookie.z", &p).unwrap(), b"9");
        assert_eq!(key("path", &p).unwrap(), b"/a/b");
        assert_eq!(key("header.x-missing", &p), None);
        assert_eq!(key("query.missing", &p), None);
        assert_eq!(key("cookie.missing", &p), None);
    }

    #[test]
    fn refuses_unknown_or_empty_keys() {
        assert!(KeySpec::parse("header.").is_err());
        assert!(KeySpec::parse("body.x").is_err());
        assert!(KeySpec::parse("header.bad name").is_err());
    }
}
