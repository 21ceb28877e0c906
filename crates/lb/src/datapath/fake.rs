//! An in-memory datapath with the semantics of the real maps, sizes
//! included: a write past an array's end or a new key in a full hash map
//! fails as the kernel's would.

use std::collections::BTreeMap;

use socklb_common::{BackendValue, SetCounters, SetEntry};

use super::{Datapath, DatapathError, MapOp, MapState, errno};
use crate::{capacity::Capacities, slots::Run};

#[derive(Clone, Debug)]
pub struct FakeDatapath {
    pub state: MapState,
    /// Every slot ever written (an array keeps what it was given; `state`
    /// is rebuilt from it on read).
    slots: BTreeMap<u32, BackendValue>,
    pub capacities: Capacities,
    /// Every operation applied, in order.
    pub log: Vec<MapOp>,
    pub counters: BTreeMap<u32, SetCounters>,
    pub growths: Vec<Capacities>,
    epoch: u64,
    /// Grace periods end when the test says so (`complete_grace`), or at
    /// once when `instant_grace`.
    completed: u64,
    pub instant_grace: bool,
}

impl Default for FakeDatapath {
    fn default() -> Self {
        Self::new(MapState::default())
    }
}

impl FakeDatapath {
    pub fn new(state: MapState) -> Self {
        let slots = state.slots.clone();
        Self {
            state,
            slots,
            capacities: Capacities::default(),
            log: Vec::new(),
            counters: BTreeMap::new(),
            growths: Vec::new(),
            epoch: 1,
            completed: 0,
            instant_grace: true,
        }
    }

    pub fn with_capacities(mut self, capacities: Capacities) -> Self {
        self.capacities = capacities;
        self
    }

    /// Overwrites a slot behind the balancer's back (drift tests).
    pub fn corrupt_slot(&mut self, slot: u32, value: BackendValue) {
        self.slots.insert(slot, value);
    }

    /// Ends every closed epoch's grace period (with `instant_grace` off).
    pub fn complete_grace(&mut self) {
        self.completed = self.epoch - 1;
    }

    fn full(op: &MapOp) -> DatapathError {
        DatapathError::Write {
            map: op.map_name(),
            op: format!("{op:?}"),
            source: std::io::Error::from_raw_os_error(errno::E2BIG),
        }
    }

    fn check(&self, op: &MapOp) -> Result<(), DatapathError> {
        let c = &self.capacities;
        let over = |len: usize, cap: u32| len >= cap as usize;
        let ok = match op {
            MapOp::PutSlots { base, backends } => {
                u64::from(*base) + backends.len() as u64 <= u64::from(c.slots)
            }
            MapOp::PutSet { id, .. } | MapOp::DeleteSet { id } | MapOp::ResetCounters { id } => *id < c.sets,
            MapOp::PutMember(_) if op.inserts_key(&self.state) => !over(self.state.members.len(), c.members),
            MapOp::PutFrontend { .. } if op.inserts_key(&self.state) => {
                !over(self.state.frontends.len(), c.frontends)
            }
            MapOp::PutNodeAddr { .. } if op.inserts_key(&self.state) => {
                !over(self.state.node_addrs.len(), c.node_addrs)
            }
            MapOp::PutNodePort { .. } if op.inserts_key(&self.state) => {
                !over(self.state.node_ports.len(), c.node_ports)
            }
            MapOp::PutNodeLocal { .. } if op.inserts_key(&self.state) => {
                !over(self.state.node_local.len(), c.node_local)
            }
            _ => true,
        };
        if ok { Ok(()) } else { Err(Self::full(op)) }
    }

    fn visible_state(&self) -> MapState {
        let mut st = self.state.clone();
        st.slots = self.slots.clone();
        st.keep_reachable_slots();
        st
    }
}

impl Datapath for FakeDatapath {
    fn capacities(&self) -> Capacities {
        self.capacities
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        self.check(op)?;
        match op {
            MapOp::PutSlots { base, backends } => {
                for (i, b) in backends.iter().enumerate() {
                    self.slots.insert(base + i as u32, *b);
                }
            }
            MapOp::ResetCounters { id } => {
                self.counters.remove(id);
            }
            _ => self.state.apply(op),
        }
        self.log.push(op.clone());
        Ok(())
    }

