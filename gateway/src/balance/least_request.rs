//! `least_request`: the power of two choices. Two distinct up targets chosen uniformly at
//! random (both when there are only two); the one with fewer requests in flight wins, ties at
//! random. Nearly as good as a full scan at spreading load, at the cost of two reads
//! (Mitzenmacher; Envoy's and Finagle's default).

use super::{random_accepted, Balance, PickCtx};

#[derive(Debug)]
pub struct LeastRequest {
    len: usize,
}

impl LeastRequest {
    pub fn new(len: usize) -> Self {
        Self { len }
    }
}

impl Balance for LeastRequest {
    fn pick(&self, ctx: &PickCtx<'_>, accept: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        let a = random_accepted(self.len, None, accept)?;
        let Some(b) = random_accepted(self.len, Some(a), accept) else {
            return Some(a);
        };
        let (la, lb) = ((ctx.load)(a), (ctx.load)(b));
        Some(match la.cmp(&lb) {
            std::cmp::Ordering::Less => a,
            std::cmp::Ordering::Greater => b,
            std::cmp::Ordering::Equal => {
                if fastrand::bool() {
                    a
                } else {
                    b
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_two_targets_always_takes_the_less_loaded() {
        let lr = LeastRequest::new(2);
        let load = |i: usize| if i == 0 { 5 } else { 1 };
        let ctx = PickCtx {
            hash: None,
            load: &load,
        };
        for _ in 0..1000 {
            assert_eq!(lr.pick(&ctx, &mut |_| true), Some(1));
        }
    }

    #[test]
    fn never_picks_the_most_loaded_of_three_and_spreads_ties() {
        let lr = LeastRequest::new(3);
        let load = |i: usize| [9, 1, 1][i];
        let ctx = PickCtx {
            hash: None,
            load: &load,
        };
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[lr.pick(&ctx, &mut |_| true).unwrap()] += 1;
        }
        // Target 0 wins only against itself, which two distinct choices never allow.
        assert_eq!(counts[0], 0);
        assert!((13_000..17_000).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn a_single_usable_target_is_taken_and_none_when_none_is() {
        let lr = LeastRequest::new(4);
        let ctx = PickCtx::hashed(None);
        assert_eq!(lr.pick(&ctx, &mut |i| i == 2), Some(2));
        assert_eq!(lr.pick(&ctx, &mut |_| false), None);
    }

    /// Average gap between the most and the least loaded target when requests arrive and
    /// each completes with a fixed probability per step, placing them with `choose`.
    fn average_spread(n: usize, mut choose: impl FnMut(&[i64]) -> usize) -> f64 {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut inflight = vec![0i64; n];
        let mut sum = 0i64;
        let steps = 20_000;
        for _ in 0..steps {
            for slot in inflight.iter_mut() {
                if *slot > 0 && rng.u8(..) < 26 {
                    *slot -= 1;
                }
            }
            let i = choose(&inflight);
            inflight[i] += 1;
            sum += inflight.iter().max().unwrap() - inflight.iter().min().unwrap();
        }
        sum as f64 / f64::from(steps)
    }

    #[test]
    fn balances_load_far_better_than_random() {
        let n = 10;
        let lr = LeastRequest::new(n);
        let p2c = average_spread(n, |load| {
            let l = |i: usize| load[i];
            lr.pick(
                &PickCtx {
                    hash: None,
                    load: &l,
                },
                &mut |_| true,
            )
            .unwrap()
        });
        let random = average_spread(n, |_| fastrand::usize(..n));
        assert!(
            p2c * 2.0 < random,
            "p2c spread {p2c:.2}, random {random:.2}"
        );
    }
}
