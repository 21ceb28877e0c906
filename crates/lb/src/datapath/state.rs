//! The contents of the datapath maps as plain data, and the single-entry
//! operations that change them. `MapState::apply` is the reference semantics
//! of an operation: the fake datapath is exactly this, and the real maps are
//! checked against it.

use std::collections::{BTreeMap, BTreeSet};

use socklb_common::{
    Addr, BackendValue, FrontendKey, FrontendValue, MemberKey, NodeAddrValue, NodeLocalKey, NodeLocalValue,
    NodePortKey, NodePortValue, ServiceName, ServiceValue, SlotKey,
};

/// Everything the agent programs, entry for entry (affinity, counters and
/// per-socket state are written by the programs, not the agent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    pub services: BTreeMap<u32, ServiceValue>,
    pub slots: BTreeMap<SlotKey, u32>,
    pub backends: BTreeMap<u32, BackendValue>,
    pub members: BTreeSet<MemberKey>,
    pub names: BTreeMap<u32, ServiceName>,
    pub node_addrs: BTreeMap<Addr, NodeAddrValue>,
    pub node_ports: BTreeMap<NodePortKey, NodePortValue>,
    pub node_local: BTreeMap<NodeLocalKey, NodeLocalValue>,
}

/// One map write or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend {
        id: u32,
        value: BackendValue,
    },
    DeleteBackend {
        id: u32,
    },
    PutMember(MemberKey),
    DeleteMember(MemberKey),
    PutSlot {
        key: SlotKey,
        backend_id: u32,
    },
    DeleteSlot(SlotKey),
    PutService {
        id: u32,
        value: ServiceValue,
    },
    DeleteService {
        id: u32,
    },
    PutFrontend {
        key: FrontendKey,
        value: FrontendValue,
    },
    DeleteFrontend(FrontendKey),
    /// Boxed: a name is 192 bytes and would make every operation that big.
    PutName {
        id: u32,
        name: Box<ServiceName>,
    },
    DeleteName {
        id: u32,
    },
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
        use socklb_common::map_names as m;
        match self {
            Self::PutBackend { .. } | Self::DeleteBackend { .. } => m::BACKENDS,
            Self::PutMember(_) | Self::DeleteMember(_) => m::MEMBERS,
            Self::PutSlot { .. } | Self::DeleteSlot(_) => m::SLOTS,
            Self::PutService { .. } | Self::DeleteService { .. } => m::SERVICES,
            Self::PutFrontend { .. } | Self::DeleteFrontend(_) => m::FRONTENDS,
            Self::PutName { .. } | Self::DeleteName { .. } => m::SVC_NAMES,
            Self::PutNodeAddr { .. } | Self::DeleteNodeAddr(_) => m::NODE_ADDRS,
            Self::PutNodePort { .. } | Self::DeleteNodePort(_) => m::NODEPORTS,
            Self::PutNodeLocal { .. } | Self::DeleteNodeLocal(_) => m::NODE_LOCAL,
        }
    }

    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Self::DeleteBackend { .. }
                | Self::DeleteMember(_)
                | Self::DeleteSlot(_)
                | Self::DeleteService { .. }
                | Self::DeleteFrontend(_)
                | Self::DeleteName { .. }
                | Self::DeleteNodeAddr(_)
                | Self::DeleteNodePort(_)
                | Self::DeleteNodeLocal(_)
        )
    }
}

