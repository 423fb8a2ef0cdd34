//! Key material (neutral, like `tls.rs`): a JWT policy's key set, loaded by `config` and by the
//! JWKS fetcher, used by `policy/jwt`.
//!
//! A JWT policy's key set and how a token's key is chosen (SPEC §4): by `kid`; a key is used
//! only with algorithms of its own type (its `kty`, its curve, and its `alg` when the JWK
//! names one), so an RSA public key can never verify an HS256 token; `oct` keys serve HS*; a
//! token without `kid` is verified only when exactly one key of its algorithm's type exists.

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

/// What a key is, as far as algorithms go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Oct,
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind may verify `alg`.
    pub fn serves(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyKind::Oct,
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
            ) | (
                KeyKind::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyKind::P256, Algorithm::ES256)
                | (KeyKind::P384, Algorithm::ES384)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// One verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, if it names one: then only that algorithm.
    pub alg: Option<Algorithm>,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

impl Key {
    fn serves(&self, alg: Algorithm) -> bool {
        self.kind.serves(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of a policy at one point in time.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// Changes whenever the set is replaced: cached verifications of older sets are redone.
    pub generation: u64,
}

/// The outcome of looking up a token's key.
#[derive(Debug)]
pub enum Selection<'a> {
    Found(&'a Key),
    /// The `kid` is not in the set (the set may be stale: refresh, then ask again).
    UnknownKid,
    /// The `kid` is known but its key is of another type than the token's algorithm.
    WrongType,
    /// No `kid` and not exactly one key of the algorithm's type.
    Ambiguous,
}

impl KeySet {
    /// A set with one HMAC secret (`secret_env`).
    pub fn from_secret(secret: &[u8], generation: u64) -> Self {
        Self {
            keys: vec![Key {
                kid: None,
                kind: KeyKind::Oct,
                alg: None,
                decoding: DecodingKey::from_secret(secret),
            }],
            generation,
        }
    }

    /// Parse a JWKS document. Keys that cannot verify signatures (`use: enc`, unsupported
    /// types or curves) are skipped, with the reason; malformed JSON is an error.
    pub fn from_jwks(json: &[u8], generation: u64) -> Result<(Self, Vec<String>), String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        let mut skipped = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            match key_from_jwk(jwk) {
                Ok(k) => keys.push(k),
                Err(e) => skipped.push(format!(
                    "key {} ({}): {e}",
                    i,
                    jwk.common.key_id.as_deref().unwrap_or("no kid")
                )),
            }
        }
        Ok((Self { keys, generation }, skipped))
    }

    /// The key for a token with algorithm `alg` and `kid`.
    pub fn select(&self, alg: Algorithm, kid: Option<&str>) -> Selection<'_> {
        match kid {
            Some(kid) => {
                let mut known = false;
                for k in self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)) {
                    known = true;
                    if k.serves(alg) {
                        return Selection::Found(k);
                    }
                }
                if known {
                    Selection::WrongType
                } else {
                    Selection::UnknownKid
                }
            }
            None => {
                let mut candidates = self.keys.iter().filter(|k| k.serves(alg));
                match (candidates.next(), candidates.next()) {
                    (Some(k), None) => Selection::Found(k),
                    _ => Selection::Ambiguous,
                }
            }
        }
    }
}

fn key_from_jwk(jwk: &Jwk) -> Result<Key, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("use is \"enc\", not a signing key".into());
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => KeyKind::Oct,
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            ref c => return Err(format!("unsupported EC curve {c:?}")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            ref c => return Err(format!("unsupported OKP curve {c:?}")),
        },
    };
    let alg = match &jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            Some(signing_alg(a).ok_or_else(|| format!("alg {a:?} is not a signature algorithm"))?)
        }
    };
    if let Some(a) = alg {
        if !kind.serves(a) {
            return Err(format!("alg {a:?} does not fit a {kind:?} key"));
        }
    }
    let decoding = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        kind,
        alg,
        decoding,
    })
}

fn signing_alg(a: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = r#"{"keys":[
        {"kty":"oct","kid":"h1","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg"},
        {"kty":"RSA","kid":"r1","alg":"RS256","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
        {"kty":"EC","kid":"e1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty":"RSA","kid":"x1","use":"enc","n":"sXch","e":"AQAB"}
    ]}"#;

    #[test]
    fn parses_a_jwks_and_skips_keys_that_cannot_verify() {
        let (set, skipped) = KeySet::from_jwks(JWKS.as_bytes(), 1).unwrap();
        assert_eq!(set.keys.len(), 3);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(KeySet::from_jwks(b"{not json", 1).is_err());
    }

    #[test]
    fn a_key_serves_only_algorithms_of_its_type() {
        let (set, _) = KeySet::from_jwks(JWKS.as_bytes(), 1).unwrap();
        assert!(matches!(
            set.select(Algorithm::RS256, Some("r1")),
            Selection::Found(_)
        ));
        // The JWK says RS256: not PS256 with the same key.
        assert!(matches!(
            set.select(Algorithm::PS256, Some("r1")),
            Selection::WrongType
        ));
        // HMAC with an RSA key's kid: the classic confusion, refused.
        assert!(matches!(
            set.select(Algorithm::HS256, Some("r1")),
            Selection::WrongType
        ));
        assert!(matches!(
            set.select(Algorithm::ES384, Some("e1")),
            Selection::WrongType
        ));
        assert!(matches!(
            set.select(Algorithm::HS256, Some("h1")),
            Selection::Found(_)
        ));
        assert!(matches!(
            set.select(Algorithm::RS256, Some("nope")),
            Selection::UnknownKid
        ));
    }

    #[test]
    fn a_token_without_kid_needs_exactly_one_key_of_its_type() {
        let (set, _) = KeySet::from_jwks(JWKS.as_bytes(), 1).unwrap();
        assert!(matches!(
            set.select(Algorithm::ES256, None),
            Selection::Found(_)
        ));
        assert!(matches!(
            set.select(Algorithm::EdDSA, None),
            Selection::Ambiguous
        ));
        let mut two = set;
        two.keys.push(two.keys[2].clone());
        assert!(matches!(
            two.select(Algorithm::ES256, None),
            Selection::Ambiguous
        ));
    }
}
