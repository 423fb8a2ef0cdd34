//! `slots`: Redis Cluster's 16384 key slots.
//!
//! `slot = CRC16-XMODEM(key) mod 16384`, where a key with a `{hashtag}` (the first `{` with a
//! `}` after it and at least one byte between) hashes only the tag, exactly as Redis does.
//! A slot belongs to the target whose `slots` ranges hold it; without ranges the split is
//! redis-cli's (`redis-cli --cluster create`). A slot's target does not hand over to another
//! shard when it is down: its backups (the shard's replicas) do that.

use crc::{Crc, CRC_16_XMODEM};

use super::{Balance, Location, PickCtx, SLOT_COUNT};

const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// Redis's `keyHashSlot`.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        match rest.iter().position(|&b| b == b'}') {
            Some(close) if close > 0 => Some(&rest[..close]),
            _ => None,
        }
    });
    CRC16.checksum(tagged.unwrap_or(key)) % SLOT_COUNT as u16
}

/// redis-cli's even split of the slots over `n` masters, computed as it does (in single
/// precision): master i ends at `lround(cursor + slots_per_node − 1)`, the last at 16383.
pub fn even_split(n: usize) -> Vec<std::ops::RangeInclusive<u16>> {
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let per = SLOT_COUNT as f32 / n as f32;
    let mut cursor = 0.0f32;
    let mut first: i64 = 0;
    for j in 0..n {
        let mut last = f64::from(cursor + per - 1.0).round() as i64;
        if last > SLOT_COUNT as i64 || j == n - 1 {
            last = SLOT_COUNT as i64 - 1;
        }
        if last < first {
            last = first;
        }
        out.push(first as u16..=last as u16);
        first = last + 1;
        cursor += per;
    }
    out
}

#[derive(Debug)]
pub struct Slots {
    /// The target of each slot (`u32::MAX`: nobody's, which validation does not allow).
    owner: Box<[u32]>,
}

impl Slots {
    /// `ranges[i]`: target i's slot ranges; all empty means redis-cli's even split.
    pub fn new(ranges: &[Vec<std::ops::RangeInclusive<u16>>]) -> Self {
        let mut owner = vec![u32::MAX; SLOT_COUNT];
        let explicit = ranges.iter().any(|r| !r.is_empty());
        let split;
        let ranges = if explicit {
            ranges
        } else {
            split = even_split(ranges.len())
                .into_iter()
                .map(|r| vec![r])
                .collect::<Vec<_>>();
            &split[..]
        };
        for (target, list) in ranges.iter().enumerate() {
            for r in list {
                for slot in r.clone() {
                    if let Some(o) = owner.get_mut(usize::from(slot)) {
                        *o = target as u32;
                    }
                }
            }
        }
        Self {
            owner: owner.into_boxed_slice(),
        }
    }

    pub fn owner_of(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)) {
            Some(&o) if o != u32::MAX => Some(o as usize),
            _ => None,
        }
    }
}

impl Balance for Slots {
    fn pick(&self, ctx: &PickCtx<'_>, accept: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        let slot = ctx.hash.map_or_else(
            || fastrand::u16(..SLOT_COUNT as u16),
            |h| (h % SLOT_COUNT as u64) as u16,
        );
        self.owner_of(slot).filter(|&t| accept(t))
    }

    fn hash_key(&self, key: &[u8]) -> u64 {
        u64::from(key_slot(key))
    }

    fn is_keyed(&self) -> bool {
        true
    }

    fn locate(&self, hash: u64) -> Location {
        Location {
            slot: Some((hash % SLOT_COUNT as u64) as u16),
            ring_point: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_the_slots_redis_documents() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT` examples.
        assert_eq!(CRC16.checksum(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"hello"), 866);
    }

    #[test]
    fn honours_hashtags_exactly_as_redis() {
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{user1000}.followers"), key_slot(b"user1000"));
        // Empty tag: the whole key is hashed.
        assert_eq!(
            key_slot(b"foo{}{bar}"),
            CRC16.checksum(b"foo{}{bar}") % 16384
        );
        // Only the first { counts, up to the first } after it.
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        // No closing brace: the whole key.
        assert_eq!(key_slot(b"foo{bar"), CRC16.checksum(b"foo{bar") % 16384);
    }

    #[test]
    fn the_even_split_is_redis_cli_s() {
        assert_eq!(even_split(3), vec![0..=5460, 5461..=10922, 10923..=16383]);
        assert_eq!(even_split(1), vec![0..=16383]);
        for n in 1..200 {
            let split = even_split(n);
            assert_eq!(*split[0].start(), 0);
            assert_eq!(*split[n - 1].end(), 16383);
            for w in split.windows(2) {
                assert_eq!(*w[0].end() + 1, *w[1].start());
            }
        }
    }

    #[test]
    fn a_slot_belongs_to_its_ranges_owner_and_never_moves() {
        let s = Slots::new(&[vec![0..=99, 200..=16383], vec![100..=199]]);
        assert_eq!(s.owner_of(150), Some(1));
        assert_eq!(s.owner_of(16383), Some(0));
        let ctx = PickCtx::hashed(Some(150));
        assert_eq!(s.pick(&ctx, &mut |_| true), Some(1));
        // The owner is down: no other shard takes the slot.
        assert_eq!(s.pick(&ctx, &mut |t| t != 1), None);
    }
}
