//! DNS for upstreams (SPEC §8.3): targets written as `host:port`, and upstreams whose targets
//! come from `discover = { dns = NAME, port = P }` (one target per A/AAAA address) or
//! `{ dns_srv = NAME }` (one target per SRV record).
//!
//! One resolver per process (hickory, from `[discovery] resolvers` or `/etc/resolv.conf`),
//! rebuilt when `[discovery]` changes. What DNS said lives here, outside config generations:
//! the addresses of each `host:port` (the endpoints' `Addrs` follow them in place, refreshed by
//! a task per name) and, per discovering upstream, the target set in use with its last lookup.
//! A change of a discovered set rebuilds the generation off the request path
//! (`server::discover`); this module holds the rules: TTL clamped into
//! `[min_refresh, max_refresh]`; a failed lookup (timeout, SERVFAIL, REFUSED) keeps the last set;
//! an empty answer (NXDOMAIN, no records) empties it only after 3 in a row; targets ordered by
//! address (IPv4 before IPv6, then port), SRV targets by id, SRV weights clamped to 1..=1000.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};
use prometheus::{IntCounter, IntGauge};
use serde_json::{json, Value};

use crate::clock;
use crate::config::{Config, Discover, Discovery, HostRef, Target};
use crate::endpoint::Endpoint;
use crate::metrics::Metrics;

/// Addresses of each `host:port` as last looked up.
pub type HostAddrs = HashMap<(String, u16), Vec<SocketAddr>>;

/// Empty answers in a row that empty a discovered set.
const EMPTIES_TO_CLEAR: u32 = 3;

/// What a lookup said.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer<T> {
    /// Records, and how long they are good for (TTL, clamped).
    Found(T, Duration),
    /// NXDOMAIN or no records.
    Empty(String),
    /// Timeout, SERVFAIL, REFUSED, no server reachable.
    Failed(String),
}

impl<T> Answer<T> {
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Found(..) => "success",
            Self::Empty(_) => "empty",
            Self::Failed(_) => "error",
        }
    }
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower-case, without the trailing dot.
    pub host: String,
    pub port: u16,
    pub weight: u16,
}

/// The process's resolver, built from `[discovery]`.
pub struct Resolver {
    inner: TokioResolver,
    settings: Discovery,
}

impl Resolver {
    pub fn new(settings: &Discovery) -> Result<Self, String> {
        let mut builder = if settings.resolvers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?
        } else {
            let mut group = NameServerConfigGroup::new();
            for a in &settings.resolvers {
                // UDP first; TCP when an answer comes back truncated.
                group.push(NameServerConfig::new(*a, Protocol::Udp));
                group.push(NameServerConfig::new(*a, Protocol::Tcp));
            }
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                TokioConnectionProvider::default(),
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        let opts = builder.options_mut();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        Ok(Self {
            inner: builder.build(),
            settings: settings.clone(),
        })
    }

    /// `[discovery] min_refresh`: the wait after a failed or empty lookup.
    pub fn min_refresh(&self) -> Duration {
        self.settings.min_refresh
    }

    fn ttl(&self, valid_until: std::time::Instant) -> Duration {
        valid_until
            .saturating_duration_since(std::time::Instant::now())
            .clamp(self.settings.min_refresh, self.settings.max_refresh)
    }

