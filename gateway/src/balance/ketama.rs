//! `consistent_hash`: ketama, as libmemcached computes it (weighted ketama).
//!
//! With N targets of weights w_i summing to W, target i gets floor(w_i / W × 40 × N) MD5
//! digests of `<id>-<k>` (k = 0, 1, …), each digest giving 4 points on a ring of u32: the
//! little-endian u32 at bytes 0, 4, 8 and 12. A key goes to the first point ≥ the
//! little-endian u32 of MD5(key)[0..4], wrapping around; a down target's points are skipped.
//!
//! The point count is computed in single precision with libmemcached's own expression,
//! `floor((float)(pct * 160 / 4 * N + 1e-10))` with `pct = (float)w / (float)W`, because that
//! rounding decides the ring: last.fm's original libketama rounds differently
//! (`floorf(pct * 40.0 * N)` in double) and the two disagree for some weights, e.g. 25
//! equal-weight servers get 39 digests each from libmemcached and 40 from libketama. We agree
//! with libmemcached, the client users run today; with equal weights and most server counts
//! both libraries (and we) agree.

use md5::{Digest, Md5};

use super::{Balance, Location, PickCtx, TargetSet};

#[derive(Debug)]
pub struct Ketama {
    /// Ring points, ascending.
    points: Vec<u32>,
    /// The target of each point.
    owners: Vec<u32>,
    /// How many targets own points.
    targets: usize,
}

/// How many MD5 digests (4 points each) target `weight` of `total` gets among `n` targets.
pub fn digest_count(weight: u32, total: u64, n: usize) -> u32 {
    // libmemcached: float pct = (float)weight / (float)total_weight;
    let pct = weight as f32 / total as f32;
    // pct * MEMCACHED_POINTS_PER_SERVER_KETAMA / 4 * (float)live_servers, in float...
    let x = pct * 160.0f32 / 4.0f32 * n as f32;
    // ... + 0.0000000001 in double, cast back to float, floored.
    let y = (f64::from(x) + 0.000_000_000_1) as f32;
    y.floor() as u32
}

impl Ketama {
    /// `targets`: (id, weight) in configured order.
    pub fn new(targets: &[(&str, u32)]) -> Self {
        let n = targets.len();
        let total: u64 = targets.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
        let mut ring: Vec<(u32, u32)> = Vec::with_capacity(n * 160);
        let mut name = String::new();
        for (i, (id, weight)) in targets.iter().enumerate() {
            for k in 0..digest_count((*weight).max(1), total, n) {
                name.clear();
                name.push_str(id);
                name.push('-');
                name.push_str(&k.to_string());
                let digest = Md5::digest(name.as_bytes());
                for h in 0..4 {
                    let b = &digest[h * 4..h * 4 + 4];
                    ring.push((u32::from_le_bytes([b[0], b[1], b[2], b[3]]), i as u32));
                }
            }
        }
        // Ties (astronomically rare) are broken by configured order, so every replica agrees.
        ring.sort_unstable();
        Self {
            points: ring.iter().map(|p| p.0).collect(),
            owners: ring.iter().map(|p| p.1).collect(),
            targets: n,
        }
    }

    /// The index of the first point ≥ `hash`, wrapping to 0.
    fn first_point(&self, hash: u32) -> usize {
        let i = self.points.partition_point(|&p| p < hash);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }

    pub fn point_count(&self) -> usize {
        self.points.len()
    }

    /// The owner of each arc: for every point, (point, target); used to compute exactly which
    /// share of keys moves between two rings.
    pub fn arcs(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.points
            .iter()
            .zip(&self.owners)
            .map(|(&p, &o)| (p, o as usize))
    }
}

/// The arcs of the u32 key space and who owns them: `(first, last, owner)`, ascending and
/// covering every u32 once. A key hash h belongs to the owner of the first point ≥ h.
pub fn intervals(k: &Ketama) -> Vec<(u32, u32, usize)> {
    let mut out = Vec::with_capacity(k.points.len() + 1);
    let Some(&first_owner) = k.owners.first() else {
        return out;
    };
    let mut start: u32 = 0;
    for (&p, &o) in k.points.iter().zip(&k.owners) {
        if p >= start {
            out.push((start, p, o as usize));
            if p == u32::MAX {
                return out;
            }
            start = p + 1;
        }
    }
    // Past the last point: wraps to the first point's owner.
    out.push((start, u32::MAX, first_owner as usize));
    out
}

