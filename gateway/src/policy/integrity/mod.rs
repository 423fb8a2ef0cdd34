//! Request integrity (`[integrity.NAME]`, a route's `integrity`): RFC 9530 `Content-Digest`,
//! RFC 9421 HTTP Message Signatures (hmac-sha256) with a bounded replay cache of nonces, and
//! well-formed JSON bodies. Checked on the request as received, before any rewrite.
//!
//! Comes after auth and before rate limiting. The upstream must not act on a body before its
//! digest is checked, so routes with an integrity policy read the whole body (bounded by
//! `max_body_bytes`), check it, then forward it; other routes keep streaming. A failure is a
//! 400 whose reason is counted in `gateway_integrity_failures_total{route, reason}`.

pub mod sf;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, Request};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use prometheus::IntCounter;
use tower::{Layer, Service};

use crate::body::{caused_by, BodyTimedOut, BodyTooLarge, BufferLease, ClientBodyError, ReqBody};
use crate::config::{CheckMode, IntegrityPolicy};
use crate::ctx::ConnInfo;
use crate::error::GatewayError;
use sf::{Bare, Member, Value};

/// Why a request failed its integrity checks (the `reason` label).
pub const REASONS: [&str; 13] = [
    "digest_missing",
    "digest_malformed",
    "digest_unsupported",
    "digest_mismatch",
    "signature_missing",
    "signature_malformed",
    "signature_unknown_key",
    "signature_components",
    "signature_invalid",
    "signature_skew",
    "signature_expired",
    "signature_replay",
    "json_invalid",
];

/// An integrity policy, live: the config and its replay cache.
pub struct IntegrityRt {
    pub policy: IntegrityPolicy,
    nonces: quick_cache::sync::Cache<(String, String), ()>,
}

impl std::fmt::Debug for IntegrityRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrityRt").finish_non_exhaustive()
    }
}

impl IntegrityRt {
    pub fn new(policy: IntegrityPolicy) -> Self {
        Self {
            nonces: quick_cache::sync::Cache::new(policy.max_nonces.max(1)),
            policy,
        }
    }

