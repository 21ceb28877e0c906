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
        Self {
            state,
            ..Default::default()
        }
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