    fn read_sets(&self) -> Result<Vec<(u32, SetEntry)>, DatapathError> {
        Ok(self.state.sets.iter().map(|(&id, &e)| (id, e)).collect())
    }

    fn read_slots(&self, run: Run) -> Result<Vec<BackendValue>, DatapathError> {
        Ok((run.base..run.end()).map(|s| self.slots.get(&s).copied().unwrap_or_default()).collect())
    }

    fn read_state(&self) -> Result<MapState, DatapathError> {
        Ok(self.visible_state())
    }

    fn read_counters(&self) -> Result<BTreeMap<u32, SetCounters>, DatapathError> {
        Ok(self.counters.clone())
    }

    fn grow(&mut self, to: &Capacities) -> Result<(), DatapathError> {
        self.capacities = *to;
        self.growths.push(*to);
        Ok(())
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn completed_epoch(&self) -> u64 {
        self.completed
    }

    fn end_epoch(&mut self) {
        self.epoch += 1;
        if self.instant_grace {
            self.completed = self.epoch - 1;
        }
    }

    fn wait_grace(&mut self) {
        self.completed = self.epoch - 1;
    }
}

/// A fake datapath that a test can keep a handle to while the reconciler
/// owns it.
#[derive(Clone, Debug)]
pub struct SharedFake(pub std::sync::Arc<std::sync::Mutex<FakeDatapath>>);

impl Default for SharedFake {
    fn default() -> Self {
        Self::new(MapState::default())
    }
}

impl SharedFake {
    pub fn new(state: MapState) -> Self {
        Self::from(FakeDatapath::new(state))
    }

    /// A copy of what the maps hold.
    pub fn state(&self) -> MapState {
        self.0.lock().map(|d| d.visible_state()).unwrap_or_default()
    }

    /// How many operations were applied so far.
    pub fn ops(&self) -> usize {
        self.0.lock().map(|d| d.log.len()).unwrap_or_default()
    }

    /// Runs `f` on the fake (to set counters, sizes, grace).
    pub fn with<R>(&self, f: impl FnOnce(&mut FakeDatapath) -> R) -> Option<R> {
        self.0.lock().ok().map(|mut d| f(&mut d))
    }
}

impl From<FakeDatapath> for SharedFake {
    fn from(d: FakeDatapath) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(d)))
    }
}

fn poisoned() -> DatapathError {
    DatapathError::Read { map: "fake", source: std::io::Error::other("lock poisoned") }
}

impl Datapath for SharedFake {
    fn capacities(&self) -> Capacities {
        self.0.lock().map(|d| d.capacities).unwrap_or_default()
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        self.0.lock().map_err(|_| poisoned())?.apply(op)
    }

    fn read_sets(&self) -> Result<Vec<(u32, SetEntry)>, DatapathError> {
        self.0.lock().map_err(|_| poisoned())?.read_sets()
    }

    fn read_slots(&self, run: Run) -> Result<Vec<BackendValue>, DatapathError> {
        self.0.lock().map_err(|_| poisoned())?.read_slots(run)
    }

    fn read_state(&self) -> Result<MapState, DatapathError> {
        self.0.lock().map_err(|_| poisoned())?.read_state()
    }

    fn read_counters(&self) -> Result<BTreeMap<u32, SetCounters>, DatapathError> {
        self.0.lock().map_err(|_| poisoned())?.read_counters()
    }

    fn grow(&mut self, to: &Capacities) -> Result<(), DatapathError> {
        self.0.lock().map_err(|_| poisoned())?.grow(to)
    }

    fn epoch(&self) -> u64 {
        self.0.lock().map(|d| d.epoch()).unwrap_or_default()
    }

    fn completed_epoch(&self) -> u64 {
        self.0.lock().map(|d| d.completed_epoch()).unwrap_or_default()
    }

    fn end_epoch(&mut self) {
        if let Ok(mut d) = self.0.lock() {
            d.end_epoch();
        }
    }

    fn wait_grace(&mut self) {
        if let Ok(mut d) = self.0.lock() {
            d.wait_grace();
        }
    }
}
