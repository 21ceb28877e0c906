//! The load balancer's state: what the maps hold, kept compact, and the
//! transactional update of one Service at a time.
//!
//! Per Service, [`Balancer::apply`] writes each changed backend set into
//! fresh slots and switches to it with one store (the order is documented
//! in `socklb-common`); a failure before the switch abandons that set and
//! the previous version keeps serving. Frontends follow once their sets are
//! complete. Nothing of a backend set is kept here but its entry (position,
//! count, flags and two hashes): the backends themselves live in the
//! kernel's array, and are read back only where a change needs the old
//! ones (members to remove, sockets to close).
//!
//! * [`claims`]: frontends, NodePorts and other nodes' sets, claimed by
//!   Services; the first Service (by namespace/name) wins a conflict.
//! * [`nodes`]: every node's NodePort addresses.
//! * [`verify`]: reading the maps back and repairing drift, a chunk at a
//!   time.

mod claims;
mod nodes;
mod sets;
#[cfg(test)]
mod tests;
mod verify;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
};

use smallvec::SmallVec;
use socklb_common::{
    FrontendKey, FrontendValue, NodeLocalKey, NodeLocalValue, NodePortKey, NodePortValue, SetEntry, SetState,
};
use socklb_k8s::model::{ObjKey, Problem, ServiceModel};

pub use self::verify::Drift;
use self::{claims::Claim, nodes::NodeTable};
use crate::{
    capacity::{Capacities, Ceilings, Usage},
    datapath::{Datapath, DatapathError},
    desired::{DesiredService, SetKey},
    ids::{IdPool, NodeIds},
    slots::{Run, SlotPool},
};

/// A Service, by a small id the caller hands out (the caller keeps the
/// names; see [`ServiceNames`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef(pub u32);

/// The names of the Services, for conflicts (the first by namespace/name
/// wins) and messages.
pub trait ServiceNames {
    fn key(&self, service: ServiceRef) -> Option<ObjKey>;
}

/// The store's Service ids are the balancer's Service refs.
impl ServiceNames for socklb_k8s::store::Store {
    fn key(&self, service: ServiceRef) -> Option<ObjKey> {
        socklb_k8s::store::Store::key(self, service.0)
    }
}

/// A backend that left a set (its sockets are stale), or joined one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Departed {
    pub set_id: u32,
    pub backend: SocketAddr,
    pub proto: u8,
}

/// A set as the maps hold it.
#[derive(Clone, Debug)]
pub struct SetRecord {
    pub owner: ServiceRef,
    pub key: SetKey,
    pub entry: SetEntry,
    /// Endpoints listed but not in the set (see `DesiredSet::extra_known`).
    pub extra_known: Box<[SocketAddr]>,
}

impl SetRecord {
    pub fn state(&self) -> SetState {
        SetState::unpack(self.entry.state)
    }

    pub fn run(&self) -> Run {
        let st = self.state();
        Run { base: st.base, len: u32::from(st.count) }
    }
}

/// What one Service holds in the maps, kept compact (there are as many as
/// Services): NodePorts, other nodes' sets and problems are rare.
#[derive(Clone, Debug, Default)]
struct ServiceRecord {
    sets: SmallVec<[u32; 2]>,
    frontends: Box<[(FrontendKey, FrontendValue)]>,
    rare: Option<Box<Rare>>,
}

#[derive(Clone, Debug, Default)]
struct Rare {
    node_ports: Vec<(NodePortKey, NodePortValue)>,
    node_local: Vec<(NodeLocalKey, NodeLocalValue)>,
    problems: Vec<Problem>,
}

/// A Service's record while an apply works on it.
#[derive(Clone, Debug, Default)]
struct Draft {
    sets: Vec<u32>,
    frontends: Vec<(FrontendKey, FrontendValue)>,
    node_ports: Vec<(NodePortKey, NodePortValue)>,
    node_local: Vec<(NodeLocalKey, NodeLocalValue)>,
    problems: Vec<Problem>,
}

impl ServiceRecord {
    fn node_ports(&self) -> &[(NodePortKey, NodePortValue)] {
        self.rare.as_ref().map_or(&[], |r| &r.node_ports)
    }

    fn problems(&self) -> &[Problem] {
        self.rare.as_ref().map_or(&[], |r| &r.problems)
    }

