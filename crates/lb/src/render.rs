//! The models of the Services to the datapath's desired state: ids for sets
//! and backends, map keys for frontends. Incremental: a change to one
//! Service re-renders that Service only, and says which ids and keys it
//! touched, so the plan looks at those alone.
//!
//! * A frontend claimed by two Services goes to the first in namespace/name
//!   order; the other is reported (and gets it if the first lets go).
//! * A set that cannot get ids (an id space is exhausted) keeps the version
//!   the maps hold, so a full map never removes or half-programs a service
//!   that was working; a new set that cannot get an id is left out.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use socklb_common::{
    Addr, BackendValue, FAMILY_V4, FAMILY_V6, FrontendKey, FrontendValue, NodeAddrValue, NodeLocalKey,
    NodeLocalValue, NodePortKey, NodePortValue, ServiceName, addr_from_ip, node_flags, nodeport_flags,
};

use socklb_k8s::model::{
    Family, NodeContext, ObjKey, Problem, ServiceModel, SetId,
    nodes::{NodeInfo, nodeport_addresses},
    problem::ProblemKind,
};

use crate::{
    datapath::{DesiredService, DesiredState, MapState},
    ids::IdAllocator,
};

/// What a render step changed: the plan only needs to look at these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub services: BTreeSet<u32>,
    pub backends: BTreeSet<u32>,
    pub frontends: BTreeSet<FrontendKey>,
    pub node_addrs: BTreeSet<Addr>,
    pub node_ports: BTreeSet<NodePortKey>,
    pub node_local: BTreeSet<NodeLocalKey>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.backends.is_empty()
            && self.frontends.is_empty()
            && self.node_addrs.is_empty()
            && self.node_ports.is_empty()
            && self.node_local.is_empty()
    }
}

/// What one Service put into the desired state.
#[derive(Clone, Debug, Default)]
struct Contribution {
    sets: Vec<u32>,
    frontends: Vec<FrontendKey>,
    node_ports: Vec<NodePortKey>,
    node_local: Vec<NodeLocalKey>,
    problems: Vec<Problem>,
}

#[derive(Debug, Default)]
pub struct Renderer {
    pub desired: DesiredState,
    /// Which set each service id stands for.
    pub sets: BTreeMap<u32, SetId>,
    contributions: BTreeMap<ObjKey, Contribution>,
    /// Every Service that wants a frontend, with the value it would write.
    claims: BTreeMap<FrontendKey, BTreeMap<ObjKey, FrontendValue>>,
    /// The same for NodePorts (the API server keeps them unique; files may not).
    node_port_claims: BTreeMap<NodePortKey, BTreeMap<ObjKey, NodePortValue>>,
    /// How many desired sets use each backend.
    backend_refs: HashMap<u32, u32>,
}

