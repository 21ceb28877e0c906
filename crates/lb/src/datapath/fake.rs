//! An in-memory datapath with the semantics of the real maps.

use std::collections::BTreeMap;

use socklb_common::ServiceCounters;

use super::{Datapath, DatapathError, MapOp, MapState};

#[derive(Clone, Debug, Default)]
pub struct FakeDatapath {
    pub state: MapState,
    /// Every operation applied, in order.
    pub log: Vec<MapOp>,
    pub counters: BTreeMap<u32, ServiceCounters>,
}

impl FakeDatapath {
    pub fn new(state: MapState) -> Self {
        Self { state, ..Default::default() }
    }
}

impl Datapath for FakeDatapath {
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        self.state.apply(op);
        self.log.push(op.clone());
        Ok(())
    }

    fn read_state(&self) -> Result<MapState, DatapathError> {
        Ok(self.state.clone())
    }

    fn read_counters(&self) -> Result<BTreeMap<u32, ServiceCounters>, DatapathError> {
        Ok(self.counters.clone())
    }
}

/// A fake datapath that a test can keep a handle to while the reconciler
/// owns it.
#[derive(Clone, Debug, Default)]
pub struct SharedFake(pub std::sync::Arc<std::sync::Mutex<FakeDatapath>>);

impl SharedFake {
    pub fn new(state: MapState) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(FakeDatapath::new(state))))
    }

    /// A copy of what the maps hold.
    pub fn state(&self) -> MapState {
        self.0.lock().map(|d| d.state.clone()).unwrap_or_default()
    }

    /// How many operations were applied so far.
    pub fn ops(&self) -> usize {
        self.0.lock().map(|d| d.log.len()).unwrap_or_default()
    }
}

impl Datapath for SharedFake {
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        self.0.lock().map_err(|_| poisoned())?.apply(op)
    }

    fn read_state(&self) -> Result<MapState, DatapathError> {
        self.0.lock().map_err(|_| poisoned())?.read_state()
    }

    fn read_counters(&self) -> Result<BTreeMap<u32, ServiceCounters>, DatapathError> {
        self.0.lock().map_err(|_| poisoned())?.read_counters()
    }
}

fn poisoned() -> DatapathError {
    DatapathError::Read { map: "fake", source: std::io::Error::other("lock poisoned") }
}