impl MapState {
    pub fn apply(&mut self, op: &MapOp) {
        match *op {
            MapOp::PutBackend { id, value } => {
                self.backends.insert(id, value);
            }
            MapOp::DeleteBackend { id } => {
                self.backends.remove(&id);
            }
            MapOp::PutMember(k) => {
                self.members.insert(k);
            }
            MapOp::DeleteMember(k) => {
                self.members.remove(&k);
            }
            MapOp::PutSlot { key, backend_id } => {
                self.slots.insert(key, backend_id);
            }
            MapOp::DeleteSlot(k) => {
                self.slots.remove(&k);
            }
            MapOp::PutService { id, value } => {
                self.services.insert(id, value);
            }
            MapOp::DeleteService { id } => {
                self.services.remove(&id);
            }
            MapOp::PutFrontend { key, value } => {
                self.frontends.insert(key, value);
            }
            MapOp::DeleteFrontend(k) => {
                self.frontends.remove(&k);
            }
            MapOp::PutName { id, ref name } => {
                self.names.insert(id, **name);
            }
            MapOp::DeleteName { id } => {
                self.names.remove(&id);
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

    /// The backend ids a reader of `service_id` can currently reach, in slot
    /// order, or `None` if a slot of the current generation is missing.
    pub fn active_backends(&self, service_id: u32) -> Option<Vec<u32>> {
        let svc = self.services.get(&service_id)?;
        (0..svc.count)
            .map(|index| {
                let key = SlotKey { service_id, generation: svc.generation, index };
                self.slots.get(&key).copied()
            })
            .collect()
    }

    /// Whether no entry is left over from an earlier generation or a removed
    /// service: every slot belongs to a service's current generation, every
    /// member to a current slot, every backend is referenced by some slot.
    pub fn is_tidy(&self) -> bool {
        let slots_tidy = self.slots.keys().all(|k| {
            self.services
                .get(&k.service_id)
                .is_some_and(|s| s.generation == k.generation && k.index < s.count)
        });
        let members_tidy = self
            .members
            .iter()
            .all(|m| self.active_backends(m.service_id).is_some_and(|ids| ids.contains(&m.backend_id)));
        let members_complete = self.services.iter().all(|(&id, svc)| {
            let needed = svc.flags & socklb_common::service_flags::MEMBERSHIP != 0;
            self.active_backends(id).is_some_and(|ids| {
                ids.iter()
                    .all(|&b| self.members.contains(&MemberKey { service_id: id, backend_id: b }) == needed)
            })
        });
        let backends_used = self.backends.keys().all(|id| self.slots.values().any(|b| b == id));
        let names_tidy = self.names.keys().all(|id| self.services.contains_key(id));
        slots_tidy && members_tidy && members_complete && backends_used && names_tidy
    }
}

/// One service (backend set) as the agent wants it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredService {
    /// The agent's identity of this service (see `SVC_NAMES`).
    pub name: ServiceName,
    pub flags: u16,
    pub affinity_timeout_secs: u32,
    /// Backend ids in slot order. At most `MAX_BACKENDS_PER_SERVICE`.
    pub backends: Vec<u32>,
}

/// What the maps should mean, independent of slot generations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    pub services: BTreeMap<u32, DesiredService>,
    /// Exactly the backends the services refer to.
    pub backends: BTreeMap<u32, BackendValue>,
    pub node_addrs: BTreeMap<Addr, NodeAddrValue>,
    pub node_ports: BTreeMap<NodePortKey, NodePortValue>,
    pub node_local: BTreeMap<NodeLocalKey, NodeLocalValue>,
}

impl MapState {
    /// What these maps mean to a reader: services with their current
    /// backend sets. Services whose current generation is incomplete are
    /// left out (a reader could not use them either).
    pub fn logical_view(&self) -> DesiredState {
        let services: BTreeMap<u32, DesiredService> = self
            .services
            .iter()
            .filter_map(|(&id, v)| {
                let backends = self.active_backends(id)?;
                Some((
                    id,
                    DesiredService {
                        name: self.names.get(&id).copied().unwrap_or_default(),
                        flags: v.flags,
                        affinity_timeout_secs: v.affinity_timeout_secs,
                        backends,
                    },
                ))
            })
            .collect();
        let backends = self
            .backends
            .iter()
            .filter(|(id, _)| services.values().any(|s| s.backends.contains(id)))
            .map(|(&id, &v)| (id, v))
            .collect();
        DesiredState {
            frontends: self.frontends.clone(),
            services,
            backends,
            node_addrs: self.node_addrs.clone(),
            node_ports: self.node_ports.clone(),
            node_local: self.node_local.clone(),
        }
    }
}
