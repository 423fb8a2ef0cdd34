//! JWT and API-key auth through the real gateway: every algorithm, the classic attacks, a
//! local HTTPS JWKS server (rotation, bogus-kid flood, stale-if-error), forged claim headers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::client::{request, send, H1};
use crate::harness::{backend, gateway_cmd, repo_root, unix_now, Gateway};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A signing key and its public JWK.
pub struct TestKey {
    pub kid: String,
    pub jwk: Value,
    pub pem: String,
    pub encoding: EncodingKey,
}

/// The (n, e) of a PKCS#1 RSAPublicKey: SEQUENCE { INTEGER n, INTEGER e }.
fn rsa_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            (
                b[2..2 + n]
                    .iter()
                    .fold(0usize, |a, &x| (a << 8) | x as usize),
                2 + n,
            )
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, seq, _) = tlv(der);
    let (_, n, rest) = tlv(seq);
    let (_, e, _) = tlv(rest);
    let strip = |x: &[u8]| {
        x.iter()
            .skip_while(|&&b| b == 0)
            .copied()
            .collect::<Vec<u8>>()
    };
    (strip(n), strip(e))
}

pub fn rsa_key(kid: &str) -> TestKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let (n, e) = rsa_components(kp.public_key_raw());
    let pem = kp.serialize_pem();
    TestKey {
        kid: kid.into(),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "n": B64.encode(n), "e": B64.encode(e)}),
        encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        pem,
    }
}

pub fn ec_key(kid: &str, p384: bool) -> TestKey {
    let alg = if p384 {
        &rcgen::PKCS_ECDSA_P384_SHA384
    } else {
        &rcgen::PKCS_ECDSA_P256_SHA256
    };
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    let point = kp.public_key_raw();
    let half = (point.len() - 1) / 2;
    let pem = kp.serialize_pem();
    TestKey {
        kid: kid.into(),
        jwk: json!({"kty": "EC", "kid": kid, "crv": if p384 { "P-384" } else { "P-256" },
                    "x": B64.encode(&point[1..1 + half]), "y": B64.encode(&point[1 + half..])}),
        encoding: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        pem,
    }
}

pub fn ed_key(kid: &str) -> TestKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let pem = kp.serialize_pem();
    TestKey {
        kid: kid.into(),
        jwk: json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": B64.encode(kp.public_key_raw())}),
        encoding: EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        pem,
    }
}

pub fn hmac_key(kid: &str, secret: &[u8]) -> TestKey {
    TestKey {
        kid: kid.into(),
        jwk: json!({"kty": "oct", "kid": kid, "k": B64.encode(secret)}),
        pem: String::new(),
        encoding: EncodingKey::from_secret(secret),
    }
}

/// Standard claims valid for the test policy, merged with `extra`.
fn claims(extra: Value) -> Value {
    let mut c = json!({"sub": "user-1", "iss": "https://issuer.test", "aud": "api", "exp": unix_now() + 600, "iat": unix_now()});
    if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    c
}

fn sign(alg: Algorithm, key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &key.encoding).unwrap()
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn jwt_config(upstream: std::net::SocketAddr, source: &str, algorithms: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[jwt.partners]
algorithms = [{algorithms}]
{source}
issuer = "https://issuer.test"
audiences = ["api"]
leeway = "5s"
max_token_bytes = 4096
claims_to_headers = {{ sub = "x-user-id", tenant = "x-tenant" }}

[upstreams.app]
targets = [{{ addr = "{upstream}" }}]

[[routes]]
name = "secure"
match = {{ path_prefix = "/" }}
upstream = "app"
jwt = "partners"
"#
    )
}

