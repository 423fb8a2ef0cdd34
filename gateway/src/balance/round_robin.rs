//! `round_robin`: up targets in configured order.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balance, PickCtx};

#[derive(Debug)]
pub struct RoundRobin {
    next: AtomicUsize,
    len: usize,
}

impl RoundRobin {
    pub fn new(len: usize) -> Self {
        Self {
            next: AtomicUsize::new(0),
            len,
        }
    }
}

impl Balance for RoundRobin {
    fn pick(&self, _ctx: &PickCtx<'_>, accept: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        // A rejected target's turn is skipped, not handed to its neighbour: the counter moves
        // on, so the accepted targets keep taking turns evenly ("up targets in order").
        (0..self.len)
            .map(|_| self.next.fetch_add(1, Ordering::Relaxed) % self.len)
            .find(|&i| accept(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_through_targets_in_order() {
        let rr = RoundRobin::new(3);
        let picks: Vec<_> = (0..7)
            .map(|_| rr.pick(&PickCtx::hashed(None), &mut |_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn rotates_evenly_over_the_targets_it_may_use() {
        let rr = RoundRobin::new(3);
        let picks: Vec<_> = (0..6)
            .map(|_| rr.pick(&PickCtx::hashed(None), &mut |i| i != 1).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn returns_none_when_every_target_is_rejected() {
        let rr = RoundRobin::new(3);
        assert_eq!(rr.pick(&PickCtx::hashed(None), &mut |_| false), None);
        assert_eq!(
            RoundRobin::new(0).pick(&PickCtx::hashed(None), &mut |_| true),
            None
        );
    }
}
