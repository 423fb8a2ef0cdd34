//! `maglev`: the Maglev lookup table (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4), over the up targets.
//!
//! Each target has a permutation of the table's M slots, from two hashes of its id:
//! `offset = XXH3(id, seed 1) mod M`, `skip = XXH3(id, seed 2) mod (M − 1) + 1`, the j-th
//! preference being `(offset + j × skip) mod M`. Targets take turns claiming their next
//! preferred free slot until the table is full, so each gets M/N slots give or take one and a
//! change of the up set moves few entries. A key goes to `table[XXH3(key) mod M]`. M is prime
//! (the permutations then visit every slot); by default the smallest prime ≥ max(65537,
//! 100 × targets). The table is built when the up set changes, off the request path.

use super::{xxh3, Balance, Location, PickCtx, TargetSet};

#[derive(Debug)]
pub struct Maglev {
    /// Target index per table entry; empty when no target is up.
    table: Box<[u32]>,
    /// How many targets are configured (the index range).
    configured: usize,
    /// How many of them have entries in the table.
    targets: usize,
}

/// The smallest prime ≥ max(65537, 100 × targets).
pub fn default_table_size(targets: usize) -> usize {
    next_prime(65537.max(100 * targets))
}

pub use crate::config::is_prime;

fn next_prime(mut n: usize) -> usize {
    while !is_prime(n) {
        n += 1;
    }
    n
}

impl Maglev {
    /// `ids` of every configured target, `up` marks those in the table; `size` must be prime.
    pub fn new(ids: &[&str], up: &[bool], size: usize) -> Self {
        let m = size as u64;
        let members: Vec<(usize, u64, u64)> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| up.get(*i).copied().unwrap_or(true))
            .map(|(i, id)| {
                let offset = xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), 1) % m;
                let skip = xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), 2) % (m - 1) + 1;
                (i, offset, skip)
            })
            .collect();
        if members.is_empty() || size < 2 {
            return Self {
                table: Box::new([]),
                configured: ids.len(),
                targets: 0,
            };
        }
        let mut table = vec![u32::MAX; size];
        let mut next = vec![0u64; members.len()];
        let mut filled = 0;
        'fill: loop {
            for (k, &(target, offset, skip)) in members.iter().enumerate() {
                // This target's next preferred entry that is still free.
                let mut c = ((offset + next[k] * skip) % m) as usize;
                while table[c] != u32::MAX {
                    next[k] += 1;
                    c = ((offset + next[k] * skip) % m) as usize;
                }
                table[c] = target as u32;
                next[k] += 1;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Self {
            table: table.into_boxed_slice(),
            configured: ids.len(),
            targets: members.len(),
        }
    }

    pub fn table(&self) -> &[u32] {
        &self.table
    }
}

impl Balance for Maglev {
    fn pick(&self, ctx: &PickCtx<'_>, accept: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        let start = (ctx.hash.unwrap_or_else(|| fastrand::u64(..)) % m as u64) as usize;
        // The table's own entry; if that target is refused (already tried, or down since the
        // last rebuild), the next entries of the table in order, each target asked once;
        // once all have refused, stop.
        let mut refused = TargetSet::new(self.configured);
        for step in 0..m {
            let t = self.table[(start + step) % m] as usize;
            if refused.contains(t) {
                continue;
            }
            if accept(t) {
                return Some(t);
            }
            refused.insert(t);
            if refused.len() == self.targets {
                break;
            }
        }
        None
    }

    fn hash_key(&self, key: &[u8]) -> u64 {
        xxh3(key)
    }

    fn is_keyed(&self) -> bool {
        true
    }

    fn locate(&self, _hash: u64) -> Location {
        Location::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("backend-{i}")).collect()
    }

    fn build(names: &[String], up: &[bool], m: usize) -> Maglev {
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        Maglev::new(&refs, up, m)
    }

    #[test]
    fn default_sizes_are_primes_above_the_floor() {
        assert_eq!(default_table_size(3), 65537);
        assert_eq!(default_table_size(1000), 100_003);
        assert!(is_prime(65537) && is_prime(100_003) && !is_prime(65535));
    }

    #[test]
    fn every_target_gets_its_share_of_entries_within_one() {
        // The paper's property: with M prime, entries per backend differ by at most one.
        for n in [3, 10, 100] {
            let names = ids(n);
            let t = build(&names, &vec![true; n], 65537);
            let mut counts = vec![0usize; n];
            for &e in t.table() {
                counts[e as usize] += 1;
            }
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "n={n}: {min}..{max}");
        }
    }

    #[test]
    fn removing_one_target_disrupts_little_beyond_its_own_entries() {
        // Paper, Fig. 10: with M ≫ N, nearly only the removed backend's entries change.
        let n = 100;
        let names = ids(n);
        let all = build(&names, &vec![true; n], 65537);
        let mut up = vec![true; n];
        up[37] = false;
        let less = build(&names, &up, 65537);
        let changed = all
            .table()
            .iter()
            .zip(less.table())
            .filter(|(a, b)| a != b)
            .count();
        let own = all.table().iter().filter(|&&e| e == 37).count();
        assert!(less.table().iter().all(|&e| e != 37));
        // Everything that belonged to 37 moves; the extra churn stays small.
        assert!(changed >= own);
        let extra = (changed - own) as f64 / 65537.0;
        assert!(extra < 0.02, "extra disruption {extra}");
    }

    #[test]
    fn picks_are_deterministic_and_skip_refused_targets() {
        let names = ids(5);
        let t = build(&names, &[true; 5], 65537);
        let ctx = PickCtx::hashed(Some(xxh3(b"user-42")));
        let first = t.pick(&ctx, &mut |_| true).unwrap();
        assert_eq!(t.pick(&ctx, &mut |_| true), Some(first));
        let second = t.pick(&ctx, &mut |i| i != first).unwrap();
        assert_ne!(first, second);
        assert_eq!(t.pick(&ctx, &mut |_| false), None);
        assert_eq!(
            build(&names, &[false; 5], 65537).pick(&ctx, &mut |_| true),
            None
        );
    }
}