    /// A and AAAA, both asked: fails only when both fail, empty only when both are empty.
    pub async fn ips(&self, name: &str) -> Answer<Vec<IpAddr>> {
        // Each lookup asks the server: TTLs are ours to follow, not the cache's.
        self.inner.clear_cache();
        let (v4, v6) = tokio::join!(self.inner.ipv4_lookup(name), self.inner.ipv6_lookup(name));
        let mut ips = Vec::new();
        let mut until = None;
        let mut empty = Vec::new();
        let mut failed = Vec::new();
        match v4 {
            Ok(l) => {
                ips.extend(l.iter().map(|a| IpAddr::V4(a.0)));
                until = Some(l.valid_until());
            }
            Err(e) => sort_error(&e, &mut empty, &mut failed),
        }
        match v6 {
            Ok(l) => {
                ips.extend(l.iter().map(|a| IpAddr::V6(a.0)));
                until = Some(until.map_or(l.valid_until(), |u: std::time::Instant| {
                    u.min(l.valid_until())
                }));
            }
            Err(e) => sort_error(&e, &mut empty, &mut failed),
        }
        ips.sort();
        ips.dedup();
        match until {
            Some(u) if !ips.is_empty() => Answer::Found(ips, self.ttl(u)),
            // One side failed: not a statement that the name has no address.
            _ if !failed.is_empty() => Answer::Failed(failed.join("; ")),
            _ => Answer::Empty(
                empty
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "no records".into()),
            ),
        }
    }

    /// The SRV records of `name` (sorted by host and port).
    pub async fn srv(&self, name: &str) -> Answer<Vec<SrvRecord>> {
        self.inner.clear_cache();
        match self.inner.srv_lookup(name).await {
            Ok(l) => {
                let mut out: Vec<SrvRecord> = l
                    .iter()
                    .map(|r| SrvRecord {
                        host: plain_name(&r.target().to_ascii()),
                        port: r.port(),
                        weight: r.weight(),
                    })
                    .filter(|r| !r.host.is_empty() && r.port != 0)
                    .collect();
                out.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
                if out.is_empty() {
                    return Answer::Empty("no SRV records".into());
                }
                let ttl = self.ttl(l.as_lookup().valid_until());
                Answer::Found(out, ttl)
            }
            Err(e) => {
                let (mut empty, mut failed) = (Vec::new(), Vec::new());
                sort_error(&e, &mut empty, &mut failed);
                match failed.pop() {
                    Some(f) => Answer::Failed(f),
                    None => Answer::Empty(empty.pop().unwrap_or_default()),
                }
            }
        }
    }

    /// The targets `spec` stands for now, with the addresses of SRV hosts.
    pub async fn discover(&self, spec: &Discover) -> (Answer<Vec<Target>>, HostAddrs) {
        match spec {
            Discover::Dns { name, port } => match self.ips(name).await {
                Answer::Found(ips, ttl) => (
                    Answer::Found(dns_targets(name, &ips, *port), ttl),
                    HostAddrs::new(),
                ),
                Answer::Empty(e) => (Answer::Empty(e), HostAddrs::new()),
                Answer::Failed(e) => (Answer::Failed(e), HostAddrs::new()),
            },
            Discover::Srv { name } => {
                let (records, ttl) = match self.srv(name).await {
                    Answer::Found(r, ttl) => (r, ttl),
                    Answer::Empty(e) => return (Answer::Empty(e), HostAddrs::new()),
                    Answer::Failed(e) => return (Answer::Failed(e), HostAddrs::new()),
                };
                let mut hosts: Vec<&str> = records.iter().map(|r| r.host.as_str()).collect();
                hosts.sort_unstable();
                hosts.dedup();
                let answers =
                    futures_util::future::join_all(hosts.iter().map(|h| self.ips(h))).await;
                let mut ips: HashMap<&str, Vec<IpAddr>> = HashMap::new();
                let mut ttl = ttl;
                for (h, a) in hosts.iter().zip(answers) {
                    match a {
                        Answer::Found(list, t) => {
                            ttl = ttl.min(t);
                            ips.insert(h, list);
                        }
                        // A host that does not exist is left out; one that cannot be looked up
                        // now fails the whole lookup (the last set stays).
                        Answer::Empty(e) => {
                            tracing::warn!(srv = %name, host = %h, reason = %e, "SRV target has no address: left out");
                        }
                        Answer::Failed(e) => {
                            return (
                                Answer::Failed(format!("SRV target {h}: {e}")),
                                HostAddrs::new(),
                            )
                        }
                    }
                }
                let (targets, found) = srv_targets(&records, &ips);
                if targets.is_empty() {
                    return (Answer::Empty("no SRV target has an address".into()), found);
                }
                (Answer::Found(targets, ttl), found)
            }
        }
    }
}

fn sort_error(e: &ResolveError, empty: &mut Vec<String>, failed: &mut Vec<String>) {
    let no_such = e.proto().is_some_and(|p| {
        matches!(
            p.kind(),
            ProtoErrorKind::NoRecordsFound { response_code, .. }
                if *response_code == ResponseCode::NXDomain || *response_code == ResponseCode::NoError
        )
    });
    if no_such {
        empty.push(e.to_string());
    } else {
        failed.push(e.to_string());
    }
}

