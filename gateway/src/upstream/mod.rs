//! (6) Talk to the target: the upstream of a route, its shards and their endpoints, the
//! background work that keeps them current (health probes, balancer rebuilds, pool reaping),
//! the upstream-wide limits (`max_in_flight`, `max_pending`) and the retry budget.
//!
//! The request path itself is `proxy.rs` (the service at the bottom of every route stack);
//! `forward.rs` rewrites heads for the upstream, `pool.rs` keeps its connections.

pub mod headers;
pub use crate::endpoint::pool;
pub mod auth_client;
pub mod proxy;
pub mod tunnel;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::Notify;

pub use proxy::{BufferedBody, Forward, ForwardConfig, UpstreamBody};

use crate::balance::{key, Balancer};
use crate::clock;
use crate::config::{self, OnMissingKey};
use crate::endpoint::rolling::Rolling;
use crate::endpoint::{health, Addrs, Endpoint, Shard};
use crate::error::GatewayError;
use crate::metrics::Metrics;

/// Upstream-level metric handles.
#[derive(Debug)]
pub struct UpstreamMetrics {
    pub retries: IntCounter,
    pub budget_exhausted: IntCounter,
    pub rejected_in_flight: IntCounter,
    pub rejected_pending: IntCounter,
}

/// One upstream of a config generation: its balancer over its shards.
#[derive(Debug)]
pub struct UpstreamRt {
    pub name: String,
    pub config: config::Upstream,
    pub balancer: Balancer,
    pub shards: Vec<Shard>,
    pub metrics: UpstreamMetrics,
    /// Requests in flight to this upstream (counted only with `max_in_flight`).
    in_flight: AtomicU64,
    /// Requests waiting for a new connection (counted only with `max_pending`).
    pending: AtomicU64,
    /// (requests, retries) over the last 10 s, for the retry budget.
    retry_window: Rolling,
    /// Health, ejection or circuit changed: rebuild what depends on the up set.
    changed: Arc<Notify>,
    /// Serialises ejections so `max_ejection_percent` holds (rare, never on the happy path).
    eject_lock: Mutex<()>,
}

impl UpstreamRt {
    pub fn build(cfg: &config::Upstream, metrics: &Metrics) -> Self {
        Self::build_reusing(cfg, metrics, None, &crate::discovery::HostAddrs::new())
    }

    /// Build, keeping the endpoints of `previous` (the same upstream in the config generation
    /// being replaced) that are unchanged: same id, address (or DNS name) and role, same
    /// health, outlier, breaker and connect settings. They keep their health, circuit and
    /// ejection state, their pooled connections and their DNS addresses. New endpoints of
    /// targets written as `host:port` start with the addresses in `hosts`.
    pub fn build_reusing(
        cfg: &config::Upstream,
        metrics: &Metrics,
        previous: Option<&UpstreamRt>,
        hosts: &crate::discovery::HostAddrs,
    ) -> Self {
        metrics.upstream(&cfg.name);
        let same_policies = previous.is_some_and(|p| {
            p.config.health == cfg.health
                && p.config.outlier == cfg.outlier
                && p.config.circuit_breaker == cfg.circuit_breaker
                && p.config.connect_timeout == cfg.connect_timeout
                && p.config.tls == cfg.tls
                && p.config.protocol == cfg.protocol
                && p.config.max_idle_per_target == cfg.max_idle_per_target
                && p.config.h2_max_streams_per_connection == cfg.h2_max_streams_per_connection
        });
        let reuse = |id: &str, t: &config::Target, backup: Option<(SocketAddr, &str)>| {
            previous.filter(|_| same_policies).and_then(|p| {
                p.endpoints()
                    .find(|e| match backup {
                        None => {
                            e.id == id
                                && e.backup_of.is_none()
                                && e.addrs.same_source(t.addr, t.host.as_deref(), t.resolve)
                        }
                        Some((addr, of)) => {
                            e.id == id
                                && e.backup_of.as_deref() == Some(of)
                                && e.addrs.same_source(addr, None, false)
                        }
                    })
                    .cloned()
            })
        };
        let addrs_of = |t: &config::Target| -> Arc<Addrs> {
            match (&t.host, t.resolve) {
                (Some(h), true) => {
                    let port = t.addr.port();
                    let list = hosts.get(&(h.clone(), port)).cloned().unwrap_or_default();
                    Arc::new(Addrs::resolving(h.clone(), port, list))
                }
                _ => Arc::new(Addrs::fixed(t.addr, t.host.clone())),
            }
        };
        let shards = cfg
            .targets
            .iter()
            .map(|t| {
                let mut endpoints = Vec::with_capacity(1 + t.backups.len());
                endpoints.push(reuse(&t.id, t, None).unwrap_or_else(|| {
                    Arc::new(Endpoint::new(
                        t.id.clone(),
                        addrs_of(t),
                        None,
                        metrics.endpoint(&cfg.name, &t.id),
                        cfg,
                    ))
                }));
                for b in &t.backups {
                    let id = b.to_string();
                    endpoints.push(reuse(&id, t, Some((*b, &t.id))).unwrap_or_else(|| {
                        Arc::new(Endpoint::new(
                            id.clone(),
                            Arc::new(Addrs::fixed(*b, None)),
                            Some(t.id.clone()),
                            metrics.endpoint(&cfg.name, &id),
                            cfg,
                        ))
                    }));
                }
                Shard {
                    id: t.id.clone(),
                    weight: t.weight,
                    endpoints,
                }
            })
            .collect();
        let name = cfg.name.as_str();
        let built = Self {
            name: cfg.name.clone(),
            balancer: Balancer::new(cfg.balancer, &cfg.targets, cfg.maglev_table_size),
            config: cfg.clone(),
            shards,
            metrics: UpstreamMetrics {
                retries: metrics.retries_total.with_label_values(&[name]),
                budget_exhausted: metrics
                    .retry_budget_exhausted_total
                    .with_label_values(&[name]),
                rejected_in_flight: metrics
                    .concurrency_rejected_total
                    .with_label_values(&[name, "in_flight"]),
                rejected_pending: metrics
                    .concurrency_rejected_total
                    .with_label_values(&[name, "pending"]),
            },
            in_flight: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            retry_window: Rolling::new(Duration::from_secs(10)),
            changed: Arc::new(Notify::new()),
            eject_lock: Mutex::new(()),
        };
        // Reused endpoints may be down: the balancer starts from the up set as it is.
        built.refresh_balancer();
        built
    }

