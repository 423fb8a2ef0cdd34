//! Which share of keys moves to another target when a keyed upstream changes, computed
//! exactly from the structures the balancers use (ring arcs, Maglev tables, slot owners,
//! residues mod N), never sampled: what `gateway diff` and a dry-run reload report before a
//! sharding change.
//!
//! Key hashes are taken as uniform over their space. All targets are assumed up (this is a
//! statement about configs, not about the moment's health).

use std::collections::BTreeMap;

use super::ketama::{self, Ketama};
use super::maglev::{self, Maglev};
use super::slots::Slots;
use super::SLOT_COUNT;
use crate::config::{BalancerKind, Upstream};

/// How keys move between two versions of an upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Moves {
    /// Share of all keys whose target changes.
    pub moved: f64,
    /// (old target, share of all keys it loses).
    pub from: Vec<(String, f64)>,
    /// (new target, share of all keys it gains).
    pub to: Vec<(String, f64)>,
    /// `false` when the two versions hash keys differently (balancer or key changed): then
    /// the old and new targets of a key are independent and the share is what that implies.
    pub exact: bool,
}

impl Moves {
    fn from_pairs(pairs: BTreeMap<(String, String), f64>, exact: bool) -> Self {
        let mut from: BTreeMap<String, f64> = BTreeMap::new();
        let mut to: BTreeMap<String, f64> = BTreeMap::new();
        let mut moved = 0.0;
        for ((a, b), share) in pairs {
            if a != b && share > 0.0 {
                moved += share;
                *from.entry(a).or_default() += share;
                *to.entry(b).or_default() += share;
            }
        }
        let sorted = |m: BTreeMap<String, f64>| {
            let mut v: Vec<(String, f64)> = m.into_iter().collect();
            v.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
            v
        };
        Self {
            moved,
            from: sorted(from),
            to: sorted(to),
            exact,
        }
    }

    /// "moves 24.8% of keys: 8.3% from users-0, …"
    pub fn summary(&self) -> String {
        if self.moved == 0.0 {
            return "no key moves".into();
        }
        let parts: Vec<String> = self
            .from
            .iter()
            .map(|(t, s)| format!("{:.1}% from {t}", s * 100.0))
            .collect();
        let to: Vec<String> = self
            .to
            .iter()
            .map(|(t, s)| format!("{:.1}% to {t}", s * 100.0))
            .collect();
        format!(
            "moves {:.1}% of keys{}: {}; {}",
            self.moved * 100.0,
            if self.exact {
                ""
            } else {
                " (keys are re-hashed)"
            },
            parts.join(", "),
            to.join(", ")
        )
    }
}

fn is_keyed(kind: BalancerKind) -> bool {
    matches!(
        kind,
        BalancerKind::Hash
            | BalancerKind::ConsistentHash
            | BalancerKind::Maglev
            | BalancerKind::Slots
    )
}

fn ids(u: &Upstream) -> Vec<String> {
    u.targets.iter().map(|t| t.id.clone()).collect()
}

/// The share of keys each target owns under `u` (for the independent case).
fn ownership(u: &Upstream) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    let ids = ids(u);
    match u.balancer {
        BalancerKind::Hash => {
            for id in &ids {
                *out.entry(id.clone()).or_default() += 1.0 / ids.len() as f64;
            }
        }
        BalancerKind::ConsistentHash => {
            let ring = ring(u);
            for (lo, hi, owner) in ketama::intervals(&ring) {
                *out.entry(ids[owner].clone()).or_default() +=
                    (u64::from(hi) - u64::from(lo) + 1) as f64 / 4_294_967_296.0;
            }
        }
        BalancerKind::Maglev => {
            let table = table(u);
            for &t in table.table() {
                *out.entry(ids[t as usize].clone()).or_default() +=
                    1.0 / table.table().len() as f64;
            }
        }
        BalancerKind::Slots => {
            let s = slots(u);
            for slot in 0..SLOT_COUNT as u16 {
                if let Some(o) = s.owner_of(slot) {
                    *out.entry(ids[o].clone()).or_default() += 1.0 / SLOT_COUNT as f64;
                }
            }
        }
        _ => {}
    }
    out
}

