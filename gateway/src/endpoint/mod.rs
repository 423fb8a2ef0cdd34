//! (5) Is this target usable? The endpoints of an upstream (each target's primary and its
//! backups) with their up/down state, and the shard that groups them.
//!
//! Comes after the balancer (which picks a shard) and before the upstream client (which talks
//! to the endpoint chosen here). A shard is up while its primary or any backup is up; its
//! traffic goes to the primary when that is up, else to the first up backup (SPEC §1).
//! Health probes and outlier ejection (issue #4) drive `set_up`; until then every endpoint
//! stays up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::metrics::EndpointMetrics;
use crate::upstream::pool::Pool;

/// One address of an upstream: a target's primary or one of its backups.
#[derive(Debug)]
pub struct Endpoint {
    /// The `target` label: the target's id for a primary, the address for a backup.
    pub id: String,
    pub addr: SocketAddr,
    /// For a backup, the id of the target it backs up.
    pub backup_of: Option<String>,
    pub pool: Pool,
    pub metrics: EndpointMetrics,
    up: AtomicBool,
}

impl Endpoint {
    pub fn new(
        id: String,
        addr: SocketAddr,
        backup_of: Option<String>,
        metrics: EndpointMetrics,
    ) -> Self {
        metrics.up.set(1);
        Self {
            id,
            addr,
            backup_of,
            pool: Pool::new(addr),
            metrics,
            up: AtomicBool::new(true),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.metrics.up.set(i64::from(up));
    }

    /// Requests in flight to this endpoint.
    pub fn in_flight(&self) -> i64 {
        self.metrics.in_flight.get()
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
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn shard(m: &Metrics) -> Shard {
        let ep = |id: &str, port: u16, of: Option<&str>| {
            Arc::new(Endpoint::new(
                id.into(),
                SocketAddr::from(([127, 0, 0, 1], port)),
                of.map(Into::into),
                m.endpoint("u", id),
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
