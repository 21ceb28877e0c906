//! The contents of the datapath maps as plain data, and the operations that
//! change them. `MapState::apply` is the reference semantics of an
//! operation: the fake datapath is exactly this, and the real maps are
//! checked against it.

use std::collections::{BTreeMap, BTreeSet};

use socklb_common::{
    Addr, BackendValue, FrontendKey, FrontendValue, MemberKey, NodeAddrValue, NodeLocalKey, NodeLocalValue,
    NodePortKey, NodePortValue, SetEntry, SetState, map_names as m, set_flags,
};

use crate::slots::Run;

/// Everything the agent programs (affinity, counters and per-socket state
/// are written by the programs). `slots` holds the slots of present sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    pub sets: BTreeMap<u32, SetEntry>,
    pub slots: BTreeMap<u32, BackendValue>,
    pub members: BTreeSet<MemberKey>,
    pub node_addrs: BTreeMap<Addr, NodeAddrValue>,
    pub node_ports: BTreeMap<NodePortKey, NodePortValue>,
    pub node_local: BTreeMap<NodeLocalKey, NodeLocalValue>,
}

/// One map write or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Writes `backends` into the slots from `base` on.
    PutSlots {
        base: u32,
        backends: Vec<BackendValue>,
    },
    /// Writes a set's entry; the state word last, in one store (the switch).
    PutSet {
        id: u32,
        entry: SetEntry,
    },
    /// Clears a set's state word: the set is gone.
    DeleteSet {
        id: u32,
    },
    /// Zeroes a set id's counters (before a new set takes the id).
    ResetCounters {
        id: u32,
    },
    PutMember(MemberKey),
    DeleteMember(MemberKey),
    PutFrontend {
        key: FrontendKey,
        value: FrontendValue,
    },
    DeleteFrontend(FrontendKey),
    PutNodeAddr {
        addr: Addr,
        value: NodeAddrValue,
    },
    DeleteNodeAddr(Addr),
    PutNodePort {
        key: NodePortKey,
        value: NodePortValue,
    },
    DeleteNodePort(NodePortKey),
    PutNodeLocal {
        key: NodeLocalKey,
        value: NodeLocalValue,
    },
    DeleteNodeLocal(NodeLocalKey),
}

impl MapOp {
    /// The map this operation writes, for errors and metrics.
    pub fn map_name(&self) -> &'static str {
        match self {
            Self::PutSlots { .. } => m::BACKENDS,
            Self::PutSet { .. } | Self::DeleteSet { .. } => m::SETS,
            Self::ResetCounters { .. } => m::COUNTERS,
            Self::PutMember(_) | Self::DeleteMember(_) => m::MEMBERS,
            Self::PutFrontend { .. } | Self::DeleteFrontend(_) => m::FRONTENDS,
            Self::PutNodeAddr { .. } | Self::DeleteNodeAddr(_) => m::NODE_ADDRS,
            Self::PutNodePort { .. } | Self::DeleteNodePort(_) => m::NODEPORTS,
            Self::PutNodeLocal { .. } | Self::DeleteNodeLocal(_) => m::NODE_LOCAL,
        }
    }

    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Self::DeleteSet { .. }
                | Self::DeleteMember(_)
                | Self::DeleteFrontend(_)
                | Self::DeleteNodeAddr(_)
                | Self::DeleteNodePort(_)
                | Self::DeleteNodeLocal(_)
        )
    }

    /// Whether this adds a key to a hash map (which can be full).
    pub fn inserts_key(&self, state: &MapState) -> bool {
        match self {
            Self::PutMember(k) => !state.members.contains(k),
            Self::PutFrontend { key, .. } => !state.frontends.contains_key(key),
            Self::PutNodeAddr { addr, .. } => !state.node_addrs.contains_key(addr),
            Self::PutNodePort { key, .. } => !state.node_ports.contains_key(key),
            Self::PutNodeLocal { key, .. } => !state.node_local.contains_key(key),
            _ => false,
        }
    }
}

