//! `random`: uniform over the up targets.

use super::{random_accepted, Balance, PickCtx};

#[derive(Debug)]
pub struct Random {
    len: usize,
}

impl Random {
    pub fn new(len: usize) -> Self {
        Self { len }
    }
}

impl Balance for Random {
    fn pick(&self, _ctx: &PickCtx<'_>, accept: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        random_accepted(self.len, None, accept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_uniform_over_the_accepted_targets() {
        let r = Random::new(10);
        let mut counts = [0u32; 10];
        // Targets 0..7 are down: the other three share evenly.
        for _ in 0..30_000 {
            let i = r.pick(&PickCtx::hashed(None), &mut |i| i >= 7).unwrap();
            counts[i] += 1;
        }
        assert!(counts[..7].iter().all(|&c| c == 0));
        for &c in &counts[7..] {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(r.pick(&PickCtx::hashed(None), &mut |_| false), None);
    }
}
