//! The policy tables: `[jwt.*]`, `[api_keys.*]`, `[integrity.*]`, `[rate_limits.*]`, `[redis]`.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::super::file::{self};
use super::super::{
    ApiKeyPolicy, CheckMode, IntegrityPolicy, JwtPolicy, JwtSource, KeySpec, OnError,
    RateLimitPolicy, RedisConfig, Source, Store,
};
use super::*;
use crate::config::{CorsPolicy, ForwardAuthPolicy};
use http::Method;
use std::net::SocketAddr;

impl Validator<'_> {
    /// The policy tables: JWT, API keys, integrity, rate limits, and the Redis store they may share.
    #[allow(clippy::type_complexity)]
    pub(super) fn policies(
        &mut self,
        f: &file::File,
    ) -> (
        BTreeMap<String, JwtPolicy>,
        BTreeMap<String, ApiKeyPolicy>,
        BTreeMap<String, IntegrityPolicy>,
        BTreeMap<String, RateLimitPolicy>,
        Option<RedisConfig>,
    ) {
        let mut jwt = BTreeMap::new();
        for (name, t) in &f.jwt {
            self.policy_name(name, "jwt");
            if let Some(p) = self.jwt_policy(t) {
                jwt.insert(name.get_ref().clone(), p);
            }
        }
        let mut api_keys = BTreeMap::new();
        for (name, t) in &f.api_keys {
            self.policy_name(name, "api_keys");
            if let Some(p) = self.api_key_policy(t) {
                api_keys.insert(name.get_ref().clone(), p);
            }
        }
        let mut integrity = BTreeMap::new();
        for (name, t) in &f.integrity {
            self.policy_name(name, "integrity");
            if let Some(p) = self.integrity_policy(t) {
                integrity.insert(name.get_ref().clone(), p);
            }
        }
        let mut rate_limits = BTreeMap::new();
        let mut wants_redis = None;
        for (name, t) in &f.rate_limits {
            self.policy_name(name, "rate_limits");
            let r = t.get_ref();
            let key = match KeySpec::parse(r.key.get_ref()) {
                Ok(KeySpec::Cookie(_) | KeySpec::Path) => {
                    self.error(
                        r.key.span(),
                        "a rate limit key is ip, header.NAME, jwt.CLAIM, query.NAME or route",
                    );
                    None
                }
                Ok(k) => Some(k),
                Err(e) => {
                    self.error(r.key.span(), e);
                    None
                }
            };
            let rate = self.int_in(&Some(r.rate.clone()), 1, 1..=1_000_000_000, "rate") as u64;
            let burst =
                self.int_in(&Some(r.burst.clone()), 1, 1..=i64::from(u32::MAX), "burst") as u64;
            let per = self.positive_duration(&Some(r.per.clone()), Duration::from_secs(1), "per");
            let store = r.store.as_ref().map_or(Store::Local, |s| *s.get_ref());
            if store == Store::Redis && wants_redis.is_none() {
                wants_redis = Some(r.store.as_ref().map_or(t.span(), |s| s.span()));
            }
            let policy = RateLimitPolicy {
                key: key.unwrap_or(KeySpec::Route),
                rate,
                per,
                burst,
                store,
            };
            if policy.per / (rate.min(u64::from(u32::MAX)) as u32) < Duration::from_micros(1) {
                self.error(
                    r.rate.span(),
                    format!("rate {rate} per {per:?} is more than one request per microsecond"),
                );
            }
            rate_limits.insert(name.get_ref().clone(), policy);
        }
        let redis = f.redis.as_ref().and_then(|r| {
            let rf = r.get_ref();
            let url = match (&rf.url, &rf.url_env) {
                (Some(u), None) => Some(u.get_ref().clone()),
                (None, Some(e)) => self.env(e, "redis url"),
                _ => {
                    self.error(r.span(), "[redis] needs exactly one of url, url_env");
                    None
                }
            };
            let url = url?;
            let parsed = redis::Client::open(url.as_str());
            if let Err(e) = parsed {
                let span = rf
                    .url
                    .as_ref()
                    .or(rf.url_env.as_ref())
                    .map_or(r.span(), |s| s.span());
                if rf.url_env.is_some() {
                    // The URL may carry a password: never print what the variable holds.
                    self.error(
                        span,
                        "the redis url in this environment variable is not valid",
                    );
                } else {
                    self.error(span, format!("bad redis url: {e}"));
                }
                return None;
            }
            Some(RedisConfig {
                url,
                on_error: rf.on_error.unwrap_or(OnError::Local),
            })
        });
        if let (Some(span), None) = (wants_redis, &f.redis) {
            self.error(
                span,
                "store = \"redis\" needs a [redis] table with url or url_env",
            );
        }
        (jwt, api_keys, integrity, rate_limits, redis)
    }

    pub(super) fn integrity_policy(
        &mut self,
        t: &Spanned<file::IntegrityFile>,
    ) -> Option<IntegrityPolicy> {
        use base64::Engine;
        let f = t.get_ref();
        let signature = f.signature.unwrap_or(CheckMode::Required);
        let mut keys = Vec::new();
        match &f.signature_keys_file {
            Some(p) => {
                let path = self.existing_file(p, "signature_keys_file")?;
                let text = std::fs::read_to_string(&path).ok()?;
                let src = Source::new(&path, &text);
                match toml::from_str::<BTreeMap<String, Spanned<String>>>(&text) {
                    Ok(table) => {
                        for (id, secret) in table {
                            match base64::engine::general_purpose::STANDARD.decode(secret.get_ref().trim()) {
                                Ok(k) if k.len() >= 16 => keys.push((id, k)),
                                Ok(_) => self.error(p.span(), src.format(Some(secret.span()), &format!("key {id:?}: a secret shorter than 16 bytes is too weak"))),
                                Err(_) => self.error(p.span(), src.format(Some(secret.span()), &format!("key {id:?}: expected a base64 secret"))),
                            }
                        }
                    }
                    Err(e) => self.error(
                        p.span(),
                        src.format(
                            e.span(),
                            &format!("signature_keys_file: {}", e.message().trim()),
                        ),
                    ),
                }
            }
            None if signature != CheckMode::Off => {
                self.error(t.span(), "signature checks need signature_keys_file (lines of keyid = \"<base64 secret>\")");
            }
            None => {}
        }
        const DERIVED: [&str; 7] = [
            "@method",
            "@authority",
            "@path",
            "@query",
            "@target-uri",
            "@scheme",
            "@request-target",
        ];
        let required_components = match &f.required_components {
            None => vec![
                "@method".into(),
                "@authority".into(),
                "@path".into(),
                "content-digest".into(),
            ],
            Some(list) => {
                let mut out = Vec::new();
                for c in list {
                    let name = c.get_ref();
                    let ok = if name.starts_with('@') {
                        DERIVED.contains(&name.as_str())
                    } else {
                        HeaderName::from_bytes(name.as_bytes()).is_ok()
                            && name.bytes().all(|b| !b.is_ascii_uppercase())
                    };
                    if ok {
                        out.push(name.clone());
                    } else {
                        self.error(
                            c.span(),
                            format!(
                                "{name:?} is not a component: use {} or a lower-case header name",
                                DERIVED.join(", ")
                            ),
                        );
                    }
                }
                out
            }
        };
        Some(IntegrityPolicy {
            content_digest: f.content_digest.unwrap_or(CheckMode::Required),
            signature,
            keys,
            required_components,
            max_skew: self.duration(&f.max_skew, Duration::from_secs(300)),
            max_nonces: self.int_in(&f.max_nonces, 100_000, 1..=100_000_000, "max_nonces") as usize,
            json: f.json.unwrap_or(true),
        })
    }

    pub(super) fn jwt_policy(&mut self, t: &Spanned<file::JwtFile>) -> Option<JwtPolicy> {
        use jsonwebtoken::Algorithm;
        let j = t.get_ref();
        if j.algorithms.is_empty() {
            self.error(t.span(), "jwt algorithms is empty");
        }
        let mut algorithms = Vec::new();
        for alg in &j.algorithms {
            const ALGS: [&str; 12] = [
                "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                "ES256", "ES384", "EdDSA",
            ];
            match alg.get_ref().parse::<Algorithm>() {
                Ok(a) if ALGS.contains(&alg.get_ref().as_str()) => algorithms.push(a),
                _ => self.error(
                    alg.span(),
                    format!(
                        "unknown or refused algorithm {:?} (allowed: {})",
                        alg.get_ref(),
                        ALGS.join(", ")
                    ),
                ),
            }
        }
        let sources = [&j.jwks_file, &j.jwks_url, &j.secret_env]
            .iter()
            .filter(|s| s.is_some())
            .count();
        if sources != 1 {
            self.error(
                t.span(),
                "jwt needs exactly one of jwks_file, jwks_url, secret_env",
            );
            return None;
        }
        let is_hmac =
            |a: &Algorithm| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        let source = if let Some(p) = &j.jwks_file {
            let path = self.existing_file(p, "jwks_file")?;
            let text = match std::fs::read(&path) {
                Ok(t) => t,
                Err(e) => {
                    self.error(p.span(), format!("jwks_file {:?}: {e}", p.get_ref()));
                    return None;
                }
            };
            match crate::jwks::KeySet::from_jwks(&text, 1) {
                Ok((keys, skipped)) => {
                    for s in skipped {
                        self.warn(
                            p.span(),
                            format!("jwks_file {:?}: skipping {s}", p.get_ref()),
                        );
                    }
                    if keys.keys.is_empty() {
                        self.warn(
                            p.span(),
                            format!(
                                "jwks_file {:?} has no usable key: every token will be refused",
                                p.get_ref()
                            ),
                        );
                    }
                    JwtSource::File { path, keys }
                }
                Err(e) => {
                    self.error(p.span(), format!("jwks_file {:?}: {e}", p.get_ref()));
                    return None;
                }
            }
        } else if let Some(u) = &j.jwks_url {
            let ok = u.get_ref().starts_with("https://")
                && u.get_ref()
                    .parse::<http::Uri>()
                    .is_ok_and(|x| x.host().is_some());
            if !ok {
                self.error(
                    u.span(),
                    format!("jwks_url {:?} must be an https:// URL", u.get_ref()),
                );
                return None;
            }
            JwtSource::Url(u.get_ref().clone())
        } else if let Some(e) = &j.secret_env {
            if let Some(a) = algorithms.iter().find(|a| !is_hmac(a)) {
                self.error(e.span(), format!("secret_env only verifies HS256/HS384/HS512, not {a:?}: use jwks_file or jwks_url for public keys"));
            }
            match self.env(e, "jwt secret") {
                Some(v) if v.len() < 32 => {
                    self.warn(
                        e.span(),
                        format!(
                            "the secret in {} is shorter than 32 bytes: weak for HMAC",
                            e.get_ref()
                        ),
                    );
                    JwtSource::Secret(v.into_bytes())
                }
                Some(v) => JwtSource::Secret(v.into_bytes()),
                None => JwtSource::Secret(Vec::new()),
            }
        } else {
            return None;
        };
        let leeway = self.duration(&j.leeway, Duration::from_secs(30));
        let max_token_bytes =
            self.int_in(&j.max_token_bytes, 8192, 64..=1 << 20, "max_token_bytes") as usize;
        let mut claims_to_headers = Vec::new();
        for (claim, header) in j.claims_to_headers.iter().flatten() {
            match HeaderName::from_bytes(header.get_ref().to_ascii_lowercase().as_bytes()) {
                Ok(h)
                    if h != http::header::HOST
                        && h != http::header::AUTHORIZATION
                        && h != crate::ctx::X_REQUEST_ID =>
                {
                    claims_to_headers.push((claim.clone(), h));
                }
                _ => self.error(
                    header.span(),
                    format!(
                        "{:?} cannot carry a claim (not a header name, or one the gateway owns)",
                        header.get_ref()
                    ),
                ),
            }
        }
        if let Some(auds) = &j.audiences {
            if auds.is_empty() {
                self.error(
                    t.span(),
                    "audiences is empty: leave it out to accept any audience",
                );
            }
        }
        Some(JwtPolicy {
            algorithms,
            source,
            issuer: j.issuer.clone(),
            audiences: j.audiences.clone(),
            leeway,
            max_token_bytes,
            claims_to_headers,
        })
    }

    pub(super) fn api_key_policy(
        &mut self,
        t: &Spanned<file::ApiKeysFile>,
    ) -> Option<ApiKeyPolicy> {
        let a = t.get_ref();
        let header = match &a.header {
            None => HeaderName::from_static("x-api-key"),
            Some(h) => match HeaderName::from_bytes(h.get_ref().to_ascii_lowercase().as_bytes()) {
                Ok(n) => n,
                Err(_) => {
                    self.error(h.span(), format!("{:?} is not a header name", h.get_ref()));
                    return None;
                }
            },
        };
        let path = self.existing_file(&a.keys_file, "keys_file")?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.error(
                    a.keys_file.span(),
                    format!("keys_file {:?}: {e}", a.keys_file.get_ref()),
                );
                return None;
            }
        };
        match parse_api_keys(&path, &text) {
            Ok(keys) => {
                if keys.is_empty() {
                    self.warn(
                        a.keys_file.span(),
                        format!(
                            "keys_file {:?} holds no key: every request will be refused",
                            a.keys_file.get_ref()
                        ),
                    );
                }
                Some(ApiKeyPolicy { header, keys })
            }
            Err(errors) => {
                for e in errors {
                    self.error(a.keys_file.span(), e);
                }
                None
            }
        }
    }

    pub(super) fn policy_name(&mut self, name: &Spanned<String>, table: &str) {
        if !valid_name(name.get_ref()) {
            self.error(name.span(), bad_name_message(table, name.get_ref()));
        }
    }

    /// The `[cors.NAME]` tables.
    pub(super) fn cors_tables(
        &mut self,
        tables: &BTreeMap<file::Name, Spanned<file::CorsFile>>,
    ) -> BTreeMap<String, CorsPolicy> {
        let mut out = BTreeMap::new();
        for (name, t) in tables {
            self.policy_name(name, "cors");
            let cf = t.get_ref();
            let mut origins = Vec::new();
            let mut any_origin = false;
            for o in cf.allow_origins.get_ref() {
                let text = o.get_ref();
                if text == "*" {
                    any_origin = true;
                } else if !(text.starts_with("http://") || text.starts_with("https://"))
                    || text.ends_with('/')
                    || text.contains(' ')
                {
                    self.error(
                        o.span(),
                        format!("origin {text:?} must be scheme://host[:port], without a path (or \"*\")"),
                    );
                } else {
                    origins.push(text.to_ascii_lowercase());
                }
            }
            if cf.allow_origins.get_ref().is_empty() {
                self.error(
                    cf.allow_origins.span(),
                    "allow_origins is empty: nothing would be allowed",
                );
            }
            let credentials = cf.allow_credentials.as_ref().is_some_and(|c| *c.get_ref());
            if any_origin && credentials {
                let span = cf.allow_credentials.as_ref().map_or(t.span(), |c| c.span());
                self.error(
                    span,
                    "allow_credentials = true with allow_origins = [\"*\"]: browsers refuse it; list the origins",
                );
            }
            let methods = match &cf.allow_methods {
                None => vec![Method::GET, Method::HEAD, Method::POST],
                Some(list) => list
                    .iter()
                    .filter_map(|m| match Method::from_bytes(m.get_ref().as_bytes()) {
                        Ok(method) if m.get_ref().bytes().all(|b| !b.is_ascii_lowercase()) => {
                            Some(method)
                        }
                        _ => {
                            self.error(
                                m.span(),
                                format!("{:?} is not an HTTP method (upper-case)", m.get_ref()),
                            );
                            None
                        }
                    })
                    .collect(),
            };
            let names = |this: &mut Self, list: &Option<Vec<Spanned<String>>>| -> Vec<String> {
                list.iter()
                    .flatten()
                    .filter_map(|h| {
                        let lower = h.get_ref().to_ascii_lowercase();
                        if HeaderName::from_bytes(lower.as_bytes()).is_err() {
                            this.error(h.span(), format!("{:?} is not a header name", h.get_ref()));
                            return None;
                        }
                        Some(lower)
                    })
                    .collect()
            };
            let headers = names(self, &cf.allow_headers);
            let expose = names(self, &cf.expose_headers);
            let max_age = self.duration(&cf.max_age, Duration::from_secs(600));
            out.insert(
                name.get_ref().clone(),
                CorsPolicy {
                    origins,
                    any_origin,
                    methods,
                    headers,
                    expose,
                    credentials,
                    max_age,
                },
            );
        }
        out
    }

    /// The `[forward_auth.NAME]` tables.
    pub(super) fn forward_auth_tables(
        &mut self,
        tables: &BTreeMap<file::Name, Spanned<file::ForwardAuthFile>>,
    ) -> BTreeMap<String, ForwardAuthPolicy> {
        let mut out = BTreeMap::new();
        for (name, t) in tables {
            self.policy_name(name, "forward_auth");
            let ff = t.get_ref();
            let url = ff.url.get_ref();
            let (https, rest) = match url.split_once("://") {
                Some(("http", rest)) => (false, rest),
                Some(("https", rest)) => (true, rest),
                _ => {
                    self.error(
                        ff.url.span(),
                        format!("url {url:?} must start with http:// or https://"),
                    );
                    continue;
                }
            };
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let default_port = if https { 443 } else { 80 };
            let addr = authority
                .parse::<SocketAddr>()
                .ok()
                .or_else(|| {
                    format!("{authority}:{default_port}")
                        .parse::<SocketAddr>()
                        .ok()
                })
                .or_else(|| {
                    // `localhost[:port]`: loopback, as operators write it.
                    let port = authority.strip_prefix("localhost").map(|p| {
                        p.strip_prefix(':')
                            .map_or(Some(default_port), |p| p.parse().ok())
                    })?;
                    port.map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                });
            let Some(addr) = addr else {
                self.error(
                    ff.url.span(),
                    format!("url {url:?}: the host must be an IP address (or localhost) with an optional port; DNS names are not supported yet"),
                );
                continue;
            };
            if ff.tls.is_some() && !https {
                self.error(ff.url.span(), "tls is for an https url");
            }
            let tls = if https {
                let default_tls = Spanned::new(0..0, file::UpstreamTlsFile::default());
                let t2 = ff.tls.as_ref().unwrap_or(&default_tls);
                self.upstream_tls(t2, crate::config::Protocol::Http1)
            } else {
                None
            };
            let timeout = self.positive_duration(&ff.timeout, Duration::from_secs(1), "timeout");
            let names = |this: &mut Self,
                         list: &Option<Vec<Spanned<String>>>,
                         default: &[&'static str]|
             -> Vec<HeaderName> {
                match list {
                    None => default.iter().map(|n| HeaderName::from_static(n)).collect(),
                    Some(l) => l
                        .iter()
                        .filter_map(|h| {
                            let lower = h.get_ref().to_ascii_lowercase();
                            match HeaderName::from_bytes(lower.as_bytes()) {
                                Ok(n) => Some(n),
                                Err(_) => {
                                    this.error(
                                        h.span(),
                                        format!("{:?} is not a header name", h.get_ref()),
                                    );
                                    None
                                }
                            }
                        })
                        .collect(),
                }
            };
            let forward_headers = names(self, &ff.forward_headers, &["authorization", "cookie"]);
            let copy_headers = names(self, &ff.copy_headers, &[]);
            for (h, n) in ff.copy_headers.iter().flatten().zip(&copy_headers) {
                let s = n.as_str();
                if s == "host"
                    || s == "content-length"
                    || crate::config::PROTECTED_HEADERS.contains(&s)
                {
                    self.error(h.span(), format!("copy_headers may not name {s:?}"));
                }
            }
            let allow_on_error = match ff.on_error.as_ref().map(|o| (o.get_ref().as_str(), o)) {
                None | Some(("deny", _)) => false,
                Some(("allow", _)) => true,
                Some((other, o)) => {
                    self.error(
                        o.span(),
                        format!("on_error must be \"deny\" or \"allow\", not {other:?}"),
                    );
                    false
                }
            };
            let cache = self.duration(&ff.cache, Duration::ZERO);
            out.insert(
                name.get_ref().clone(),
                ForwardAuthPolicy {
                    addr,
                    path_and_query: path.to_string(),
                    authority: authority.to_string(),
                    https,
                    tls,
                    timeout,
                    forward_headers,
                    copy_headers,
                    allow_on_error,
                    cache,
                },
            );
        }
        out
    }
}

/// An API keys file: lines of `name = "<hex SHA-256 of the key>"`. Errors name the file and
/// their own line and column.
pub(super) fn parse_api_keys(
    path: &std::path::Path,
    text: &str,
) -> Result<Vec<(String, [u8; 32])>, Vec<String>> {
    let src = Source::new(path, text);
    let table: BTreeMap<String, Spanned<String>> = toml::from_str(text)
        .map_err(|e| vec![src.format(e.span(), &format!("keys_file: {}", e.message().trim()))])?;
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for (name, hex) in table {
        let h = hex.get_ref().trim();
        let mut digest = [0u8; 32];
        let ok = h.len() == 64
            && h.as_bytes()
                .chunks(2)
                .zip(digest.iter_mut())
                .all(|(pair, out)| {
                    std::str::from_utf8(pair)
                        .ok()
                        .and_then(|p| u8::from_str_radix(p, 16).ok())
                        .map(|b| *out = b)
                        .is_some()
                });
        if ok {
            keys.push((name, digest));
        } else {
            errors.push(src.format(
                Some(hex.span()),
                &format!("key {name:?}: expected the hex SHA-256 of the key (64 hex digits), e.g. from `printf %s KEY | sha256sum`"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(errors)
    }
}
