//! The datapath as the agent sees it: a set of maps that take single-entry
//! writes and deletes, and can be read back whole.
//!
//! * [`aya_maps::AyaMaps`]: the pinned kernel maps.
//! * [`fake::FakeDatapath`]: an in-memory map set with the same semantics.
//! * [`faulty::FaultyDatapath`]: wraps another and fails chosen writes.

pub mod fake;
pub mod faulty;
pub mod state;

use std::collections::BTreeMap;

pub use state::{DesiredService, DesiredState, MapOp, MapState};

use socklb_common::ServiceCounters;

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
}

impl DatapathError {
    /// Whether the write failed because the map is full (E2BIG / ENOMEM).
    pub fn is_map_full(&self) -> bool {
        match self {
            Self::Write { source, .. } => {
                matches!(source.raw_os_error(), Some(libc_consts::E2BIG | libc_consts::ENOMEM))
            }
            _ => false,
        }
    }
}

mod libc_consts {
    pub const E2BIG: i32 = 7;
    pub const ENOMEM: i32 = 12;
}

pub trait Datapath {
    /// Applies one write or delete. Deleting an absent entry succeeds.
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError>;

    /// Applies operations in order until one fails. Returns how many took
    /// effect, and the error of the first that did not. Implementations may
    /// batch runs of operations on the same map (one syscall for many).
    fn apply_batch(&mut self, ops: &[&MapOp]) -> (usize, Option<DatapathError>) {
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = self.apply(op) {
                return (i, Some(e));
            }
        }
        (ops.len(), None)
    }

    /// Reads every map the agent writes.
    fn read_state(&self) -> Result<MapState, DatapathError>;

    /// Per-service counters, summed over CPUs; services with zero counts
    /// may be left out.
    fn read_counters(&self) -> Result<BTreeMap<u32, ServiceCounters>, DatapathError>;
}
