//! The one place an error becomes an HTTP status (SPEC §4).
//!
//! Every layer returns a `GatewayError`; the route's observe layer (`policy/observe.rs`) turns
//! it into the JSON answer `{"error": ..., "request_id": ...}`. Bodies never carry internals:
//! the detail goes to the log line.

use std::borrow::Cow;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ResBody;

/// Why the gateway answered instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches")]
    NoRoute,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("request body larger than max_body_bytes")]
    BodyTooLarge,
    #[error("no upstream target available")]
    NoTarget,
    #[error("upstream connect failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("upstream did not answer within the route timeout")]
    UpstreamTimeout,
    #[error("upstream failed: {0}")]
    Upstream(#[source] crate::body::BoxError),
    #[error("the client closed the request before it was complete")]
    ClientGone,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("missing hash key {0}")]
    MissingKey(String),
    #[error("upstream concurrency limit reached")]
    Overloaded,
    #[error("unauthorized: {}", .0.description())]
    Unauthorized(crate::policy::jwt::AuthError),
    #[error("integrity check failed: {0}")]
    Integrity(&'static str),
    #[error("client address not allowed")]
    Forbidden,
    #[error("rate limited by policy {}", .0.policy)]
    RateLimited(Box<crate::policy::rate_limit::Denied>),
    #[error("request body did not arrive within body_timeout")]
    BodyTimeout,
    #[error("buffering the request body would pass max_buffered_bytes")]
    BufferFull,
    #[error("CORS preflight refused")]
    CorsRefused,
    #[error("client certificate required")]
    ClientCertRequired,
    #[error("the forward auth service failed")]
    AuthUnavailable,
}

/// nginx's "client closed request": logged and counted, never seen by the client.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NoTarget => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect(_) | Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::ClientGone => {
                StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::MissingKey(_) => StatusCode::BAD_REQUEST,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Integrity(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BufferFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::CorsRefused | Self::ClientCertRequired => StatusCode::FORBIDDEN,
            Self::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What the client is told: short, stable, no internals.
    pub fn public_message(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::MissingKey(key) => return Cow::Owned(format!("missing hash key {key}")),
            Self::Integrity(reason) => {
                return Cow::Owned(format!("integrity check failed: {reason}"))
            }
            Self::NoRoute => "no route",
            Self::BadRequest(what) => what,
            Self::BodyTooLarge => "request body too large",
            Self::NoTarget => "no upstream target available",
            Self::Connect(_) | Self::Upstream(_) => "upstream failed",
            Self::UpstreamTimeout => "upstream timed out",
            Self::ClientGone => "client closed request",
            Self::TooManyHeaders => "too many header fields",
            Self::Overloaded => "upstream overloaded",
            Self::Unauthorized(e) => e.description(),
            Self::Forbidden => "forbidden",
            Self::RateLimited(_) => "rate limited",
            Self::BodyTimeout => "request body timed out",
            Self::BufferFull => "gateway busy, retry",
            Self::CorsRefused => "CORS preflight refused",
            Self::ClientCertRequired => "client certificate required",
            Self::AuthUnavailable => "authorization service unavailable",
        })
    }

    /// A short machine-readable reason for the access log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::BadRequest(_) => "bad_request",
            Self::BodyTooLarge => "body_too_large",
            Self::NoTarget => "no_target",
            Self::Connect(_) => "connect_error",
            Self::UpstreamTimeout => "timeout",
            Self::Upstream(_) => "upstream_error",
            Self::ClientGone => "client_gone",
            Self::TooManyHeaders => "too_many_headers",
            Self::MissingKey(_) => "missing_key",
            Self::Overloaded => "overloaded",
            Self::Unauthorized(e) => e.reason(),
            Self::Integrity(reason) => reason,
            Self::Forbidden => "forbidden",
            Self::RateLimited(_) => "rate_limited",
            Self::BodyTimeout => "body_timeout",
            Self::BufferFull => "buffer_full",
            Self::CorsRefused => "cors_refused",
            Self::ClientCertRequired => "client_cert_required",
            Self::AuthUnavailable => "forward_auth_error",
        }
    }

    /// The policy that refused the request, when one did (a span event names it).
    pub fn policy(&self) -> Option<&'static str> {
        Some(match self {
            Self::Unauthorized(crate::policy::jwt::AuthError::UnknownApiKey) => "api_key",
            Self::Unauthorized(_) => "jwt",
            Self::Integrity(_) => "integrity",
            Self::Forbidden => "ip_filter",
            Self::RateLimited(_) => "rate_limit",
            Self::CorsRefused => "cors",
            Self::ClientCertRequired => "client_cert",
            Self::AuthUnavailable => "forward_auth",
            Self::BodyTooLarge => "body_limit",
            _ => return None,
        })
    }

    /// The JSON answer for this error.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<ResBody> {
        self.to_response_traced(request_id, None)
    }

    /// The JSON answer, with the request's trace id beside its request id.
    pub fn to_response_traced(
        &self,
        request_id: &HeaderValue,
        trace_id: Option<&str>,
    ) -> Response<ResBody> {
        let mut res =
            json_error_traced(self.status(), &self.public_message(), request_id, trace_id);
        if let Self::RateLimited(d) = self {
            d.add_headers(res.headers_mut());
        }
        if let Self::BufferFull = self {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::BodyTimeout = self {
            // The rest of the body may still come: this connection is done.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Self::Unauthorized(e) = self {
            let challenge = format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                e.description()
            );
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        res
    }
}

/// `{"error": message, "request_id": id}` with `status`.
pub fn json_error(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
) -> Response<ResBody> {
    json_error_traced(status, message, request_id, None)
}

/// `json_error` with `"trace_id"` when the request has one.
pub fn json_error_traced(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
    trace_id: Option<&str>,
) -> Response<ResBody> {
    let mut body = String::with_capacity(96 + message.len());
    body.push_str("{\"error\":");
    push_json_string(&mut body, message);
    body.push_str(",\"request_id\":");
    push_json_string(&mut body, request_id.to_str().unwrap_or(""));
    if let Some(t) = trace_id {
        body.push_str(",\"trace_id\":");
        push_json_string(&mut body, t);
    }
    body.push_str("}\n");
    let mut res = Response::new(ResBody::full(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_are_json_with_the_request_id() {
        let res = GatewayError::NoRoute.to_response(&HeaderValue::from_static("42"));
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "no route");
        assert_eq!(v["request_id"], "42");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_string(&mut s, "a\"b\\c\n");
        assert_eq!(s, r#""a\"b\\c\u000a""#);
    }
}