    /// Replaces the problems of `kind` with `fresh`.
    fn set_problems(&mut self, kind: socklb_k8s::model::problem::ProblemKind, fresh: Vec<Problem>) {
        let rare = self.rare.get_or_insert_with(Default::default);
        rare.problems.retain(|p| p.kind != kind);
        rare.problems.extend(fresh);
        if rare.node_ports.is_empty() && rare.node_local.is_empty() && rare.problems.is_empty() {
            self.rare = None;
        }
    }

    fn draft(&self) -> Draft {
        let rare = self.rare.as_deref().cloned().unwrap_or_default();
        Draft {
            sets: self.sets.to_vec(),
            frontends: self.frontends.to_vec(),
            node_ports: rare.node_ports,
            node_local: rare.node_local,
            problems: rare.problems,
        }
    }

    fn from_draft(d: Draft) -> Self {
        let rare =
            (!d.node_ports.is_empty() || !d.node_local.is_empty() || !d.problems.is_empty()).then(|| {
                Box::new(Rare { node_ports: d.node_ports, node_local: d.node_local, problems: d.problems })
            });
        Self { sets: d.sets.into_iter().collect(), frontends: d.frontends.into(), rare }
    }
}

/// Why a Service is not (completely) programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The maps are at their ceiling (`--max-services`, `--max-backends`).
    Capacity(String),
    /// A write failed; retrying may help.
    Write(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Capacity(s) => write!(f, "capacity: {s}"),
            Self::Write(s) => write!(f, "write failed: {s}"),
        }
    }
}

/// What one [`Balancer::apply`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Map operations that took effect.
    pub ops: usize,
    /// Services whose change is now in the maps.
    pub applied: Vec<ServiceRef>,
    /// Services that keep (part of) their previous version, and why.
    pub failed: BTreeMap<ServiceRef, Failure>,
    /// Backends that left sets (their sockets are stale).
    pub departed: Vec<Departed>,
    /// Backends that joined sets (a queued termination must be dropped).
    pub rejoined: Vec<Departed>,
    /// Problems that are new for their Service.
    pub problems: Vec<(ServiceRef, Problem)>,
    /// The maps grew to these sizes.
    pub grew: Option<Capacities>,
    /// Growing the maps was needed and failed.
    pub grow_error: Option<String>,
}

impl ApplyReport {
    /// Adds another apply's report (a sync applied in chunks).
    pub fn merge(&mut self, other: Self) {
        self.ops += other.ops;
        self.applied.extend(other.applied);
        self.failed.extend(other.failed);
        self.departed.extend(other.departed);
        self.rejoined.extend(other.rejoined);
        self.problems.extend(other.problems);
        self.grew = other.grew.or(self.grew);
        self.grow_error = other.grow_error.or(self.grow_error.take());
    }
}

/// Counts for gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub services: usize,
    pub sets: u32,
    pub slots: u64,
    pub retired_slots: u64,
    pub frontends: usize,
    pub members: u64,
    pub node_addrs: usize,
    pub node_ports: usize,
    pub node_local: usize,
}

pub struct Balancer {
    ceilings: Ceilings,
    caps: Capacities,
    sets: Vec<Option<SetRecord>>,
    ids: IdPool,
    slots: SlotPool,
    /// By `ServiceRef` (dense: the store's ids).
    services: Vec<Option<ServiceRecord>>,
    frontends: HashMap<FrontendKey, Claim<FrontendValue>>,
    node_ports: HashMap<NodePortKey, Claim<NodePortValue>>,
    node_local: HashMap<NodeLocalKey, Claim<NodeLocalValue>>,
    nodes: NodeTable,
    node_ids: NodeIds,
    /// How many programmed entries point at each set id: a set is removed
    /// only once none does.
    refs: HashMap<u32, u32>,
    members: u64,
    /// Sets a previous agent left in the maps, by key hash, until the first
    /// full sync claims them.
    adoptable: HashMap<u64, u32>,
    /// Sets no Service wants: removed once nothing points at them.
    orphans: BTreeSet<u32>,
    /// Keys whose claims changed since they were last written, or whose
    /// write failed: settled at the next apply.
    unsettled: claims::Touched,
    /// Member writes that undoing an abandoned set could not make: (set id,
    /// whether the id was new, the writes). Retried at every apply.
    member_debt: Vec<(u32, bool, Vec<crate::datapath::MapOp>)>,
    /// Where the next [`Balancer::verify_chunk`] starts.
    verify_cursor: u32,
}

