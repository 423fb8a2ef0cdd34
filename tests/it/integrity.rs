//! Request integrity against an independent client implementation: requests signed by
//! pyauth's `http-message-signatures` (RFC 9421 hmac-sha256, RFC 9530 Content-Digest), then
//! replayed, tampered with and stripped the ways an attacker would.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};

use crate::client::{request, H1};
use crate::harness::{backend, repo_root, require_python_module, unix_now, Gateway};

const SECRET_B64: &str = "dGhlIGludGVncml0eSB0ZXN0IHNoYXJlZCBzZWNyZXQ=";

/// Headers pyauth's signer adds for this request.
fn sign(spec: Value) -> Vec<(String, String)> {
    require_python_module("http_message_signatures", "http-message-signatures==3.0.0");
    require_python_module("requests", "requests");
    let script = repo_root().join("tests/reference/sign_request.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the reference signer failed");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// A tampering: (path, body, headers) to send.
type Case = Box<dyn Fn(&Setup) -> (String, String, Vec<(String, String)>)>;

struct Setup {
    gw: Gateway,
    _dir: tempfile::TempDir,
    host: String,
}

async fn setup() -> (Setup, backends::Handle) {
    let b = backend("signed").await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("signing-keys.toml");
    std::fs::write(&keys, format!("client-1 = \"{SECRET_B64}\"\n")).unwrap();
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[integrity.strict]
content_digest = "required"
signature = "required"
signature_keys_file = "{}"
required_components = ["@method", "@authority", "@path", "content-digest"]
max_skew = "300s"
max_nonces = 1000
json = true

[upstreams.u]
targets = [{{ addr = "{}", id = "signed" }}]

[[routes]]
name = "signed"
match = {{ path_prefix = "/api" }}
upstream = "u"
integrity = "strict"
"#,
        keys.display(),
        b.addr
    ));
    let host = gw.addr("http").to_string();
    (
        Setup {
            gw,
            _dir: dir,
            host,
        },
        b,
    )
}

impl Setup {
    fn addr(&self) -> SocketAddr {
        self.gw.addr("http")
    }

