//! Hash and rate-limit keys (SPEC §3 "Keys"): which part of a request a balancer or a
//! limiter reads. The key is the value's bytes as received: no trimming, no case folding.

use std::fmt;

use http::HeaderName;

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

    #[test]
    fn refuses_unknown_or_empty_keys() {
        assert!(KeySpec::parse("header.").is_err());
        assert!(KeySpec::parse("body.x").is_err());
        assert!(KeySpec::parse("header.bad name").is_err());
    }
}
