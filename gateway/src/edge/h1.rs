//! HTTP/1.1 requests that two parsers could read differently are refused, never forwarded
//! (SPEC §4): no Host or more than one; an absolute-form target whose authority differs from
//! Host; Content-Length together with Transfer-Encoding; duplicate or malformed lengths;
//! Transfer-Encoding other than a single `chunked`. hyper's parser already refuses obs-fold,
//! control characters in values, whitespace before the colon and bad chunk sizes; bare LF line
//! ends are parsed and never forwarded as such (every request is re-framed upstream).
//!
//! hyper normalises some of these before we see the request (it drops Content-Length when
//! Transfer-Encoding is present, and merges identical duplicate lengths), so the raw head is
//! also scanned as it arrives (`scan_head`, called from `io.rs`) and its verdict consulted.
//!
//! Runs on the request head before routing; a refused request gets a 400 and its connection is
//! closed (its body, if any, cannot be trusted to end where the client meant).

use http::request::Parts;
use http::{header, Version};

/// Why a head was refused, or `Ok`.
pub fn check(parts: &Parts) -> Result<(), &'static str> {
    if parts.version != Version::HTTP_11 && parts.version != Version::HTTP_10 {
        return Ok(());
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    match host {
        None if parts.version == Version::HTTP_11 => return Err("missing Host header"),
        Some(h)
            if h.is_empty()
                && parts.version == Version::HTTP_11
                && parts.uri.authority().is_none() =>
        {
            return Err("empty Host header")
        }
        _ => {}
    }
    if let (Some(auth), Some(h)) = (parts.uri.authority(), host) {
        if !auth.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) {
            return Err("request target authority differs from Host");
        }
    }
    let te = parts.headers.get_all(header::TRANSFER_ENCODING);
    let has_te = te.iter().next().is_some();
    let cl = parts.headers.get_all(header::CONTENT_LENGTH);
    let mut cls = cl.iter();
    if let Some(first) = cls.next() {
        if has_te {
            return Err("Content-Length together with Transfer-Encoding");
        }
        if cls.next().is_some() {
            return Err("more than one Content-Length");
        }
        let v = first.as_bytes();
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) || v.len() > 19 {
            return Err("malformed Content-Length");
        }
    }
    if has_te {
        let mut values = te.iter();
        let only = values.next().map(|v| v.as_bytes().trim_ascii());
        if values.next().is_some() || !only.is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
            return Err("Transfer-Encoding other than a single chunked");
        }
    }
    Ok(())
}

/// Reasons `scan_head` can give, by index (so a verdict fits in an atomic).
pub const SCAN_REASONS: [&str; 4] = [
    "Content-Length together with Transfer-Encoding",
    "more than one Content-Length",
    "Transfer-Encoding other than a single chunked",
    "more than one Host header",
];

/// Scan a raw request head (request line and fields, up to the empty line) for framing that
/// hyper would normalise away. Returns an index into `SCAN_REASONS`.
pub fn scan_head(head: &[u8]) -> Option<u8> {
    let (mut cl, mut te, mut host) = (0u32, 0u32, 0u32);
    // Line by line with memchr (the request line skipped); only names of the three lengths
    // that matter are compared.
    let mut ends = memchr::memchr_iter(b'\n', head);
    let mut start = match ends.next() {
        Some(i) => i + 1,
        None => return None,
    };
    for end in ends.chain(std::iter::once(head.len())) {
        let Some(raw) = head.get(start..end) else {
            break;
        };
        start = end + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = &line[..colon];
        if !matches!(name.len(), 4 | 14 | 17) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            cl += 1;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te += 1;
        } else if name.eq_ignore_ascii_case(b"host") {
            host += 1;
        }
    }
    if cl > 0 && te > 0 {
        Some(0)
    } else if cl > 1 {
        Some(1)
    } else if te > 1 {
        Some(2)
    } else if host > 1 {
        Some(3)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(uri: &str, version: Version, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri(uri).version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn h11(headers: &[(&str, &str)]) -> Result<(), &'static str> {
        check(&parts("/", Version::HTTP_11, headers))
    }

    #[test]
    fn refuses_ambiguous_heads() {
        assert!(h11(&[]).is_err());
        assert!(h11(&[("host", "a"), ("host", "b")]).is_err());
        assert!(h11(&[
            ("host", "a"),
            ("content-length", "3"),
            ("transfer-encoding", "chunked")
        ])
        .is_err());
        assert!(h11(&[
            ("host", "a"),
            ("content-length", "3"),
            ("content-length", "3")
        ])
        .is_err());
        assert!(h11(&[("host", "a"), ("content-length", "3, 3")]).is_err());
        assert!(h11(&[("host", "a"), ("content-length", "+3")]).is_err());
        assert!(h11(&[("host", "a"), ("transfer-encoding", "gzip, chunked")]).is_err());
        assert!(h11(&[
            ("host", "a"),
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked")
        ])
        .is_err());
        assert!(h11(&[("host", "a"), ("transfer-encoding", "identity")]).is_err());
        assert!(check(&parts(
            "http://b.example/",
            Version::HTTP_11,
            &[("host", "a.example")]
        ))
        .is_err());
    }

    #[test]
    fn the_raw_scan_sees_what_hyper_normalises() {
        let scan = |h: &str| scan_head(h.as_bytes()).map(|i| SCAN_REASONS[i as usize]);
        assert_eq!(
            scan("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(SCAN_REASONS[0])
        );
        assert_eq!(
            scan("POST / HTTP/1.1\nhost: a\ncontent-length: 3\nCONTENT-LENGTH: 3\n\n"),
            Some(SCAN_REASONS[1])
        );
        assert_eq!(scan("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), Some(SCAN_REASONS[2]));
        assert_eq!(
            scan("GET / HTTP/1.1\r\nHost: a\r\n\r\nHost: b\r\n"),
            None,
            "stops at the empty line"
        );
        assert_eq!(
            scan("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
            None
        );
    }

    #[test]
    fn accepts_plain_heads() {
        assert!(h11(&[("host", "a")]).is_ok());
        assert!(h11(&[("host", "a"), ("content-length", "42")]).is_ok());
        assert!(h11(&[("host", "a"), ("transfer-encoding", "Chunked")]).is_ok());
        assert!(check(&parts(
            "http://a.example/",
            Version::HTTP_11,
            &[("host", "A.example")]
        ))
        .is_ok());
        // HTTP/1.0 may come without Host.
        assert!(check(&parts("/", Version::HTTP_10, &[])).is_ok());
    }
}