    /// Run every check the policy asks for on a request and its whole body.
    pub fn check(&self, parts: &Parts, body: &[u8], https: bool) -> Result<(), &'static str> {
        self.check_with(parts, body, https, None)
    }

    /// The checks that need no body, when the signature is required: run before the body is
    /// read, so an unsigned request is refused without being buffered (SPEC §8.2). `None`
    /// when the policy does not require a signature; else whether it covers
    /// `content-digest`.
    pub fn check_head(
        &self,
        parts: &Parts,
        has_body: bool,
        https: bool,
    ) -> Option<Result<bool, &'static str>> {
        if self.policy.signature != CheckMode::Required {
            return None;
        }
        // What the head alone shows comes first, in the order `check` uses.
        let digest_present = parts.headers.contains_key(CONTENT_DIGEST);
        if self.policy.content_digest == CheckMode::Required && has_body && !digest_present {
            return Some(Err("digest_missing"));
        }
        if self.policy.content_digest != CheckMode::Off && digest_present {
            if let Err(e) = check_digest_header(&parts.headers) {
                return Some(Err(e));
            }
        }
        let signed =
            parts.headers.contains_key(SIGNATURE_INPUT) || parts.headers.contains_key(SIGNATURE);
        if !signed {
            return Some(Err("signature_missing"));
        }
        Some(self.check_signature(parts, has_body, https, now()))
    }

    /// `check`, with the signature already verified by `check_head` when `verified` is set.
    fn check_with(
        &self,
        parts: &Parts,
        body: &[u8],
        https: bool,
        verified: Option<bool>,
    ) -> Result<(), &'static str> {
        let has_body = !body.is_empty();
        let p = &self.policy;
        if p.json
            && is_json(&parts.headers)
            && has_body
            && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err()
        {
            return Err("json_invalid");
        }
        let digest_present = parts.headers.contains_key(CONTENT_DIGEST);
        match p.content_digest {
            CheckMode::Required if has_body && !digest_present => return Err("digest_missing"),
            CheckMode::Required | CheckMode::IfPresent if digest_present => {
                check_digest(&parts.headers, body)?
            }
            _ => {}
        }
        let signed =
            parts.headers.contains_key(SIGNATURE_INPUT) || parts.headers.contains_key(SIGNATURE);
        let covers_digest = match (verified, p.signature) {
            (Some(covers), _) => covers,
            (None, CheckMode::Off) => false,
            (None, CheckMode::IfPresent) if !signed => false,
            (None, _) => {
                if !signed {
                    return Err("signature_missing");
                }
                self.check_signature(parts, has_body, https, now())?
            }
        };
        // A signature over Content-Digest only protects the body if the digest is checked.
        if covers_digest && has_body && p.content_digest == CheckMode::Off {
            check_digest(&parts.headers, body)?;
        }
        Ok(())
    }

    /// Verify a signature the policy accepts; returns whether it covers `content-digest`.
    fn check_signature(
        &self,
        parts: &Parts,
        has_body: bool,
        https: bool,
        now: i64,
    ) -> Result<bool, &'static str> {
        let inputs = sf::dictionary(&header_text(&parts.headers, &SIGNATURE_INPUT))
            .map_err(|_| "signature_malformed")?;
        let sigs = sf::dictionary(&header_text(&parts.headers, &SIGNATURE))
            .map_err(|_| "signature_malformed")?;
        if inputs.is_empty() || sigs.is_empty() {
            return Err("signature_missing");
        }
        let mut first_error = None;
        for input in &inputs {
            let Some(sig) = sigs.iter().find(|s| s.key == input.key) else {
                continue;
            };
            match self.verify_one(parts, input, sig, has_body, https, now) {
                Ok(covers_digest) => return Ok(covers_digest),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or("signature_missing"))
    }

    fn verify_one(
        &self,
        parts: &Parts,
        input: &Member,
        sig: &Member,
        has_body: bool,
        https: bool,
        now: i64,
    ) -> Result<bool, &'static str> {
        let Value::InnerList(components) = &input.value else {
            return Err("signature_malformed");
        };
        let Value::Item(Bare::Bytes(signature)) = &sig.value else {
            return Err("signature_malformed");
        };
        let param = |name: &str| input.params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let keyid = match param("keyid") {
            Some(Bare::String(k)) => k.as_str(),
            _ => return Err("signature_unknown_key"),
        };
        let key = self
            .policy
            .keys
            .iter()
            .find(|(id, _)| id == keyid)
            .map(|(_, k)| k)
            .ok_or("signature_unknown_key")?;
        match param("alg") {
            None => {}
            Some(Bare::String(a)) if a == "hmac-sha256" => {}
            Some(_) => return Err("signature_unknown_key"),
        }
        let covered: Vec<&str> = components.iter().map(|(c, _)| c.as_str()).collect();
        for required in &self.policy.required_components {
            if required == "content-digest" && !has_body {
                continue;
            }
            if !covered.contains(&required.as_str()) {
                return Err("signature_components");
            }
        }
        let created = match param("created") {
            Some(Bare::Integer(c)) => *c,
            None => return Err("signature_skew"),
            Some(_) => return Err("signature_malformed"),
        };
        if (now - created).unsigned_abs() > self.policy.max_skew.as_secs() {
            return Err("signature_skew");
        }
        if let Some(exp) = param("expires") {
            match exp {
                Bare::Integer(e) if *e > now => {}
                Bare::Integer(_) => return Err("signature_expired"),
                _ => return Err("signature_malformed"),
            }
        }
        let base = signature_base(parts, components, &input.raw_value, https)?;
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
        aws_lc_rs::hmac::verify(&k, base.as_bytes(), signature).map_err(|_| "signature_invalid")?;
        if let Some(nonce) = param("nonce") {
            let Bare::String(nonce) = nonce else {
                return Err("signature_malformed");
            };
            // Checked last: only signatures that verify take a place in the cache.
            match self
                .nonces
                .get_value_or_guard(&(keyid.to_string(), nonce.clone()), None)
            {
                quick_cache::sync::GuardResult::Value(()) => return Err("signature_replay"),
                quick_cache::sync::GuardResult::Guard(g) => {
                    let _ = g.insert(());
                }
                quick_cache::sync::GuardResult::Timeout => return Err("signature_replay"),
            }
        }
        Ok(covered.contains(&"content-digest"))
    }
}

