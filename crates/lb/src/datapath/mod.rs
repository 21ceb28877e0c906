//! The datapath as the load balancer sees it: maps that take single-entry
//! (and run-of-slots) writes, can be read back, can grow, and can tell when
//! an RCU grace period has passed.
//!
//! * `socklb_bpf::maps::AyaMaps`: the pinned kernel maps.
//! * [`fake::FakeDatapath`]: an in-memory map set with the same semantics.
//! * [`faulty::FaultyDatapath`]: wraps another and fails chosen writes.

pub mod fake;
pub mod faulty;
pub mod state;

use std::collections::BTreeMap;

use socklb_common::{BackendValue, SetCounters, SetEntry};
pub use state::{MapOp, MapState};

use crate::{capacity::Capacities, slots::Run};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{op} on {map}: {source}")]
    Write {
        map: &'static str,
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {map}: {source}")]
    Read {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("opening pinned map {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("growing the maps to {to}: {reason}")]
    Grow { to: String, reason: String },
}

impl DatapathError {
    /// Whether the write failed because the map is full (E2BIG / ENOMEM /
    /// ENOSPC).
    pub fn is_map_full(&self) -> bool {
        match self {
            Self::Write { source, .. } => {
                matches!(source.raw_os_error(), Some(errno::E2BIG | errno::ENOMEM | errno::ENOSPC))
            }
            _ => false,
        }
    }

    /// The map a write failed on.
    pub fn map(&self) -> &'static str {
        match self {
            Self::Write { map, .. } | Self::Read { map, .. } => map,
            Self::Open { .. } | Self::Grow { .. } => "",
        }
    }
}

pub(crate) mod errno {
    pub const E2BIG: i32 = 7;
    pub const ENOMEM: i32 = 12;
    pub const ENOSPC: i32 = 28;
}

pub trait Datapath {
    /// The sizes of the maps the agent writes.
    fn capacities(&self) -> Capacities;

    /// Applies one write or delete. Deleting an absent entry succeeds.
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError>;

    /// Applies operations in order until one fails. Returns how many took
    /// effect, and the error of the first that did not. Implementations may
    /// batch runs of operations on the same map (one syscall for many).
    fn apply_batch(&mut self, ops: &[MapOp]) -> (usize, Option<DatapathError>) {
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = self.apply(op) {
                return (i, Some(e));
            }
        }
        (ops.len(), None)
    }

    /// Every present set.
    fn read_sets(&self) -> Result<Vec<(u32, SetEntry)>, DatapathError>;

    /// The backends in a run of slots.
    fn read_slots(&self, run: Run) -> Result<Vec<BackendValue>, DatapathError>;

    /// The present sets with ids in `from..to` (a chunk of a resync).
    fn read_sets_in(&self, from: u32, to: u32) -> Result<Vec<(u32, SetEntry)>, DatapathError> {
        Ok(self.read_sets()?.into_iter().filter(|(id, _)| (from..to).contains(id)).collect())
    }

    /// What [`Datapath::read_state`] reads, without the sets and slots
    /// (the resync checks those a chunk at a time).
    fn read_tables(&self) -> Result<MapState, DatapathError> {
        let mut st = self.read_state()?;
        st.sets.clear();
        st.slots.clear();
        Ok(st)
    }

    /// Everything the agent writes (for checks, dumps and `socklb list`).
    fn read_state(&self) -> Result<MapState, DatapathError>;

    /// Per-set counters; sets with zero counts may be left out.
    fn read_counters(&self) -> Result<BTreeMap<u32, SetCounters>, DatapathError>;

    /// Replaces the maps with bigger ones holding the same entries, without
    /// a moment in which a program sees neither (see `socklb_bpf::loader`).
    fn grow(&mut self, to: &Capacities) -> Result<(), DatapathError>;

    /// The epoch that slots and ids retired now belong to.
    fn epoch(&self) -> u64;

    /// The newest epoch whose RCU grace period has passed: what was retired
    /// in it may be reused.
    fn completed_epoch(&self) -> u64;

    /// Closes the current epoch and lets its grace period run (in the
    /// background where the datapath can).
    fn end_epoch(&mut self);

    /// Blocks until the grace periods of every closed epoch have passed.
    fn wait_grace(&mut self);
}
