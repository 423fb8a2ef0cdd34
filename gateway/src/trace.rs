//! W3C trace context (SPEC §8.4), the neutral part: a valid incoming `traceparent` (version
//! 00, non-zero ids, lower-case hex) is continued, anything else starts a new trace; the
//! gateway sends `traceparent` upstream with a span id of its own as the parent and the
//! sampled flag; `tracestate` passes unchanged. The trace id goes into the access log and the
//! JSON error bodies. The observe policy applies it to every request.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// One request's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The gateway's own span (the upstream's parent).
    pub span_id: [u8; 8],
    /// The caller's span, when the trace was continued.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
}

fn hex_to<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// A new span id (never all zeros).
pub fn random_span_id() -> [u8; 8] {
    random()
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    loop {
        for b in out.iter_mut() {
            *b = fastrand::u8(..);
        }
        if out.iter().any(|b| *b != 0) {
            return out;
        }
    }
}

/// Parse a `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`.
pub fn parse(v: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut parts = v.trim().split('-');
    let (ver, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ver != "00" {
        return None;
    }
    let trace: [u8; 16] = hex_to(trace)?;
    let parent: [u8; 8] = hex_to(parent)?;
    let flags: [u8; 1] = hex_to(flags)?;
    if trace.iter().all(|b| *b == 0) || parent.iter().all(|b| *b == 0) {
        return None;
    }
    Some((trace, parent, flags[0] & 1 == 1))
}

impl TraceContext {
    /// Continue the request's trace, or start one (`sample_new`: the sampled flag of a new one).
    pub fn from_headers(headers: &HeaderMap, sample_new: bool) -> Self {
        let incoming = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse);
        match incoming {
            Some((trace_id, parent, sampled)) => Self {
                trace_id,
                span_id: random(),
                parent_id: Some(parent),
                sampled,
            },
            None => Self {
                trace_id: random(),
                span_id: random(),
                parent_id: None,
                sampled: sample_new,
            },
        }
    }

    /// The trace id as 32 lower-case hex digits (on the stack: no allocation per request).
    pub fn trace_id_hex(&self) -> TraceIdHex {
        let mut out = [0u8; 32];
        hex_into(&self.trace_id, &mut out);
        TraceIdHex(out)
    }

    /// `traceparent` for the upstream: our span as the parent.
    pub fn header(&self) -> HeaderValue {
        self.header_with(self.span_id)
    }

    /// `traceparent` for a child span of this one (an upstream attempt's client span).
    pub fn header_with(&self, span_id: [u8; 8]) -> HeaderValue {
        // "00-" 32 hex "-" 16 hex "-" 2 hex
        let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&self.trace_id, &mut v[3..35]);
        hex_into(&span_id, &mut v[36..52]);
        if self.sampled {
            v[54] = b'1';
        }
        HeaderValue::from_bytes(&v).unwrap_or(HeaderValue::from_static(
            "00-00000000000000000000000000000000-0000000000000000-00",
        ))
    }
}

/// A trace id in hex, for logs and error bodies.
#[derive(Clone, Copy)]
pub struct TraceIdHex([u8; 32]);

impl TraceIdHex {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const H: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = H[usize::from(b >> 4)];
        pair[1] = H[usize::from(b & 15)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(TRACEPARENT, v.parse().unwrap());
        m
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_parent() {
        let t = TraceContext::from_headers(
            &h("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            false,
        );
        assert_eq!(
            t.trace_id_hex().as_str(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(t.sampled);
        let out = t.header();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(
            !out.contains("b7ad6b7169203331"),
            "our span is the new parent"
        );
        assert!(out.ends_with("-01"));
    }

    #[test]
    fn anything_else_starts_a_new_trace() {
        for bad in [
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "garbage",
        ] {
            let t = TraceContext::from_headers(&h(bad), true);
            assert_ne!(
                t.trace_id_hex().as_str(),
                "0af7651916cd43dd8448eb211c80319c",
                "{bad}"
            );
            assert!(t.parent_id.is_none());
            assert!(t.sampled, "new traces follow the sampling decision");
        }
        let t = TraceContext::from_headers(
            &h("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            true,
        );
        assert!(!t.sampled, "a parent's unsampled flag is followed");
    }
}
