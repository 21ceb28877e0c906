//! Dense ids: backend sets (indices of `SETS` and `COUNTERS`) and nodes
//! (the node ids of `NODE_ADDRS` and `NODE_LOCAL`).
//!
//! A set id, like a run of slots, is reused only after an RCU grace period
//! since its set was removed: a program that looked the old set up may
//! still be reading its entry until then.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Set ids below a capacity.
#[derive(Clone, Debug, Default)]
pub struct IdPool {
    capacity: u32,
    /// Every id below this was handed out at some point.
    frontier: u32,
    /// Free ids, lowest first (so the arrays stay dense).
    free: BTreeSet<u32>,
    retired: VecDeque<(u64, u32)>,
    used: u32,
}

impl IdPool {
    pub fn new(capacity: u32) -> Self {
        Self { capacity, ..Self::default() }
    }

    /// A pool in which `in_use` (from the maps of a previous agent) are
    /// taken.
    pub fn with_used(capacity: u32, in_use: impl IntoIterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = in_use.into_iter().collect();
        let frontier = used.iter().next_back().map_or(0, |m| m + 1);
        let free = (0..frontier).filter(|id| !used.contains(id)).collect();
        Self { capacity, frontier, free, retired: VecDeque::new(), used: used.len() as u32 }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Ids in use.
    pub fn used(&self) -> u32 {
        self.used
    }

    /// Ids waiting for a grace period.
    pub fn retired(&self) -> u32 {
        self.retired.len() as u32
    }

    pub fn alloc(&mut self) -> Option<u32> {
        let id = match self.free.pop_first() {
            Some(id) => id,
            None if self.frontier < self.capacity => {
                self.frontier += 1;
                self.frontier - 1
            }
            None => return None,
        };
        self.used += 1;
        Some(id)
    }

    /// An id that no program can have seen (its set was never published).
    pub fn release_unpublished(&mut self, id: u32) {
        self.used -= 1;
        self.free.insert(id);
    }

    pub fn retire(&mut self, id: u32, epoch: u64) {
        self.used -= 1;
        self.retired.push_back((epoch, id));
    }

    pub fn reclaim(&mut self, completed: u64) {
        while let Some(&(epoch, id)) = self.retired.front() {
            if epoch > completed {
                break;
            }
            self.retired.pop_front();
            self.free.insert(id);
        }
    }

    pub fn grow(&mut self, capacity: u32) {
        self.capacity = self.capacity.max(capacity);
    }
}

/// Node ids by node name, stable while the node is known. Id 0 is never
/// used, so a zeroed entry is no node.
#[derive(Clone, Debug, Default)]
pub struct NodeIds {
    by_name: HashMap<String, u32>,
    names: BTreeMap<u32, String>,
}

impl NodeIds {
    pub fn get(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(&id).map(String::as_str)
    }

    /// The node's id, given one if it has none.
    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.get(name) {
            return id;
        }
        let id = (1..).find(|i| !self.names.contains_key(i)).unwrap_or(u32::MAX);
        self.adopt(name, id);
        id
    }

    /// Takes `id` for `name` (from the maps of a previous agent), unless
    /// either is already taken.
    pub fn adopt(&mut self, name: &str, id: u32) -> bool {
        if id == 0 || self.by_name.contains_key(name) || self.names.contains_key(&id) {
            return false;
        }
        self.by_name.insert(name.to_string(), id);
        self.names.insert(id, name.to_string());
        true
    }

    /// Forgets every node not in `keep`.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_name.retain(|n, _| keep(n));
        self.names.retain(|_, n| keep(n));
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_ids_are_dense_and_wait_for_their_grace_period() {
        let mut p = IdPool::new(3);
        assert_eq!((p.alloc(), p.alloc(), p.alloc(), p.alloc()), (Some(0), Some(1), Some(2), None));
        p.retire(1, 5);
        p.reclaim(4);
        assert_eq!(p.alloc(), None, "retired in epoch 5, which has not passed");
        p.reclaim(5);
        assert_eq!(p.alloc(), Some(1));
        p.release_unpublished(2);
        assert_eq!(p.alloc(), Some(2), "an unpublished id is free at once");
        p.grow(4);
        assert_eq!(p.alloc(), Some(3));
    }

    #[test]
    fn adopted_ids_are_taken_and_the_gaps_free() {
        let mut p = IdPool::with_used(10, [0, 3]);
        assert_eq!(p.used(), 2);
        assert_eq!((p.alloc(), p.alloc(), p.alloc()), (Some(1), Some(2), Some(4)));
    }

    #[test]
    fn node_ids_start_at_one_and_keep_adopted_ones() {
        let mut n = NodeIds::default();
        assert!(n.adopt("b", 7));
        assert!(!n.adopt("c", 7), "taken");
        assert_eq!(n.id("a"), 1);
        assert_eq!(n.id("b"), 7);
        n.retain(|name| name != "a");
        assert_eq!(n.get("a"), None);
        assert_eq!(n.id("c"), 1);
    }
}