fn plain_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// One target per address (weight 1, id the address), ordered by address.
pub fn dns_targets(name: &str, ips: &[IpAddr], port: u16) -> Vec<Target> {
    let mut ips = ips.to_vec();
    ips.sort();
    ips.dedup();
    ips.into_iter()
        .map(|ip| {
            let addr = SocketAddr::new(ip, port);
            Target {
                id: addr.to_string(),
                addr,
                host: Some(name.to_string()),
                resolve: false,
                weight: 1,
                backups: Vec::new(),
                slots: Vec::new(),
            }
        })
        .collect()
}

/// One target per SRV record whose host has addresses: id `host:port`, the record's weight
/// (0 counts as 1, at most 1000), ordered by id; with the addresses each stands for.
pub fn srv_targets(
    records: &[SrvRecord],
    ips: &HashMap<&str, Vec<IpAddr>>,
) -> (Vec<Target>, HostAddrs) {
    let mut by_id: BTreeMap<String, Target> = BTreeMap::new();
    let mut hosts = HostAddrs::new();
    for r in records {
        let Some(list) = ips.get(r.host.as_str()).filter(|l| !l.is_empty()) else {
            continue;
        };
        let addrs: Vec<SocketAddr> = list.iter().map(|ip| SocketAddr::new(*ip, r.port)).collect();
        hosts.insert((r.host.clone(), r.port), addrs);
        let weight = u32::from(r.weight).clamp(1, 1000);
        let id = format!("{}:{}", r.host, r.port);
        // The same host and port twice (two priorities): one target, the larger weight.
        by_id
            .entry(id.clone())
            .and_modify(|t| t.weight = t.weight.max(weight))
            .or_insert(Target {
                id,
                addr: SocketAddr::new(list[0], r.port),
                host: Some(r.host.clone()),
                resolve: true,
                weight,
                backups: Vec::new(),
                slots: Vec::new(),
            });
    }
    (by_id.into_values().collect(), hosts)
}

/// What the runtime builder takes from here.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub hosts: HostAddrs,
    /// The target set in use, by discovering upstream.
    pub targets: HashMap<String, Vec<Target>>,
}

/// The last lookup of a discovering upstream, for the admin API and the status page.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub last_ms: Option<u64>,
    /// `success`, `error`, `empty`, or `pending` before the first answer.
    pub outcome: &'static str,
    pub error: Option<String>,
    pub next_ms: Option<u64>,
    /// Empty answers in a row.
    pub empties: u32,
}

/// A discovering upstream.
#[derive(Debug)]
pub struct Entry {
    pub spec: Discover,
    pub targets: Vec<Target>,
    pub status: Status,
    /// The task that keeps looking (`server::discover`).
    pub task: Option<tokio::task::AbortHandle>,
}

struct Counters {
    lookups: [IntCounter; 3],
    /// `discover` upstreams only.
    targets: Option<IntGauge>,
}

impl Counters {
    fn count(&self, outcome: &str) {
        let i = match outcome {
            "success" => 0,
            "error" => 1,
            _ => 2,
        };
        self.lookups[i].inc();
    }
}

#[derive(Default)]
struct State {
    resolver: ArcSwapOption<Resolver>,
    hosts: Mutex<HostAddrs>,
    upstreams: Mutex<BTreeMap<String, Entry>>,
    counters: Mutex<HashMap<String, Arc<Counters>>>,
}

static STATE: LazyLock<State> = LazyLock::new(State::default);

/// The resolver of the running `[discovery]`.
pub fn resolver() -> Option<Arc<Resolver>> {
    STATE.resolver.load_full()
}

fn counters(upstream: &str) -> Option<Arc<Counters>> {
    STATE
        .counters
        .lock()
        .ok()
        .and_then(|c| c.get(upstream).cloned())
}