/// The exact share of the key space (uniform key hashes) whose target, named by id, differs
/// between two rings: what `gateway diff` reports and the remap benchmark measures.
pub fn moved_share(a: &Ketama, a_ids: &[String], b: &Ketama, b_ids: &[String]) -> f64 {
    let (ia, ib) = (intervals(a), intervals(b));
    if ia.is_empty() || ib.is_empty() {
        return if ia.is_empty() && ib.is_empty() {
            0.0
        } else {
            1.0
        };
    }
    let (mut i, mut j) = (0, 0);
    let mut lo: u64 = 0;
    let mut moved: u64 = 0;
    while i < ia.len() && j < ib.len() {
        let hi = u64::from(ia[i].1.min(ib[j].1));
        if a_ids[ia[i].2] != b_ids[ib[j].2] {
            moved += hi - lo + 1;
        }
        lo = hi + 1;
        if u64::from(ia[i].1) == hi {
            i += 1;
        }
        if u64::from(ib[j].1) == hi {
            j += 1;
        }
    }
    moved as f64 / (u64::from(u32::MAX) + 1) as f64
}

/// The ketama hash of a key: the little-endian u32 of the first 4 bytes of its MD5.
pub fn key_hash(key: &[u8]) -> u32 {
    let d = Md5::digest(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

impl Balance for Ketama {
    fn pick(&self, ctx: &PickCtx<'_>, accept: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let hash = ctx.hash.map_or_else(|| fastrand::u32(..), |h| h as u32);
        let start = self.first_point(hash);
        let len = self.points.len();
        // Walk the ring from there; a refused target's points are skipped. Each target is
        // asked once; once all have refused, stop.
        let mut refused = TargetSet::new(self.targets);
        for step in 0..len {
            let owner = self.owners[(start + step) % len] as usize;
            if refused.contains(owner) {
                continue;
            }
            if accept(owner) {
                return Some(owner);
            }
            refused.insert(owner);
            if refused.len() == self.targets {
                break;
            }
        }
        None
    }

    fn hash_key(&self, key: &[u8]) -> u64 {
        u64::from(key_hash(key))
    }

    fn is_keyed(&self) -> bool {
        true
    }

    fn locate(&self, hash: u64) -> Location {
        Location {
            slot: None,
            ring_point: self.points.get(self.first_point(hash as u32)).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner_of(k: &Ketama, key: &str) -> usize {
        let ctx = PickCtx::hashed(Some(k.hash_key(key.as_bytes())));
        k.pick(&ctx, &mut |_| true).unwrap()
    }

    #[test]
    fn point_counts_follow_libmemcached_rounding() {
        // Equal weights: 40 digests (160 points) each, except where single precision rounds
        // down, as libmemcached does (and libketama does not) at 25 servers.
        assert_eq!(digest_count(1, 3, 3), 40);
        assert_eq!(digest_count(1, 25, 25), 39);
        assert_eq!(digest_count(1, 24, 24), 40);
        // Weighted: floor(w / W * 40 * N).
        assert_eq!(digest_count(2, 4, 3), 60);
        assert_eq!(digest_count(1, 4, 3), 30);
        let k = Ketama::new(&[("a", 1), ("b", 2), ("c", 1)]);
        assert_eq!(k.point_count(), 4 * (30 + 60 + 30));
    }

    #[test]
    fn matches_known_libmemcached_placements() {
        // Computed with libmemcached 1.1.4 (tests/reference/ketama_ref.c) for servers
        // 10.0.0.1:11211 w1, 10.0.0.2:11211 w2, 10.0.0.3:11212 w1, whose ids libmemcached
        // writes as "10.0.0.1", "10.0.0.2", "10.0.0.3:11212".
        let k = Ketama::new(&[("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3:11212", 1)]);
        assert_eq!(owner_of(&k, "foo"), 1);
        assert_eq!(owner_of(&k, "bar"), 1);
        assert_eq!(owner_of(&k, "baz"), 0);
        assert_eq!(owner_of(&k, "user:42"), 1);
    }

    #[test]
    fn weights_give_proportional_shares() {
        let k = Ketama::new(&[("a", 1), ("b", 3)]);
        let mut counts = [0u32; 2];
        for i in 0..40_000 {
            counts[owner_of(&k, &format!("k{i}"))] += 1;
        }
        let share_b = f64::from(counts[1]) / 40_000.0;
        assert!((0.70..0.80).contains(&share_b), "{counts:?}");
    }

    #[test]
    fn a_down_target_s_keys_go_to_the_next_ring_point_and_others_stay() {
        let ids: Vec<String> = (0..8).map(|i| format!("10.0.0.{i}:11211")).collect();
        let targets: Vec<(&str, u32)> = ids.iter().map(|s| (s.as_str(), 1)).collect();
        let k = Ketama::new(&targets);
        // Removing target 3 from the config gives the same placement as skipping it.
        let without: Vec<(&str, u32)> = targets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, t)| *t)
            .collect();
        let k7 = Ketama::new(&without);
        let mut moved = 0;
        for i in 0..20_000 {
            let key = format!("key{i}");
            let hash = k.hash_key(key.as_bytes());
            let before = k.pick(&PickCtx::hashed(Some(hash)), &mut |_| true).unwrap();
            let skipping = k
                .pick(&PickCtx::hashed(Some(hash)), &mut |t| t != 3)
                .unwrap();
            assert_ne!(skipping, 3);
            if before != 3 {
                assert_eq!(skipping, before, "a key of a live target moved");
            } else {
                moved += 1;
            }
            // With equal weights, a ring built without target 3 has the same points minus its
            // own: skipping a down target and removing it agree (compared by id).
            let rebuilt = k7
                .pick(&PickCtx::hashed(Some(hash)), &mut |_| true)
                .unwrap();
            assert_eq!(without[rebuilt].0, ids[skipping]);
        }
        let share = f64::from(moved) / 20_000.0;
        assert!((0.09..0.16).contains(&share), "{share}");
    }

    #[test]
    fn the_exact_moved_share_matches_sampled_keys() {
        let ids: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
        let refs: Vec<(&str, u32)> = ids.iter().map(|s| (s.as_str(), 1)).collect();
        let a = Ketama::new(&refs);
        let rest: Vec<String> = ids.iter().filter(|s| *s != "s2").cloned().collect();
        let rrefs: Vec<(&str, u32)> = rest.iter().map(|s| (s.as_str(), 1)).collect();
        let b = Ketama::new(&rrefs);
        let exact = moved_share(&a, &ids, &b, &rest);
        let mut moved = 0;
        for k in 0..100_000 {
            let h = u64::from(key_hash(format!("k{k}").as_bytes()));
            let x = a.pick(&PickCtx::hashed(Some(h)), &mut |_| true).unwrap();
            let y = b.pick(&PickCtx::hashed(Some(h)), &mut |_| true).unwrap();
            moved += u32::from(ids[x] != rest[y]);
        }
        let sampled = f64::from(moved) / 100_000.0;
        assert!(
            (exact - sampled).abs() < 0.01,
            "exact {exact} sampled {sampled}"
        );
        assert_eq!(moved_share(&a, &ids, &a, &ids), 0.0);
    }

    #[test]
    fn lookup_wraps_around_the_ring() {
        let k = Ketama::new(&[("a", 1), ("b", 1)]);
        let first_owner = k.owners[0] as usize;
        let ctx = PickCtx::hashed(Some(u64::from(u32::MAX)));
        assert_eq!(k.pick(&ctx, &mut |_| true), Some(first_owner));
        assert_eq!(k.locate(u64::from(u32::MAX)).ring_point, Some(k.points[0]));
    }
}
