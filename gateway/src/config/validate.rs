//! From the file as written (`file.rs`) to the runtime types (`mod.rs`): every semantic check,
//! every error collected with its place, nothing published unless all of it holds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use toml::Spanned;

use super::file::{self, BalancerKind, OnMissingKey, SizeValue, SlotsValue};
use super::units::{parse_duration, parse_size};
use super::{
    Admin, ApiKeyPolicy, BreakerPolicy, CertSource, CheckMode, Config, EncodedSlashes, Fallback,
    HealthCheck, HostMatch, IntegrityPolicy, JwtPolicy, JwtSource, KeySpec, Limits, Listener,
    Loaded, Match, Mode, OnError, OutlierPolicy, RateLimitPolicy, RedisConfig, RetryOn,
    RetryPolicy, Route, RoutePolicies, Server, Source, Store, Target, Tls, TlsVersion, Upstream,
    SLOT_COUNT,
};

/// Which issue builds a feature whose keys already parse; named in "not supported yet" errors.
const ISSUE_OPERATIONS: &str = "operations, issue #7";

struct Diag {
    span: Option<Range<usize>>,
    message: String,
}

struct Validator<'a> {
    src: &'a Source<'a>,
    mode: Mode,
    errors: Vec<Diag>,
    warnings: Vec<Diag>,
}