/// Before a generation is built from `config` (at start and at each reload): the resolver of
/// its `[discovery]`, metric series for the upstreams that use DNS, the addresses of `host:port`
/// targets not known yet (one that does not resolve is an error: `run` fails, a reload is
/// refused), and a first lookup for upstreams that start discovering (never an error: they may
/// start empty).
pub async fn prepare(config: &Config, metrics: &Metrics) -> Result<(), Vec<String>> {
    // Upstreams that no longer discover (or discover another name) stop looking.
    if let Ok(mut m) = STATE.upstreams.lock() {
        m.retain(|name, e| {
            let keep = config
                .upstreams
                .iter()
                .any(|u| u.name == *name && u.discover.as_ref() == Some(&e.spec));
            if !keep {
                if let Some(t) = e.task.take() {
                    t.abort();
                }
            }
            keep
        });
    }
    let same = STATE
        .resolver
        .load()
        .as_ref()
        .is_some_and(|r| r.settings == config.discovery);
    let resolver = if same { resolver() } else { None };
    let resolver = match resolver {
        Some(r) => r,
        None if config.hostnames.is_empty()
            && config.upstreams.iter().all(|u| u.discover.is_none()) =>
        {
            // No DNS in this config: a resolver is made when one needs it.
            return Ok(());
        }
        None => {
            let r = Arc::new(Resolver::new(&config.discovery).map_err(|e| vec![e])?);
            STATE.resolver.store(Some(r.clone()));
            r
        }
    };
    if let Ok(mut c) = STATE.counters.lock() {
        for u in &config.upstreams {
            let uses_dns = u.discover.is_some() || u.targets.iter().any(|t| t.resolve);
            let stale = c
                .get(&u.name)
                .is_none_or(|x| x.targets.is_some() != u.discover.is_some());
            if uses_dns && stale {
                let targets = u
                    .discover
                    .is_some()
                    .then(|| metrics.discovery_targets.with_label_values(&[&u.name]));
                c.insert(
                    u.name.clone(),
                    Arc::new(Counters {
                        lookups: metrics.discovery_lookups(&u.name),
                        targets,
                    }),
                );
            }
        }
        c.retain(|name, _| config.upstreams.iter().any(|u| &u.name == name));
    }
    resolve_hosts(&resolver, config).await?;
    start_discovering(&resolver, config).await;
    Ok(())
}

