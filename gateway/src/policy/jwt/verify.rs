//! Verifying a bearer token against a policy: header checks we do ourselves (`crit`, the
//! policy's algorithm list, key selection), signature and claims through jsonwebtoken with one
//! `Validation` per algorithm, and a bounded cache of verified tokens so RSA/ECDSA is not paid
//! on every request of a session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;

use super::keys::{KeySet, Selection};
use crate::config::{JwtPolicy, JwtSource};

pub use crate::ctx::Claims;

/// Why a token was refused; `reason()` labels `gateway_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    TooLarge,
    Malformed,
    Crit,
    AlgorithmNotAllowed,
    UnknownKid,
    WrongKeyType,
    AmbiguousKey,
    BadSignature,
    Expired,
    NotYetValid,
    BadIssuer,
    BadAudience,
    MissingClaim,
    UnknownApiKey,
}

impl AuthError {
    pub const ALL: [AuthError; 15] = [
        AuthError::Missing,
        AuthError::TooLarge,
        AuthError::Malformed,
        AuthError::Crit,
        AuthError::AlgorithmNotAllowed,
        AuthError::UnknownKid,
        AuthError::WrongKeyType,
        AuthError::AmbiguousKey,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::BadIssuer,
        AuthError::BadAudience,
        AuthError::MissingClaim,
        AuthError::UnknownApiKey,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::Crit => "crit",
            Self::AlgorithmNotAllowed => "algorithm",
            Self::UnknownKid => "unknown_kid",
            Self::WrongKeyType => "key_type",
            Self::AmbiguousKey => "ambiguous_key",
            Self::BadSignature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadIssuer => "issuer",
            Self::BadAudience => "audience",
            Self::MissingClaim => "missing_claim",
            Self::UnknownApiKey => "unknown_api_key",
        }
    }

    /// For `WWW-Authenticate: Bearer error="invalid_token", error_description="..."`.
    pub fn description(self) -> &'static str {
        match self {
            Self::Missing => "missing credentials",
            Self::TooLarge => "token too large",
            Self::Malformed => "malformed token",
            Self::Crit => "token header has crit extensions",
            Self::AlgorithmNotAllowed => "algorithm not allowed",
            Self::UnknownKid => "unknown key id",
            Self::WrongKeyType => "key does not fit the algorithm",
            Self::AmbiguousKey => "no single key fits a token without kid",
            Self::BadSignature => "invalid signature",
            Self::Expired => "token expired",
            Self::NotYetValid => "token not yet valid",
            Self::BadIssuer => "wrong issuer",
            Self::BadAudience => "wrong audience",
            Self::MissingClaim => "required claim missing",
            Self::UnknownApiKey => "unknown API key",
        }
    }
}

/// A token verified earlier (the cache entry).
#[derive(Debug)]
struct Verified {
    claims: Arc<Claims>,
    exp: u64,
    nbf: Option<u64>,
    generation: u64,
}

/// Verified tokens kept per policy, keyed by SHA-256 of the token.
const CACHE_ENTRIES: usize = 10_000;
/// After a refresh for an unknown `kid`, no other for this long: a flood of bogus kids cannot
/// hammer the issuer.
pub const KID_REFRESH_COOLDOWN: Duration = Duration::from_secs(30);

/// One `[jwt.NAME]` policy, live.
pub struct JwtPolicyRt {
    pub name: String,
    pub policy: JwtPolicy,
    pub keys: ArcSwap<KeySet>,
    validations: HashMap<Algorithm, Validation>,
    cache: quick_cache::sync::Cache<[u8; 32], Arc<Verified>>,
    /// Refreshes of a `jwks_url` set: asked for by unknown kids, done by the source task,
    /// which wakes `refreshed` after every attempt, failed or not.
    pub refresh_wanted: Arc<Notify>,
    pub refreshed: Notify,
    last_kid_refresh_ms: AtomicU64,
    pub refresh_ok: IntCounter,
    pub refresh_error: IntCounter,
    pub keys_gauge: IntGauge,
}

