//! (4) Which target? The eight balancers of SPEC §3, with the semantics other systems use.
//!
//! Comes after the route's policies and before the endpoint checks (`endpoint/`) and the
//! upstream client (`upstream/`). Balancers are pure: no I/O, no `.await`, no lock in `pick`.
//! `pick` walks the algorithm's own order of choices and returns the first one the caller
//! accepts, so failover order (a down target, one already tried) is the algorithm's own:
//! the next ring point (ketama), the next table entry (Maglev), the next target in configured
//! order (hash), none at all (slots: a slot belongs to one shard; its backups take over).
//!
//! Keyed balancers hash the request's key their own way (`hash_key`): MD5 for ketama,
//! CRC16 for slots, XXH3 for hash and Maglev. Balancers whose choices depend on which targets
//! are up (smooth WRR, Maglev) are rebuilt off the request path when that set changes
//! (`Balancer::refresh`); the others skip down targets as they pick.

pub mod hash;
pub mod ketama;
pub use crate::key;
pub mod least_request;
pub mod maglev;
pub mod random;
pub mod remap;
mod round_robin;
pub mod slots;
mod weighted;

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use round_robin::RoundRobin;
pub use weighted::{smooth_sequence, SmoothWeighted};

use crate::config::{BalancerKind, Target};

pub use crate::config::SLOT_COUNT;

/// What a pick may look at besides the targets' indices.
pub struct PickCtx<'a> {
    /// The request key's hash (`Balance::hash_key`), for keyed balancers.
    pub hash: Option<u64>,
    /// Requests in flight to a target now (least request).
    pub load: &'a dyn Fn(usize) -> i64,
}

impl PickCtx<'_> {
    /// A context with a hash and no load information.
    pub fn hashed(hash: Option<u64>) -> PickCtx<'static> {
        PickCtx { hash, load: &|_| 0 }
    }
}

/// Where a key lands, for `/admin/explain`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub slot: Option<u16>,
    pub ring_point: Option<u32>,
}

/// One balancing algorithm over the configured targets of an upstream (by index).
pub trait Balance: Send + Sync + fmt::Debug {
    /// The first choice, in this algorithm's order, that `accept` takes; `None` when it takes
    /// none.
    fn pick(&self, ctx: &PickCtx<'_>, accept: &mut dyn FnMut(usize) -> bool) -> Option<usize>;

    /// The key's hash as this algorithm defines it.
    fn hash_key(&self, key: &[u8]) -> u64 {
        xxh3(key)
    }

    /// Whether picks depend on the key alone (then explain can list the fallback order).
    fn is_keyed(&self) -> bool {
        false
    }

    /// Where a key hash lands (slot, ring point), for explain.
    fn locate(&self, _hash: u64) -> Location {
        Location::default()
    }
}

pub use crate::key::xxh3;

/// An upstream's balancer, swapped whole when it must be rebuilt.
#[derive(Debug)]
pub struct Balancer {
    kind: BalancerKind,
    targets: Vec<Target>,
    maglev_table_size: Option<usize>,
    state: ArcSwap<Built>,
}

/// A balancer built for one set of up targets.
#[derive(Debug)]
pub struct Built {
    pub algo: Box<dyn Balance>,
    /// Which targets were up when it was built (only used by those that depend on it).
    pub up: Vec<bool>,
}

impl Balancer {
    pub fn new(kind: BalancerKind, targets: &[Target], maglev_table_size: Option<usize>) -> Self {
        let up = vec![true; targets.len()];
        let algo = build(kind, targets, &up, maglev_table_size);
        Self {
            kind,
            targets: targets.to_vec(),
            maglev_table_size,
            state: ArcSwap::from_pointee(Built { algo, up }),
        }
    }

    pub fn kind(&self) -> BalancerKind {
        self.kind
    }

    /// The balancer to pick with now.
    pub fn load(&self) -> arc_swap::Guard<Arc<Built>> {
        self.state.load()
    }