impl Balancer {
    /// An empty balancer over empty maps.
    pub fn new(caps: Capacities, ceilings: Ceilings) -> Self {
        Self {
            ceilings,
            caps,
            sets: Vec::new(),
            ids: IdPool::new(caps.sets.min(ceilings.sets)),
            slots: SlotPool::new(caps.slots.min(ceilings.slots)),
            services: Vec::new(),
            frontends: HashMap::new(),
            node_ports: HashMap::new(),
            node_local: HashMap::new(),
            nodes: NodeTable::default(),
            node_ids: NodeIds::default(),
            refs: HashMap::new(),
            members: 0,
            adoptable: HashMap::new(),
            orphans: BTreeSet::new(),
            unsettled: claims::Touched::default(),
            member_debt: Vec::new(),
            verify_cursor: 0,
        }
    }

    /// Adopts what the maps hold (a restart): the sets, by their key hash,
    /// keep their ids and slots, and the programmed frontends and node
    /// tables are taken as they are, so that an unchanged cluster writes
    /// nothing. What no Service claims by [`Self::finish_adoption`] is
    /// removed then.
    pub fn adopt(dp: &dyn Datapath, ceilings: Ceilings) -> Result<Self, DatapathError> {
        let caps = dp.capacities();
        let mut b = Self::new(caps, ceilings);
        let sets = dp.read_sets()?;
        let runs = sets.iter().map(|(_, e)| {
            let st = SetState::unpack(e.state);
            Run { base: st.base, len: u32::from(st.count) }
        });
        // The maps may be bigger than the ceilings (they never shrink):
        // what is handed out stays below both.
        b.slots = SlotPool::with_used(caps.slots.min(ceilings.slots), runs);
        b.ids = IdPool::with_used(caps.sets.min(ceilings.sets), sets.iter().map(|(id, _)| *id));
        for (id, entry) in &sets {
            b.adoptable.insert(entry.key_hash, *id);
            b.orphans.insert(*id);
            b.put_record(
                *id,
                SetRecord {
                    owner: ServiceRef(u32::MAX),
                    key: SetKey {
                        port: 0,
                        proto: socklb_k8s::model::Proto::Tcp,
                        family: socklb_k8s::model::Family::V4,
                        policy: crate::desired::PolicyKey::Cluster,
                    },
                    entry: *entry,
                    extra_known: Box::new([]),
                },
            );
        }
        let state = dp.read_state()?;
        b.members = state.members.len() as u64;
        for (k, v) in state.frontends {
            b.frontends.insert(k, Claim::programmed(v));
            *b.refs.entry(v.set_id).or_default() += 1;
        }
        for (k, v) in state.node_ports {
            b.node_ports.insert(k, Claim::programmed(v));
            *b.refs.entry(v.set_id).or_default() += 1;
        }
        for (k, v) in state.node_local {
            b.node_local.insert(k, Claim::programmed(v));
            *b.refs.entry(v.set_id).or_default() += 1;
        }
        b.nodes = NodeTable::adopt(state.node_addrs);
        Ok(b)
    }

    pub fn capacities(&self) -> Capacities {
        self.caps
    }

    pub fn stats(&self) -> Stats {
        Stats {
            services: self.services.iter().flatten().filter(|s| !s.sets.is_empty()).count(),
            sets: self.ids.used(),
            slots: self.slots.used(),
            retired_slots: self.slots.retired(),
            frontends: self.frontends.values().filter(|c| c.programmed.is_some()).count(),
            members: self.members,
            node_addrs: self.nodes.programmed_len(),
            node_ports: self.node_ports.values().filter(|c| c.programmed.is_some()).count(),
            node_local: self.node_local.values().filter(|c| c.programmed.is_some()).count(),
        }
    }

    /// The set with this id.
    pub fn set(&self, id: u32) -> Option<&SetRecord> {
        self.sets.get(id as usize).and_then(Option::as_ref)
    }

    /// Every set, by id.
    pub fn sets(&self) -> impl Iterator<Item = (u32, &SetRecord)> {
        self.sets.iter().enumerate().filter_map(|(i, s)| Some((i as u32, s.as_ref()?)))
    }

    /// The sets of a Service.
    pub fn sets_of(&self, service: ServiceRef) -> &[u32] {
        self.service(service).map_or(&[], |s| s.sets.as_slice())
    }

    /// The frontends as programmed, with their values.
    pub fn programmed_frontends(&self) -> impl Iterator<Item = (&FrontendKey, &FrontendValue)> {
        self.frontends.iter().filter_map(|(k, c)| Some((k, c.programmed.as_ref()?)))
    }