async fn call(conn: &mut H1, token: Option<&str>, extra: &[(&str, &str)]) -> crate::client::Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    conn.send(request("GET", "/r", &headers, Bytes::new()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_verifies_with_its_key_type() {
    let b = backend("b").await;
    let rsa = rsa_key("r1");
    let e256 = ec_key("e256", false);
    let e384 = ec_key("e384", true);
    let ed = ed_key("ed1");
    let oct = hmac_key(
        "h1",
        b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&rsa, &e256, &e384, &ed, &oct])).unwrap();
    let algs = r#""HS256","HS384","HS512","RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA""#;
    let gw = Gateway::start(&jwt_config(
        b.addr,
        &format!("jwks_file = \"{}\"", file.display()),
        algs,
    ));
    let mut conn = H1::connect(gw.addr("http")).await;
    let cases: [(Algorithm, &TestKey); 12] = [
        (Algorithm::HS256, &oct),
        (Algorithm::HS384, &oct),
        (Algorithm::HS512, &oct),
        (Algorithm::RS256, &rsa),
        (Algorithm::RS384, &rsa),
        (Algorithm::RS512, &rsa),
        (Algorithm::PS256, &rsa),
        (Algorithm::PS384, &rsa),
        (Algorithm::PS512, &rsa),
        (Algorithm::ES256, &e256),
        (Algorithm::ES384, &e384),
        (Algorithm::EdDSA, &ed),
    ];
    for (alg, key) in cases {
        let token = sign(
            alg,
            key,
            Some(&key.kid),
            &claims(json!({"sub": format!("u-{alg:?}"), "tenant": "acme"})),
        );
        let res = call(&mut conn, Some(&token), &[]).await;
        assert_eq!(res.status, StatusCode::OK, "{alg:?}: {:?}", res.body);
        let h = &res.json()["headers"];
        assert_eq!(h["x-user-id"], format!("u-{alg:?}"));
        assert_eq!(h["x-tenant"], "acme");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classic_attacks_are_refused_with_their_reason() {
    let b = backend("b").await;
    let rsa = rsa_key("r1");
    let rsa2 = rsa_key("r2");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&rsa, &rsa2])).unwrap();
    let gw = Gateway::start(&jwt_config(
        b.addr,
        &format!("jwks_file = \"{}\"", file.display()),
        r#""RS256","HS256""#,
    ));
    let mut conn = H1::connect(gw.addr("http")).await;
    let good = sign(Algorithm::RS256, &rsa, Some("r1"), &claims(json!({})));
    assert_eq!(
        call(&mut conn, Some(&good), &[]).await.status,
        StatusCode::OK
    );

    let header = |h: Value| B64.encode(h.to_string());
    let body = |c: Value| B64.encode(c.to_string());
    let sig_of_good = good.rsplit('.').next().unwrap().to_string();
    // HS256 signed with the RSA public key (as PEM bytes) as the HMAC secret.
    let public_pem = {
        let kp = rcgen::KeyPair::from_pem(&rsa.pem).unwrap();
        kp.public_key_pem()
    };
    let confused = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("r1".into());
        jsonwebtoken::encode(
            &h,
            &claims(json!({})),
            &EncodingKey::from_secret(public_pem.as_bytes()),
        )
        .unwrap()
    };
    let mut tampered_parts: Vec<String> = good.split('.').map(str::to_string).collect();
    tampered_parts[1] = body(claims(json!({"sub": "admin"})));
    let attacks: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                header(json!({"alg": "none", "typ": "JWT"})),
                body(claims(json!({})))
            ),
            "algorithm",
        ),
        (
            "alg none, signature kept",
            format!(
                "{}.{}.{}",
                header(json!({"alg": "none", "kid": "r1"})),
                body(claims(json!({}))),
                sig_of_good
            ),
            "algorithm",
        ),
        ("HS256 with the RSA public key", confused, "key_type"),
        (
            "expired",
            sign(
                Algorithm::RS256,
                &rsa,
                Some("r1"),
                &claims(json!({"exp": unix_now() - 60})),
            ),
            "expired",
        ),
        (
            "not yet valid",
            sign(
                Algorithm::RS256,
                &rsa,
                Some("r1"),
                &claims(json!({"nbf": unix_now() + 600})),
            ),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                &rsa,
                Some("r1"),
                &claims(json!({"iss": "https://evil.test"})),
            ),
            "issuer",
        ),
        (
            "wrong audience",
            sign(
                Algorithm::RS256,
                &rsa,
                Some("r1"),
                &claims(json!({"aud": "other"})),
            ),
            "audience",
        ),
        (
            "no exp",
            {
                let mut c = claims(json!({}));
                c.as_object_mut().unwrap().remove("exp");
                sign(Algorithm::RS256, &rsa, Some("r1"), &c)
            },
            "missing_claim",
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, &rsa, Some("nope"), &claims(json!({}))),
            "unknown_kid",
        ),
        (
            "no kid, two RSA keys",
            sign(Algorithm::RS256, &rsa, None, &claims(json!({}))),
            "ambiguous_key",
        ),
        (
            "signed by the other key",
            sign(Algorithm::RS256, &rsa2, Some("r1"), &claims(json!({}))),
            "signature",
        ),
        ("tampered payload", tampered_parts.join("."), "signature"),
        (
            "truncated",
            good[..good.len() - 20].to_string(),
            "signature",
        ),
        (
            "two parts",
            good.rsplit_once('.').unwrap().0.to_string(),
            "malformed",
        ),
        (
            "crit",
            format!(
                "{}.{}.{}",
                header(json!({"alg": "RS256", "kid": "r1", "crit": ["exp"]})),
                body(claims(json!({}))),
                sig_of_good
            ),
            "crit",
        ),
        (
            "algorithm not allowed",
            sign(Algorithm::RS384, &rsa, Some("r1"), &claims(json!({}))),
            "algorithm",
        ),
        (
            "oversized",
            sign(
                Algorithm::RS256,
                &rsa,
                Some("r1"),
                &claims(json!({"pad": "x".repeat(5000)})),
            ),
            "too_large",
        ),
        ("garbage", "not-a-token".to_string(), "malformed"),
    ];
    for (name, token, reason) in &attacks {
        let res = call(&mut conn, Some(token), &[]).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{name}");
        let challenge = res.header("www-authenticate").to_string();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
            "{name}: {challenge}"
        );
        assert!(res.json()["request_id"].is_string());
        let metrics = gw.metrics_text().await;
        let line = format!("gateway_auth_failures_total{{reason=\"{reason}\",route=\"secure\"}} ");
        let count: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or("0")
            .parse()
            .unwrap();
        assert!(
            count >= 1.0,
            "{name}: no failure counted under reason {reason}"
        );
    }
    let missing = call(&mut conn, None, &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        b.state.requests(),
        1,
        "only the good token reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_claim_headers_are_stripped() {
    let b = backend("b").await;
    let oct = hmac_key("h1", b"another-secret-another-secret-another-secret!");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&oct])).unwrap();
    let gw = Gateway::start(&jwt_config(
        b.addr,
        &format!("jwks_file = \"{}\"", file.display()),
        r#""HS256""#,
    ));
    let mut conn = H1::connect(gw.addr("http")).await;
    // A token without a tenant claim, and forged headers: none of them may reach the upstream.
    let token = sign(
        Algorithm::HS256,
        &oct,
        None,
        &claims(json!({"sub": "user-9"})),
    );
    let res = call(
        &mut conn,
        Some(&token),
        &[("x-user-id", "admin"), ("x-tenant", "everyone")],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let h = &res.json()["headers"];
    assert_eq!(h["x-user-id"], "user-9");
    assert!(
        h["x-tenant"].is_null(),
        "a forged x-tenant went through: {h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_file_that_changes_is_reloaded() {
    let b = backend("b").await;
    let k1 = ec_key("k1", false);
    let k2 = ec_key("k2", false);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&k1])).unwrap();
    let gw = Gateway::start(&jwt_config(
        b.addr,
        &format!("jwks_file = \"{}\"", file.display()),
        r#""ES256""#,
    ));
    let mut conn = H1::connect(gw.addr("http")).await;
    let t2 = sign(Algorithm::ES256, &k2, Some("k2"), &claims(json!({})));
    assert_eq!(
        call(&mut conn, Some(&t2), &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    std::fs::write(&file, jwks(&[&k1, &k2])).unwrap();
    let mut ok = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if call(&mut conn, Some(&t2), &[]).await.status == StatusCode::OK {
            ok = true;
            break;
        }
    }
    assert!(
        ok,
        "a rotated-in key must be accepted after the file changes"
    );
}