    /// Rebuild if this algorithm depends on which targets are up and that set changed.
    /// Called off the request path by whoever changes health (probes, tests).
    pub fn refresh(&self, up: &[bool]) -> bool {
        if !matches!(
            self.kind,
            BalancerKind::WeightedRoundRobin | BalancerKind::Maglev
        ) {
            return false;
        }
        if self.state.load().up == up {
            return false;
        }
        let algo = build(self.kind, &self.targets, up, self.maglev_table_size);
        self.state.store(Arc::new(Built {
            algo,
            up: up.to_vec(),
        }));
        true
    }
}

/// Build the algorithm an upstream's config asks for, over the targets marked up.
pub fn build(
    kind: BalancerKind,
    targets: &[Target],
    up: &[bool],
    maglev_table_size: Option<usize>,
) -> Box<dyn Balance> {
    if targets.is_empty() {
        // `discover` found nothing (yet): every pick fails (503 or the route's fallback).
        return Box::new(Empty);
    }
    let ids: Vec<&str> = targets.iter().map(|t| t.id.as_str()).collect();
    match kind {
        BalancerKind::RoundRobin => Box::new(RoundRobin::new(targets.len())),
        BalancerKind::WeightedRoundRobin => {
            let weights: Vec<u32> = targets
                .iter()
                .zip(up)
                .map(|(t, &u)| if u { t.weight } else { 0 })
                .collect();
            Box::new(SmoothWeighted::new(&weights))
        }
        BalancerKind::Random => Box::new(random::Random::new(targets.len())),
        BalancerKind::LeastRequest => Box::new(least_request::LeastRequest::new(targets.len())),
        BalancerKind::Hash => Box::new(hash::ModHash::new(targets.len())),
        BalancerKind::ConsistentHash => {
            let weighted: Vec<(&str, u32)> =
                targets.iter().map(|t| (t.id.as_str(), t.weight)).collect();
            Box::new(ketama::Ketama::new(&weighted))
        }
        BalancerKind::Maglev => {
            let size =
                maglev_table_size.unwrap_or_else(|| maglev::default_table_size(targets.len()));
            Box::new(maglev::Maglev::new(&ids, up, size))
        }
        BalancerKind::Slots => {
            let ranges: Vec<_> = targets.iter().map(|t| t.slots.clone()).collect();
            Box::new(slots::Slots::new(&ranges))
        }
    }
}

/// The balancer of an upstream without targets.
#[derive(Debug)]
struct Empty;

impl Balance for Empty {
    fn pick(&self, _: &PickCtx<'_>, _: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        None
    }
}

/// A set of target indices, without allocating for up to 128 targets: the targets a pick has
/// refused, or the shards a request has tried.
#[derive(Debug)]
pub struct TargetSet {
    small: u128,
    large: Vec<bool>,
    len: usize,
}

impl TargetSet {
    /// An empty set over `n` targets.
    pub fn new(n: usize) -> Self {
        Self {
            small: 0,
            large: if n > 128 { vec![false; n] } else { Vec::new() },
            len: 0,
        }
    }

    pub fn contains(&self, i: usize) -> bool {
        if self.large.is_empty() {
            i < 128 && self.small & (1 << i) != 0
        } else {
            self.large.get(i).copied().unwrap_or(false)
        }
    }

    /// Add `i`; `true` if it was not there.
    pub fn insert(&mut self, i: usize) -> bool {
        if self.contains(i) {
            return false;
        }
        if self.large.is_empty() {
            if i >= 128 {
                return false;
            }
            self.small |= 1 << i;
        } else if let Some(slot) = self.large.get_mut(i) {
            *slot = true;
        } else {
            return false;
        }
        self.len += 1;
        true
    }

    /// How many targets are in the set.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A uniformly random index among those `accept` takes (and not `exclude`): a few random
/// draws first (exactly uniform over the accepted set), then an exact count if most are
/// rejected. No allocation.
pub(crate) fn random_accepted(
    n: usize,
    exclude: Option<usize>,
    accept: &mut dyn FnMut(usize) -> bool,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    for _ in 0..8 {
        let i = fastrand::usize(..n);
        if Some(i) != exclude && accept(i) {
            return Some(i);
        }
    }
    let count = (0..n).filter(|&i| Some(i) != exclude && accept(i)).count();
    if count == 0 {
        return None;
    }
    let mut r = fastrand::usize(..count);
    for i in 0..n {
        if Some(i) != exclude && accept(i) {
            if r == 0 {
                return Some(i);
            }
            r -= 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(n: usize) -> Vec<Target> {
        (0..n)
            .map(|i| Target {
                id: format!("t{i}"),
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                host: None,
                resolve: false,
                weight: 1,
                backups: Vec::new(),
                slots: Vec::new(),
            })
            .collect()
    }

    fn picks(b: &Balancer, key: &str) -> usize {
        let built = b.load();
        let hash = built.algo.hash_key(key.as_bytes());
        built
            .algo
            .pick(&PickCtx::hashed(Some(hash)), &mut |_| true)
            .unwrap()
    }

    #[test]
    fn maglev_is_rebuilt_over_the_up_set_and_back() {
        let b = Balancer::new(BalancerKind::Maglev, &targets(4), None);
        let before: Vec<usize> = (0..2000).map(|k| picks(&b, &format!("k{k}"))).collect();
        assert!(b.refresh(&[true, false, true, true]));
        // Rebuilt: the table no longer holds target 1 at all (no per-request skipping).
        let during: Vec<usize> = (0..2000).map(|k| picks(&b, &format!("k{k}"))).collect();
        assert!(during.iter().all(|&t| t != 1));
        assert!(
            !b.refresh(&[true, false, true, true]),
            "same up set: nothing to rebuild"
        );
        assert!(b.refresh(&[true; 4]));
        let after: Vec<usize> = (0..2000).map(|k| picks(&b, &format!("k{k}"))).collect();
        assert_eq!(before, after, "fail-back restores every key's target");
    }

    #[test]
    fn smooth_wrr_is_rebuilt_and_others_need_no_rebuild() {
        let b = Balancer::new(BalancerKind::WeightedRoundRobin, &targets(3), None);
        assert!(b.refresh(&[false, true, true]));
        let seq: Vec<usize> = (0..4)
            .map(|_| {
                b.load()
                    .algo
                    .pick(&PickCtx::hashed(None), &mut |_| true)
                    .unwrap()
            })
            .collect();
        assert!(seq.iter().all(|&t| t != 0), "{seq:?}");
        for kind in [
            BalancerKind::RoundRobin,
            BalancerKind::ConsistentHash,
            BalancerKind::Slots,
            BalancerKind::Hash,
        ] {
            let b = Balancer::new(kind, &targets(3), None);
            assert!(
                !b.refresh(&[false, true, true]),
                "{kind:?} skips down targets as it picks"
            );
        }
    }
}
