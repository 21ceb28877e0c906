//! Which slots of the `BACKENDS` array are free.
//!
//! A set's backends are a contiguous run of slots. A new version of a set is
//! written into a free run and switched to in one store; the old run is
//! *retired*: it becomes free only once an RCU grace period has passed since
//! (a program that read the old state word may still be reading the old
//! slots until then). Free runs are kept by position, so neighbours merge
//! again, and by length, for best fit.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A run of slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Run {
    pub base: u32,
    pub len: u32,
}

impl Run {
    pub const EMPTY: Self = Self { base: 0, len: 0 };

    pub fn end(&self) -> u32 {
        self.base + self.len
    }
}

/// Free and retired runs of a `capacity`-slot array.
#[derive(Clone, Debug, Default)]
pub struct SlotPool {
    capacity: u32,
    /// Free runs by base -> len.
    free: BTreeMap<u32, u32>,
    /// The same runs by (len, base), for best fit.
    by_len: BTreeSet<(u32, u32)>,
    /// Runs that become free once the grace period of their epoch passed.
    retired: VecDeque<(u64, Run)>,
    /// Slots in runs that are neither free nor retired.
    used: u64,
    retired_slots: u64,
}

impl SlotPool {
    /// An empty array of `capacity` slots.
    pub fn new(capacity: u32) -> Self {
        let mut pool = Self { capacity, ..Self::default() };
        pool.insert_free(Run { base: 0, len: capacity });
        pool
    }

