//! The JWT path from the raw token: our JOSE header decoding (alg, kid, crit), key selection
//! and jsonwebtoken's verification. No panic, and nothing verifies without the secret.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use gateway::config::{JwtPolicy, JwtSource};
use gateway::policy::jwt::verify::JwtPolicyRt;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;

struct Env {
    rt: tokio::runtime::Runtime,
    policy: JwtPolicyRt,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let metrics = gateway::metrics::Metrics::new();
        Env {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            policy: JwtPolicyRt::new(
                "fuzz",
                JwtPolicy {
                    algorithms: vec![Algorithm::HS256, Algorithm::RS256, Algorithm::ES256],
                    source: JwtSource::Secret(b"a secret the fuzzer does not know".to_vec()),
                    issuer: None,
                    audiences: None,
                    leeway: Duration::from_secs(0),
                    max_token_bytes: 8192,
                    claims_to_headers: Vec::new(),
                },
                &metrics,
            ),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let env = env();
    let r = env.rt.block_on(env.policy.verify(token));
    assert!(r.is_err(), "a token verified without the secret: {token}");
});