fn ring(u: &Upstream) -> Ketama {
    let t: Vec<(&str, u32)> = u
        .targets
        .iter()
        .map(|t| (t.id.as_str(), t.weight))
        .collect();
    Ketama::new(&t)
}

fn table(u: &Upstream) -> Maglev {
    let refs: Vec<&str> = u.targets.iter().map(|t| t.id.as_str()).collect();
    let size = u
        .maglev_table_size
        .unwrap_or_else(|| maglev::default_table_size(refs.len()));
    Maglev::new(&refs, &vec![true; refs.len()], size)
}

fn slots(u: &Upstream) -> Slots {
    let ranges: Vec<_> = u.targets.iter().map(|t| t.slots.clone()).collect();
    Slots::new(&ranges)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// How keys move from `old` to `new` (same upstream name); `None` unless both are keyed.
pub fn moves(old: &Upstream, new: &Upstream) -> Option<Moves> {
    if !is_keyed(old.balancer)
        || !is_keyed(new.balancer)
        || old.targets.is_empty()
        || new.targets.is_empty()
    {
        return None;
    }
    let (a, b) = (ids(old), ids(new));
    let mut pairs: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut add = |x: &str, y: &str, share: f64| {
        *pairs.entry((x.to_string(), y.to_string())).or_default() += share;
    };
    let same_hashing = old.balancer == new.balancer && old.hash_on == new.hash_on;
    if !same_hashing {
        let (p, q) = (ownership(old), ownership(new));
        for (x, px) in &p {
            for (y, qy) in &q {
                add(x, y, px * qy);
            }
        }
        return Some(Moves::from_pairs(pairs, false));
    }
    match old.balancer {
        BalancerKind::Hash => {
            let (n1, n2) = (a.len(), b.len());
            if n1 == 0 || n2 == 0 {
                return None;
            }
            // A key's target is h mod n: over h mod lcm(n1, n2) both are fixed, and uniform h
            // makes every residue equally likely.
            let l = n1 / gcd(n1, n2) * n2;
            if l <= 50_000_000 {
                for r in 0..l {
                    add(&a[r % n1], &b[r % n2], 1.0 / l as f64);
                }
            } else {
                // Astronomically many targets: the residues are independent enough.
                for x in &a {
                    for y in &b {
                        add(x, y, 1.0 / (n1 * n2) as f64);
                    }
                }
            }
        }
        BalancerKind::ConsistentHash => {
            let (ra, rb) = (ring(old), ring(new));
            let (ia, ib) = (ketama::intervals(&ra), ketama::intervals(&rb));
            if ia.is_empty() || ib.is_empty() {
                return None;
            }
            let (mut i, mut j) = (0, 0);
            let mut lo: u64 = 0;
            while i < ia.len() && j < ib.len() {
                let hi = u64::from(ia[i].1.min(ib[j].1));
                add(
                    &a[ia[i].2],
                    &b[ib[j].2],
                    (hi - lo + 1) as f64 / 4_294_967_296.0,
                );
                lo = hi + 1;
                if u64::from(ia[i].1) == hi {
                    i += 1;
                }
                if u64::from(ib[j].1) == hi {
                    j += 1;
                }
            }
        }
        BalancerKind::Maglev => {
            let (ta, tb) = (table(old), table(new));
            let (ea, eb) = (ta.table(), tb.table());
            if ea.is_empty() || eb.is_empty() {
                return None;
            }
            if ea.len() == eb.len() {
                for (x, y) in ea.iter().zip(eb) {
                    add(&a[*x as usize], &b[*y as usize], 1.0 / ea.len() as f64);
                }
            } else {
                // Two prime table sizes: h mod M1 and h mod M2 are independent (CRT), so the
                // pair of entries is uniform over both tables.
                let (p, q) = (ownership(old), ownership(new));
                for (x, px) in &p {
                    for (y, qy) in &q {
                        add(x, y, px * qy);
                    }
                }
            }
        }
        BalancerKind::Slots => {
            let (sa, sb) = (slots(old), slots(new));
            for slot in 0..SLOT_COUNT as u16 {
                if let (Some(x), Some(y)) = (sa.owner_of(slot), sb.owner_of(slot)) {
                    add(&a[x], &b[y], 1.0 / SLOT_COUNT as f64);
                }
            }
        }
        _ => return None,
    }
    Some(Moves::from_pairs(pairs, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OnMissingKey, Target};

    fn upstream(kind: BalancerKind, n: usize) -> Upstream {
        Upstream {
            name: "users".into(),
            balancer: kind,
            hash_on: Some(crate::balance::key::KeySpec::Header(
                http::HeaderName::from_static("x-user-id"),
            )),
            on_missing_key: OnMissingKey::Reject,
            connect_timeout: std::time::Duration::from_secs(1),
            targets: (0..n)
                .map(|i| Target {
                    id: format!("users-{i}"),
                    addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    host: None,
                    resolve: false,
                    weight: 1,
                    backups: Vec::new(),
                    slots: Vec::new(),
                })
                .collect(),
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

    #[test]
    fn adding_a_fourth_ketama_target_moves_about_a_quarter_all_to_it() {
        let m = moves(
            &upstream(BalancerKind::ConsistentHash, 3),
            &upstream(BalancerKind::ConsistentHash, 4),
        )
        .unwrap();
        assert!(m.exact);
        assert!((m.moved - 0.25).abs() < 0.03, "{}", m.summary());
        assert_eq!(m.to.len(), 1);
        assert_eq!(m.to[0].0, "users-3");
        assert_eq!(m.from.len(), 3);
        let sum: f64 = m.from.iter().map(|(_, s)| s).sum();
        assert!((sum - m.moved).abs() < 1e-12);
    }

    #[test]
    fn hash_mod_n_moves_what_residues_say() {
        // 3 → 4 targets: residue r mod 12 keeps its target only when r mod 3 == r mod 4,
        // i.e. r in {0, 1, 2}: 3 of 12 stay.
        let m = moves(
            &upstream(BalancerKind::Hash, 3),
            &upstream(BalancerKind::Hash, 4),
        )
        .unwrap();
        assert!((m.moved - 0.75).abs() < 1e-12, "{}", m.summary());
    }

    #[test]
    fn slots_and_maglev_are_exact_and_unchanged_configs_move_nothing() {
        for kind in [
            BalancerKind::Slots,
            BalancerKind::Maglev,
            BalancerKind::ConsistentHash,
        ] {
            let u = upstream(kind, 5);
            assert_eq!(moves(&u, &u).unwrap().moved, 0.0, "{kind:?}");
        }
        // Even split 3 → 4: redis-cli's ranges shift; computed slot by slot.
        let m = moves(
            &upstream(BalancerKind::Slots, 3),
            &upstream(BalancerKind::Slots, 4),
        )
        .unwrap();
        let expected = (0..16384u16)
            .filter(|&s| {
                let a = super::super::slots::even_split(3)
                    .iter()
                    .position(|r| r.contains(&s));
                let b = super::super::slots::even_split(4)
                    .iter()
                    .position(|r| r.contains(&s));
                a != b
            })
            .count() as f64
            / 16384.0;
        assert!((m.moved - expected).abs() < 1e-12);
        let m = moves(
            &upstream(BalancerKind::Maglev, 4),
            &upstream(BalancerKind::Maglev, 5),
        )
        .unwrap();
        assert!((m.moved - 0.2).abs() < 0.03, "{}", m.summary());
    }

    #[test]
    fn a_changed_balancer_rehashes_every_key() {
        let m = moves(
            &upstream(BalancerKind::Hash, 4),
            &upstream(BalancerKind::ConsistentHash, 4),
        )
        .unwrap();
        assert!(!m.exact);
        assert!((m.moved - 0.75).abs() < 0.05, "{}", m.summary());
    }
}