    /// Every endpoint (primaries and backups).
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.shards.iter().flat_map(|s| s.endpoints.iter())
    }

    /// Rebuild the balancer if it depends on the up set and that changed (off the request
    /// path: called by the background task when something changed).
    pub fn refresh_balancer(&self) -> bool {
        let up: Vec<bool> = self.shards.iter().map(Shard::is_up).collect();
        self.balancer.refresh(&up)
    }

    /// Health, ejection or circuit state changed somewhere in this upstream.
    pub fn changed(&self) {
        self.changed.notify_one();
    }
}

impl health::Watcher for UpstreamRt {
    fn name(&self) -> &str {
        &self.name
    }

    fn changed(&self) {
        UpstreamRt::changed(self);
    }
}

impl UpstreamRt {
    /// The key hash of a request for this upstream's balancer: `Ok(None)` when the balancer
    /// takes no key (or the key is missing and `on_missing_key = "random"`).
    pub fn request_hash(
        &self,
        parts: &http::request::Parts,
        client: Option<IpAddr>,
        path: &str,
    ) -> Result<Option<u64>, GatewayError> {
        let Some(spec) = &self.config.hash_on else {
            return Ok(None);
        };
        match key::extract(spec, parts, client, path) {
            Some(k) => Ok(Some(self.balancer.load().algo.hash_key(&k))),
            None if self.config.on_missing_key == OnMissingKey::Random => Ok(None),
            None => Err(GatewayError::MissingKey(spec.to_string())),
        }
    }

    /// Count a request against `max_in_flight`; `None` when over it.
    pub fn enter(self: &Arc<Self>) -> Option<Option<InFlightGuard>> {
        let Some(max) = self.config.max_in_flight else {
            return Some(None);
        };
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.metrics.rejected_in_flight.inc();
            return None;
        }
        Some(Some(InFlightGuard(self.clone())))
    }

    /// Count a request waiting for a new connection against `max_pending`; `None` when over.
    pub fn enter_pending(&self) -> Option<PendingGuard<'_>> {
        let Some(max) = self.config.max_pending else {
            return Some(PendingGuard(None));
        };
        if self.pending.fetch_add(1, Ordering::AcqRel) >= max {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.metrics.rejected_pending.inc();
            return None;
        }
        Some(PendingGuard(Some(&self.pending)))
    }

    /// A request arrived (for the retry budget).
    pub fn count_request(&self) {
        self.retry_window.add(clock::now_ms(), 1, 0);
    }

    /// Whether the retry budget allows one more retry; counts it if so. A retry is allowed
    /// while the retries already made in the last 10 s < max(3, budget × requests in the last
    /// 10 s) (SPEC §3). The retry is counted first and taken back if over, so concurrent
    /// requests cannot all pass the check before any of them counts.
    pub fn take_retry(&self, budget: f64) -> bool {
        let now = clock::now_ms();
        self.retry_window.add(now, 0, 1);
        let (requests, retries) = self.retry_window.sum(now);
        let allowed = (budget * requests as f64).max(3.0);
        let before = retries.saturating_sub(1);
        if (before as f64) < allowed {
            self.metrics.retries.inc();
            true
        } else {
            self.retry_window.sub(now, 0, 1);
            self.metrics.budget_exhausted.inc();
            false
        }
    }

    /// Eject `ep` if `max_ejection_percent` of the upstream's targets allows.
    pub fn try_eject(&self, ep: &Endpoint) {
        let Some(outlier) = &ep.outlier else { return };
        let _one_at_a_time = self.eject_lock.lock();
        let now = clock::now_ms();
        if outlier.is_ejected(now) {
            return;
        }
        let total = self.endpoints().count() as u64;
        let ejected = self
            .endpoints()
            .filter(|e| e.outlier.as_ref().is_some_and(|o| o.is_ejected(now)))
            .count() as u64;
        if (ejected + 1) * 100 > u64::from(outlier.policy.max_ejection_percent) * total {
            tracing::info!(upstream = %self.name, target = %ep.id, ejected, "outlier: not ejecting, max_ejection_percent reached");
            return;
        }
        let until = outlier.eject(now);
        ep.metrics.ejections.inc();
        ep.refresh_gauge(now);
        tracing::warn!(
            upstream = %self.name,
            target = %ep.id,
            ejections = outlier.ejections(),
            until = %clock::rfc3339(until),
            "outlier: target ejected after consecutive failures"
        );
        crate::events::push(
            crate::events::Kind::Ejection,
            "bad",
            format!("{}/{}", self.name, ep.id),
            format!(
                "ejected after consecutive failures until {} (ejection #{})",
                clock::rfc3339(until),
                outlier.ejections()
            ),
        );
        self.changed();
    }
}