    /// A pool whose `in_use` runs (from the maps of a previous agent) are
    /// taken; they must not overlap.
    pub fn with_used(capacity: u32, in_use: impl IntoIterator<Item = Run>) -> Self {
        let mut runs: Vec<Run> = in_use.into_iter().filter(|r| r.len > 0).collect();
        runs.sort();
        let mut pool = Self { capacity, ..Self::default() };
        let mut at = 0;
        for r in runs {
            if r.base > at {
                pool.insert_free(Run { base: at, len: r.base - at });
            }
            pool.used += u64::from(r.len);
            at = at.max(r.end());
        }
        if capacity > at {
            pool.insert_free(Run { base: at, len: capacity - at });
        }
        pool
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots in use by sets.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Slots waiting for a grace period.
    pub fn retired(&self) -> u64 {
        self.retired_slots
    }

    /// The longest free run.
    pub fn largest_free(&self) -> u32 {
        self.by_len.iter().next_back().map_or(0, |(len, _)| *len)
    }

    /// A free run of `len` slots (best fit), or `None` when no run is long
    /// enough. A run of length 0 is always available.
    pub fn alloc(&mut self, len: u32) -> Option<Run> {
        if len == 0 {
            return Some(Run::EMPTY);
        }
        let &(have, base) = self.by_len.range((len, 0)..).next()?;
        self.remove_free(base, have);
        if have > len {
            self.insert_free(Run { base: base + len, len: have - len });
        }
        self.used += u64::from(len);
        Some(Run { base, len })
    }

    /// Gives back a run that was never published (its set's switch failed):
    /// no program can have read it, so it is free at once.
    pub fn release_unpublished(&mut self, run: Run) {
        if run.len == 0 {
            return;
        }
        self.used -= u64::from(run.len);
        self.free_run(run);
    }

    /// A run that programs may still read: free after the grace period of
    /// `epoch`.
    pub fn retire(&mut self, run: Run, epoch: u64) {
        if run.len == 0 {
            return;
        }
        self.used -= u64::from(run.len);
        self.retired_slots += u64::from(run.len);
        self.retired.push_back((epoch, run));
    }

    /// Frees the runs retired at or before `completed` (an epoch whose grace
    /// period has passed).
    pub fn reclaim(&mut self, completed: u64) {
        while let Some(&(epoch, run)) = self.retired.front() {
            if epoch > completed {
                break;
            }
            self.retired.pop_front();
            self.retired_slots -= u64::from(run.len);
            self.free_run(run);
        }
    }

    /// The array grew to `capacity` slots: the new tail is free.
    pub fn grow(&mut self, capacity: u32) {
        if capacity > self.capacity {
            let tail = Run { base: self.capacity, len: capacity - self.capacity };
            self.capacity = capacity;
            self.free_run(tail);
        }
    }

    fn free_run(&mut self, run: Run) {
        let (mut base, mut len) = (run.base, run.len);
        // Merge with the free run just before and just after.
        if let Some((&pb, &pl)) = self.free.range(..base).next_back()
            && pb + pl == base
        {
            self.remove_free(pb, pl);
            base = pb;
            len += pl;
        }
        if let Some(&nl) = self.free.get(&(base + len)) {
            self.remove_free(base + len, nl);
            len += nl;
        }
        self.insert_free(Run { base, len });
    }

    fn insert_free(&mut self, run: Run) {
        if run.len > 0 {
            self.free.insert(run.base, run.len);
            self.by_len.insert((run.len, run.base));
        }
    }

    fn remove_free(&mut self, base: u32, len: u32) {
        self.free.remove(&base);
        self.by_len.remove(&(len, base));
    }

    /// Every free run, in order (tests, checks).
    pub fn free_runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.free.iter().map(|(&base, &len)| Run { base, len })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn best_fit_splits_and_merges_back() {
        let mut p = SlotPool::new(100);
        let a = p.alloc(10).expect("fits");
        let b = p.alloc(20).expect("fits");
        assert_eq!((a, b), (Run { base: 0, len: 10 }, Run { base: 10, len: 20 }));
        p.retire(a, 1);
        assert_eq!(p.alloc(80), None, "a retired run is not free yet");
        p.reclaim(0);
        assert_eq!(p.alloc(80), None, "epoch 1 has not passed");
        p.reclaim(1);
        assert_eq!(p.alloc(10), Some(Run { base: 0, len: 10 }), "the freed run fits exactly");
        p.release_unpublished(Run { base: 0, len: 10 });
        p.retire(b, 2);
        p.reclaim(2);
        assert_eq!(p.free_runs().collect::<Vec<_>>(), vec![Run { base: 0, len: 100 }]);
        assert_eq!(p.used(), 0);
    }

    #[test]
    fn adopted_runs_leave_their_gaps_free_and_growth_adds_the_tail() {
        let mut p = SlotPool::with_used(50, [Run { base: 10, len: 5 }, Run { base: 30, len: 10 }]);
        assert_eq!(
            p.free_runs().collect::<Vec<_>>(),
            vec![Run { base: 0, len: 10 }, Run { base: 15, len: 15 }, Run { base: 40, len: 10 }]
        );
        assert_eq!(p.used(), 15);
        p.grow(80);
        assert_eq!(p.largest_free(), 40);
    }

    proptest! {
        /// Runs handed out never overlap each other, and everything comes
        /// back whole once all is freed.
        #[test]
        fn runs_never_overlap(ops in proptest::collection::vec((0u32..40, any::<bool>()), 1..200)) {
            let mut p = SlotPool::new(400);
            let mut live: Vec<Run> = Vec::new();
            let mut epoch = 0;
            for (len, free_one) in ops {
                if free_one && !live.is_empty() {
                    let r = live.remove(len as usize % live.len());
                    epoch += 1;
                    p.retire(r, epoch);
                    p.reclaim(epoch.saturating_sub(2));
                } else if let Some(r) = p.alloc(len) {
                    if r.len > 0 {
                        for o in &live {
                            prop_assert!(r.end() <= o.base || o.end() <= r.base, "{r:?} overlaps {o:?}");
                        }
                        prop_assert!(r.end() <= 400);
                        live.push(r);
                    }
                }
            }
            for r in live.drain(..) {
                p.retire(r, epoch);
            }
            p.reclaim(epoch);
            prop_assert_eq!(p.free_runs().collect::<Vec<_>>(), vec![Run { base: 0, len: 400 }]);
        }
    }
}
