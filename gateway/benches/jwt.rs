//! What a verified JWT costs per request, with the verified-token cache and without it, for
//! the algorithm families users run: HS256, ES256, RS256 (2048-bit), EdDSA.
//!
//! `cargo bench -p gateway --bench jwt`

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use gateway::config::{JwtPolicy, JwtSource};
use gateway::policy::jwt::keys::KeySet;
use gateway::policy::jwt::verify::JwtPolicyRt;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

fn policy(alg: Algorithm, encoding: &EncodingKey, ed_public: Option<&[u8]>) -> JwtPolicyRt {
    let jwk = match ed_public {
        // jsonwebtoken cannot make an OKP JWK from a key: written out here.
        Some(x) => {
            use base64::Engine;
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(x);
            serde_json::from_value(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x}))
                .expect("okp jwk")
        }
        None => Jwk::from_encoding_key(encoding, alg).expect("jwk"),
    };
    let mut jwk: Jwk = jwk;
    jwk.common.key_id = Some("k1".into());
    let json = serde_json::to_vec(&JwkSet { keys: vec![jwk] }).expect("json");
    let (keys, _) = KeySet::from_jwks(&json, 1).expect("key set");
    JwtPolicyRt::new(
        "bench",
        JwtPolicy {
            algorithms: vec![alg],
            source: JwtSource::File {
                path: "bench.jwks".into(),
                keys,
            },
            issuer: Some("https://issuer.bench".into()),
            audiences: Some(vec!["api".into()]),
            leeway: Duration::from_secs(30),
            max_token_bytes: 8192,
            claims_to_headers: Vec::new(),
        },
        &gateway::metrics::Metrics::new(),
    )
}

fn token(alg: Algorithm, encoding: &EncodingKey) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut h = Header::new(alg);
    h.kid = Some("k1".into());
    let claims = serde_json::json!({
        "sub": "user-42", "iss": "https://issuer.bench", "aud": "api",
        "exp": now + 3600, "iat": now, "scope": "orders:read orders:write",
    });
    jsonwebtoken::encode(&h, &claims, encoding).expect("sign")
}

type BenchKey = (&'static str, Algorithm, EncodingKey, Option<Vec<u8>>);

fn keys() -> Vec<BenchKey> {
    let pem = |alg: &'static rcgen::SignatureAlgorithm| {
        rcgen::KeyPair::generate_for(alg)
            .expect("key")
            .serialize_pem()
    };
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed key");
    vec![
        (
            "HS256",
            Algorithm::HS256,
            EncodingKey::from_secret(b"a 32-byte secret for the bench!!"),
            None,
        ),
        (
            "ES256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(pem(&rcgen::PKCS_ECDSA_P256_SHA256).as_bytes()).expect("ec"),
            None,
        ),
        (
            "RS256",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(pem(&rcgen::PKCS_RSA_SHA256).as_bytes()).expect("rsa"),
            None,
        ),
        (
            "EdDSA",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("ed"),
            Some(ed.public_key_raw().to_vec()),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("jwt_verify");
    for (name, alg, encoding, ed_public) in keys() {
        let p = policy(alg, &encoding, ed_public.as_deref());
        let t = token(alg, &encoding);
        assert!(
            rt.block_on(p.verify(&t)).is_ok(),
            "{name} token must verify"
        );
        g.bench_function(format!("{name}/cached"), |b| {
            b.iter(|| rt.block_on(p.verify(black_box(&t))).is_ok())
        });
        g.bench_function(format!("{name}/uncached"), |b| {
            b.iter(|| p.verify_without_cache(black_box(&t)).is_ok())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
