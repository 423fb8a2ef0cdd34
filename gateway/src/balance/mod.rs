//! (4) Which target? The balancers of SPEC §3.
//!
//! Comes after the route's policies and before the endpoint checks (`endpoint/`) and the
//! upstream client (`upstream/`). Balancers are pure: no I/O, no `.await`, no lock in `pick`.
//! `pick` walks the algorithm's own order of choices and returns the first one the caller
//! accepts, so failover order (a down target, one already tried) is the algorithm's own.

pub mod key;
mod round_robin;
mod weighted;

use std::fmt;

pub use round_robin::RoundRobin;
pub use weighted::SmoothWeighted;

use crate::config::{BalancerKind, Target};

/// Redis Cluster's number of key slots.
pub const SLOT_COUNT: usize = 16384;

/// One balancing algorithm over the configured targets of an upstream (by index).
pub trait Balance: Send + Sync + fmt::Debug {
    /// The first choice, in this algorithm's order, that `accept` takes; `None` when it takes
    /// none. `hash` is the request's key hash, for the hashing algorithms.
    fn pick(&self, hash: Option<u64>, accept: &mut dyn FnMut(usize) -> bool) -> Option<usize>;
}

/// Build the balancer an upstream's config asks for.
pub fn build(kind: BalancerKind, targets: &[Target]) -> Box<dyn Balance> {
    match kind {
        BalancerKind::WeightedRoundRobin => {
            let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
            Box::new(SmoothWeighted::new(&weights))
        }
        // Validation refuses the balancers not built yet; round robin is the safe default.
        _ => Box::new(RoundRobin::new(targets.len())),
    }
}
