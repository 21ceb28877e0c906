//! Frontends, NodePorts and other nodes' sets: each key is claimed by the
//! Services that want it, and programmed with the claim of the first by
//! namespace/name (a conflict is reported to the others, which get the key
//! if the first lets it go).

use std::collections::{BTreeSet, HashMap};

use socklb_common::{FrontendKey, FrontendValue, NodeLocalKey, NodeLocalValue, NodePortKey, NodePortValue};
use socklb_k8s::model::{Problem, problem::ProblemKind};

use super::{ApplyReport, Balancer, Draft, Failure, ServiceNames, ServiceRef};
use crate::{
    datapath::{Datapath, DatapathError, MapOp},
    desired::{DesiredService, SetKey},
};

/// Who wants a key, and what the maps hold for it. One claimant is kept
/// inline (conflicts are rare).
#[derive(Clone, Debug)]
pub(super) struct Claim<V> {
    pub programmed: Option<V>,
    pub claims: smallvec::SmallVec<[(ServiceRef, V); 1]>,
}

impl<V> Default for Claim<V> {
    fn default() -> Self {
        Self { programmed: None, claims: smallvec::SmallVec::new() }
    }
}

impl<V: Copy + PartialEq> Claim<V> {
    pub fn programmed(v: V) -> Self {
        Self { programmed: Some(v), claims: smallvec::SmallVec::new() }
    }

    fn set_claim(&mut self, s: ServiceRef, v: V) {
        match self.claims.iter_mut().find(|(o, _)| *o == s) {
            Some(c) => c.1 = v,
            None => self.claims.push((s, v)),
        }
    }

    fn drop_claim(&mut self, s: ServiceRef) {
        self.claims.retain(|(o, _)| *o != s);
    }

    /// The winning claim: the first Service by namespace/name.
    fn winner(&self, names: &dyn ServiceNames) -> Option<(ServiceRef, V)> {
        self.claims.iter().copied().min_by(|(a, _), (b, _)| names.key(*a).cmp(&names.key(*b)).then(a.cmp(b)))
    }
}

/// The keys whose claims changed in this apply.
#[derive(Debug, Default)]
pub(super) struct Touched {
    pub frontends: BTreeSet<FrontendKey>,
    pub node_ports: BTreeSet<NodePortKey>,
    pub node_local: BTreeSet<NodeLocalKey>,
}

impl Touched {
    /// The key an operation writes.
    pub fn add(&mut self, op: &MapOp) {
        match *op {
            MapOp::PutFrontend { key, .. } | MapOp::DeleteFrontend(key) => {
                self.frontends.insert(key);
            }
            MapOp::PutNodePort { key, .. } | MapOp::DeleteNodePort(key) => {
                self.node_ports.insert(key);
            }
            MapOp::PutNodeLocal { key, .. } | MapOp::DeleteNodeLocal(key) => {
                self.node_local.insert(key);
            }
            _ => {}
        }
    }
}

/// Updates one map's claims of one Service from `old` to `new`.
fn reclaim<K: Copy + Eq + std::hash::Hash + Ord, V: Copy + PartialEq>(
    map: &mut HashMap<K, Claim<V>>,
    service: ServiceRef,
    old: &[(K, V)],
    new: &[(K, V)],
    touched: &mut BTreeSet<K>,
) {
    for (k, v) in old {
        if !new.iter().any(|(n, nv)| n == k && nv == v)
            && let Some(c) = map.get_mut(k)
        {
            c.drop_claim(service);
            touched.insert(*k);
        }
    }
    for (k, v) in new {
        if !old.iter().any(|(o, ov)| o == k && ov == v) {
            map.entry(*k).or_default().set_claim(service, *v);
            touched.insert(*k);
        }
    }
}

