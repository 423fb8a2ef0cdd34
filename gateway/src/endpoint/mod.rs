//! (5) Is this target usable? The endpoints of an upstream (each target's primary and its
//! backups), their health, ejection and circuit state, and the shard that groups them.
//!
//! Comes after the balancer (which picks a shard) and before the upstream client (which talks
//! to the endpoint chosen here). An endpoint is usable while its probes say healthy, it is not
//! ejected and its circuit lets requests through. A shard is up while any of its endpoints is;
//! its traffic goes to the primary when usable, else to the first usable backup (SPEC §1).

pub mod addrs;
pub mod breaker;
pub mod h1;
pub mod health;
pub mod outlier;
pub mod pool;
pub mod rolling;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

pub use addrs::Addrs;

use crate::clock;
use crate::config::Upstream;
use crate::metrics::EndpointMetrics;
use breaker::{Breaker, CircuitState, Ticket};
use outlier::Outlier;
use pool::Pool;

/// The last active health probe of an endpoint.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// `clock::now_ms` stamp.
    pub at_ms: u64,
    pub ok: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One address of an upstream: a target's primary or one of its backups.
#[derive(Debug)]
pub struct Endpoint {
    /// The `target` label: the target's id for a primary, the address for a backup.
    pub id: String,
    /// Where it is reached (one address, or every address of its DNS name).
    pub addrs: Arc<Addrs>,
    /// For a backup, the id of the target it backs up.
    pub backup_of: Option<String>,
    pub pool: Pool,
    pub metrics: EndpointMetrics,
    pub breaker: Option<Breaker>,
    pub outlier: Option<Outlier>,
    healthy: AtomicBool,
    last_probe: ArcSwapOption<ProbeResult>,
    /// The prober that owns this endpoint: a config reload that keeps the endpoint starts a
    /// new prober, and the old one stops when it sees it is no longer the owner.
    pub prober: std::sync::atomic::AtomicU64,
}

/// What recording a result changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub circuit: Option<CircuitState>,
    /// The outlier threshold was reached: eject if the upstream's cap allows.
    pub wants_ejection: bool,
}

impl Endpoint {
    pub fn new(
        id: String,
        addrs: Arc<Addrs>,
        backup_of: Option<String>,
        metrics: EndpointMetrics,
        cfg: &Upstream,
    ) -> Self {
        metrics.up.set(1);
        Self {
            breaker: cfg
                .circuit_breaker
                .clone()
                .map(|p| Breaker::new(p, metrics.circuit.clone())),
            outlier: cfg.outlier.clone().map(Outlier::new),
            id,
            pool: Pool::new(addrs.clone(), &cfg.into(), &metrics),
            addrs,
            backup_of,
            metrics,
            healthy: AtomicBool::new(true),
            last_probe: ArcSwapOption::empty(),
            prober: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The first address (for display; connections take `addrs.next()`).
    pub fn addr(&self) -> SocketAddr {
        self.addrs.first()
    }

    /// Usable now: healthy, not ejected, circuit not open.
    pub fn is_up(&self) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        if self.outlier.is_none() && self.breaker.is_none() {
            return true;
        }
        let now = clock::now_ms();
        !self.outlier.as_ref().is_some_and(|o| o.is_ejected(now))
            && self.breaker.as_ref().is_none_or(|b| b.allows(now))
    }

    /// What the probes say.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Set by the prober (and tests); returns whether it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        self.refresh_gauge(clock::now_ms());
        changed
    }

    /// Kept for compatibility with callers that only know up/down.
    pub fn set_up(&self, up: bool) {
        self.set_healthy(up);
    }

    /// `gateway_upstream_up`: healthy and not ejected.
    pub fn refresh_gauge(&self, now_ms: u64) {
        let up = self.is_healthy() && !self.outlier.as_ref().is_some_and(|o| o.is_ejected(now_ms));
        self.metrics.up.set(i64::from(up));
    }

    pub fn last_probe(&self) -> Option<Arc<ProbeResult>> {
        self.last_probe.load_full()
    }

    pub fn set_last_probe(&self, r: ProbeResult) {
        self.last_probe.store(Some(Arc::new(r)));
    }