    fn spec(&self, method: &str, path: &str, body: &str) -> Value {
        json!({
            "method": method,
            "url": format!("http://{}{}", self.host, path),
            "headers": {"content-type": "application/json"},
            "body": body,
            "keyid": "client-1",
            "secret_b64": SECRET_B64,
            "components": ["@method", "@authority", "@path", "content-digest"],
            "nonce": null,
            "digest": "sha-256",
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
        signed: &[(String, String)],
    ) -> (StatusCode, String) {
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", self.host.as_str()),
            ("content-type", "application/json"),
        ];
        for (k, v) in signed {
            headers.push((k.as_str(), v.as_str()));
        }
        let mut conn = H1::connect(self.addr()).await;
        let res = conn
            .send(request(
                method,
                path,
                &headers,
                Bytes::copy_from_slice(body.as_bytes()),
            ))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&res.body).into_owned();
        (res.status, text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_signed_by_an_independent_client_pass_and_every_tampering_fails() {
    let (s, b) = setup().await;
    let body = r#"{"user":42,"amount":"10.00"}"#;

    // Signed and digested by the reference client, SHA-256 and SHA-512 digests.
    let mut spec = s.spec("POST", "/api/pay?x=1", body);
    spec["nonce"] = json!("nonce-1");
    let signed = sign(spec);
    let (status, text) = s.send("POST", "/api/pay?x=1", body, &signed).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let mut spec = s.spec("PUT", "/api/pay", body);
    spec["digest"] = json!("sha-512");
    let (status, text) = s.send("PUT", "/api/pay", body, &sign(spec)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let passed = b.state.requests();
    assert_eq!(passed, 2);

    // The same signed request again: its nonce was used.
    let (status, text) = s.send("POST", "/api/pay?x=1", body, &signed).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("signature_replay"), "{text}");

    let cases: Vec<(&str, Case)> = vec![
        (
            "digest_mismatch",
            Box::new(|s: &Setup| {
                // Body changed after signing; headers kept.
                let signed = sign(s.spec("POST", "/api/pay", body));
                ("/api/pay".into(), body.replace("10.00", "99999.00"), signed)
            }),
        ),
        (
            "signature_invalid",
            Box::new(|s: &Setup| {
                // Signed for one path, sent to another.
                let signed = sign(s.spec("POST", "/api/pay", body));
                ("/api/refund".into(), body.into(), signed)
            }),
        ),
        (
            "signature_invalid",
            Box::new(|s: &Setup| {
                // A digest of the changed body swapped in; the signature covers the old one.
                let tampered = body.replace("42", "43");
                let mut signed = sign(s.spec("POST", "/api/pay", body));
                let other = sign(s.spec("POST", "/api/pay", &tampered));
                signed.retain(|(k, _)| k != "content-digest");
                signed.extend(other.into_iter().filter(|(k, _)| k == "content-digest"));
                ("/api/pay".into(), tampered, signed)
            }),
        ),
        (
            "signature_missing",
            Box::new(|s: &Setup| {
                let mut signed = sign(s.spec("POST", "/api/pay", body));
                signed.retain(|(k, _)| k == "content-digest");
                ("/api/pay".into(), body.into(), signed)
            }),
        ),
        (
            "digest_missing",
            Box::new(|s: &Setup| {
                let mut spec = s.spec("POST", "/api/pay", body);
                spec["digest"] = Value::Null;
                spec["components"] = json!(["@method", "@authority", "@path"]);
                ("/api/pay".into(), body.into(), sign(spec))
            }),
        ),
        (
            "signature_components",
            Box::new(|s: &Setup| {
                // Valid, but does not cover the digest: the body is not protected.
                let mut spec = s.spec("POST", "/api/pay", body);
                spec["components"] = json!(["@method", "@authority", "@path"]);
                ("/api/pay".into(), body.into(), sign(spec))
            }),
        ),
        (
            "signature_unknown_key",
            Box::new(|s: &Setup| {
                let mut spec = s.spec("POST", "/api/pay", body);
                spec["keyid"] = json!("client-2");
                ("/api/pay".into(), body.into(), sign(spec))
            }),
        ),
        (
            "signature_invalid",
            Box::new(|s: &Setup| {
                // The right key id, the wrong secret.
                let mut spec = s.spec("POST", "/api/pay", body);
                spec["secret_b64"] = json!("d3Jvbmcgc2VjcmV0");
                ("/api/pay".into(), body.into(), sign(spec))
            }),
        ),
        (
            "signature_skew",
            Box::new(|s: &Setup| {
                let mut spec = s.spec("POST", "/api/pay", body);
                spec["created"] = json!(unix_now() - 3600);
                ("/api/pay".into(), body.into(), sign(spec))
            }),
        ),
        (
            "json_invalid",
            Box::new(|s: &Setup| {
                let broken = r#"{"user":42,"amount":"#;
                (
                    "/api/pay".into(),
                    broken.into(),
                    sign(s.spec("POST", "/api/pay", broken)),
                )
            }),
        ),
        (
            "signature_malformed",
            Box::new(|s: &Setup| {
                let mut signed = sign(s.spec("POST", "/api/pay", body));
                for (k, v) in &mut signed {
                    if k == "signature" {
                        *v = "pyhms=not-bytes".into();
                    }
                }
                ("/api/pay".into(), body.into(), signed)
            }),
        ),
        (
            "digest_malformed",
            Box::new(|s: &Setup| {
                let mut signed = sign(s.spec("POST", "/api/pay", body));
                for (k, v) in &mut signed {
                    if k == "content-digest" {
                        *v = "sha-256=:!!!:".into();
                    }
                }
                ("/api/pay".into(), body.into(), signed)
            }),
        ),
    ];
    for (reason, make) in &cases {
        let (path, sent_body, headers) = make(&s);
        let (status, text) = s.send("POST", &path, &sent_body, &headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reason}: {text}");
        assert!(text.contains(reason), "want {reason}, got {text}");
    }
    assert_eq!(
        b.state.requests(),
        passed,
        "a refused request reached the upstream"
    );

    // A GET has no body: the signature need not cover a digest.
    let mut spec = s.spec("GET", "/api/balance", "");
    spec["digest"] = Value::Null;
    spec["components"] = json!(["@method", "@authority", "@path"]);
    let (status, text) = s.send("GET", "/api/balance", "", &sign(spec)).await;
    assert_eq!(status, StatusCode::OK, "{text}");

    let metrics = s.gw.metrics_text().await;
    for (reason, n) in [
        ("digest_mismatch", 1),
        ("signature_replay", 1),
        ("signature_invalid", 3),
        ("json_invalid", 1),
    ] {
        let line =
            format!("gateway_integrity_failures_total{{reason=\"{reason}\",route=\"signed\"}} {n}");
        assert!(metrics.contains(&line), "no {line:?}");
    }
}