pub(super) fn validate(
    src: &Source<'_>,
    file: file::File,
    mode: Mode,
) -> Result<Loaded, Vec<String>> {
    let mut v = Validator {
        src,
        mode,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let config = v.file(&file);
    // Report in file order, like a compiler.
    v.errors
        .sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
    v.warnings
        .sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
    let fmt = |d: &Diag| v.src.format(d.span.clone(), &d.message);
    if !v.errors.is_empty() {
        return Err(v.errors.iter().map(fmt).collect());
    }
    let warnings = v
        .warnings
        .iter()
        .map(|d| {
            v.src
                .format(d.span.clone(), &format!("warning: {}", d.message))
        })
        .collect();
    Ok(Loaded { config, warnings })
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(Diag {
            span: Some(span),
            message: message.into(),
        });
    }

    fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.warnings.push(Diag {
            span: Some(span),
            message: message.into(),
        });
    }

    fn not_supported(&mut self, span: Range<usize>, what: &str, issue: &str) {
        self.error(
            span,
            format!("{what} is not supported yet ({issue}); remove it to run this config"),
        );
    }

    fn duration(&mut self, value: &Option<Spanned<String>>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.error(s.span(), e);
                    default
                }
            },
        }
    }

    /// A duration that must be more than zero.
    fn positive_duration(
        &mut self,
        value: &Option<Spanned<String>>,
        default: Duration,
        what: &str,
    ) -> Duration {
        let d = self.duration(value, default);
        if d.is_zero() {
            if let Some(s) = value {
                self.error(s.span(), format!("{what} must be more than zero"));
            }
            return default;
        }
        d
    }

    fn int_in(
        &mut self,
        value: &Option<Spanned<i64>>,
        default: i64,
        range: RangeInclusive<i64>,
        what: &str,
    ) -> i64 {
        match value {
            None => default,
            Some(s) => {
                let n = *s.get_ref();
                if range.contains(&n) {
                    n
                } else {
                    self.error(
                        s.span(),
                        format!(
                            "{what} must be within {}..={}, not {n}",
                            range.start(),
                            range.end()
                        ),
                    );
                    default
                }
            }
        }
    }

    fn size(&mut self, value: &Option<Spanned<SizeValue>>, default: u64, what: &str) -> u64 {
        let Some(s) = value else { return default };
        let parsed = match s.get_ref() {
            SizeValue::Bytes(n) if *n >= 0 => Ok(*n as u64),
            SizeValue::Bytes(n) => Err(format!("{what} must not be negative, not {n}")),
            SizeValue::Text(t) => parse_size(t),
        };
        match parsed {
            Ok(0) => {
                self.error(s.span(), format!("{what} must be more than zero"));
                default
            }
            Ok(n) => n,
            Err(e) => {
                self.error(s.span(), e);
                default
            }
        }
    }

    fn socket_addr(&mut self, s: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    s.span(),
                    format!(
                        "{what} {:?} is not an IP:PORT address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn cidrs(&mut self, list: &[Spanned<String>]) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(list.len());
        for s in list {
            match parse_cidr(s.get_ref()) {
                Some(net) => out.push(net),
                None => self.error(
                    s.span(),
                    format!(
                        "{:?} is not a CIDR or IP address (e.g. \"10.0.0.0/8\", \"2001:db8::/32\")",
                        s.get_ref()
                    ),
                ),
            }
        }
        out
    }

    /// The value of an environment variable a `*_env` key names. Unset: a warning for `check`,
    /// an error for `run`.
    fn env(&mut self, name: &Spanned<String>, what: &str) -> Option<String> {
        match std::env::var(name.get_ref()) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                let msg = format!(
                    "environment variable {} ({what}) is not set",
                    name.get_ref()
                );
                match self.mode {
                    Mode::Check => self.warn(name.span(), msg),
                    Mode::Run => self.error(name.span(), msg),
                }
                None
            }
        }
    }

    fn existing_file(&mut self, s: &Spanned<String>, what: &str) -> Option<PathBuf> {
        let path = PathBuf::from(s.get_ref());
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Some(path),
            Ok(_) => {
                self.error(s.span(), format!("{what} {:?} is not a file", s.get_ref()));
                None
            }
            Err(e) => {
                self.error(s.span(), format!("{what} {:?}: {e}", s.get_ref()));
                None
            }
        }
    }

    // ===== the file =====

    fn file(&mut self, f: &file::File) -> Config {
        let server = self.server(&f.server);
        let admin = f.admin.as_ref().map(|a| self.admin(a));
        let listeners = self.listeners(&f.listeners, server.trusted_proxies.is_empty());
        if let (Some(a), Some(af)) = (&admin, &f.admin) {
            if a.listen.port() != 0 {
                if let Some(l) = listeners.iter().find(|l| l.listen == a.listen) {
                    let span = af.get_ref().listen.as_ref().map_or(af.span(), |s| s.span());
                    self.error(
                        span,
                        format!("admin listens on {}, like listener {:?}", a.listen, l.name),
                    );
                }
            }
        }
        let limits = self.limits(&f.limits);
        let (jwt, api_keys, integrity, rate_limits, redis) = self.policies(f);
        let upstreams = self.upstreams(&f.upstreams);
        let routes = self.routes(f, &upstreams);
        Config {
            path: PathBuf::from(self.src.path),
            server,
            admin,
            listeners,
            limits,
            upstreams,
            routes,
            jwt,
            api_keys,
            integrity,
            rate_limits,
            redis,
            redacted: redacted_view(f),
        }
    }

    fn server(&mut self, s: &file::ServerFile) -> Server {
        let mut node_id = self.int_in(&s.node_id, 0, 0..=1023, "node_id") as u16;
        if let Some(env) = &s.node_id_env {
            if let Some(n) = &s.node_id {
                self.error(n.span(), "set node_id or node_id_env, not both");
            }
            if let Some(value) = self.env(env, "node_id_env") {
                match value.trim().parse::<u16>() {
                    Ok(n) if n <= 1023 => node_id = n,
                    // Never the value: the variable may be a secret named by mistake, and
                    // errors reach logs and `POST /admin/reload` answers.
                    _ => self.error(
                        env.span(),
                        format!(
                            "environment variable {} does not hold a node id within 0..=1023",
                            env.get_ref()
                        ),
                    ),
                }
            }
        }
        let worker_threads = self.int_in(&s.worker_threads, 0, 0..=1024, "worker_threads") as usize;
        let trusted_proxies = self.cidrs(s.trusted_proxies.as_deref().unwrap_or(&[]));
        let drain_timeout = self.duration(&s.drain_timeout, Duration::from_secs(30));
        Server {
            node_id,
            worker_threads,
            trusted_proxies,
            trust_request_id: s.trust_request_id.unwrap_or(false),
            drain_timeout,
        }
    }

    fn admin(&mut self, a: &Spanned<file::AdminFile>) -> Admin {
        let af = a.get_ref();
        let listen = match &af.listen {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            Some(s) => self.socket_addr(s, "admin listen"),
        };
        let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901)));
        let token = af
            .token_env
            .as_ref()
            .and_then(|e| self.env(e, "admin token"));
        if !listen.ip().is_loopback() && af.token_env.is_none() {
            let span = af.listen.as_ref().map_or(a.span(), |s| s.span());
            self.error(
                span,
                format!("admin listens on {listen}, which is not loopback: set token_env so /admin/* needs a bearer token"),
            );
        }
        Admin { listen, token }
    }

    fn listeners(
        &mut self,
        list: &[Spanned<file::ListenerFile>],
        no_trusted_proxies: bool,
    ) -> Vec<Listener> {
        let mut out = Vec::new();
        let mut names: HashMap<&str, ()> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        if list.is_empty() {
            self.errors.push(Diag {
                span: Some(0..0),
                message: "no [[listeners]]: the gateway would serve nothing".into(),
            });
        }
        for l in list {
            let lf = l.get_ref();
            let name = lf.name.get_ref().as_str();
            if !valid_name(name) {
                self.error(lf.name.span(), bad_name_message("listener", name));
            }
            if names.insert(name, ()).is_some() {
                self.error(
                    lf.name.span(),
                    format!("listener name {name:?} is used twice"),
                );
            }
            let listen = self.socket_addr(&lf.listen, "listen");
            if let Some(addr) = listen {
                if addr.port() != 0 {
                    if let Some(other) = addrs.insert(addr, name.to_string()) {
                        self.error(
                            lf.listen.span(),
                            format!("listener {name:?} listens on {addr}, like listener {other:?}"),
                        );
                    }
                }
            }
            let proxy_protocol = lf.proxy_protocol.as_ref().is_some_and(|pp| *pp.get_ref());
            if let (Some(pp), true) = (&lf.proxy_protocol, proxy_protocol && no_trusted_proxies) {
                self.warn(
                    pp.span(),
                    "proxy_protocol is on but [server] trusted_proxies is empty: every connection must send a PROXY header, and none is believed (the TCP peer stays the client address)",
                );
            }
            let tls = lf.tls.as_ref().map(|t| self.tls(t));
            let redirect_https = lf.redirect_https.as_ref().map(|r| {
                if tls.is_some() {
                    self.error(
                        r.span(),
                        "redirect_https is for plain HTTP listeners; this one has tls",
                    );
                }
                self.int_in(&Some(r.clone()), 443, 1..=65535, "redirect_https") as u16
            });
            if let Some(listen) = listen {
                out.push(Listener {
                    name: name.to_string(),
                    listen,
                    tls,
                    redirect_https,
                    proxy_protocol,
                });
            }
        }
        out
    }

    fn tls(&mut self, t: &Spanned<file::TlsFile>) -> Tls {
        let tf = t.get_ref();
        let min_version = match &tf.min_version {
            None => TlsVersion::V1_2,
            Some(v) => match v.get_ref().as_str() {
                "1.2" => TlsVersion::V1_2,
                "1.3" => TlsVersion::V1_3,
                other => {
                    self.error(
                        v.span(),
                        format!("min_version must be \"1.2\" or \"1.3\", not {other:?}"),
                    );
                    TlsVersion::V1_2
                }
            },
        };
        let self_signed = tf.self_signed.as_ref().is_some_and(|s| *s.get_ref());
        let mut certs = Vec::new();
        match (&tf.certs, self_signed) {
            (Some(list), true) if !list.is_empty() => {
                self.error(t.span(), "tls: use certs or self_signed = true, not both");
            }
            (_, true) => certs.push(CertSource::SelfSigned),
            (None, false) => self.error(
                t.span(),
                "tls needs certs = [{ cert = \"...pem\", key = \"...key\" }] or self_signed = true",
            ),
            (Some(list), false) => {
                if list.is_empty() {
                    self.error(t.span(), "tls certs is empty");
                }
                for c in list {
                    let cf = c.get_ref();
                    let cert = self.existing_file(&cf.cert, "certificate file");
                    let key = self.existing_file(&cf.key, "key file");
                    if let (Some(cert), Some(key)) = (cert, key) {
                        match crate::tls::load_files(&cert, &key) {
                            Ok(material) => certs.push(CertSource::Files {
                                cert,
                                key,
                                material: Arc::new(material),
                            }),
                            Err(e) => self.error(c.span(), e),
                        }
                    }
                }
            }
        }
        Tls { certs, min_version }
    }

    fn limits(&mut self, l: &file::LimitsFile) -> Limits {
        let d = Limits::default();
        Limits {
            max_connections: self.int_in(
                &l.max_connections,
                d.max_connections as i64,
                1..=10_000_000,
                "max_connections",
            ) as usize,
            header_timeout: self.positive_duration(
                &l.header_timeout,
                d.header_timeout,
                "header_timeout",
            ),
            idle_timeout: self.positive_duration(&l.idle_timeout, d.idle_timeout, "idle_timeout"),
            max_header_bytes: {
                let n = self.size(
                    &l.max_header_bytes,
                    d.max_header_bytes as u64,
                    "max_header_bytes",
                );
                if n > 16 << 20 {
                    if let Some(s) = &l.max_header_bytes {
                        self.error(s.span(), "max_header_bytes must be at most 16MiB");
                    }
                }
                n.min(16 << 20) as usize
            },
            max_headers: self.int_in(
                &l.max_headers,
                d.max_headers as i64,
                1..=10_000,
                "max_headers",
            ) as usize,
            max_body_bytes: self.size(&l.max_body_bytes, d.max_body_bytes, "max_body_bytes"),
            h2_max_concurrent_streams: self.int_in(
                &l.h2_max_concurrent_streams,
                d.h2_max_concurrent_streams as i64,
                1..=100_000,
                "h2_max_concurrent_streams",
            ) as u32,
            encoded_slashes: match l
                .encoded_slashes
                .as_ref()
                .map(|s| (s.get_ref().as_str(), s))
            {
                None | Some(("reject", _)) => EncodedSlashes::Reject,
                Some(("keep", _)) => EncodedSlashes::Keep,
                Some((other, s)) => {
                    self.error(
                        s.span(),
                        format!("encoded_slashes must be \"reject\" or \"keep\", not {other:?}"),
                    );
                    EncodedSlashes::Reject
                }
            },
            body_timeout: self.positive_duration(&l.body_timeout, d.body_timeout, "body_timeout"),
            send_timeout: self.positive_duration(&l.send_timeout, d.send_timeout, "send_timeout"),
            max_buffered_bytes: self.size(
                &l.max_buffered_bytes,
                d.max_buffered_bytes,
                "max_buffered_bytes",
            ),
            h2_max_window_updates_per_data: self.int_in(
                &l.h2_max_window_updates_per_data,
                i64::from(d.h2_max_window_updates_per_data),
                0..=1_000_000,
                "h2_max_window_updates_per_data",
            ) as u32,
        }
    }

    /// The policy tables. Rate limits and Redis parse and are checked, but are refused until
    /// their behaviour is built rather than half obeyed.
    #[allow(clippy::type_complexity)]
    fn policies(
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

    fn integrity_policy(&mut self, t: &Spanned<file::IntegrityFile>) -> Option<IntegrityPolicy> {
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

    fn jwt_policy(&mut self, t: &Spanned<file::JwtFile>) -> Option<JwtPolicy> {
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

    fn api_key_policy(&mut self, t: &Spanned<file::ApiKeysFile>) -> Option<ApiKeyPolicy> {
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

    fn policy_name(&mut self, name: &Spanned<String>, table: &str) {
        if !valid_name(name.get_ref()) {
            self.error(name.span(), bad_name_message(table, name.get_ref()));
        }
    }

    // ===== upstreams =====

    fn upstreams(
        &mut self,
        map: &BTreeMap<Spanned<String>, Spanned<file::UpstreamFile>>,
    ) -> Vec<Upstream> {
        let mut out = Vec::new();
        for (name, u) in map {
            if !valid_name(name.get_ref()) {
                self.error(name.span(), bad_name_message("upstream", name.get_ref()));
            }
            if let Some(up) = self.upstream(name.get_ref(), u) {
                out.push(up);
            }
        }
        out
    }

    fn upstream(&mut self, name: &str, u: &Spanned<file::UpstreamFile>) -> Option<Upstream> {
        let uf = u.get_ref();
        let balancer = uf
            .balancer
            .as_ref()
            .map_or(BalancerKind::RoundRobin, |b| *b.get_ref());
        let hash_on = match &uf.hash_on {
            Some(h) => match KeySpec::parse(h.get_ref()) {
                Ok(KeySpec::Route) => {
                    self.error(h.span(), "hash_on cannot be \"route\" (every request of a route would go to one target)");
                    None
                }
                Ok(key) => {
                    if !balancer.is_hashed() {
                        self.error(
                            h.span(),
                            format!("hash_on is used by hash, consistent_hash, maglev and slots, not by {}", balancer.as_str()),
                        );
                    }
                    Some(key)
                }
                Err(e) => {
                    self.error(h.span(), e);
                    None
                }
            },
            None => {
                if balancer.is_hashed() {
                    let span = uf.balancer.as_ref().map_or(u.span(), |b| b.span());
                    self.error(
                        span,
                        format!(
                            "balancer {} needs hash_on (e.g. hash_on = \"header.x-user-id\")",
                            balancer.as_str()
                        ),
                    );
                }
                None
            }
        };
        let on_missing_key = uf
            .on_missing_key
            .as_ref()
            .map_or(OnMissingKey::Reject, |o| *o.get_ref());
        if let Some(o) = &uf.on_missing_key {
            if !balancer.is_hashed() {
                self.error(o.span(), "on_missing_key only applies to hashed balancers");
            }
        }
        // Default 5 s, as Envoy: Linux retransmits a lost SYN after 1 s, then 3 s, so a 1 s
        // timeout fails a request whenever one SYN of a burst of new connections is dropped
        // (seen here: 500 HTTP/2 streams opening upstream connections at once).
        let connect_timeout = self.positive_duration(
            &uf.connect_timeout,
            Duration::from_secs(5),
            "connect_timeout",
        );

        let health = uf.health.as_ref().map(|h| {
            let hf = h.get_ref();
            let path = match &hf.path {
                Some(p) if !p.get_ref().starts_with('/') => {
                    self.error(
                        p.span(),
                        format!("health path {:?} must start with /", p.get_ref()),
                    );
                    "/health".to_string()
                }
                Some(p) => p.get_ref().clone(),
                None => "/health".to_string(),
            };
            let interval = self.positive_duration(&hf.interval, Duration::from_secs(2), "interval");
            let timeout = self.positive_duration(&hf.timeout, Duration::from_secs(1), "timeout");
            if timeout > interval {
                if let Some(t) = &hf.timeout {
                    self.warn(
                        t.span(),
                        "health timeout is longer than its interval: probes will overlap",
                    );
                }
            }
            HealthCheck {
                path,
                interval,
                timeout,
                healthy_threshold: self.int_in(
                    &hf.healthy_threshold,
                    2,
                    1..=100,
                    "healthy_threshold",
                ) as u32,
                unhealthy_threshold: self.int_in(
                    &hf.unhealthy_threshold,
                    3,
                    1..=100,
                    "unhealthy_threshold",
                ) as u32,
            }
        });
        let outlier = uf.outlier.as_ref().map(|o| {
            let of = o.get_ref();
            let base =
                self.positive_duration(&of.base_ejection, Duration::from_secs(30), "base_ejection");
            let max =
                self.positive_duration(&of.max_ejection, Duration::from_secs(300), "max_ejection");
            if max < base {
                if let Some(m) = &of.max_ejection {
                    self.error(m.span(), "max_ejection must be at least base_ejection");
                }
            }
            OutlierPolicy {
                consecutive_failures: self.int_in(
                    &of.consecutive_failures,
                    5,
                    1..=10_000,
                    "consecutive_failures",
                ) as u32,
                base_ejection: base,
                max_ejection: max.max(base),
                max_ejection_percent: self.int_in(
                    &of.max_ejection_percent,
                    50,
                    0..=100,
                    "max_ejection_percent",
                ) as u32,
            }
        });
        let circuit_breaker = uf.circuit_breaker.as_ref().map(|c| {
            let cf = c.get_ref();
            let error_ratio = match &cf.error_ratio {
                None => 0.5,
                Some(r) if *r.get_ref() > 0.0 && *r.get_ref() <= 1.0 => *r.get_ref(),
                Some(r) => {
                    self.error(
                        r.span(),
                        format!("error_ratio must be within (0, 1], not {}", r.get_ref()),
                    );
                    0.5
                }
            };
            BreakerPolicy {
                error_ratio,
                min_requests: self.int_in(&cf.min_requests, 20, 1..=1_000_000, "min_requests")
                    as u32,
                window: self.positive_duration(&cf.window, Duration::from_secs(10), "window"),
                open_for: self.positive_duration(&cf.open_for, Duration::from_secs(5), "open_for"),
                half_open_requests: self.int_in(
                    &cf.half_open_requests,
                    3,
                    1..=10_000,
                    "half_open_requests",
                ) as u32,
            }
        });
        let max_in_flight = uf
            .max_in_flight
            .as_ref()
            .map(|m| self.int_in(&Some(m.clone()), 1, 1..=10_000_000, "max_in_flight") as u64);
        let max_pending = uf
            .max_pending
            .as_ref()
            .map(|m| self.int_in(&Some(m.clone()), 1, 1..=10_000_000, "max_pending") as u64);
        let max_idle_per_target = self.int_in(
            &uf.max_idle_per_target,
            64,
            0..=100_000,
            "max_idle_per_target",
        ) as usize;
        let mut maglev_table_size = None;
        if let Some(m) = &uf.maglev_table_size {
            let size = *m.get_ref();
            let targets = uf.targets.get_ref().len() as i64;
            if balancer != BalancerKind::Maglev {
                self.error(
                    m.span(),
                    "maglev_table_size only applies to balancer = \"maglev\"",
                );
            } else if !(size >= targets.max(2)
                && size <= 50_000_017
                && super::is_prime(size as usize))
            {
                self.error(
                    m.span(),
                    format!("maglev_table_size {size} must be a prime, at least the number of targets ({targets}) and at most 50000017 (65537 and 655373 are common choices)"),
                );
            } else {
                maglev_table_size = Some(size as usize);
            }
        }

        let targets = self.targets(name, balancer, &uf.targets);
        Some(Upstream {
            name: name.to_string(),
            balancer,
            hash_on,
            on_missing_key,
            connect_timeout,
            targets,
            maglev_table_size,
            health,
            outlier,
            circuit_breaker,
            max_in_flight,
            max_pending,
            max_idle_per_target,
        })
    }

    fn targets(
        &mut self,
        upstream: &str,
        balancer: BalancerKind,
        list: &Spanned<Vec<Spanned<file::TargetFile>>>,
    ) -> Vec<Target> {
        if list.get_ref().is_empty() {
            self.error(list.span(), format!("upstream {upstream:?} has no targets"));
        }
        let mut out = Vec::new();
        let mut ids: HashSet<String> = HashSet::new();
        let mut addrs: HashSet<SocketAddr> = HashSet::new();
        let mut any_slots = false;
        let mut slot_spans: Vec<(RangeInclusive<u16>, Range<usize>)> = Vec::new();
        for t in list.get_ref() {
            let tf = t.get_ref();
            let addr = self.socket_addr(&tf.addr, "target addr");
            if let Some(a) = addr {
                if !addrs.insert(a) {
                    self.error(
                        tf.addr.span(),
                        format!("address {a} is used twice in upstream {upstream:?}"),
                    );
                }
            }
            let id = match &tf.id {
                Some(id) => {
                    if id.get_ref().is_empty() {
                        self.error(id.span(), "target id must not be empty");
                    }
                    id.get_ref().clone()
                }
                None => tf.addr.get_ref().clone(),
            };
            if !ids.insert(id.clone()) {
                let span = tf.id.as_ref().map_or(tf.addr.span(), |s| s.span());
                self.error(
                    span,
                    format!("target id {id:?} is used twice in upstream {upstream:?}"),
                );
            }
            let weight = self.int_in(&tf.weight, 1, 1..=1000, "weight") as u32;
            if let Some(w) = &tf.weight {
                if balancer != BalancerKind::WeightedRoundRobin
                    && balancer != BalancerKind::ConsistentHash
                    && *w.get_ref() != 1
                {
                    self.warn(
                        w.span(),
                        format!("weight has no effect with balancer {}", balancer.as_str()),
                    );
                }
            }
            let mut backups = Vec::new();
            for b in tf.backups.as_deref().unwrap_or(&[]) {
                if let Some(a) = self.socket_addr(b, "backup") {
                    if !addrs.insert(a) {
                        self.error(
                            b.span(),
                            format!("address {a} is used twice in upstream {upstream:?}"),
                        );
                    }
                    if !ids.insert(a.to_string()) {
                        self.error(
                            b.span(),
                            format!(
                                "backup {a} has the id of another target in upstream {upstream:?}"
                            ),
                        );
                    }
                    backups.push(a);
                }
            }
            let mut slots = Vec::new();
            if let Some(list) = &tf.slots {
                any_slots = true;
                if balancer != BalancerKind::Slots {
                    self.error(t.span(), "slots only apply to balancer = \"slots\"");
                }
                for s in list {
                    match parse_slot_range(s.get_ref()) {
                        Ok(r) => {
                            slot_spans.push((r.clone(), s.span()));
                            slots.push(r);
                        }
                        Err(e) => self.error(s.span(), e),
                    }
                }
            }
            if let Some(addr) = addr {
                out.push(Target {
                    id,
                    addr,
                    weight,
                    backups,
                    slots,
                });
            }
        }
        if any_slots && balancer == BalancerKind::Slots {
            self.check_slot_coverage(upstream, list, &out, slot_spans);
        }
        out
    }

    /// With explicit `slots`, every target has ranges, no slot is owned twice, all 16384 are owned.
    fn check_slot_coverage(
        &mut self,
        upstream: &str,
        list: &Spanned<Vec<Spanned<file::TargetFile>>>,
        targets: &[Target],
        mut spans: Vec<(RangeInclusive<u16>, Range<usize>)>,
    ) {
        for (t, tf) in targets.iter().zip(list.get_ref()) {
            if t.slots.is_empty() {
                self.error(
                    tf.span(),
                    format!("target {:?} has no slots while others in upstream {upstream:?} do: give every target its ranges, or none for an even split", t.id),
                );
            }
        }
        spans.sort_by_key(|(r, _)| *r.start());
        let mut next: u32 = 0;
        let mut prev_end: Option<u16> = None;
        for (r, span) in &spans {
            if let Some(end) = prev_end {
                if *r.start() <= end {
                    self.error(
                        span.clone(),
                        format!(
                            "slots {}-{} overlap slot {end}, which another range already owns",
                            r.start(),
                            r.end()
                        ),
                    );
                }
            }
            if u32::from(*r.start()) > next {
                self.error(
                    list.span(),
                    format!(
                        "upstream {upstream:?}: slots {next}-{} are owned by no target",
                        r.start() - 1
                    ),
                );
            }
            next = next.max(u32::from(*r.end()) + 1);
            prev_end = Some(prev_end.map_or(*r.end(), |e| e.max(*r.end())));
        }
        if next < SLOT_COUNT as u32 && !spans.is_empty() {
            self.error(
                list.span(),
                format!(
                    "upstream {upstream:?}: slots {next}-{} are owned by no target",
                    SLOT_COUNT - 1
                ),
            );
        }
    }

    // ===== routes =====

    fn routes(&mut self, f: &file::File, upstreams: &[Upstream]) -> Vec<Route> {
        let mut out = Vec::new();
        let mut names: HashSet<&str> = HashSet::new();
        let known: Vec<&str> = f.upstreams.keys().map(|k| k.get_ref().as_str()).collect();
        if f.routes.is_empty() {
            self.errors.push(Diag {
                span: Some(0..0),
                message: "no [[routes]]: every request would get 404".into(),
            });
        }
        for r in &f.routes {
            let rf = r.get_ref();
            let name = rf.name.get_ref().as_str();
            if !valid_name(name) || name == "none" {
                self.error(rf.name.span(), bad_name_message("route", name));
            }
            if !names.insert(name) {
                self.error(rf.name.span(), format!("route name {name:?} is used twice"));
            }
            let upstream = rf.upstream.get_ref();
            if !upstreams.iter().any(|u| &u.name == upstream) && !known.contains(&upstream.as_str())
            {
                self.error(
                    rf.upstream.span(),
                    format!(
                        "route {name:?}: upstream {upstream:?} is not defined (defined: {})",
                        list_or_none(&known)
                    ),
                );
            }
            self.policy_ref(name, "jwt", &rf.jwt, f.jwt.keys());
            self.policy_ref(name, "api_key", &rf.api_key, f.api_keys.keys());
            self.policy_ref(name, "integrity", &rf.integrity, f.integrity.keys());
            self.policy_ref(name, "rate_limit", &rf.rate_limit, f.rate_limits.keys());

            let matcher = rf
                .matcher
                .as_ref()
                .map(|m| self.matcher(m))
                .unwrap_or_default();
            let strip_prefix = rf.strip_prefix.as_ref().map(|s| {
                let p = s.get_ref();
                if !p.starts_with('/') {
                    self.error(s.span(), format!("strip_prefix {p:?} must start with /"));
                }
                let trimmed = p.trim_end_matches('/');
                if let Some(prefix) = &matcher.path_prefix {
                    if !segment_prefix_of(trimmed, prefix) {
                        self.warn(
                            s.span(),
                            format!("strip_prefix {p:?} is not a prefix of path_prefix {prefix:?}: some paths will be forwarded unchanged"),
                        );
                    }
                }
                trimmed.to_string()
            });
            let timeout = self.positive_duration(&rf.timeout, Duration::from_secs(5), "timeout");
            let retry = rf.retry.as_ref().map(|r| self.retry(r));
            let attempts = retry.as_ref().map_or(0, |r| r.attempts);
            let total_timeout = self.positive_duration(
                &rf.total_timeout,
                timeout * (attempts + 1),
                "total_timeout",
            );
            let fallback = rf.fallback.as_ref().map(|f| self.fallback(f));
            if let Some(x) = &rf.compress {
                if *x.get_ref() {
                    self.not_supported(x.span(), "compress", ISSUE_OPERATIONS);
                }
            }
            let allow_ips = rf
                .allow_ips
                .as_ref()
                .map(|l| self.cidrs(l.get_ref()))
                .unwrap_or_default();
            let deny_ips = rf
                .deny_ips
                .as_ref()
                .map(|l| self.cidrs(l.get_ref()))
                .unwrap_or_default();
            let websocket = rf.websocket.as_ref().is_some_and(|x| *x.get_ref());
            let host_rewrite =
                rf.host_rewrite
                    .as_ref()
                    .and_then(|h| match HeaderValue::from_str(h.get_ref()) {
                        Ok(v) if !h.get_ref().is_empty() && !h.get_ref().contains(['/', ' ']) => {
                            Some(v)
                        }
                        _ => {
                            self.error(
                                h.span(),
                                format!("host_rewrite {:?} is not a host[:port]", h.get_ref()),
                            );
                            None
                        }
                    });
            out.push(Route {
                name: name.to_string(),
                matcher,
                upstream: upstream.clone(),
                strip_prefix,
                policies: RoutePolicies {
                    jwt: rf.jwt.as_ref().map(|n| n.get_ref().clone()),
                    api_key: rf.api_key.as_ref().map(|n| n.get_ref().clone()),
                    integrity: rf.integrity.as_ref().map(|n| n.get_ref().clone()),
                    rate_limit: rf.rate_limit.as_ref().map(|n| n.get_ref().clone()),
                },
                timeout,
                total_timeout,
                host_rewrite,
                retry,
                fallback,
                allow_ips,
                deny_ips,
                websocket,
            });
        }
        out
    }

    fn retry(&mut self, r: &Spanned<file::RetryFile>) -> RetryPolicy {
        let rf = r.get_ref();
        let attempts = self.int_in(&Some(rf.attempts.clone()), 0, 0..=10, "attempts") as u32;
        let budget = match &rf.budget {
            None => 0.2,
            Some(b) if (0.0..=1.0).contains(b.get_ref()) => *b.get_ref(),
            Some(b) => {
                self.error(
                    b.span(),
                    format!(
                        "budget must be within 0..=1 (a share of requests), not {}",
                        b.get_ref()
                    ),
                );
                0.2
            }
        };
        let mut on = RetryOn::default();
        let default_on = ["connect_error", "reset", "timeout", "502", "503", "504"];
        let list: Vec<(String, Option<Range<usize>>)> = match &rf.on {
            Some(list) => list
                .iter()
                .map(|s| (s.get_ref().clone(), Some(s.span())))
                .collect(),
            None => default_on.iter().map(|s| (s.to_string(), None)).collect(),
        };
        for (item, span) in list {
            match item.as_str() {
                "connect_error" => {}
                "reset" => on.reset = true,
                "timeout" => on.timeout = true,
                "5xx" => on.any_5xx = true,
                code => match code.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => on.statuses.push(c),
                    _ => self.error(
                        span.unwrap_or(r.span()),
                        format!("retry on {code:?}: use connect_error, reset, timeout, 5xx or a status code like \"503\""),
                    ),
                },
            }
        }
        RetryPolicy {
            attempts,
            budget,
            on,
        }
    }

    fn fallback(&mut self, f: &Spanned<file::FallbackFile>) -> Fallback {
        let ff = f.get_ref();
        let status =
            self.int_in(&Some(ff.status.clone()), 503, 100..=599, "fallback status") as u16;
        let content_type = ff.content_type.as_deref().unwrap_or("application/json");
        let content_type = HeaderValue::from_str(content_type).unwrap_or_else(|_| {
            self.error(
                f.span(),
                "fallback content_type is not a valid header value",
            );
            HeaderValue::from_static("application/json")
        });
        Fallback {
            status: http::StatusCode::from_u16(status)
                .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
            content_type,
            body: bytes::Bytes::from(ff.body.clone().unwrap_or_default()),
        }
    }

    fn policy_ref<'k>(
        &mut self,
        route: &str,
        what: &str,
        value: &Option<Spanned<String>>,
        defined: impl Iterator<Item = &'k Spanned<String>>,
    ) {
        let Some(v) = value else { return };
        let names: Vec<&str> = defined.map(|k| k.get_ref().as_str()).collect();
        if !names.contains(&v.get_ref().as_str()) {
            self.error(
                v.span(),
                format!(
                    "route {route:?}: {what} policy {:?} is not defined (defined: {})",
                    v.get_ref(),
                    list_or_none(&names)
                ),
            );
        }
    }

    fn matcher(&mut self, m: &Spanned<file::MatchFile>) -> Match {
        let mf = m.get_ref();
        let host = mf.host.as_ref().and_then(|h| {
            let text = h.get_ref().to_ascii_lowercase();
            let bare = text.strip_prefix("*.").unwrap_or(&text);
            if text.is_empty() || text.contains(':') || bare.contains('*') || bare.contains('/') {
                self.error(h.span(), format!("host {:?} must be a host name without port, optionally starting with \"*.\"", h.get_ref()));
                return None;
            }
            Some(match text.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_string()),
                None => HostMatch::Exact(text),
            })
        });
        let path_like = |v: &Option<Spanned<String>>, what: &str, this: &mut Self| {
            v.as_ref().map(|p| {
                let text = p.get_ref();
                if !text.starts_with('/') {
                    this.error(p.span(), format!("{what} {text:?} must start with /"));
                } else if !crate::path::is_normal(text) {
                    // Requests are matched on their normalised path (SPEC §8.2): a path
                    // that is not normal itself could never match.
                    let hint = crate::path::normalise(text, EncodedSlashes::Keep)
                        .map(|n| crate::path::match_path(&n).into_owned())
                        .map_or(String::new(), |n| format!(" (write {n:?})"));
                    this.error(
                        p.span(),
                        format!("{what} {text:?} is not a normalised path{hint}"),
                    );
                }
                text.clone()
            })
        };
        let path = path_like(&mf.path, "path", self);
        let path_prefix = path_like(&mf.path_prefix, "path_prefix", self).map(|p| {
            let t = p.trim_end_matches('/');
            if t.is_empty() {
                "/".to_string()
            } else {
                t.to_string()
            }
        });
        let case_insensitive = mf.case_sensitive == Some(false);
        let path_regex = mf.path_regex.as_ref().and_then(|r| {
            match regex::RegexBuilder::new(r.get_ref())
                .case_insensitive(case_insensitive)
                .size_limit(1 << 20)
                .build()
            {
                Ok(re) => Some(re),
                Err(e) => {
                    // regex errors span several lines (a caret diagram); keep the reason.
                    let msg = e.to_string();
                    let reason = msg
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("invalid");
                    let reason = reason.trim().trim_start_matches("error: ");
                    self.error(r.span(), format!("path_regex: {reason}"));
                    None
                }
            }
        });
        let methods = mf.methods.as_ref().map(|list| {
            let mut out = Vec::new();
            if list.is_empty() {
                self.error(m.span(), "methods is empty: the route would match nothing");
            }
            for s in list {
                let text = s.get_ref();
                match Method::from_bytes(text.as_bytes()) {
                    Ok(method) if text.bytes().all(|b| !b.is_ascii_lowercase()) => out.push(method),
                    _ => self.error(
                        s.span(),
                        format!(
                            "{text:?} is not an HTTP method (write it upper-case, e.g. \"GET\")"
                        ),
                    ),
                }
            }
            out
        });
        let mut headers = Vec::new();
        for (name, value) in mf.headers.iter().flatten() {
            let hn = HeaderName::from_bytes(name.get_ref().to_ascii_lowercase().as_bytes());
            let hv = HeaderValue::from_str(value.get_ref());
            match (hn, hv) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(_), _) => self.error(
                    name.span(),
                    format!("{:?} is not a header name", name.get_ref()),
                ),
                (_, Err(_)) => self.error(value.span(), "not a valid header value"),
            }
        }
        Match {
            host,
            path,
            path_prefix,
            path_regex,
            methods,
            headers,
            case_insensitive,
        }
    }
}