const CONTENT_DIGEST: header::HeaderName = header::HeaderName::from_static("content-digest");
const SIGNATURE_INPUT: header::HeaderName = header::HeaderName::from_static("signature-input");
const SIGNATURE: header::HeaderName = header::HeaderName::from_static("signature");

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// A field's value as RFC 9421 §2.1 defines it: every field line trimmed, joined with ", ".
fn header_text(headers: &HeaderMap, name: &header::HeaderName) -> String {
    let mut out = String::new();
    for v in headers.get_all(name) {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(String::from_utf8_lossy(v.as_bytes()).trim());
    }
    out
}

/// RFC 9530: every supported digest given must match the body; at least one must be given.
/// What `check_digest` can tell from the header alone: malformed, or no algorithm we know.
pub fn check_digest_header(headers: &HeaderMap) -> Result<(), &'static str> {
    let members =
        sf::dictionary(&header_text(headers, &CONTENT_DIGEST)).map_err(|_| "digest_malformed")?;
    let mut known = 0;
    for m in &members {
        if !matches!(&m.value, Value::Item(Bare::Bytes(_))) {
            return Err("digest_malformed");
        }
        if matches!(m.key.as_str(), "sha-256" | "sha-512") {
            known += 1;
        }
    }
    if known == 0 {
        return Err("digest_unsupported");
    }
    Ok(())
}

pub fn check_digest(headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let members =
        sf::dictionary(&header_text(headers, &CONTENT_DIGEST)).map_err(|_| "digest_malformed")?;
    let mut checked = 0;
    for m in &members {
        let Value::Item(Bare::Bytes(given)) = &m.value else {
            return Err("digest_malformed");
        };
        let alg = match m.key.as_str() {
            "sha-256" => &aws_lc_rs::digest::SHA256,
            "sha-512" => &aws_lc_rs::digest::SHA512,
            _ => continue,
        };
        let actual = aws_lc_rs::digest::digest(alg, body);
        if aws_lc_rs::constant_time::verify_slices_are_equal(actual.as_ref(), given).is_err() {
            return Err("digest_mismatch");
        }
        checked += 1;
    }
    if checked == 0 {
        return Err("digest_unsupported");
    }
    Ok(())
}

/// The RFC 9421 §2.5 signature base: each covered component, then `@signature-params`.
pub fn signature_base(
    parts: &Parts,
    components: &[(String, Vec<(String, Bare)>)],
    params_raw: &str,
    https: bool,
) -> Result<String, &'static str> {
    let mut base = String::new();
    for (name, params) in components {
        if !params.is_empty() {
            // sf, key, bs, req, tr: not supported; refuse rather than sign the wrong thing.
            return Err("signature_components");
        }
        let value = component(parts, name, https).ok_or("signature_components")?;
        base.push('"');
        base.push_str(name);
        base.push_str("\": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(params_raw);
    Ok(base)
}

fn authority(parts: &Parts, https: bool) -> Option<String> {
    let raw = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })?;
    let lower = raw.to_ascii_lowercase();
    let default = if https { ":443" } else { ":80" };
    Some(
        lower
            .strip_suffix(default)
            .map(str::to_string)
            .unwrap_or(lower),
    )
}

fn component(parts: &Parts, name: &str, https: bool) -> Option<String> {
    let scheme = if https { "https" } else { "http" };
    // The path as the client sent it (it signed that), not the normalised one.
    let (path, query) = match parts.extensions.get::<crate::path::RawTarget>() {
        Some(raw) => (raw.0.path(), raw.0.query()),
        None => (parts.uri.path(), parts.uri.query()),
    };
    let path = if path.is_empty() { "/" } else { path };
    Some(match name {
        "@method" => parts.method.as_str().to_string(),
        "@authority" => authority(parts, https)?,
        "@scheme" => scheme.to_string(),
        "@path" => path.to_string(),
        "@query" => format!("?{}", query.unwrap_or("")),
        "@request-target" => match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        },
        "@target-uri" => {
            let q = query.map(|q| format!("?{q}")).unwrap_or_default();
            format!("{scheme}://{}{path}{q}", authority(parts, https)?)
        }
        n if n.starts_with('@') => return None,
        field => {
            let name = header::HeaderName::from_bytes(field.as_bytes()).ok()?;
            if !parts.headers.contains_key(&name) {
                return None;
            }
            header_text(&parts.headers, &name)
        }
    })
}

