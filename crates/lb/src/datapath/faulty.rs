//! Wraps a datapath and fails chosen writes, to test that plans converge and
//! that a failed service update leaves the previous version serving.

use std::collections::BTreeMap;

use socklb_common::ServiceCounters;

use super::{Datapath, DatapathError, MapOp, MapState};

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

/// Fails writes to one map (as a full map would).
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
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        let n = self.writes;
        self.writes += 1;
        if self.policy.fails(n, op) {
            self.injected += 1;
            return Err(DatapathError::Write {
                map: op.map_name(),
                op: format!("{op:?}"),
                source: std::io::Error::from_raw_os_error(7), // E2BIG, as a full map
            });
        }
        self.inner.apply(op)
    }

    fn read_state(&self) -> Result<MapState, DatapathError> {
        self.inner.read_state()
    }

    fn read_counters(&self) -> Result<BTreeMap<u32, ServiceCounters>, DatapathError> {
        self.inner.read_counters()
    }
}