impl std::fmt::Debug for JwtPolicyRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtPolicyRt")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl JwtPolicyRt {
    pub fn new(name: &str, policy: JwtPolicy, metrics: &crate::metrics::Metrics) -> Self {
        let mut validations = HashMap::new();
        for &alg in &policy.algorithms {
            let mut v = Validation::new(alg);
            v.leeway = policy.leeway.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            let mut required = vec!["exp"];
            if let Some(iss) = &policy.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            match &policy.audiences {
                Some(auds) => {
                    v.set_audience(auds);
                    required.push("aud");
                }
                None => v.validate_aud = false,
            }
            v.set_required_spec_claims(&required);
            validations.insert(alg, v);
        }
        let initial = match &policy.source {
            JwtSource::Secret(s) => KeySet::from_secret(s, 1),
            JwtSource::File { keys, .. } => keys.clone(),
            JwtSource::Url(_) => KeySet::default(),
        };
        let refresh = |outcome: &str| {
            let c = metrics
                .jwks_refresh_total
                .with_label_values(&[name, outcome]);
            c.inc_by(0);
            c
        };
        let keys_gauge = metrics.jwks_keys.with_label_values(&[name]);
        keys_gauge.set(initial.keys.len() as i64);
        Self {
            name: name.to_string(),
            keys: ArcSwap::from_pointee(initial),
            validations,
            cache: quick_cache::sync::Cache::new(CACHE_ENTRIES),
            refresh_wanted: Arc::new(Notify::new()),
            refreshed: Notify::new(),
            last_kid_refresh_ms: AtomicU64::new(0),
            refresh_ok: refresh("success"),
            refresh_error: refresh("error"),
            keys_gauge,
            policy,
        }
    }

    /// Replace the key set (a JWKS file changed, a URL was fetched).
    pub fn set_keys(&self, mut keys: KeySet) {
        keys.generation = self.keys.load().generation + 1;
        self.keys_gauge.set(keys.keys.len() as i64);
        self.keys.store(Arc::new(keys));
        self.refreshed.notify_waiters();
    }

    /// Verify `token`; on an unknown `kid` of a `jwks_url` set, refresh once (cooldown
    /// permitting) and try again.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        if token.len() > self.policy.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        let digest = sha256(token.as_bytes());
        if let Some(hit) = self.cache.get(&digest) {
            if hit.generation == self.keys.load().generation {
                let now = now_secs();
                let leeway = self.policy.leeway.as_secs();
                if now > hit.exp.saturating_add(leeway) {
                    self.cache.remove(&digest);
                    return Err(AuthError::Expired);
                }
                if hit.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
                    return Err(AuthError::NotYetValid);
                }
                return Ok(hit.claims.clone());
            }
        }
        match self.verify_uncached(token, &digest) {
            Err(AuthError::UnknownKid) if matches!(self.policy.source, JwtSource::Url(_)) => {
                if self.refresh_for_unknown_kid().await {
                    self.verify_uncached(token, &digest)
                } else {
                    Err(AuthError::UnknownKid)
                }
            }
            other => other,
        }
    }

    /// Verify without looking in the cache (for benchmarks: the cost of a cache miss,
    /// insertion included).
    #[doc(hidden)]
    pub fn verify_without_cache(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        if token.len() > self.policy.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        self.verify_uncached(token, &sha256(token.as_bytes()))
    }

    /// Ask the source for a refresh and wait for it (bounded), unless one ran recently.
    async fn refresh_for_unknown_kid(&self) -> bool {
        let refreshed = self.refreshed.notified();
        if self.keys.load().keys.is_empty() {
            // Not fetched yet: the start-up fetch (and its retries) is on its way; wait for it
            // rather than asking for another.
            return tokio::time::timeout(Duration::from_secs(3), refreshed)
                .await
                .is_ok();
        }
        let now = crate::clock::now_ms();
        let last = self.last_kid_refresh_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < KID_REFRESH_COOLDOWN.as_millis() as u64 {
            return false;
        }
        self.last_kid_refresh_ms.store(now, Ordering::Relaxed);
        self.refresh_wanted.notify_one();
        tokio::time::timeout(Duration::from_secs(3), refreshed)
            .await
            .is_ok()
    }

    fn verify_uncached(&self, token: &str, digest: &[u8; 32]) -> Result<Arc<Claims>, AuthError> {
        let header = parse_header(token)?;
        if header.get("crit").is_some() {
            return Err(AuthError::Crit);
        }
        let alg = header
            .get("alg")
            .and_then(|a| a.as_str())
            .and_then(|a| a.parse::<Algorithm>().ok())
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        let validation = self
            .validations
            .get(&alg)
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        let kid = match header.get("kid") {
            None => None,
            Some(serde_json::Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(AuthError::Malformed),
        };
        let keys = self.keys.load();
        let key = match keys.select(alg, kid) {
            Selection::Found(k) => k,
            Selection::UnknownKid => return Err(AuthError::UnknownKid),
            Selection::WrongType => return Err(AuthError::WrongKeyType),
            Selection::Ambiguous => return Err(AuthError::AmbiguousKey),
        };
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.decoding,
            validation,
        )
        .map_err(map_error)?;
        let claims = data.claims;
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64())
            .ok_or(AuthError::MissingClaim)?;
        let nbf = claims.get("nbf").and_then(|v| v.as_u64());
        let claims = Arc::new(Claims(claims));
        self.cache.insert(
            *digest,
            Arc::new(Verified {
                claims: claims.clone(),
                exp,
                nbf,
                generation: keys.generation,
            }),
        );
        Ok(claims)
    }
}

/// The token's JOSE header as JSON, decoded by us (jsonwebtoken ignores `crit`).
fn parse_header(token: &str) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

fn map_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidIssuer => AuthError::BadIssuer,
        K::InvalidAudience => AuthError::BadAudience,
        K::MissingRequiredClaim(_) => AuthError::MissingClaim,
        K::InvalidAlgorithm | K::MissingAlgorithm => AuthError::AlgorithmNotAllowed,
        K::InvalidSignature => AuthError::BadSignature,
        K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidEddsaKey | K::InvalidKeyFormat => {
            AuthError::WrongKeyType
        }
        _ => AuthError::Malformed,
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