impl Balancer {
    /// The Service's claims: frontends and NodePorts of its programmed sets.
    /// A frontend whose set could not be written keeps its old claim (the
    /// previous version keeps serving).
    pub(super) fn claim(
        &mut self,
        service: ServiceRef,
        old: &Draft,
        rec: &mut Draft,
        want: Option<&DesiredService>,
        by_key: &HashMap<SetKey, u32>,
    ) {
        let touched = &mut self.unsettled;
        if let Some(want) = want {
            for fe in &want.frontends {
                match by_key.get(&fe.set) {
                    Some(&set_id) => {
                        rec.frontends.push((fe.key, FrontendValue { set_id, flags: fe.flags, _pad: 0 }));
                    }
                    None => rec.frontends.extend(old.frontends.iter().filter(|(k, _)| *k == fe.key)),
                }
            }
            for np in &want.node_ports {
                let Some(&set_id) = by_key.get(&np.set) else {
                    rec.node_ports.extend(old.node_ports.iter().filter(|(k, _)| *k == np.key));
                    continue;
                };
                for (node_id, set) in &np.node_sets {
                    if let Some(&local) = by_key.get(set) {
                        rec.node_local.push((
                            NodeLocalKey { set_id, node_id: *node_id },
                            NodeLocalValue { set_id: local },
                        ));
                    }
                }
                rec.node_ports.push((np.key, NodePortValue { set_id, flags: np.flags, _pad: 0 }));
            }
        }
        reclaim(&mut self.frontends, service, &old.frontends, &rec.frontends, &mut touched.frontends);
        reclaim(&mut self.node_ports, service, &old.node_ports, &rec.node_ports, &mut touched.node_ports);
        reclaim(&mut self.node_local, service, &old.node_local, &rec.node_local, &mut touched.node_local);
    }

    /// Programs each touched key with its winning claim: writes first (the
    /// node-local sets before the NodePorts that reach them), then deletes.
    /// Conflicts become problems of the losing Services.
    pub(super) fn settle(
        &mut self,
        touched: &Touched,
        names: &dyn ServiceNames,
        dp: &mut dyn Datapath,
        report: &mut ApplyReport,
    ) {
        let mut puts: Vec<(Option<ServiceRef>, MapOp)> = Vec::new();
        let mut deletes: Vec<(Option<ServiceRef>, MapOp)> = Vec::new();
        for k in &touched.node_local {
            plan_key(&mut self.node_local, k, names, &mut puts, &mut deletes, |key, v| match v {
                Some(value) => MapOp::PutNodeLocal { key, value },
                None => MapOp::DeleteNodeLocal(key),
            });
        }
        for k in &touched.frontends {
            plan_key(&mut self.frontends, k, names, &mut puts, &mut deletes, |key, v| match v {
                Some(value) => MapOp::PutFrontend { key, value },
                None => MapOp::DeleteFrontend(key),
            });
        }
        for k in &touched.node_ports {
            plan_key(&mut self.node_ports, k, names, &mut puts, &mut deletes, |key, v| match v {
                Some(value) => MapOp::PutNodePort { key, value },
                None => MapOp::DeleteNodePort(key),
            });
        }
        // Deletes in the reverse order: NodePorts before the node-local
        // sets they reach.
        deletes.reverse();
        let owners: Vec<Option<ServiceRef>> = puts.iter().chain(deletes.iter()).map(|(o, _)| *o).collect();
        let ops: Vec<MapOp> = puts.into_iter().chain(deletes).map(|(_, op)| op).collect();
        for (i, result) in apply_all(dp, &ops).into_iter().enumerate() {
            match result {
                None => {
                    report.ops += 1;
                    self.programmed(&ops[i]);
                }
                Some(e) => {
                    self.unsettled.add(&ops[i]);
                    if let Some(s) = owners[i] {
                        let f = if e.is_map_full() {
                            Failure::Capacity(e.to_string())
                        } else {
                            Failure::Write(e.to_string())
                        };
                        report.failed.entry(s).or_insert(f);
                    }
                }
            }
        }
    }

    /// Rebuilds the conflict problems of `services` (every claimant of a
    /// key but its winner has one); reports the new ones.
    pub(super) fn refresh_conflicts(
        &mut self,
        services: &BTreeSet<ServiceRef>,
        names: &dyn ServiceNames,
        report: &mut ApplyReport,
    ) {
        for s in services {
            let Some(rec) = self.service(*s) else { continue };
            let mut found: Vec<(ServiceRef, String)> = Vec::new();
            for (k, _) in rec.frontends.iter() {
                if let Some(w) = self.frontends.get(k).and_then(|c| c.winner(names)).filter(|(w, _)| w != s) {
                    found.push((w.0, format!("frontend {}", frontend_text(k))));
                }
            }
            for (k, _) in rec.node_ports() {
                if let Some(w) = self.node_ports.get(k).and_then(|c| c.winner(names)).filter(|(w, _)| w != s)
                {
                    found.push((w.0, format!("NodePort {}/{}", u16::from_be(k.port), proto_text(k.proto))));
                }
            }
            let had = rec.problems().iter().any(|p| p.kind == ProblemKind::FrontendConflict);
            if found.is_empty() && !had {
                continue;
            }
            let object = names.key(*s).map_or_else(|| "Service".to_string(), |k| format!("Service {k}"));
            let problems: Vec<Problem> = found
                .into_iter()
                .map(|(w, what)| {
                    let owner = names.key(w).map_or_else(String::new, |k| k.to_string());
                    Problem::new(
                        ProblemKind::FrontendConflict,
                        &object,
                        what,
                        format!("already used by Service {owner}"),
                    )
                })
                .collect();
            let Some(rec) = self.service_mut(*s) else { continue };
            for p in &problems {
                if !rec.problems().contains(p) {
                    report.problems.push((*s, p.clone()));
                }
            }
            rec.set_problems(ProblemKind::FrontendConflict, problems);
        }
    }