/// Holds a request's place under `max_in_flight` until the response is done.
#[derive(Debug)]
pub struct InFlightGuard(Arc<UpstreamRt>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds a place under `max_pending` while a connection is being made.
pub struct PendingGuard<'a>(Option<&'a AtomicU64>);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            p.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Start what keeps an upstream current, for as long as its config generation lives: a
/// prober per endpoint (with `health`), the rebuild of balancers that depend on the up set and
/// of the `up` gauges (on every change, and each second for ejections and circuits that end
/// by time), and the reaping of stale pooled connections.
pub fn spawn_background(upstream: &Arc<UpstreamRt>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if let Some(policy) = &upstream.config.health {
        for ep in upstream.endpoints() {
            let watcher: std::sync::Weak<dyn health::Watcher> = Arc::downgrade(upstream) as _;
            health::spawn(watcher, Arc::downgrade(ep), policy.clone());
        }
    }
    for ep in upstream.endpoints() {
        crate::discovery::spawn_refresh(ep, &upstream.name);
    }
    let weak = Arc::downgrade(upstream);
    let changed = upstream.changed.clone();
    rt.spawn(async move {
        const REAP_EVERY: u32 = 10;
        let mut ticks = 0u32;
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(1), changed.notified()).await;
            let Some(up) = weak.upgrade() else { return };
            up.refresh_balancer();
            let now = clock::now_ms();
            for ep in up.endpoints() {
                ep.refresh_gauge(now);
            }
            ticks += 1;
            if ticks % REAP_EVERY == 0 {
                for ep in up.endpoints() {
                    ep.pool.reap();
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(extra: impl FnOnce(&mut config::Upstream)) -> Arc<UpstreamRt> {
        let mut cfg = config::Upstream {
            name: "u".into(),
            balancer: config::BalancerKind::RoundRobin,
            hash_on: None,
            on_missing_key: OnMissingKey::Reject,
            connect_timeout: Duration::from_secs(1),
            targets: vec![config::Target {
                id: "t".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
                host: None,
                resolve: false,
                weight: 1,
                backups: Vec::new(),
                slots: Vec::new(),
            }],
            maglev_table_size: None,
            health: None,
            outlier: None,
            circuit_breaker: None,
            max_in_flight: None,
            max_pending: None,
            max_idle_per_target: 64,
            protocol: crate::config::Protocol::Http1,
            tls: None,
            h2_max_streams_per_connection: 100,
            discover: None,
        };
        extra(&mut cfg);
        Arc::new(UpstreamRt::build(&cfg, &Metrics::new()))
    }

    #[test]
    fn max_in_flight_and_max_pending_admit_up_to_their_limit() {
        let up = upstream(|c| {
            c.max_in_flight = Some(2);
            c.max_pending = Some(1);
        });
        let a = up.enter().unwrap();
        let b = up.enter().unwrap();
        assert!(up.enter().is_none());
        drop(a);
        assert!(up.enter().is_some());
        drop(b);
        let p = up.enter_pending().unwrap();
        assert!(up.enter_pending().is_none());
        assert_eq!(up.metrics.rejected_pending.get(), 1);
        drop(p);
        assert!(up.enter_pending().is_some());
        // Without limits nothing is counted or refused.
        let free = upstream(|_| {});
        for _ in 0..1000 {
            assert!(free.enter().is_some());
        }
    }

    #[test]
    fn the_retry_budget_allows_three_then_a_share_of_requests() {
        let up = upstream(|_| {});
        for _ in 0..3 {
            assert!(up.take_retry(0.2));
        }
        assert!(!up.take_retry(0.2), "3 retries is the floor");
        for _ in 0..100 {
            up.count_request();
        }
        let allowed = (0..100).filter(|_| up.take_retry(0.2)).count();
        assert_eq!(allowed, 17, "20% of 100 requests, 3 already used");
    }
}