/// A JWKS server over HTTPS (self-signed; the gateway trusts it through SSL_CERT_FILE).
struct JwksServer {
    addr: std::net::SocketAddr,
    doc: Arc<Mutex<String>>,
    fail: Arc<AtomicBool>,
    fetches: Arc<AtomicU64>,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn jwks_server(doc: String) -> JwksServer {
    let dir = tempfile::tempdir().unwrap();
    let g =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, g.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(g.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![g.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let doc = Arc::new(Mutex::new(doc));
    let fail = Arc::new(AtomicBool::new(false));
    let fetches = Arc::new(AtomicU64::new(0));
    let (d, f, n) = (doc.clone(), fail.clone(), fetches.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, d, f, n) = (acceptor.clone(), d.clone(), f.clone(), n.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req| {
                    let (d, f, n) = (d.clone(), f.clone(), n.clone());
                    async move {
                        n.fetch_add(1, Ordering::SeqCst);
                        let mut res = http::Response::new(http_body_util::Full::new(Bytes::from(
                            d.lock().unwrap().clone(),
                        )));
                        if f.load(Ordering::SeqCst) {
                            *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        res.headers_mut()
                            .insert("cache-control", "max-age=3600".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    JwksServer {
        addr,
        doc,
        fail,
        fetches,
        ca,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_over_https_rotates_resists_bogus_kids_and_keeps_keys_when_the_issuer_fails() {
    let b = backend("b").await;
    let a1 = rsa_key("a1");
    let a2 = rsa_key("a2");
    let server = jwks_server(jwks(&[&a1])).await;
    let url = format!(
        "https://localhost:{}/.well-known/jwks.json",
        server.addr.port()
    );
    let gw = Gateway::start_with_env(
        &jwt_config(b.addr, &format!("jwks_url = \"{url}\""), r#""RS256""#),
        &[("SSL_CERT_FILE", server.ca.to_str().unwrap())],
    );
    let mut conn = H1::connect(gw.addr("http")).await;
    let t1 = sign(Algorithm::RS256, &a1, Some("a1"), &claims(json!({})));
    // Fetched at start (the first request may wait for it).
    let first = call(&mut conn, Some(&t1), &[]).await;
    assert_eq!(
        first.status,
        StatusCode::OK,
        "{:?}\n{}",
        first.body,
        gw.lines.all().join("\n")
    );
    assert!(server.fetches.load(Ordering::SeqCst) >= 1);

    // The issuer rotates in a2: the first token with the new kid triggers a refresh.
    *server.doc.lock().unwrap() = jwks(&[&a1, &a2]);
    let t2 = sign(Algorithm::RS256, &a2, Some("a2"), &claims(json!({})));
    let before = server.fetches.load(Ordering::SeqCst);
    let rotated = call(&mut conn, Some(&t2), &[]).await;
    assert_eq!(
        rotated.status,
        StatusCode::OK,
        "{:?}\n{}",
        rotated.body,
        gw.lines.all().join("\n")
    );
    assert_eq!(server.fetches.load(Ordering::SeqCst), before + 1);

    // A flood of bogus kids costs the issuer nothing more (cooldown).
    let before = server.fetches.load(Ordering::SeqCst);
    for i in 0..50 {
        let bogus = sign(
            Algorithm::RS256,
            &a1,
            Some(&format!("bogus-{i}")),
            &claims(json!({})),
        );
        assert_eq!(
            call(&mut conn, Some(&bogus), &[]).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert!(
        server.fetches.load(Ordering::SeqCst) <= before + 1,
        "bogus kids hammered the issuer"
    );

    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("gateway_jwks_keys{policy=\"partners\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_jwks_refresh_total{outcome=\"success\",policy=\"partners\"} 2")
    );
    drop(gw);

    // A new gateway; once it has the keys, the issuer fails: the last good set stays.
    let gw = Gateway::start_with_env(
        &jwt_config(b.addr, &format!("jwks_url = \"{url}\""), r#""RS256""#),
        &[("SSL_CERT_FILE", server.ca.to_str().unwrap())],
    );
    let mut conn = H1::connect(gw.addr("http")).await;
    assert_eq!(call(&mut conn, Some(&t1), &[]).await.status, StatusCode::OK);
    server.fail.store(true, Ordering::SeqCst);
    // An unknown kid forces a refresh, which fails.
    let bogus = sign(
        Algorithm::RS256,
        &a1,
        Some("rotated-out"),
        &claims(json!({})),
    );
    let started = std::time::Instant::now();
    assert_eq!(
        call(&mut conn, Some(&bogus), &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a failed refresh must not hold the request"
    );
    assert_eq!(
        call(&mut conn, Some(&t1), &[]).await.status,
        StatusCode::OK,
        "stale-if-error"
    );
    assert_eq!(call(&mut conn, Some(&t2), &[]).await.status, StatusCode::OK);
    let metrics = gw.metrics_text().await;
    assert!(
        !metrics.contains("gateway_jwks_refresh_total{outcome=\"error\",policy=\"partners\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_checked_and_named_upstream() {
    let b = backend("b").await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let hex = |k: &str| {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, k.as_bytes());
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    std::fs::write(
        &keys,
        format!(
            "billing = \"{}\"\nsearch = \"{}\"\n",
            hex("key-billing-123"),
            hex("key-search-456")
        ),
    )
    .unwrap();
    let config = format!(
        r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[api_keys.internal]
keys_file = "{}"

[upstreams.app]
targets = [{{ addr = "{}" }}]

[[routes]]
name = "internal"
upstream = "app"
api_key = "internal"
"#,
        keys.display(),
        b.addr
    );
    let gw = Gateway::start(&config);
    let addr = gw.addr("http");
    let r = send(addr, request("GET", "/", &[], Bytes::new())).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        addr,
        request("GET", "/", &[("x-api-key", "key-billing-12")], Bytes::new()),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        addr,
        request(
            "GET",
            "/",
            &[
                ("x-api-key", "key-search-456"),
                ("x-api-key-name", "billing"),
            ],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let h = &r.json()["headers"];
    assert_eq!(
        h["x-api-key-name"], "search",
        "the key's own name, never a forged one"
    );
    assert!(
        h["x-api-key"].is_null(),
        "the key itself does not go upstream"
    );
    assert!(
        !gw.lines.all().iter().any(|l| l.contains("key-search-456")),
        "the key leaked into a log"
    );
}

#[test]
fn gateway_token_mints_tokens_the_gateway_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let key = ec_key("cli", false);
    let pem = dir.path().join("signing.pem");
    std::fs::write(&pem, &key.pem).unwrap();
    let (code, out, err) = gateway_cmd(
        &[
            "token",
            "--key",
            pem.to_str().unwrap(),
            "--alg",
            "ES256",
            "--kid",
            "cli",
            "--sub",
            "u-cli",
            "--aud",
            "api",
            "--iss",
            "https://issuer.test",
            "--ttl",
            "10m",
            "--claim",
            "tenant=acme",
            "--claim",
            "level=3",
        ],
        &repo_root(),
    );
    assert_eq!(code, 0, "{err}");
    let token = out.trim();
    let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
    v.set_audience(&["api"]);
    v.set_issuer(&["https://issuer.test"]);
    let decoding =
        jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(key.jwk).unwrap()).unwrap();
    let data = jsonwebtoken::decode::<Value>(token, &decoding, &v).unwrap();
    assert_eq!(data.header.kid.as_deref(), Some("cli"));
    assert_eq!(data.claims["sub"], "u-cli");
    assert_eq!(data.claims["tenant"], "acme");
    assert_eq!(data.claims["level"], 3);
    let exp = data.claims["exp"].as_u64().unwrap();
    assert!(exp > unix_now() + 500 && exp <= unix_now() + 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_a_verified_claim_keeps_each_user_on_one_shard() {
    let shards = [
        backend("s0").await,
        backend("s1").await,
        backend("s2").await,
    ];
    let key = ec_key("e1", false);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&key])).unwrap();
    let gw = Gateway::start(&format!(
        r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[jwt.partners]
algorithms = ["ES256"]
jwks_file = "{}"
issuer = "https://issuer.test"
audiences = ["api"]

[upstreams.app]
balancer = "consistent_hash"
hash_on = "jwt.sub"
targets = [{{ addr = "{}", id = "s0" }}, {{ addr = "{}", id = "s1" }}, {{ addr = "{}", id = "s2" }}]

[[routes]]
name = "secure"
upstream = "app"
jwt = "partners"
"#,
        file.display(),
        shards[0].addr,
        shards[1].addr,
        shards[2].addr
    ));
    let mut conn = H1::connect(gw.addr("http")).await;
    let mut placement = std::collections::HashMap::new();
    for user in 0..30 {
        let token = sign(
            Algorithm::ES256,
            &key,
            Some("e1"),
            &claims(json!({"sub": format!("user-{user}")})),
        );
        // A header claiming another user changes nothing: only the verified claim counts.
        let forged = format!("user-{}", user + 1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let res = call(&mut conn, Some(&token), &[("x-user-id", &forged)]).await;
            assert_eq!(res.status, StatusCode::OK);
            seen.insert(res.header("x-served-by").to_string());
        }
        assert_eq!(seen.len(), 1, "user-{user} moved between shards: {seen:?}");
        placement.insert(user, seen.into_iter().next().unwrap());
    }
    let used: std::collections::HashSet<_> = placement.values().collect();
    assert_eq!(used.len(), 3, "30 users all on {used:?}");
    // The same placement as the balancer computes for the claim value itself.
    let ring = gateway::balance::ketama::Ketama::new(&[("s0", 1), ("s1", 1), ("s2", 1)]);
    use gateway::balance::Balance;
    for (user, shard) in &placement {
        let h = ring.hash_key(format!("user-{user}").as_bytes());
        let i = ring
            .pick(&gateway::balance::PickCtx::hashed(Some(h)), &mut |_| true)
            .unwrap();
        assert_eq!(&format!("s{i}"), shard, "user-{user}");
    }
}