impl MapState {
    pub fn apply(&mut self, op: &MapOp) {
        match *op {
            MapOp::PutSlots { base, ref backends } => {
                for (i, b) in backends.iter().enumerate() {
                    self.slots.insert(base + i as u32, *b);
                }
            }
            MapOp::PutSet { id, entry } => {
                if SetState::unpack(entry.state).is_present() {
                    self.sets.insert(id, entry);
                } else {
                    self.sets.remove(&id);
                }
            }
            MapOp::DeleteSet { id } => {
                self.sets.remove(&id);
            }
            MapOp::ResetCounters { .. } => {}
            MapOp::PutMember(k) => {
                self.members.insert(k);
            }
            MapOp::DeleteMember(k) => {
                self.members.remove(&k);
            }
            MapOp::PutFrontend { key, value } => {
                self.frontends.insert(key, value);
            }
            MapOp::DeleteFrontend(k) => {
                self.frontends.remove(&k);
            }
            MapOp::PutNodeAddr { addr, value } => {
                self.node_addrs.insert(addr, value);
            }
            MapOp::DeleteNodeAddr(addr) => {
                self.node_addrs.remove(&addr);
            }
            MapOp::PutNodePort { key, value } => {
                self.node_ports.insert(key, value);
            }
            MapOp::DeleteNodePort(key) => {
                self.node_ports.remove(&key);
            }
            MapOp::PutNodeLocal { key, value } => {
                self.node_local.insert(key, value);
            }
            MapOp::DeleteNodeLocal(key) => {
                self.node_local.remove(&key);
            }
        }
    }

    /// The backends a reader of set `id` can reach, in slot order.
    pub fn backends_of(&self, id: u32) -> Option<Vec<BackendValue>> {
        let st = SetState::unpack(self.sets.get(&id)?.state);
        let run = Run { base: st.base, len: u32::from(st.count) };
        (run.base..run.end()).map(|s| self.slots.get(&s).copied()).collect()
    }

    /// Drops the slots no present set reaches (a kernel array keeps them;
    /// they mean nothing).
    pub fn keep_reachable_slots(&mut self) {
        let reachable: BTreeSet<u32> = self
            .sets
            .values()
            .flat_map(|e| {
                let st = SetState::unpack(e.state);
                st.base..st.base + u32::from(st.count)
            })
            .collect();
        self.slots.retain(|s, _| reachable.contains(s));
    }

    /// What these maps mean to a reader, independent of where the slots
    /// are: each set's entry (state without its base) and backends.
    pub fn logical_view(&self) -> LogicalView {
        let sets = self
            .sets
            .iter()
            .map(|(&id, e)| {
                let st = SetState::unpack(e.state);
                let mut entry = *e;
                entry.state = SetState { base: 0, ..st }.pack();
                (id, (entry, self.backends_of(id).unwrap_or_default()))
            })
            .collect();
        LogicalView {
            frontends: self.frontends.clone(),
            sets,
            members: self.members.clone(),
            node_addrs: self.node_addrs.clone(),
            node_ports: self.node_ports.clone(),
            node_local: self.node_local.clone(),
        }
    }

    /// Whether nothing is left over: every member belongs to a present set
    /// that keeps members, and every such set has exactly its backends as
    /// members.
    pub fn is_tidy(&self) -> bool {
        let mut want: BTreeSet<MemberKey> = BTreeSet::new();
        for (&id, e) in &self.sets {
            if SetState::unpack(e.state).flags & set_flags::MEMBERSHIP != 0 {
                for b in self.backends_of(id).unwrap_or_default() {
                    want.insert(MemberKey::of(id, &b));
                }
            }
        }
        want == self.members
    }
}

/// [`MapState`] as a reader sees it (see [`MapState::logical_view`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogicalView {
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    pub sets: BTreeMap<u32, (SetEntry, Vec<BackendValue>)>,
    pub members: BTreeSet<MemberKey>,
    pub node_addrs: BTreeMap<Addr, NodeAddrValue>,
    pub node_ports: BTreeMap<NodePortKey, NodePortValue>,
    pub node_local: BTreeMap<NodeLocalKey, NodeLocalValue>,
}
