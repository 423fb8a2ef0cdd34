//! `gateway token`: mint a JWT for testing and for the demo (SPEC §2).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// What to put in the token.
#[derive(Debug, Default, Clone)]
pub struct TokenSpec {
    pub alg: String,
    pub kid: Option<String>,
    pub sub: Option<String>,
    pub aud: Vec<String>,
    pub iss: Option<String>,
    pub ttl: Duration,
    /// `name=value`; the value is read as JSON when it parses, else as a string.
    pub claims: Vec<String>,
}

/// Sign with the key in `key_file`: a PEM private key (RSA, EC, Ed25519), or for HS* the
/// secret itself (a trailing newline is dropped).
pub fn mint_with_file(spec: &TokenSpec, key_file: &Path) -> Result<String, String> {
    let bytes = std::fs::read(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    mint(spec, &bytes)
}

/// Sign with `key` (PEM, or the raw HMAC secret for HS*).
pub fn mint(spec: &TokenSpec, key: &[u8]) -> Result<String, String> {
    let alg: Algorithm = spec
        .alg
        .parse()
        .map_err(|_| format!("unknown algorithm {:?}", spec.alg))?;
    let encoding =
        match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = key.strip_suffix(b"\n").unwrap_or(key);
                EncodingKey::from_secret(secret)
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(key)
                .map_err(|e| format!("not an RSA private key: {e}"))?,
            Algorithm::ES256 | Algorithm::ES384 => {
                EncodingKey::from_ec_pem(key).map_err(|e| format!("not an EC private key: {e}"))?
            }
            Algorithm::EdDSA => EncodingKey::from_ed_pem(key)
                .map_err(|e| format!("not an Ed25519 private key: {e}"))?,
        };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = serde_json::Map::new();
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + spec.ttl.as_secs()).into());
    if let Some(sub) = &spec.sub {
        claims.insert("sub".into(), sub.clone().into());
    }
    if let Some(iss) = &spec.iss {
        claims.insert("iss".into(), iss.clone().into());
    }
    match spec.aud.as_slice() {
        [] => {}
        [one] => {
            claims.insert("aud".into(), one.clone().into());
        }
        many => {
            claims.insert("aud".into(), many.to_vec().into());
        }
    }
    for c in &spec.claims {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| format!("claim {c:?}: write name=value"))?;
        let v =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        claims.insert(k.to_string(), v);
    }
    let mut header = Header::new(alg);
    header.kid = spec.kid.clone();
    jsonwebtoken::encode(&header, &claims, &encoding).map_err(|e| e.to_string())
}
