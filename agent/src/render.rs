//! The models of all Services to the datapath's desired state: ids for sets
//! and backends, map keys for frontends.
//!
//! A frontend claimed by two Services goes to the first in namespace/name
//! order; the other is reported. A set that cannot get an id (the id space
//! is full) is left out with its frontends, and reported.

use std::collections::{BTreeMap, btree_map::Entry};

use socklb_common::{
    BackendValue, FrontendKey, FrontendValue, SCOPE_BIND_GUARD, ServiceName, addr_from_ip, backend_flags,
};

use crate::{
    datapath::{DesiredService, DesiredState, MapState},
    ids::IdAllocator,
    model::{ObjKey, Problem, ServiceModel, SetId, problem::ProblemKind},
};

#[derive(Debug, Default)]
pub struct Rendered {
    pub desired: DesiredState,
    /// Which set each service id stands for.
    pub sets: BTreeMap<u32, SetId>,
    pub problems: Vec<Problem>,
}

/// `applied` is what the maps hold now: a set that cannot be rendered in
/// full (an id space is exhausted) keeps the version it has there, so a full
/// map never removes or half-programs a service that was working.
pub fn render<'a>(
    models: impl IntoIterator<Item = (&'a ObjKey, &'a ServiceModel)>,
    ids: &mut IdAllocator,
    applied: &MapState,
) -> Rendered {
    let mut out = Rendered::default();
    let mut owner: BTreeMap<FrontendKey, ObjKey> = BTreeMap::new();
    for (key, model) in models {
        let mut set_ids: BTreeMap<&SetId, u32> = BTreeMap::new();
        for set in &model.sets {
            let name = set.id.to_string();
            let Some(id) = ids.service(&name) else {
                out.problems.push(Problem::new(
                    ProblemKind::Capacity,
                    format!("Service {key}"),
                    format!("port {}", set.id.port),
                    "no free service id: the services map is full",
                ));
                continue;
            };
            let mut backends = Vec::with_capacity(set.backends.len());
            let mut full = false;
            for addr in &set.backends {
                let value = BackendValue {
                    addr: addr_from_ip(addr.ip()),
                    port: addr.port().to_be(),
                    proto: set.id.proto.number(),
                    flags: if set.local.contains(addr) { backend_flags::LOCAL } else { 0 },
                };
                let Some(bid) = ids.backend((value.addr, value.port, value.proto)) else {
                    full = true;
                    break;
                };
                out.desired.backends.insert(bid, value);
                backends.push(bid);
            }
            if full {
                out.problems.push(Problem::new(
                    ProblemKind::Capacity,
                    format!("Service {key}"),
                    format!("port {}", set.id.port),
                    "no free backend id: the backends map is full; the previous version stays",
                ));
                if let Some((svc, backends)) = previous_version(applied, id) {
                    out.desired.backends.extend(backends);
                    out.desired.services.insert(id, svc);
                    out.sets.insert(id, set.id.clone());
                    set_ids.insert(&set.id, id);
                }
                continue;
            }
            out.desired.services.insert(
                id,
                DesiredService {
                    name: ServiceName::new(&name),
                    flags: set.flags,
                    affinity_timeout_secs: set.affinity_timeout_secs,
                    backends,
                },
            );
            out.sets.insert(id, set.id.clone());
            set_ids.insert(&set.id, id);
        }
        for fe in &model.frontends {
            let Some(&service_id) = set_ids.get(&fe.set) else {
                continue;
            };
            let addr = if fe.scope == SCOPE_BIND_GUARD { [0; 4] } else { addr_from_ip(fe.addr.ip()) };
            let fk =
                FrontendKey { addr, port: fe.addr.port().to_be(), proto: fe.proto.number(), scope: fe.scope };
            match owner.entry(fk) {
                Entry::Occupied(first) => out.problems.push(Problem::new(
                    ProblemKind::FrontendConflict,
                    format!("Service {key}"),
                    format!("{} {}/{}", fe.kind, fe.addr, fe.proto),
                    format!("already used by Service {}", first.get()),
                )),
                Entry::Vacant(slot) => {
                    slot.insert(key.clone());
                    let value = FrontendValue { service_id, flags: fe.kind.flag(), _pad: 0 };
                    out.desired.frontends.insert(fk, value);
                }
            }
        }
    }
    // Backends of sets that were dropped after their ids were taken.
    let used: std::collections::BTreeSet<u32> =
        out.desired.services.values().flat_map(|s| s.backends.iter().copied()).collect();
    out.desired.backends.retain(|id, _| used.contains(id));
    out
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
