//! Wraps a datapath and fails chosen writes, to test that updates converge
//! and that a failed set update leaves the previous version serving.

use std::collections::BTreeMap;

use socklb_common::{BackendValue, SetCounters, SetEntry};

use super::{Datapath, DatapathError, MapOp, MapState};
use crate::{capacity::Capacities, slots::Run};

/// Decides whether the n-th write fails.
pub trait FaultPolicy {
    fn fails(&mut self, n: u64, op: &MapOp) -> bool;
}

/// Fails every write whose index is in the set.
impl FaultPolicy for std::collections::BTreeSet<u64> {
    fn fails(&mut self, n: u64, _op: &MapOp) -> bool {
        self.contains(&n)
    }
}

/// Fails writes with a fixed probability, from a seeded generator.
#[derive(Clone, Debug)]
pub struct RandomFaults {
    state: u64,
    /// Out of 1000.
    per_mille: u64,
}

impl RandomFaults {
    pub fn new(seed: u64, per_mille: u64) -> Self {
        Self { state: seed | 1, per_mille }
    }

    /// Stops failing (the fault went away).
    pub fn heal(&mut self) {
        self.per_mille = 0;
    }
}

impl FaultPolicy for RandomFaults {
    fn fails(&mut self, _n: u64, _op: &MapOp) -> bool {
        // xorshift64: deterministic per seed, which proptest shrinking needs.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % 1000 < self.per_mille
    }
}

/// Fails writes to one map (as a map that cannot take them would).
#[derive(Clone, Copy, Debug)]
pub struct FailMap(pub &'static str);

impl FaultPolicy for FailMap {
    fn fails(&mut self, _n: u64, op: &MapOp) -> bool {
        !op.is_delete() && op.map_name() == self.0
    }
}

pub struct FaultyDatapath<D, P> {
    pub inner: D,
    pub policy: P,
    writes: u64,
    pub injected: u64,
}

impl<D, P> FaultyDatapath<D, P> {
    pub fn new(inner: D, policy: P) -> Self {
        Self { inner, policy, writes: 0, injected: 0 }
    }
}

impl<D: Datapath, P: FaultPolicy> Datapath for FaultyDatapath<D, P> {
    fn capacities(&self) -> Capacities {
        self.inner.capacities()
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        let n = self.writes;
        self.writes += 1;
        if self.policy.fails(n, op) {
            self.injected += 1;
            return Err(DatapathError::Write {
                map: op.map_name(),
                op: format!("{op:?}"),
                // EIO: a failure that growing the map would not cure.
                source: std::io::Error::from_raw_os_error(5),
            });
        }
        self.inner.apply(op)
    }

    fn read_sets(&self) -> Result<Vec<(u32, SetEntry)>, DatapathError> {
        self.inner.read_sets()
    }

    fn read_slots(&self, run: Run) -> Result<Vec<BackendValue>, DatapathError> {
        self.inner.read_slots(run)
    }

    fn read_state(&self) -> Result<MapState, DatapathError> {
        self.inner.read_state()
    }

    fn read_counters(&self) -> Result<BTreeMap<u32, SetCounters>, DatapathError> {
        self.inner.read_counters()
    }

    fn grow(&mut self, to: &Capacities) -> Result<(), DatapathError> {
        self.inner.grow(to)
    }

    fn epoch(&self) -> u64 {
        self.inner.epoch()
    }

    fn completed_epoch(&self) -> u64 {
        self.inner.completed_epoch()
    }

    fn end_epoch(&mut self) {
        self.inner.end_epoch();
    }

    fn wait_grace(&mut self) {
        self.inner.wait_grace();
    }
}
