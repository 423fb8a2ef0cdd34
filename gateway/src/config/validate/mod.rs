//! From the file as written (`file.rs`) to the runtime types (`mod.rs`): every semantic check,
//! every error collected with its place, nothing published unless all of it holds.

use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::file::{self, SizeValue};
use super::units::{parse_duration, parse_size};
use super::{Admin, Config, Loaded, Mode, Server, Source};

mod listeners;
mod observability;
mod policies;
mod routes;
mod upstreams;

struct Diag {
    span: Option<Range<usize>>,
    message: String,
}

struct Validator<'a> {
    src: &'a Source<'a>,
    mode: Mode,
    errors: Vec<Diag>,
    warnings: Vec<Diag>,
    /// Targets written as `host:port`: (host, port, where).
    hostnames: Vec<(String, u16, Range<usize>)>,
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
        hostnames: Vec::new(),
    };
    let mut config = v.file(&file);
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
    let mut hostnames: Vec<crate::config::HostRef> = v
        .hostnames
        .iter()
        .map(|(host, port, span)| crate::config::HostRef {
            host: host.clone(),
            port: *port,
            at: v.src.at(span),
        })
        .collect();
    hostnames.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    hostnames.dedup_by(|a, b| a.host == b.host && a.port == b.port);
    config.hostnames = hostnames;
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
        let discovery = self.discovery(f.discovery.as_ref());
        let tracing = self.tracing(f.tracing.as_ref());
        let access_log = self.access_log(f.access_log.as_ref());
        let cors = self.cors_tables(&f.cors);
        let forward_auth = self.forward_auth_tables(&f.forward_auth);
        let mut identity: Vec<http::HeaderName> = crate::config::FIXED_IDENTITY_HEADERS
            .iter()
            .map(|n| http::HeaderName::from_static(n))
            .collect();
        for p in jwt.values() {
            identity.extend(p.claims_to_headers.iter().map(|(_, h)| h.clone()));
        }
        for p in forward_auth.values() {
            identity.extend(p.copy_headers.iter().cloned());
        }
        let routes = self.routes(f, &upstreams, &identity);
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
            cors,
            forward_auth,
            discovery,
            hostnames: Vec::new(),
            tracing,
            access_log,
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
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
pub(crate) fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
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
    use super::upstreams::parse_slot_range;
    use super::*;
    use crate::config::file::SlotsValue;

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
