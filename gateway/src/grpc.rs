//! gRPC over the gateway (SPEC §8.3), the neutral part: which requests are gRPC, the
//! gateway's own answers in trailers-only form, status names for
//! `gateway_grpc_responses_total`, and `grpc-timeout`. The observe policy answers and counts;
//! the upstream tier honours the timeout and classifies failures.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The status names, by code (0..=16).
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A gRPC request or response: `application/grpc`, `application/grpc+proto`,
/// `application/grpc;charset=...`; not gRPC-Web.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|ct| {
        let ct = ct.as_bytes();
        ct.len() >= 16
            && ct[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(ct.get(16), None | Some(b'+') | Some(b';'))
    })
}

/// The gRPC status the gateway answers for one of its own HTTP statuses (SPEC §8.3).
pub fn code_for_http(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 3,
        401 => 16,
        403 => 7,
        404 => 12,
        429 => 8,
        502 | 503 => 14,
        504 => 4,
        _ => 13,
    }
}

/// The `grpc-status` of a header block (trailers, or a trailers-only response), if any.
pub fn status_of(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// UNAVAILABLE, DEADLINE_EXCEEDED and INTERNAL count as failures for breakers and outlier
/// detection.
pub fn is_failure(code: u32) -> bool {
    matches!(code, 14 | 4 | 13)
}

/// The gateway's own answer to a gRPC request in trailers-only form: HTTP 200, the status and
/// message as headers, no body. `reply` is the answer the gateway would give a plain client;
/// its extra headers (`retry-after`, `www-authenticate`, rate-limit fields) are kept.
pub fn trailers_only<B: From<Bytes>>(reply: Response<B>, message: &str) -> Response<B> {
    let code = code_for_http(reply.status());
    let (mut parts, _) = reply.into_parts();
    parts.status = StatusCode::OK;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts.headers.insert(GRPC_STATUS, HeaderValue::from(code));
    let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE_SET).to_string();
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        parts.headers.insert(GRPC_MESSAGE, v);
    }
    Response::from_parts(parts, B::from(Bytes::new()))
}

/// gRPC's percent-encoding of `grpc-message`: everything outside printable ASCII, and `%`.
const GRPC_MESSAGE_SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// `grpc-timeout` (`<digits><unit>`, unit `H M S m u n`, at most 8 digits).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.to_str().ok()?.trim();
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_grpc_content_types_but_not_grpc_web() {
        let h = |ct: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            is_grpc(&m)
        };
        assert!(h("application/grpc"));
        assert!(h("application/grpc+proto"));
        assert!(h("application/grpc;charset=utf-8"));
        assert!(!h("application/grpc-web"));
        assert!(!h("application/grpc-web+proto"));
        assert!(!h("application/json"));
    }

    #[test]
    fn maps_the_gateways_statuses_as_the_spec_says() {
        for (http, grpc) in [
            (400, 3),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 8),
            (502, 14),
            (503, 14),
            (504, 4),
            (500, 13),
            (413, 13),
        ] {
            assert_eq!(
                code_for_http(StatusCode::from_u16(http).unwrap()),
                grpc,
                "{http}"
            );
        }
    }

    #[test]
    fn parses_grpc_timeouts() {
        let t = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(GRPC_TIMEOUT, v.parse().unwrap());
            timeout(&m)
        };
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("123456789S"), None, "at most 8 digits");
        assert_eq!(t("10x"), None);
        assert_eq!(t("S"), None);
    }

    #[test]
    fn trailers_only_answers_carry_status_and_message() {
        let mut r: Response<Bytes> = Response::new(Bytes::from_static(b"{}"));
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        r.headers_mut().insert("retry-after", "1".parse().unwrap());
        let g = trailers_only(r, "rate limited 100%");
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "8");
        assert_eq!(g.headers()["grpc-message"], "rate limited 100%25");
        assert_eq!(g.headers()["retry-after"], "1");
        assert!(g.body().is_empty());
    }
}