    /// Records a write that took effect, with the references it moves.
    fn programmed(&mut self, op: &MapOp) {
        let (old, new) = match *op {
            MapOp::PutFrontend { key, value } => {
                let c = self.frontends.entry(key).or_default();
                (c.programmed.replace(value).map(|v| v.set_id), Some(value.set_id))
            }
            MapOp::DeleteFrontend(key) => {
                let old = self.frontends.remove(&key).and_then(|c| c.programmed).map(|v| v.set_id);
                (old, None)
            }
            MapOp::PutNodePort { key, value } => {
                let c = self.node_ports.entry(key).or_default();
                (c.programmed.replace(value).map(|v| v.set_id), Some(value.set_id))
            }
            MapOp::DeleteNodePort(key) => {
                (self.node_ports.remove(&key).and_then(|c| c.programmed).map(|v| v.set_id), None)
            }
            MapOp::PutNodeLocal { key, value } => {
                let c = self.node_local.entry(key).or_default();
                (c.programmed.replace(value).map(|v| v.set_id), Some(value.set_id))
            }
            MapOp::DeleteNodeLocal(key) => {
                (self.node_local.remove(&key).and_then(|c| c.programmed).map(|v| v.set_id), None)
            }
            _ => (None, None),
        };
        if let Some(id) = new {
            self.add_ref(id);
        }
        if let Some(id) = old {
            self.drop_ref(id);
        }
    }
}

/// Decides the write for one key: its winner's value, or a delete when no
/// one claims it. A key nobody claims and nothing programs is forgotten.
fn plan_key<K: Copy + Eq + std::hash::Hash, V: Copy + PartialEq>(
    map: &mut HashMap<K, Claim<V>>,
    k: &K,
    names: &dyn ServiceNames,
    puts: &mut Vec<(Option<ServiceRef>, MapOp)>,
    deletes: &mut Vec<(Option<ServiceRef>, MapOp)>,
    op: impl Fn(K, Option<V>) -> MapOp,
) {
    let Some(c) = map.get(k) else { return };
    match c.winner(names) {
        Some((s, v)) if c.programmed != Some(v) => puts.push((Some(s), op(*k, Some(v)))),
        Some(_) => {}
        None if c.programmed.is_some() => deletes.push((None, op(*k, None))),
        None => {
            map.remove(k);
        }
    }
}

/// Applies every operation, going on after failures; the error of each
/// that failed, by position.
fn apply_all(dp: &mut dyn Datapath, ops: &[MapOp]) -> Vec<Option<DatapathError>> {
    let mut out: Vec<Option<DatapathError>> = Vec::with_capacity(ops.len());
    let mut i = 0;
    while i < ops.len() {
        let (done, err) = dp.apply_batch(&ops[i..]);
        out.extend((0..done).map(|_| None));
        i += done;
        if let Some(e) = err {
            out.push(Some(e));
            i += 1;
        } else if done == 0 {
            break;
        }
    }
    out.resize_with(ops.len(), || None);
    out
}

fn proto_text(p: u8) -> &'static str {
    match p {
        socklb_common::PROTO_TCP => "TCP",
        socklb_common::PROTO_UDP => "UDP",
        _ => "?",
    }
}

fn frontend_text(k: &FrontendKey) -> String {
    let ip = socklb_common::ip_from_addr(&k.addr);
    format!("{}/{}", std::net::SocketAddr::new(ip, u16::from_be(k.port)), proto_text(k.proto))
}