/// `gateway_integrity_failures_total{route, reason}` of one route, every reason from start-up.
#[derive(Debug)]
pub struct IntegrityFailures {
    by_reason: Vec<(&'static str, IntCounter)>,
}

impl IntegrityFailures {
    pub fn new(metrics: &crate::metrics::Metrics, route: &str) -> Self {
        Self {
            by_reason: REASONS
                .iter()
                .map(|&r| {
                    let c = metrics
                        .integrity_failures_total
                        .with_label_values(&[route, r]);
                    c.inc_by(0);
                    (r, c)
                })
                .collect(),
        }
    }

    fn count(&self, reason: &str) {
        if let Some((_, c)) = self.by_reason.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
    }
}

#[derive(Clone, Debug)]
pub struct IntegrityLayer {
    rt: Arc<IntegrityRt>,
    failures: Arc<IntegrityFailures>,
}

impl IntegrityLayer {
    pub fn new(rt: Arc<IntegrityRt>, failures: Arc<IntegrityFailures>) -> Self {
        Self { rt, failures }
    }
}

impl<S> Layer<S> for IntegrityLayer {
    type Service = Integrity<S>;
    fn layer(&self, inner: S) -> Integrity<S> {
        Integrity {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Integrity<S> {
    inner: S,
    layer: IntegrityLayer,
}

impl<S, R> Service<Request<ReqBody>> for Integrity<S>
where
    S: Service<Request<ReqBody>, Response = R, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
    R: Send + 'static,
{
    type Response = R;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<R, GatewayError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let layer = self.layer.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, mut body) = req.into_parts();
            let https = parts
                .extensions
                .get::<Arc<ConnInfo>>()
                .is_some_and(|c| c.listener.https);
            // A required signature is checked on the head: without it, no body is read.
            let verified = match layer.rt.check_head(&parts, !body.is_end_stream(), https) {
                None => None,
                Some(Ok(covers)) => Some(covers),
                Some(Err(reason)) => {
                    layer.failures.count(reason);
                    return Err(GatewayError::Integrity(reason));
                }
            };
            // The whole body, counted against `max_buffered_bytes` as it arrives.
            let mut lease = BufferLease::try_new(0);
            let mut buf = bytes::BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) if caused_by::<BodyTooLarge>(e.as_ref()) => {
                        return Err(GatewayError::BodyTooLarge)
                    }
                    Err(e) if caused_by::<BodyTimedOut>(e.as_ref()) => {
                        return Err(GatewayError::BodyTimeout)
                    }
                    Err(e) if caused_by::<ClientBodyError>(e.as_ref()) => {
                        return Err(GatewayError::ClientGone)
                    }
                    Err(_) => return Err(GatewayError::BadRequest("unreadable request body")),
                };
                if let Ok(data) = frame.into_data() {
                    if !lease.as_mut().is_some_and(|l| l.grow(data.len() as u64)) {
                        crate::body::count_buffer_rejected();
                        return Err(GatewayError::BufferFull);
                    }
                    buf.extend_from_slice(&data);
                }
            }
            let bytes: Bytes = buf.freeze();
            if let Err(reason) = layer.rt.check_with(&parts, &bytes, https, verified) {
                layer.failures.count(reason);
                return Err(GatewayError::Integrity(reason));
            }
            inner
                .call(Request::from_parts(parts, ReqBody::from_bytes(bytes)))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use std::time::Duration;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
    /// RFC 9421 Appendix B.1.5 `test-shared-secret`.
    const SHARED_SECRET: &str =
        "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
    const BODY: &[u8] = br#"{"hello": "world"}"#;

    /// The RFC 9421 Appendix B.2 test request (with the RFC 9530 digest of its body).
    fn rfc_request(extra: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder()
            .method("POST")
            .uri("/foo?param=Value&Pet=dog")
            .header("host", "example.com")
            .header("date", "Tue, 20 Apr 2021 02:07:55 GMT")
            .header("content-type", "application/json")
            .header(
                "content-digest",
                "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
            )
            .header("content-length", "18");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn policy(required: &[&str]) -> IntegrityRt {
        IntegrityRt::new(IntegrityPolicy {
            content_digest: CheckMode::Required,
            signature: CheckMode::Required,
            keys: vec![(
                "test-shared-secret".into(),
                B64.decode(SHARED_SECRET).unwrap(),
            )],
            required_components: required.iter().map(|s| s.to_string()).collect(),
            max_skew: Duration::from_secs(300),
            max_nonces: 100,
            json: true,
        })
    }

    #[test]
    fn rfc_9530_digests_of_the_example_body() {
        let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, BODY);
        assert_eq!(
            B64.encode(sha256),
            "X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE="
        );
        let p = rfc_request(&[]);
        assert_eq!(check_digest(&p.headers, BODY), Ok(()));
        assert_eq!(
            check_digest(&p.headers, b"{\"hello\": \"World\"}"),
            Err("digest_mismatch")
        );
        let both = rfc_request(&[(
            "content-digest",
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
        )]);
        assert_eq!(check_digest(&both.headers, BODY), Ok(()));
        let unknown = Request::builder()
            .header("content-digest", "md5=:AAAA:")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(
            check_digest(&unknown.headers, BODY),
            Err("digest_unsupported")
        );
    }