    /// NodePorts as programmed.
    pub fn programmed_node_ports(&self) -> impl Iterator<Item = (&NodePortKey, &NodePortValue)> {
        self.node_ports.iter().filter_map(|(k, c)| Some((k, c.programmed.as_ref()?)))
    }

    pub fn node_ids(&self) -> &NodeIds {
        &self.node_ids
    }

    /// The current problems of every Service.
    pub fn problems(&self) -> impl Iterator<Item = (ServiceRef, &Problem)> {
        self.services
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((ServiceRef(i as u32), r.as_ref()?)))
            .flat_map(|(s, r)| r.problems().iter().map(move |p| (s, p)))
    }

    fn service(&self, s: ServiceRef) -> Option<&ServiceRecord> {
        self.services.get(s.0 as usize).and_then(Option::as_ref)
    }

    fn service_mut(&mut self, s: ServiceRef) -> Option<&mut ServiceRecord> {
        self.services.get_mut(s.0 as usize).and_then(Option::as_mut)
    }

    fn take_service(&mut self, s: ServiceRef) -> Option<ServiceRecord> {
        self.services.get_mut(s.0 as usize).and_then(Option::take)
    }

    fn put_service(&mut self, s: ServiceRef, rec: ServiceRecord) {
        let i = s.0 as usize;
        if self.services.len() <= i {
            self.services.resize_with(i + 1, || None);
        }
        self.services[i] = Some(rec);
    }

    fn put_record(&mut self, id: u32, rec: SetRecord) {
        let i = id as usize;
        if self.sets.len() <= i {
            self.sets.resize_with(i + 1, || None);
        }
        self.sets[i] = Some(rec);
    }

    fn take_record(&mut self, id: u32) -> Option<SetRecord> {
        self.sets.get_mut(id as usize).and_then(Option::take)
    }

    fn usage(&self) -> Usage {
        Usage {
            sets: u64::from(self.ids.used() + self.ids.retired()),
            slots: self.slots.used() + self.slots.retired(),
            frontends: self.frontends.len() as u64,
            members: self.members,
            node_addrs: self.nodes.programmed_len() as u64,
            node_ports: self.node_ports.len() as u64,
            node_local: self.node_local.len() as u64,
        }
    }

    /// Grows the maps so that `extra` more entries fit, when they do not;
    /// waits for pending grace periods first if that is enough.
    fn make_room(&mut self, extra: Usage, dp: &mut dyn Datapath, report: &mut ApplyReport) {
        let mut need = self.usage().plus(extra);
        if self.caps.holds(&need) {
            return;
        }
        if self.ids.retired() > 0 || self.slots.retired() > 0 {
            dp.wait_grace();
            self.reclaim(dp);
            need = self.usage().plus(extra);
            if self.caps.holds(&need) {
                return;
            }
        }
        let to = self.caps.grown_for(&need, &self.ceilings);
        if to == self.caps {
            return;
        }
        match dp.grow(&to) {
            Ok(()) => {
                self.grew(to);
                report.grew = Some(to);
            }
            Err(e) => report.grow_error = Some(e.to_string()),
        }
    }

    /// Makes room for `extra` more entries in one growth, before a big
    /// change is applied in chunks (growing chunk by chunk would copy the
    /// maps again and again).
    pub fn reserve(&mut self, extra: Usage, dp: &mut dyn Datapath) -> ApplyReport {
        let mut report = ApplyReport::default();
        self.reclaim(dp);
        self.make_room(extra, dp, &mut report);
        report
    }

    fn grew(&mut self, to: Capacities) {
        self.caps = to;
        self.ids.grow(to.sets.min(self.ceilings.sets));
        self.slots.grow(to.slots.min(self.ceilings.slots));
    }

    fn reclaim(&mut self, dp: &dyn Datapath) {
        let done = dp.completed_epoch();
        self.ids.reclaim(done);
        self.slots.reclaim(done);
    }

    /// Brings the maps to what the `changes` want (`None`: the Service is
    /// gone), one Service at a time.
    pub fn apply(
        &mut self,
        changes: &[(ServiceRef, Option<&ServiceModel>)],
        names: &dyn ServiceNames,
        dp: &mut dyn Datapath,
    ) -> ApplyReport {
        self.apply_forced(changes, &BTreeSet::new(), names, dp)
    }

    /// As [`Self::apply`]; the sets of the Services in `force` are written
    /// again even if their records say they are current (drift repair).
    pub fn apply_forced(
        &mut self,
        changes: &[(ServiceRef, Option<&ServiceModel>)],
        force: &BTreeSet<ServiceRef>,
        names: &dyn ServiceNames,
        dp: &mut dyn Datapath,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        self.reclaim(dp);
        self.pay_member_debt(dp, &mut report);
        let desired: Vec<(ServiceRef, Option<DesiredService>)> = changes
            .iter()
            .map(|(s, m)| {
                let d = match (m, names.key(*s)) {
                    (Some(m), Some(key)) => Some(DesiredService::from_model(&key, m, &mut self.node_ids)),
                    _ => None,
                };
                (*s, d)
            })
            .collect();
        let extra = desired.iter().filter_map(|(_, d)| d.as_ref()).fold(Usage::default(), |u, d| {
            u.plus(Usage {
                sets: d.sets.len() as u64,
                slots: d.slots(),
                frontends: d.frontends.len() as u64,
                members: d.members(),
                node_ports: d.node_ports.len() as u64,
                node_local: d.node_ports.iter().map(|n| n.node_sets.len() as u64).sum(),
                ..Usage::default()
            })
        });
        self.make_room(extra, dp, &mut report);

        for (service, want) in &desired {
            self.apply_service(*service, want.as_ref(), force.contains(service), names, dp, &mut report);
        }
        // The keys whose claims changed, and those whose write failed before.
        let touched = std::mem::take(&mut self.unsettled);
        self.settle(&touched, names, dp, &mut report);
        let mut involved: BTreeSet<ServiceRef> = desired.iter().map(|(s, _)| *s).collect();
        involved.extend(self.claimants(&touched));
        self.refresh_conflicts(&involved, names, &mut report);
        self.remove_orphans(dp, &mut report);
        for (service, _) in &desired {
            if !report.failed.contains_key(service) {
                report.applied.push(*service);
            }
        }
        if self.ids.retired() > 0 || self.slots.retired() > 0 {
            dp.end_epoch();
        }
        report
    }

    /// Ends the adoption of a previous agent's maps: sets no Service
    /// claimed, and frontends and NodePorts none wants, are removed.
    pub fn finish_adoption(&mut self, names: &dyn ServiceNames, dp: &mut dyn Datapath) -> ApplyReport {
        let mut report = ApplyReport::default();
        self.adoptable.clear();
        let mut touched = std::mem::take(&mut self.unsettled);
        touched.frontends.extend(self.frontends.iter().filter(|(_, c)| c.claims.is_empty()).map(|(k, _)| *k));
        touched
            .node_ports
            .extend(self.node_ports.iter().filter(|(_, c)| c.claims.is_empty()).map(|(k, _)| *k));
        touched
            .node_local
            .extend(self.node_local.iter().filter(|(_, c)| c.claims.is_empty()).map(|(k, _)| *k));
        self.settle(&touched, names, dp, &mut report);
        self.remove_orphans(dp, &mut report);
        if self.ids.retired() > 0 || self.slots.retired() > 0 {
            dp.end_epoch();
        }
        report
    }

    /// Whether something waits for a retry that no Service's change will
    /// bring (a set to remove, a key whose write failed).
    pub fn has_leftovers(&self) -> bool {
        !self.orphans.is_empty()
            || !self.member_debt.is_empty()
            || !self.unsettled.frontends.is_empty()
            || !self.unsettled.node_ports.is_empty()
            || !self.unsettled.node_local.is_empty()
    }

    /// Every Service that claims one of the touched keys.
    fn claimants(&self, touched: &claims::Touched) -> BTreeSet<ServiceRef> {
        let mut out = BTreeSet::new();
        for k in &touched.frontends {
            out.extend(self.frontends.get(k).into_iter().flat_map(|c| c.claims.iter().map(|(s, _)| *s)));
        }
        for k in &touched.node_ports {
            out.extend(self.node_ports.get(k).into_iter().flat_map(|c| c.claims.iter().map(|(s, _)| *s)));
        }
        out
    }

    fn add_ref(&mut self, set_id: u32) {
        *self.refs.entry(set_id).or_default() += 1;
    }

    fn drop_ref(&mut self, set_id: u32) {
        if let Some(n) = self.refs.get_mut(&set_id) {
            *n -= 1;
            if *n == 0 {
                self.refs.remove(&set_id);
            }
        }
    }
}
