//! `hash`: the simple scheme. A 64-bit hash of the key (XXH3-64, seed 0) modulo the number of
//! configured targets; when that target is down, the next up target in configured order.
//! Same key, same target while the target set stays the same; most keys move when it changes.

use super::{Balance, PickCtx};

#[derive(Debug)]
pub struct ModHash {
    len: usize,
}

impl ModHash {
    pub fn new(len: usize) -> Self {
        Self { len }
    }
}

impl Balance for ModHash {
    fn pick(&self, ctx: &PickCtx<'_>, accept: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let start = (ctx.hash.unwrap_or_else(|| fastrand::u64(..)) % self.len as u64) as usize;
        (0..self.len)
            .map(|i| (start + i) % self.len)
            .find(|&i| accept(i))
    }

    fn is_keyed(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::xxh3;

    #[test]
    fn is_the_documented_hash_modulo_n() {
        let h = ModHash::new(7);
        for key in ["a", "user:42", "", "ünïcode"] {
            let hash = h.hash_key(key.as_bytes());
            assert_eq!(hash, xxh3(key.as_bytes()));
            let i = h.pick(&PickCtx::hashed(Some(hash)), &mut |_| true).unwrap();
            assert_eq!(i as u64, hash % 7);
        }
        // XXH3-64 of the empty input, seed 0: the published test vector.
        assert_eq!(xxh3(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn a_down_target_hands_over_to_the_next_in_order() {
        let h = ModHash::new(5);
        let hash = (0..)
            .map(|k: u64| xxh3(&k.to_le_bytes()))
            .find(|x| x % 5 == 3)
            .unwrap();
        let ctx = PickCtx::hashed(Some(hash));
        assert_eq!(h.pick(&ctx, &mut |_| true), Some(3));
        assert_eq!(h.pick(&ctx, &mut |i| i != 3), Some(4));
        assert_eq!(h.pick(&ctx, &mut |i| i < 3), Some(0));
    }

    #[test]
    fn spreads_keys_evenly_and_moves_most_of_them_when_n_changes() {
        let (a, b) = (ModHash::new(10), ModHash::new(11));
        let mut counts = [0u32; 10];
        let mut moved = 0;
        for k in 0..100_000u32 {
            let hash = xxh3(format!("key{k}").as_bytes());
            let i = a.pick(&PickCtx::hashed(Some(hash)), &mut |_| true).unwrap();
            let j = b.pick(&PickCtx::hashed(Some(hash)), &mut |_| true).unwrap();
            counts[i] += 1;
            moved += u32::from(i != j);
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
        assert!(moved > 85_000, "only {moved} keys moved");
    }
}