impl Renderer {
    /// The problems of the last render of every Service.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.contributions.values().flat_map(|c| c.problems.iter())
    }

    /// Replaces what `key` contributes with `model` (or removes it). Returns
    /// the problems that are new for this Service.
    pub fn update(
        &mut self,
        key: &ObjKey,
        model: Option<&ServiceModel>,
        ids: &mut IdAllocator,
        applied: &MapState,
        touched: &mut Touched,
    ) -> Vec<Problem> {
        let old = self.contributions.remove(key).unwrap_or_default();
        for id in &old.sets {
            self.remove_set(*id, touched);
        }
        for fk in &old.frontends {
            if let Some(c) = self.claims.get_mut(fk) {
                c.remove(key);
                if c.is_empty() {
                    self.claims.remove(fk);
                }
            }
            self.settle(fk, touched);
        }
        for nk in &old.node_ports {
            if let Some(c) = self.node_port_claims.get_mut(nk) {
                c.remove(key);
                if c.is_empty() {
                    self.node_port_claims.remove(nk);
                }
            }
            self.settle_node_port(nk, touched);
        }
        for lk in &old.node_local {
            if self.desired.node_local.remove(lk).is_some() {
                touched.node_local.insert(*lk);
            }
        }
        let Some(model) = model else {
            return Vec::new();
        };
        let mut new = Contribution::default();
        let mut set_ids: BTreeMap<&SetId, u32> = BTreeMap::new();
        for set in &model.sets {
            let name = set.id.to_string();
            let Some(id) = ids.service(&name) else {
                new.problems.push(Problem::new(
                    ProblemKind::Capacity,
                    format!("Service {key}"),
                    format!("port {}", set.id.port),
                    "no free service id: the services map is full",
                ));
                continue;
            };
            let mut backends = Vec::with_capacity(set.backends.len());
            let mut values = Vec::with_capacity(set.backends.len());
            let mut full = false;
            for addr in &set.backends {
                // Per address, not per set: nothing set-specific (such as
                // "local to this node") may go in a backend's value, or two
                // sets sharing an address would fight over it.
                let value =
                    BackendValue::new(addr_from_ip(addr.ip()), addr.port().to_be(), set.id.proto.number());
                let Some(bid) = ids.backend((value.addr, value.port, value.proto)) else {
                    full = true;
                    break;
                };
                backends.push(bid);
                values.push((bid, value));
            }
            let desired = if full {
                new.problems.push(Problem::new(
                    ProblemKind::Capacity,
                    format!("Service {key}"),
                    format!("port {}", set.id.port),
                    "no free backend id: the backends map is full; the previous version stays",
                ));
                previous_version(applied, id)
            } else {
                let svc = DesiredService {
                    name: ServiceName::new(&name),
                    flags: set.flags,
                    affinity_timeout_secs: set.affinity_timeout_secs,
                    backends,
                };
                Some((svc, values))
            };
            if let Some((svc, values)) = desired {
                self.add_set(id, svc, values, touched);
                self.sets.insert(id, set.id.clone());
                set_ids.insert(&set.id, id);
                new.sets.push(id);
            }
        }
        for fe in &model.frontends {
            let Some(&service_id) = set_ids.get(&fe.set) else { continue };
            let fk = FrontendKey {
                addr: addr_from_ip(fe.addr.ip()),
                port: fe.addr.port().to_be(),
                proto: fe.proto.number(),
                scope: fe.scope,
            };
            let value = FrontendValue { service_id, flags: fe.kind.flag(), _pad: 0 };
            self.claims.entry(fk).or_default().insert(key.clone(), value);
            self.settle(&fk, touched);
            if let Some(owner) = self.claims.get(&fk).and_then(|c| c.keys().next())
                && owner != key
            {
                new.problems.push(Problem::new(
                    ProblemKind::FrontendConflict,
                    format!("Service {key}"),
                    format!("{} {}/{}", fe.kind, fe.addr, fe.proto),
                    format!("already used by Service {owner}"),
                ));
            }
            new.frontends.push(fk);
        }
        for np in &model.node_ports {
            let Some(&service_id) = set_ids.get(&np.set) else { continue };
            let nk = NodePortKey {
                port: np.port.to_be(),
                proto: np.proto.number(),
                family: match np.family {
                    Family::V4 => FAMILY_V4,
                    Family::V6 => FAMILY_V6,
                },
            };
            let flags = if np.external_local { nodeport_flags::EXTERNAL_LOCAL } else { 0 };
            // Another node's endpoints, by the node's id.
            for (node, set) in &np.node_sets {
                let (Some(&local_id), Some(node_id)) = (set_ids.get(set), ids.node(node)) else { continue };
                let lk = NodeLocalKey { service_id, node_id };
                let value = NodeLocalValue { service_id: local_id };
                if self.desired.node_local.insert(lk, value) != Some(value) {
                    touched.node_local.insert(lk);
                }
                new.node_local.push(lk);
            }
            let value = NodePortValue { service_id, flags, _pad: 0 };
            self.node_port_claims.entry(nk).or_default().insert(key.clone(), value);
            self.settle_node_port(&nk, touched);
            if let Some(owner) = self.node_port_claims.get(&nk).and_then(|c| c.keys().next())
                && owner != key
            {
                new.problems.push(Problem::new(
                    ProblemKind::FrontendConflict,
                    format!("Service {key}"),
                    format!("NodePort {}/{} {}", np.port, np.proto, np.family),
                    format!("already used by Service {owner}"),
                ));
            }
            new.node_ports.push(nk);
        }
        let fresh = new.problems.iter().filter(|p| !old.problems.contains(p)).cloned().collect();
        self.contributions.insert(key.clone(), new);
        fresh
    }

    /// Makes the desired NodePort `nk` the claim of its first claimant.
    fn settle_node_port(&mut self, nk: &NodePortKey, touched: &mut Touched) {
        let want = self.node_port_claims.get(nk).and_then(|c| c.values().next().copied());
        if self.desired.node_ports.get(nk).copied() != want {
            match want {
                Some(v) => self.desired.node_ports.insert(*nk, v),
                None => self.desired.node_ports.remove(nk),
            };
            touched.node_ports.insert(*nk);
        }
    }

    /// Renders every node's NodePort addresses (`NODE_ADDRS`). Node ids are
    /// kept by name; a node the agent has no id for yet takes the id its
    /// addresses have in the maps (a restart), so an unchanged node table
    /// writes nothing.
    pub fn update_nodes(
        &mut self,
        ctx: &NodeContext,
        nodes: &BTreeMap<String, NodeInfo>,
        ids: &mut IdAllocator,
        applied: &MapState,
        touched: &mut Touched,
    ) {
        let addresses = nodeport_addresses(ctx, nodes);
        for (ip, a) in &addresses {
            if !ids.has_node(&a.node)
                && let Some(old) = applied.node_addrs.get(&addr_from_ip(*ip))
            {
                ids.adopt_node(&a.node, old.node_id);
            }
        }
        let mut want: BTreeMap<Addr, NodeAddrValue> = BTreeMap::new();
        for (ip, a) in &addresses {
            let Some(node_id) = ids.node(&a.node) else { continue };
            let mut flags = 0;
            if a.this_node {
                flags |= node_flags::THIS_NODE;
            }
            if a.loopback {
                flags |= node_flags::HOST_NETNS_ONLY;
            }
            want.insert(addr_from_ip(*ip), NodeAddrValue { node_id, flags });
        }
        for (addr, value) in &want {
            if self.desired.node_addrs.get(addr) != Some(value) {
                touched.node_addrs.insert(*addr);
            }
        }
        for addr in self.desired.node_addrs.keys() {
            if !want.contains_key(addr) {
                touched.node_addrs.insert(*addr);
            }
        }
        self.desired.node_addrs = want;
    }

    /// Makes the desired frontend `fk` the claim of its first claimant.
    fn settle(&mut self, fk: &FrontendKey, touched: &mut Touched) {
        let want = self.claims.get(fk).and_then(|c| c.values().next().copied());
        if self.desired.frontends.get(fk).copied() != want {
            match want {
                Some(v) => self.desired.frontends.insert(*fk, v),
                None => self.desired.frontends.remove(fk),
            };
            touched.frontends.insert(*fk);
        }
    }

    fn add_set(
        &mut self,
        id: u32,
        svc: DesiredService,
        values: Vec<(u32, BackendValue)>,
        touched: &mut Touched,
    ) {
        for (bid, value) in values {
            let n = self.backend_refs.entry(bid).or_default();
            *n += 1;
            if self.desired.backends.insert(bid, value) != Some(value) {
                touched.backends.insert(bid);
            }
        }
        self.desired.services.insert(id, svc);
        touched.services.insert(id);
    }

    fn remove_set(&mut self, id: u32, touched: &mut Touched) {
        let Some(svc) = self.desired.services.remove(&id) else { return };
        self.sets.remove(&id);
        touched.services.insert(id);
        for bid in svc.backends {
            if let Some(n) = self.backend_refs.get_mut(&bid) {
                *n -= 1;
                if *n == 0 {
                    self.backend_refs.remove(&bid);
                    self.desired.backends.remove(&bid);
                    touched.backends.insert(bid);
                }
            }
        }
    }
}

/// A service as the maps serve it now, with its backends.
fn previous_version(applied: &MapState, id: u32) -> Option<(DesiredService, Vec<(u32, BackendValue)>)> {
    let svc = applied.services.get(&id)?;
    let ids = applied.active_backends(id)?;
    let backends =
        ids.iter().map(|b| applied.backends.get(b).map(|v| (*b, *v))).collect::<Option<Vec<_>>>()?;
    let desired = DesiredService {
        name: applied.names.get(&id).copied().unwrap_or_default(),
        flags: svc.flags,
        affinity_timeout_secs: svc.affinity_timeout_secs,
        backends: ids,
    };
    Some((desired, backends))
}