    #[test]
    fn rfc_9421_b_2_5_hmac_sha256_verifies() {
        let input = r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#;
        let p = rfc_request(&[
            ("signature-input", input),
            (
                "signature",
                "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
            ),
        ]);
        let members = sf::dictionary(input).unwrap();
        let Value::InnerList(components) = &members[0].value else {
            panic!()
        };
        let base = signature_base(&p, components, &members[0].raw_value, false).unwrap();
        assert_eq!(
            base,
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@authority\": example.com\n\"content-type\": application/json\n\"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""
        );
        let rt = policy(&["@authority"]);
        assert_eq!(
            rt.check_signature(&p, true, false, 1618884473 + 10),
            Ok(false)
        );
        // A tampered component breaks it.
        let mut bad = p.clone();
        bad.headers
            .insert("content-type", "text/plain".parse().unwrap());
        assert_eq!(
            rt.check_signature(&bad, true, false, 1618884473),
            Err("signature_invalid")
        );
        // Too old for the skew window.
        assert_eq!(
            rt.check_signature(&p, true, false, 1618884473 + 301),
            Err("signature_skew")
        );
        // The policy wants @method covered: this signature does not.
        assert_eq!(
            policy(&["@method"]).check_signature(&p, true, false, 1618884473),
            Err("signature_components")
        );
    }

    fn sign(p: &Parts, components: &str, params: &str) -> (String, String) {
        let input = format!("sig1=({components}){params}");
        let members = sf::dictionary(&input).unwrap();
        let Value::InnerList(items) = &members[0].value else {
            panic!()
        };
        let base = signature_base(p, items, &members[0].raw_value, true).unwrap();
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &B64.decode(SHARED_SECRET).unwrap(),
        );
        let tag = aws_lc_rs::hmac::sign(&key, base.as_bytes());
        (input, format!("sig1=:{}:", B64.encode(tag.as_ref())))
    }

    #[test]
    fn nonces_are_single_use_and_derived_components_resolve() {
        let rt = policy(&["@method", "@authority", "@path", "content-digest"]);
        let now = now();
        let p = rfc_request(&[]);
        let comps = r#""@method" "@authority" "@path" "@query" "@target-uri" "@scheme" "@request-target" "content-digest""#;
        let (input, sig) = sign(
            &p,
            comps,
            &format!(r#";created={now};keyid="test-shared-secret";nonce="n-1""#),
        );
        let signed = rfc_request(&[("signature-input", &input), ("signature", &sig)]);
        assert_eq!(rt.check(&signed, BODY, true), Ok(()));
        assert_eq!(rt.check(&signed, BODY, true), Err("signature_replay"));
        assert_eq!(
            component(&p, "@target-uri", true).unwrap(),
            "https://example.com/foo?param=Value&Pet=dog"
        );
        assert_eq!(
            component(&p, "@query", true).unwrap(),
            "?param=Value&Pet=dog"
        );
        assert_eq!(
            component(&p, "@request-target", true).unwrap(),
            "/foo?param=Value&Pet=dog"
        );
    }

    #[test]
    fn json_bodies_must_parse() {
        let rt = IntegrityRt::new(IntegrityPolicy {
            content_digest: CheckMode::Off,
            signature: CheckMode::Off,
            keys: vec![],
            required_components: vec![],
            max_skew: Duration::from_secs(300),
            max_nonces: 10,
            json: true,
        });
        let p = rfc_request(&[]);
        assert_eq!(rt.check(&p, BODY, false), Ok(()));
        assert_eq!(rt.check(&p, b"{\"hello\": ", false), Err("json_invalid"));
    }
}