/// An API keys file: lines of `name = "<hex SHA-256 of the key>"`. Errors name the file and
/// their own line and column.
fn parse_api_keys(
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

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
pub(crate) fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// `"0-5460"`, `"42"` or `42`, within 0..=16383.
fn parse_slot_range(v: &SlotsValue) -> Result<RangeInclusive<u16>, String> {
    let max = SLOT_COUNT as i64 - 1;
    let one = |n: i64| -> Result<u16, String> {
        if (0..=max).contains(&n) {
            Ok(n as u16)
        } else {
            Err(format!("slot {n} is outside 0..={max}"))
        }
    };
    match v {
        SlotsValue::One(n) => one(*n).map(|s| s..=s),
        SlotsValue::Range(text) => {
            let parse = |s: &str| -> Result<u16, String> {
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("slots {text:?}: write \"FIRST-LAST\" or a single slot"))
                    .and_then(one)
            };
            match text.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse(a)?, parse(b)?);
                    if a > b {
                        return Err(format!("slots {text:?}: {a} is after {b}"));
                    }
                    Ok(a..=b)
                }
                None => parse(text).map(|s| s..=s),
            }
        }
    }
}

/// Names of routes, upstreams, listeners and policies end up in metric labels and URLs.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn bad_name_message(what: &str, name: &str) -> String {
    if name == "none" {
        return format!("{what} name \"none\" is reserved (it labels requests no route matched)");
    }
    format!("{what} name {name:?} must be 1-64 characters of letters, digits, '_', '-', '.'")
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Whether `prefix` is `path` or a parent of it, segment-wise.
fn segment_prefix_of(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The file as JSON for `GET /admin/config`. Secrets are never inline (only `*_env` names and
/// `*_file` paths are), except a Redis URL that may carry a password: that is masked.
fn redacted_view(f: &file::File) -> serde_json::Value {
    let mut v = serde_json::to_value(f).unwrap_or(serde_json::Value::Null);
    if let Some(url) = v.pointer_mut("/redis/url") {
        if let Some(s) = url.as_str() {
            *url = serde_json::Value::String(redact_url(s));
        }
    }
    v
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://<redacted>@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_parse_in_every_written_form() {
        assert_eq!(
            parse_slot_range(&SlotsValue::Range("0-5460".into())),
            Ok(0..=5460)
        );
        assert_eq!(
            parse_slot_range(&SlotsValue::Range("42".into())),
            Ok(42..=42)
        );
        assert_eq!(parse_slot_range(&SlotsValue::One(16383)), Ok(16383..=16383));
        assert!(parse_slot_range(&SlotsValue::One(16384)).is_err());
        assert!(parse_slot_range(&SlotsValue::Range("10-5".into())).is_err());
        assert!(parse_slot_range(&SlotsValue::Range("a-b".into())).is_err());
    }

    #[test]
    fn redis_passwords_are_masked() {
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1:6379"),
            "redis://<redacted>@127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn cidrs_accept_bare_addresses() {
        assert_eq!(parse_cidr("10.1.2.3"), Some("10.1.2.3/32".parse().unwrap()));
        assert_eq!(
            parse_cidr("10.1.2.3/8"),
            Some("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            parse_cidr("2001:db8::/32"),
            Some("2001:db8::/32".parse().unwrap())
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
    }
}
