//! `weighted_round_robin`: nginx's smooth weighted round robin, lock-free.
//!
//! nginx keeps a current weight per peer, adds each peer's weight every pick, takes the
//! largest and subtracts the total from it: weights 5,1,1 give a a b a c a a, never a burst of
//! the heavy target. That sequence is periodic with period = sum of weights, so it is computed
//! once here and indexed with an atomic counter: no lock, no state to mutate per pick.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balance, PickCtx};

#[derive(Debug)]
pub struct SmoothWeighted {
    sequence: Box<[u32]>,
    next: AtomicUsize,
}

impl SmoothWeighted {
    pub fn new(weights: &[u32]) -> Self {
        Self {
            sequence: smooth_sequence(weights).into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }
}

/// One period of nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`): ties go
/// to the first peer in configured order, as in nginx. Weights are divided by their gcd first,
/// which leaves the sequence's shape unchanged and keeps the period short.
pub fn smooth_sequence(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|&x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        seq.push(best as u32);
    }
    seq
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Balance for SmoothWeighted {
    fn pick(&self, _ctx: &PickCtx<'_>, accept: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        // A rejected choice's turn is skipped (the counter moves on), so the remaining targets
        // keep their relative weights.
        (0..len)
            .map(|_| self.sequence[self.next.fetch_add(1, Ordering::Relaxed) % len] as usize)
            .find(|&i| accept(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_5_1_1_give_nginx_documented_sequence() {
        // nginx's commit message for smooth WRR: { a, a, b, a, c, a, a }.
        let names = ['a', 'b', 'c'];
        let seq: String = smooth_sequence(&[5, 1, 1])
            .iter()
            .map(|&i| names[i as usize])
            .collect();
        assert_eq!(seq, "aabacaa");
    }

    #[test]
    fn each_target_gets_its_weight_per_period() {
        let weights = [3, 7, 1, 4];
        let seq = smooth_sequence(&weights);
        assert_eq!(seq.len(), 15);
        for (i, &w) in weights.iter().enumerate() {
            assert_eq!(seq.iter().filter(|&&x| x as usize == i).count(), w as usize);
        }
    }

    #[test]
    fn never_bursts_the_heavy_target_beyond_its_share() {
        // Smoothness: after any k picks, each target's count stays within 1 of its exact
        // share k * w / W (plain weighted round robin would give a a a a a b c).
        let mut rng = fastrand::Rng::with_seed(7);
        let mut cases = vec![vec![5, 1, 1], vec![1, 1000], vec![3, 7, 1, 4]];
        for _ in 0..50 {
            let n = rng.usize(1..8);
            cases.push((0..n).map(|_| rng.u32(1..50)).collect());
        }
        for weights in cases {
            let seq = smooth_sequence(&weights);
            let total: u32 = weights.iter().sum::<u32>() / weights.iter().copied().fold(0, gcd);
            let g = weights.iter().copied().fold(0, gcd);
            let mut counts = vec![0u32; weights.len()];
            for (k, &pick) in seq.iter().enumerate() {
                counts[pick as usize] += 1;
                for (i, &w) in weights.iter().enumerate() {
                    let exact = (k + 1) as f64 * f64::from(w / g) / f64::from(total);
                    let dev = (f64::from(counts[i]) - exact).abs();
                    assert!(
                        dev < 1.0,
                        "weights {weights:?}: target {i} off by {dev} after {} picks",
                        k + 1
                    );
                }
            }
        }
    }

    #[test]
    fn picks_follow_the_sequence_and_skip_rejected_targets() {
        let b = SmoothWeighted::new(&[5, 1, 1]);
        let picks: Vec<_> = (0..7)
            .map(|_| b.pick(&PickCtx::hashed(None), &mut |_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        let picks: Vec<_> = (0..70)
            .map(|_| b.pick(&PickCtx::hashed(None), &mut |i| i != 0).unwrap())
            .collect();
        assert!(picks.iter().all(|&i| i != 0));
        // b and c have equal weights: without a they share evenly.
        let b_count = picks.iter().filter(|&&i| i == 1).count();
        assert_eq!(b_count, 35, "{picks:?}");
    }

    #[test]
    fn equal_weights_reduce_to_round_robin() {
        assert_eq!(smooth_sequence(&[4, 4, 4]), [0, 1, 2]);
    }
}