    pub fn circuit(&self) -> CircuitState {
        self.breaker
            .as_ref()
            .map_or(CircuitState::Closed, |b| b.state())
    }

    /// Requests in flight to this endpoint.
    pub fn in_flight(&self) -> i64 {
        self.metrics.in_flight.get()
    }

    /// Ask the circuit for permission to send: `None` means fail fast (nothing counted).
    /// Also says whether asking moved the circuit (open → half-open once `open_for` is over).
    pub fn admit(&self, now_ms: u64) -> (Option<Permit<'_>>, Option<CircuitState>) {
        match &self.breaker {
            None => (
                Some(Permit {
                    endpoint: self,
                    ticket: None,
                }),
                None,
            ),
            Some(b) => {
                let (ticket, moved) = b.acquire(now_ms);
                (
                    ticket.map(|t| Permit {
                        endpoint: self,
                        ticket: Some(t),
                    }),
                    moved,
                )
            }
        }
    }
}

/// Permission to send one request to an endpoint. Recording the result uses it up; dropped
/// unused (nothing sent, or the request was cancelled mid-way) it is given back, so a
/// half-open circuit never loses its probe slots to requests that went away.
#[derive(Debug)]
#[must_use]
pub struct Permit<'a> {
    endpoint: &'a Endpoint,
    ticket: Option<Ticket>,
}

impl Permit<'_> {
    /// Record how the request went: feeds the breaker and outlier detection. A failure is a
    /// 5xx, a connect error, a reset or a timeout; a 4xx is a success.
    pub fn record(mut self, failure: bool, now_ms: u64) -> Recorded {
        let ep = self.endpoint;
        Recorded {
            circuit: match (self.ticket.take(), &ep.breaker) {
                (Some(t), Some(b)) => b.record(t, failure, now_ms),
                _ => None,
            },
            wants_ejection: ep
                .outlier
                .as_ref()
                .is_some_and(|o| o.record(failure, now_ms)),
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let (Some(t), Some(b)) = (self.ticket.take(), &self.endpoint.breaker) {
            b.release(t);
        }
    }
}

/// A configured target: what balancers choose among.
#[derive(Debug)]
pub struct Shard {
    pub id: String,
    pub weight: u32,
    /// The primary first, then the backups in configured order.
    pub endpoints: Vec<Arc<Endpoint>>,
}

impl Shard {
    pub fn is_up(&self) -> bool {
        self.endpoints.iter().any(|e| e.is_up())
    }

    /// The endpoint that serves this shard now: the primary, else the first up backup.
    pub fn serving(&self) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| e.is_up())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::Metrics;

    pub(crate) fn upstream_cfg() -> Upstream {
        Upstream {
            name: "u".into(),
            balancer: crate::config::BalancerKind::RoundRobin,
            hash_on: None,
            on_missing_key: crate::config::OnMissingKey::Reject,
            connect_timeout: std::time::Duration::from_secs(1),
            targets: Vec::new(),
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
        }
    }

    fn shard(m: &Metrics) -> Shard {
        let cfg = upstream_cfg();
        let ep = |id: &str, port: u16, of: Option<&str>| {
            Arc::new(Endpoint::new(
                id.into(),
                Arc::new(Addrs::fixed(SocketAddr::from(([127, 0, 0, 1], port)), None)),
                of.map(Into::into),
                m.endpoint("u", id),
                &cfg,
            ))
        };
        Shard {
            id: "s0".into(),
            weight: 1,
            endpoints: vec![
                ep("s0", 1, None),
                ep("b1", 2, Some("s0")),
                ep("b2", 3, Some("s0")),
            ],
        }
    }

    #[test]
    fn a_shard_is_served_by_its_primary_then_its_first_up_backup() {
        let m = Metrics::new();
        let s = shard(&m);
        assert_eq!(s.serving().unwrap().id, "s0");
        s.endpoints[0].set_up(false);
        assert_eq!(s.serving().unwrap().id, "b1");
        s.endpoints[1].set_up(false);
        assert_eq!(s.serving().unwrap().id, "b2");
        assert!(s.is_up());
        s.endpoints[2].set_up(false);
        assert!(!s.is_up());
        assert!(s.serving().is_none());
        s.endpoints[0].set_up(true);
        assert_eq!(s.serving().unwrap().id, "s0");
    }
}
