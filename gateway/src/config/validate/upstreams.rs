//! `[upstreams.*]`: balancers, targets and backups, slots, health, outlier, breaker, limits.

use std::collections::{BTreeMap, HashSet};
use std::ops::RangeInclusive;
use std::time::Duration;

use std::sync::Arc;
use toml::Spanned;

use super::super::file::{self, BalancerKind, OnMissingKey, SlotsValue};
use super::super::{
    BreakerPolicy, Discover, Discovery, HealthCheck, KeySpec, OutlierPolicy, Target, Upstream,
    SLOT_COUNT,
};
use super::*;
use crate::config::{Protocol, UpstreamTls};

impl Validator<'_> {
    // ===== upstreams =====

    pub(super) fn upstreams(
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

    pub(super) fn upstream(
        &mut self,
        name: &str,
        u: &Spanned<file::UpstreamFile>,
    ) -> Option<Upstream> {
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
                grpc: hf.grpc.as_ref().is_some_and(|g| *g.get_ref()),
                service: hf
                    .service
                    .as_ref()
                    .map_or(String::new(), |s| s.get_ref().clone()),
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
        let protocol = match uf.protocol.as_ref().map(|p| (p.get_ref().as_str(), p)) {
            None | Some(("http1", _)) => Protocol::Http1,
            Some(("h2", _)) => Protocol::H2,
            Some(("auto", _)) => Protocol::Auto,
            Some((other, p)) => {
                self.error(
                    p.span(),
                    format!("protocol must be \"http1\", \"h2\" or \"auto\", not {other:?}"),
                );
                Protocol::Http1
            }
        };
        let tls = uf.tls.as_ref().and_then(|t| self.upstream_tls(t, protocol));
        let h2_possible = protocol == Protocol::H2 || (protocol == Protocol::Auto && tls.is_some());
        if let (Some(h), Some(true)) = (&uf.health, health.as_ref().map(|h| h.grpc)) {
            if !h2_possible {
                self.error(
                    h.span(),
                    "health grpc = true needs HTTP/2 to the upstream: protocol = \"h2\", or \"auto\" with tls",
                );
            }
        }
        let h2_max_streams_per_connection = self.int_in(
            &uf.h2_max_streams_per_connection,
            100,
            1..=100_000,
            "h2_max_streams_per_connection",
        ) as u32;
        let mut maglev_table_size = None;
        if let Some(m) = &uf.maglev_table_size {
            let size = *m.get_ref();
            let targets = uf.targets.as_ref().map_or(0, |t| t.get_ref().len()) as i64;
            if balancer != BalancerKind::Maglev {
                self.error(
                    m.span(),
                    "maglev_table_size only applies to balancer = \"maglev\"",
                );
            } else if !(size >= targets.max(2)
                && size <= 50_000_017
                && crate::config::is_prime(size as usize))
            {
                self.error(
                    m.span(),
                    format!("maglev_table_size {size} must be a prime, at least the number of targets ({targets}) and at most 50000017 (65537 and 655373 are common choices)"),
                );
            } else {
                maglev_table_size = Some(size as usize);
            }
        }

        let discover = uf.discover.as_ref().and_then(|d| self.discover(d));
        let targets = match (&uf.targets, &uf.discover) {
            (Some(list), None) => self.targets(name, balancer, list),
            (None, Some(d)) => {
                if balancer == BalancerKind::Slots {
                    self.error(
                        d.span(),
                        "discover cannot be used with balancer = \"slots\" (slot ranges belong to named targets)",
                    );
                }
                Vec::new()
            }
            (Some(_), Some(d)) => {
                self.error(
                    d.span(),
                    format!("upstream {name:?}: set targets or discover, not both"),
                );
                Vec::new()
            }
            (None, None) => {
                self.error(
                    u.span(),
                    format!("upstream {name:?} has no targets: set targets = [...] or discover = {{ dns = \"NAME\", port = PORT }}"),
                );
                Vec::new()
            }
        };
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
            protocol,
            tls,
            h2_max_streams_per_connection,
            discover,
        })
    }

    /// `discover = { dns = NAME, port = P }` or `{ dns_srv = NAME }`.
    fn discover(&mut self, d: &Spanned<file::DiscoverFile>) -> Option<Discover> {
        let df = d.get_ref();
        match (&df.dns, &df.dns_srv) {
            (Some(name), None) => {
                let name = self.dns_name(name)?;
                let Some(port) = &df.port else {
                    self.error(d.span(), "discover = { dns = ... } needs port = PORT");
                    return None;
                };
                let p = *port.get_ref();
                if !(1..=65535).contains(&p) {
                    self.error(
                        port.span(),
                        format!("port must be within 1..=65535, not {p}"),
                    );
                    return None;
                }
                Some(Discover::Dns {
                    name,
                    port: p as u16,
                })
            }
            (None, Some(name)) => {
                if let Some(port) = &df.port {
                    self.error(
                        port.span(),
                        "discover = { dns_srv = ... } takes its ports from the SRV records: remove port",
                    );
                }
                let name = self.dns_name(name)?;
                Some(Discover::Srv { name })
            }
            (Some(_), Some(s)) => {
                self.error(s.span(), "discover takes dns or dns_srv, not both");
                None
            }
            (None, None) => {
                self.error(
                    d.span(),
                    "discover needs dns = \"NAME\" (with port) or dns_srv = \"NAME\"",
                );
                None
            }
        }
    }

    /// A DNS name as written: lower-cased, without a trailing dot.
    fn dns_name(&mut self, s: &Spanned<String>) -> Option<String> {
        match normalise_dns_name(s.get_ref()) {
            Some(n) => Some(n),
            None => {
                self.error(
                    s.span(),
                    format!(
                        "{:?} is not a DNS name (letters, digits, '-' and '_' in dot-separated labels of at most 63, 253 in all)",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// `[discovery]`.
    pub(super) fn discovery(&mut self, d: Option<&Spanned<file::DiscoveryFile>>) -> Discovery {
        let defaults = Discovery::default();
        let Some(d) = d else {
            return defaults;
        };
        let df = d.get_ref();
        let mut resolvers = Vec::new();
        for r in df.resolvers.as_deref().unwrap_or(&[]) {
            let text = r.get_ref();
            let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Some(a) => resolvers.push(a),
                None => self.error(
                    r.span(),
                    format!("resolver {text:?} is not an IP:PORT address (e.g. \"10.96.0.10:53\")"),
                ),
            }
        }
        let min_refresh =
            self.positive_duration(&df.min_refresh, defaults.min_refresh, "min_refresh");
        let max_refresh =
            self.positive_duration(&df.max_refresh, defaults.max_refresh, "max_refresh");
        if max_refresh < min_refresh {
            let span = df.max_refresh.as_ref().map_or(d.span(), |s| s.span());
            self.error(span, "max_refresh must be at least min_refresh");
        }
        Discovery {
            resolvers,
            min_refresh,
            max_refresh: max_refresh.max(min_refresh),
        }
    }

    /// `tls = { ... }` of an upstream: read its files, build the client config (ALPN by
    /// `protocol`), so a bad CA or key fails `check`.
    pub(super) fn upstream_tls(
        &mut self,
        t: &Spanned<file::UpstreamTlsFile>,
        protocol: Protocol,
    ) -> Option<UpstreamTls> {
        let tf = t.get_ref();
        let mut files = Vec::new();
        let mut read = |this: &mut Self, s: &Option<Spanned<String>>, what: &str| {
            let s = s.as_ref()?;
            let path = this.existing_file(s, what)?;
            match std::fs::read(&path) {
                Ok(bytes) => {
                    files.push((path, bytes.clone()));
                    Some(bytes)
                }
                Err(e) => {
                    this.error(s.span(), format!("{what} {:?}: {e}", s.get_ref()));
                    None
                }
            }
        };
        let ca = read(self, &tf.ca_file, "ca_file");
        let cert = read(self, &tf.client_cert, "client_cert");
        let key = read(self, &tf.client_key, "client_key");
        if tf.client_cert.is_some() != tf.client_key.is_some() {
            self.error(t.span(), "client_cert and client_key go together");
            return None;
        }
        let insecure_skip_verify = tf
            .insecure_skip_verify
            .as_ref()
            .is_some_and(|i| *i.get_ref());
        if let (Some(i), true) = (&tf.insecure_skip_verify, insecure_skip_verify) {
            self.warn(
                i.span(),
                "insecure_skip_verify: the upstream's certificate is not verified (for tests only)",
            );
        }
        if let Some(n) = &tf.server_name {
            if rustls_pki_types::ServerName::try_from(n.get_ref().as_str()).is_err() {
                self.error(
                    n.span(),
                    format!(
                        "server_name {:?} is not a DNS name or IP address",
                        n.get_ref()
                    ),
                );
            }
        }
        let alpn: Vec<Vec<u8>> = match protocol {
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
            Protocol::H2 => vec![b"h2".to_vec()],
            Protocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        let built = crate::tls::client_config(&crate::tls::ClientTlsFiles {
            ca: ca.as_deref(),
            client: cert.as_deref().zip(key.as_deref()),
            insecure_skip_verify,
            alpn,
        });
        match built {
            Ok(client) => Some(UpstreamTls {
                client: Arc::new(client),
                server_name: tf.server_name.as_ref().map(|n| n.get_ref().clone()),
                insecure_skip_verify,
                files,
            }),
            Err(e) => {
                self.error(t.span(), format!("tls: {e}"));
                None
            }
        }
    }

    pub(super) fn targets(
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
        let mut hosts: HashSet<(String, u16)> = HashSet::new();
        let mut any_slots = false;
        let mut slot_spans: Vec<(RangeInclusive<u16>, Range<usize>)> = Vec::new();
        for t in list.get_ref() {
            let tf = t.get_ref();
            let mut host = None;
            let addr = match tf.addr.get_ref().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => match split_host_port(tf.addr.get_ref()) {
                    Some((h, port)) => {
                        if !hosts.insert((h.clone(), port)) {
                            self.error(
                                tf.addr.span(),
                                format!(
                                    "{:?} is used twice in upstream {upstream:?}",
                                    tf.addr.get_ref()
                                ),
                            );
                        }
                        self.hostnames.push((h.clone(), port, tf.addr.span()));
                        host = Some(h);
                        Some(SocketAddr::from(([0, 0, 0, 0], port)))
                    }
                    None => {
                        self.error(
                            tf.addr.span(),
                            format!(
                                "target addr {:?} is not IP:PORT or HOST:PORT (e.g. \"127.0.0.1:8080\", \"[::1]:8080\", \"orders.internal:8080\")",
                                tf.addr.get_ref()
                            ),
                        );
                        None
                    }
                },
            };
            if let Some(a) = addr.filter(|_| host.is_none()) {
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
                    resolve: host.is_some(),
                    host,
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
    pub(super) fn check_slot_coverage(
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
}

/// `"0-5460"`, `"42"` or `42`, within 0..=16383.
pub(super) fn parse_slot_range(v: &SlotsValue) -> Result<RangeInclusive<u16>, String> {
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

/// `host:port` with a DNS name (not an IP address: those parse as `SocketAddr`).
pub(crate) fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return None;
    }
    Some((normalise_dns_name(host)?, port))
}

/// A DNS name lower-cased without its trailing dot, or `None` when it is not one: labels of
/// 1 to 63 letters, digits, `-` or `_` (SRV names), at most 253 characters, not all digits
/// and dots (that would be a mistyped IPv4 address).
pub(crate) fn normalise_dns_name(text: &str) -> Option<String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let numeric = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    (labels_ok && !numeric).then(|| name.to_ascii_lowercase())
}