async fn resolve_hosts(resolver: &Resolver, config: &Config) -> Result<(), Vec<String>> {
    let known = |h: &HostRef| {
        STATE
            .hosts
            .lock()
            .map(|m| m.contains_key(&(h.host.clone(), h.port)))
            .unwrap_or(false)
    };
    let missing: Vec<&HostRef> = config.hostnames.iter().filter(|h| !known(h)).collect();
    let answers =
        futures_util::future::join_all(missing.iter().map(|h| resolver.ips(&h.host))).await;
    let mut errors = Vec::new();
    for (h, a) in missing.iter().zip(answers) {
        let upstream = config.upstreams.iter().find(|u| {
            u.targets
                .iter()
                .any(|t| t.resolve && t.host.as_deref() == Some(&h.host))
        });
        if let Some(c) = upstream.and_then(|u| counters(&u.name)) {
            c.count(a.outcome());
        }
        match a {
            Answer::Found(ips, _) => {
                let addrs = ips.iter().map(|ip| SocketAddr::new(*ip, h.port)).collect();
                if let Ok(mut m) = STATE.hosts.lock() {
                    m.insert((h.host.clone(), h.port), addrs);
                }
            }
            Answer::Empty(e) | Answer::Failed(e) => errors.push(format!(
                "{}: target \"{}:{}\" does not resolve: {e}",
                h.at, h.host, h.port
            )),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Upstreams that discover and have no entry (or a different `discover`): one lookup each, so
/// the first generation does not start empty when DNS answers.
async fn start_discovering(resolver: &Resolver, config: &Config) {
    let wanted: Vec<(String, Discover)> = config
        .upstreams
        .iter()
        .filter_map(|u| Some((u.name.clone(), u.discover.clone()?)))
        .collect();
    let fresh: Vec<(String, Discover)> = match STATE.upstreams.lock() {
        Ok(m) => wanted
            .into_iter()
            .filter(|(n, _)| !m.contains_key(n))
            .collect(),
        Err(_) => return,
    };
    let answers =
        futures_util::future::join_all(fresh.iter().map(|(_, spec)| resolver.discover(spec))).await;
    for ((name, spec), (answer, hosts)) in fresh.into_iter().zip(answers) {
        if let Ok(mut m) = STATE.upstreams.lock() {
            m.insert(
                name.clone(),
                Entry {
                    spec: spec.clone(),
                    targets: Vec::new(),
                    status: Status {
                        outcome: "pending",
                        ..Status::default()
                    },
                    task: None,
                },
            );
        }
        record(&name, &spec, answer, hosts, resolver.settings.min_refresh);
    }
}

/// Apply a lookup's answer to an upstream's entry under the failure rules (the entry also says
/// when to look again); whether the target set changed.
pub fn record(
    upstream: &str,
    spec: &Discover,
    answer: Answer<Vec<Target>>,
    hosts: HostAddrs,
    min_refresh: Duration,
) -> bool {
    let c = counters(upstream);
    if let Some(c) = &c {
        c.count(answer.outcome());
    }
    if let Ok(mut m) = STATE.hosts.lock() {
        m.extend(hosts);
    }
    let Ok(mut map) = STATE.upstreams.lock() else {
        return false;
    };
    let Some(e) = map.get_mut(upstream).filter(|e| e.spec == *spec) else {
        return false;
    };
    let now = clock::now_ms();
    let before = e.status.outcome;
    e.status.last_ms = Some(now);
    e.status.outcome = answer.outcome();
    let (change, next) = match answer {
        Answer::Found(targets, ttl) => {
            e.status.error = None;
            e.status.empties = 0;
            let changed = targets != e.targets;
            e.targets = targets;
            (changed, ttl)
        }
        Answer::Empty(why) => {
            e.status.empties += 1;
            let clear = e.status.empties >= EMPTIES_TO_CLEAR && !e.targets.is_empty();
            if !clear && !e.targets.is_empty() {
                tracing::warn!(upstream, name = %spec.name(), reason = %why, empties = e.status.empties,
                    kept = e.targets.len(), "discovery: empty answer; keeping the last targets until {EMPTIES_TO_CLEAR} in a row");
            }
            e.status.error = Some(why);
            if clear {
                e.targets.clear();
            }
            (clear, min_refresh)
        }
        Answer::Failed(why) => {
            tracing::warn!(upstream, name = %spec.name(), reason = %why, kept = e.targets.len(),
                "discovery: lookup failed; keeping the last targets");
            if before != "error" {
                crate::events::push(
                    crate::events::Kind::Discovery,
                    "bad",
                    format!("upstream/{upstream}"),
                    format!(
                        "lookup of {} failed ({why}); keeping the last {} target(s)",
                        spec.name(),
                        e.targets.len()
                    ),
                );
            }
            e.status.error = Some(why);
            (false, min_refresh)
        }
    };
    e.status.next_ms = Some(now + next.as_millis() as u64);
    if let Some(g) = c.as_ref().and_then(|c| c.targets.as_ref()) {
        g.set(e.targets.len() as i64);
    }
    change
}

/// When an upstream's task should look next (from its entry), if it discovers.
pub fn next_lookup_in(upstream: &str) -> Option<Duration> {
    let m = STATE.upstreams.lock().ok()?;
    let next = m.get(upstream)?.status.next_ms?;
    Some(Duration::from_millis(next.saturating_sub(clock::now_ms())))
}

/// Give an upstream's entry its task (aborting a previous one); `false` when it has one.
pub fn adopt(upstream: &str, start: impl FnOnce() -> tokio::task::AbortHandle) -> bool {
    let Ok(mut m) = STATE.upstreams.lock() else {
        return false;
    };
    match m.get_mut(upstream) {
        Some(e) if e.task.as_ref().is_none_or(|t| t.is_finished()) => {
            e.task = Some(start());
            true
        }
        _ => false,
    }
}

/// The spec an upstream discovers with now.
pub fn spec(upstream: &str) -> Option<Discover> {
    Some(STATE.upstreams.lock().ok()?.get(upstream)?.spec.clone())
}

/// The state the next generation is built from.
pub fn found() -> Found {
    Found {
        hosts: STATE.hosts.lock().map(|m| m.clone()).unwrap_or_default(),
        targets: STATE
            .upstreams
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(n, e)| (n.clone(), e.targets.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// `discovery` of `/admin/upstreams` and `/admin/status`: the name, the last lookup and its
/// outcome, the targets in use.
pub fn status_json(upstream: &str) -> Option<Value> {
    let m = STATE.upstreams.lock().ok()?;
    let e = m.get(upstream)?;
    Some(json!({
        "type": e.spec.kind(),
        "name": e.spec.name(),
        "port": match &e.spec { Discover::Dns { port, .. } => Some(*port), Discover::Srv { .. } => None },
        "last_lookup": e.status.last_ms.map(clock::rfc3339),
        "outcome": e.status.outcome,
        "error": e.status.error,
        "empty_answers_in_a_row": e.status.empties,
        "next_lookup": e.status.next_ms.map(clock::rfc3339),
        "targets": e.targets.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
    }))
}

/// Keep a `host:port` endpoint's addresses current: one task per name, looking again when the
/// TTL ends. An empty or failed answer keeps the last addresses (a name that resolved once
/// keeps its traffic going while DNS has trouble).
pub fn spawn_refresh(ep: &Arc<Endpoint>, upstream: &str) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if !ep.addrs.claim_refresh() {
        return;
    }
    let weak: Weak<Endpoint> = Arc::downgrade(ep);
    let upstream = upstream.to_string();
    rt.spawn(async move {
        let mut delay = resolver().map_or(Duration::from_secs(1), |r| r.settings.min_refresh);
        loop {
            tokio::time::sleep(delay).await;
            let Some(ep) = weak.upgrade() else { return };
            let addrs = &ep.addrs;
            let (Some(r), Some(host)) = (resolver(), addrs.host()) else {
                addrs.release_refresh();
                return;
            };
            let answer = r.ips(host).await;
            if let Some(c) = counters(&upstream) {
                c.count(answer.outcome());
            }
            delay = r.settings.min_refresh;
            match answer {
                Answer::Found(ips, ttl) => {
                    let list: Vec<SocketAddr> =
                        ips.iter().map(|ip| SocketAddr::new(*ip, addrs.port())).collect();
                    if let Ok(mut m) = STATE.hosts.lock() {
                        m.insert((host.to_string(), addrs.port()), list.clone());
                    }
                    if addrs.set(list) {
                        ep.pool.forget_connections();
                        tracing::info!(upstream = %upstream, host, addrs = ?addrs.all(), "target addresses changed");
                    }
                    delay = ttl;
                }
                Answer::Empty(e) | Answer::Failed(e) => {
                    tracing::warn!(upstream = %upstream, host, reason = %e, kept = ?addrs.all(), "target lookup failed; keeping its last addresses");
                }
            }
        }
    });
}

/// `gateway check`: the `host:port` targets that do not resolve now (warnings: the machine
/// that checks may not see the DNS the gateway will run with).
pub async fn check_hostnames(config: &Config) -> Vec<String> {
    if config.hostnames.is_empty() {
        return Vec::new();
    }
    let r = match Resolver::new(&config.discovery) {
        Ok(r) => r,
        Err(e) => return vec![format!("warning: {e}")],
    };
    let answers =
        futures_util::future::join_all(config.hostnames.iter().map(|h| r.ips(&h.host))).await;
    config
        .hostnames
        .iter()
        .zip(answers)
        .filter_map(|(h, a)| match a {
            Answer::Found(..) => None,
            Answer::Empty(e) | Answer::Failed(e) => Some(format!(
                "{}: warning: target \"{}:{}\" does not resolve now ({e}); `run` fails until it does",
                h.at, h.host, h.port
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_targets_ordered_ipv4_first_with_ids() {
        let ips: Vec<IpAddr> = ["2001:db8::1", "10.0.0.2", "10.0.0.10", "10.0.0.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let t = dns_targets("svc.test", &ips, 80);
        let ids: Vec<&str> = t.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["10.0.0.2:80", "10.0.0.10:80", "[2001:db8::1]:80"]);
        assert!(t.iter().all(|t| t.weight == 1 && !t.resolve));
        assert_eq!(t[0].host.as_deref(), Some("svc.test"));
    }

    #[test]
    fn srv_targets_weights_clamped_ids_sorted() {
        let rec = |host: &str, port, weight| SrvRecord {
            host: host.into(),
            port,
            weight,
        };
        let records = [
            rec("b.test", 80, 0),
            rec("a.test", 81, 5000),
            rec("gone.test", 80, 1),
            rec("a.test", 81, 3),
        ];
        let mut ips: HashMap<&str, Vec<IpAddr>> = HashMap::new();
        ips.insert("a.test", vec!["127.0.0.2".parse().unwrap()]);
        ips.insert("b.test", vec!["127.0.0.3".parse().unwrap()]);
        let (t, hosts) = srv_targets(&records, &ips);
        let got: Vec<(&str, u32)> = t.iter().map(|t| (t.id.as_str(), t.weight)).collect();
        assert_eq!(got, [("a.test:81", 1000), ("b.test:80", 1)]);
        assert!(t.iter().all(|t| t.resolve));
        assert_eq!(
            hosts.get(&("a.test".to_string(), 81)),
            Some(&vec!["127.0.0.2:81".parse().unwrap()])
        );
    }
}
