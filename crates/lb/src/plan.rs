//! Turns (applied maps, desired state) into ordered map operations, and
//! applies them to a datapath.
//!
//! The order is the transactional scheme documented in `socklb-common`: per
//! service, the new backend set is written under a fresh slot generation and
//! one write of the service entry switches to it. Operations are grouped into
//! units; a failure inside a service unit before its switch abandons that
//! unit (its half-written slots are removed), so the previous version of the
//! service keeps serving and every other service is unaffected.
//!
//! `plan` is pure. `execute` keeps a mirror of the maps up to date with every
//! write that succeeded, checks each operation's precondition against it
//! (a frontend only points at a complete service, a backend is deleted only
//! when no slot refers to it), and the next `plan` from the mirror retries
//! whatever failed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use socklb_common::{MAX_BACKENDS_PER_SERVICE, MemberKey, ServiceValue, SlotKey, service_flags};

use crate::{
    datapath::{Datapath, DatapathError, DesiredService, DesiredState, MapOp, MapState},
    render::Touched,
};

/// How a unit reacts to a failed operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    /// Each operation stands alone; a failure skips only that one.
    Independent,
    /// Operations before index `commit` prepare a switch; the operation at
    /// `commit` is the switch. A failure before or at the switch abandons the
    /// unit. Operations after it are clean-up and stand alone.
    Transaction { service_id: u32, commit: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub kind: UnitKind,
    pub ops: Vec<MapOp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub units: Vec<Unit>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.units.iter().all(|u| u.ops.is_empty())
    }

    pub fn op_count(&self) -> usize {
        self.units.iter().map(|u| u.ops.len()).sum()
    }

    pub fn ops(&self) -> impl Iterator<Item = &MapOp> {
        self.units.iter().flat_map(|u| u.ops.iter())
    }

    fn push(&mut self, kind: UnitKind, ops: Vec<MapOp>) {
        if !ops.is_empty() {
            self.units.push(Unit { kind, ops });
        }
    }
}

/// The operations that take `applied` to `desired`, in a safe order.
pub fn plan(applied: &MapState, desired: &DesiredState) -> Plan {
    let mut plan = Plan::default();

    // 1. Backends a new set may refer to.
    let puts = desired
        .backends
        .iter()
        .filter(|(id, v)| applied.backends.get(id) != Some(v))
        .map(|(&id, &value)| MapOp::PutBackend { id, value })
        .collect();
    plan.push(UnitKind::Independent, puts);

    // 2. One transaction per changed service.
    for (&id, want) in &desired.services {
        if let Some(unit) = service_unit(applied, id, want) {
            plan.units.push(unit);
        }
    }

    // 3. Node addresses (they point at nothing), and the node-local sets
    //    before the NodePorts that reach them.
    push_diff(&mut plan, &applied.node_addrs, &desired.node_addrs, |&addr, &value| MapOp::PutNodeAddr {
        addr,
        value,
    });
    push_deletes(&mut plan, &applied.node_addrs, &desired.node_addrs, |&a| MapOp::DeleteNodeAddr(a));
    push_diff(&mut plan, &applied.node_local, &desired.node_local, |&key, &value| MapOp::PutNodeLocal {
        key,
        value,
    });

    // 4. Frontends and NodePorts: writes first (a frontend moving to another
    //    service switches in one write), then deletes.
    push_diff(&mut plan, &applied.frontends, &desired.frontends, |&key, &value| MapOp::PutFrontend {
        key,
        value,
    });
    push_diff(&mut plan, &applied.node_ports, &desired.node_ports, |&key, &value| MapOp::PutNodePort {
        key,
        value,
    });
    push_deletes(&mut plan, &applied.frontends, &desired.frontends, |&k| MapOp::DeleteFrontend(k));
    push_deletes(&mut plan, &applied.node_ports, &desired.node_ports, |&k| MapOp::DeleteNodePort(k));
    push_deletes(&mut plan, &applied.node_local, &desired.node_local, |&k| MapOp::DeleteNodeLocal(k));

    // 5. Services no longer wanted: the entry first (it is unreachable once
    //    no frontend points at it), then its slots and members.
    for &id in applied.services.keys().filter(|id| !desired.services.contains_key(id)) {
        let mut ops = vec![MapOp::DeleteService { id }];
        ops.extend(slots_of(applied, id).map(MapOp::DeleteSlot));
        ops.extend(members_of(applied, id).map(MapOp::DeleteMember));
        if applied.names.contains_key(&id) {
            ops.push(MapOp::DeleteName { id });
        }
        plan.push(UnitKind::Transaction { service_id: id, commit: 0 }, ops);
    }

    // 6. Leftovers of services that have no entry at all (an interrupted
    //    earlier run): unreachable, so they go in any order.
    let orphan = |id: &u32| !applied.services.contains_key(id) && !desired.services.contains_key(id);
    let mut ops: Vec<MapOp> =
        applied.slots.keys().filter(|k| orphan(&k.service_id)).map(|&k| MapOp::DeleteSlot(k)).collect();
    ops.extend(applied.members.iter().filter(|m| orphan(&m.service_id)).map(|&m| MapOp::DeleteMember(m)));
    ops.extend(applied.names.keys().filter(|id| orphan(id)).map(|&id| MapOp::DeleteName { id }));
    plan.push(UnitKind::Independent, ops);

    // 7. Backends nothing refers to any more.
    let deletes = applied
        .backends
        .keys()
        .filter(|id| !desired.backends.contains_key(id))
        .map(|&id| MapOp::DeleteBackend { id })
        .collect();
    plan.push(UnitKind::Independent, deletes);

    plan
}

/// Writes for the entries of `desired` that `applied` lacks or holds
/// differently.
fn push_diff<K: Ord, V: PartialEq>(
    plan: &mut Plan,
    applied: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    put: impl Fn(&K, &V) -> MapOp,
) {
    let ops = desired.iter().filter(|(k, v)| applied.get(k) != Some(*v)).map(|(k, v)| put(k, v)).collect();
    plan.push(UnitKind::Independent, ops);
}

/// Deletes for the entries of `applied` that `desired` lacks.
fn push_deletes<K: Ord, V>(
    plan: &mut Plan,
    applied: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    delete: impl Fn(&K) -> MapOp,
) {
    let ops = applied.keys().filter(|k| !desired.contains_key(k)).map(delete).collect();
    plan.push(UnitKind::Independent, ops);
}

/// [`push_diff`] for the keys a render step touched.
fn push_touched_diff<K: Ord, V: PartialEq>(
    plan: &mut Plan,
    keys: &BTreeSet<K>,
    applied: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    put: impl Fn(&K, &V) -> MapOp,
) {
    let ops = keys
        .iter()
        .filter_map(|k| desired.get(k).filter(|v| applied.get(k) != Some(*v)).map(|v| put(k, v)))
        .collect();
    plan.push(UnitKind::Independent, ops);
}

/// [`push_deletes`] for the keys a render step touched.
fn push_touched_deletes<K: Ord, V>(
    plan: &mut Plan,
    keys: &BTreeSet<K>,
    applied: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    delete: impl Fn(&K) -> MapOp,
) {
    let ops =
        keys.iter().filter(|k| !desired.contains_key(k) && applied.contains_key(k)).map(delete).collect();
    plan.push(UnitKind::Independent, ops);
}

/// The operations for what one render step touched, in the same safe order
/// as [`plan`] (which looks at everything). Used for every sync after the
/// first one that completed: a change to one service costs a handful of
/// map lookups, whatever the number of services.
pub fn plan_touched(applied: &MapState, desired: &DesiredState, touched: &Touched) -> Plan {
    let mut plan = Plan::default();
    let puts = touched
        .backends
        .iter()
        .filter_map(|id| {
            desired.backends.get(id).filter(|v| applied.backends.get(id) != Some(v)).map(|v| (*id, *v))
        })
        .map(|(id, value)| MapOp::PutBackend { id, value })
        .collect();
    plan.push(UnitKind::Independent, puts);
    for id in &touched.services {
        if let Some(want) = desired.services.get(id)
            && let Some(unit) = service_unit(applied, *id, want)
        {
            plan.units.push(unit);
        }
    }
    let (a, d) = (applied, desired);
    push_touched_diff(&mut plan, &touched.node_addrs, &a.node_addrs, &d.node_addrs, |&addr, &value| {
        MapOp::PutNodeAddr { addr, value }
    });
    push_touched_deletes(&mut plan, &touched.node_addrs, &a.node_addrs, &d.node_addrs, |&x| {
        MapOp::DeleteNodeAddr(x)
    });
    push_touched_diff(&mut plan, &touched.node_local, &a.node_local, &d.node_local, |&key, &value| {
        MapOp::PutNodeLocal { key, value }
    });
    push_touched_diff(&mut plan, &touched.frontends, &a.frontends, &d.frontends, |&key, &value| {
        MapOp::PutFrontend { key, value }
    });
    push_touched_diff(&mut plan, &touched.node_ports, &a.node_ports, &d.node_ports, |&key, &value| {
        MapOp::PutNodePort { key, value }
    });
    push_touched_deletes(&mut plan, &touched.frontends, &a.frontends, &d.frontends, |&k| {
        MapOp::DeleteFrontend(k)
    });
    push_touched_deletes(&mut plan, &touched.node_ports, &a.node_ports, &d.node_ports, |&k| {
        MapOp::DeleteNodePort(k)
    });
    push_touched_deletes(&mut plan, &touched.node_local, &a.node_local, &d.node_local, |&k| {
        MapOp::DeleteNodeLocal(k)
    });
    for &id in touched.services.iter().filter(|id| !desired.services.contains_key(id)) {
        let mut ops = Vec::new();
        if applied.services.contains_key(&id) {
            ops.push(MapOp::DeleteService { id });
        }
        ops.extend(slots_of(applied, id).map(MapOp::DeleteSlot));
        ops.extend(members_of(applied, id).map(MapOp::DeleteMember));
        if applied.names.contains_key(&id) {
            ops.push(MapOp::DeleteName { id });
        }
        if applied.services.contains_key(&id) {
            plan.push(UnitKind::Transaction { service_id: id, commit: 0 }, ops);
        } else {
            plan.push(UnitKind::Independent, ops);
        }
    }
    let deletes = touched
        .backends
        .iter()
        .filter(|id| !desired.backends.contains_key(id) && applied.backends.contains_key(id))
        .map(|&id| MapOp::DeleteBackend { id })
        .collect();
    plan.push(UnitKind::Independent, deletes);
    plan
}

fn slots_of(state: &MapState, service_id: u32) -> impl Iterator<Item = SlotKey> + '_ {
    let start = SlotKey { service_id, generation: 0, index: 0 };
    state.slots.range(start..).map(|(k, _)| *k).take_while(move |k| k.service_id == service_id)
}

fn members_of(state: &MapState, service_id: u32) -> impl Iterator<Item = MemberKey> + '_ {
    let start = MemberKey { service_id, backend_id: 0 };
    state.members.range(start..).copied().take_while(move |k| k.service_id == service_id)
}

fn service_unit(applied: &MapState, id: u32, want: &DesiredService) -> Option<Unit> {
    let backends = &want.backends[..want.backends.len().min(MAX_BACKENDS_PER_SERVICE)];
    let current = applied.services.get(&id);
    let unchanged_set = applied.active_backends(id).as_deref() == Some(backends);
    let generation = match current {
        Some(v) if unchanged_set => v.generation,
        Some(v) => v.generation.wrapping_add(1),
        None => 0,
    };
    let value = ServiceValue {
        count: backends.len() as u16,
        generation,
        flags: want.flags,
        affinity_timeout_secs: want.affinity_timeout_secs,
        ..Default::default()
    };

    let wanted_members: BTreeSet<MemberKey> = if want.flags & service_flags::MEMBERSHIP != 0 {
        backends.iter().map(|&backend_id| MemberKey { service_id: id, backend_id }).collect()
    } else {
        BTreeSet::new()
    };
    let mut ops: Vec<MapOp> =
        members_of(applied, id).filter(|m| !wanted_members.contains(m)).map(MapOp::DeleteMember).collect();
    ops.extend(wanted_members.iter().filter(|m| !applied.members.contains(m)).map(|&m| MapOp::PutMember(m)));
    if applied.names.get(&id) != Some(&want.name) {
        ops.push(MapOp::PutName { id, name: Box::new(want.name) });
    }
    for (index, &backend_id) in backends.iter().enumerate() {
        let key = SlotKey { service_id: id, generation, index: index as u16 };
        if applied.slots.get(&key) != Some(&backend_id) {
            ops.push(MapOp::PutSlot { key, backend_id });
        }
    }
    let commit = ops.len();
    if current != Some(&value) {
        ops.push(MapOp::PutService { id, value });
    }
    let stale = |k: &SlotKey| k.generation != generation || k.index >= value.count;
    ops.extend(slots_of(applied, id).filter(stale).map(MapOp::DeleteSlot));

    if ops.is_empty() {
        return None;
    }
    Some(Unit { kind: UnitKind::Transaction { service_id: id, commit }, ops })
}

/// Why an operation did not happen.
#[derive(Debug)]
pub enum OpFailure {
    /// The datapath refused it.
    Failed { op: MapOp, error: DatapathError },
    /// Its precondition did not hold (an earlier operation it needs failed).
    Blocked { op: MapOp, reason: &'static str },
}

#[derive(Debug, Default)]
pub struct ExecReport {
    pub applied: usize,
    pub failures: Vec<OpFailure>,
    /// Services whose switch did not happen; they still serve their
    /// previous version (or nothing, if they are new).
    pub services_failed: BTreeSet<u32>,
}

impl ExecReport {
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }

    /// Whether any failure was a map being full.
    pub fn map_full(&self) -> bool {
        self.failures.iter().any(|f| matches!(f, OpFailure::Failed { error, .. } if error.is_map_full()))
    }
}

/// Applies `plan` to `dp`, keeping `mirror` equal to what the maps hold.
pub fn execute(plan: &Plan, dp: &mut dyn Datapath, mirror: &mut MapState) -> ExecReport {
    execute_with(plan, dp, mirror, &mut None)
}

/// As [`execute`], with reference counts kept across calls (`None` builds
/// them from the mirror on first need). They must describe `mirror`: drop
/// them (set `None`) whenever the mirror is replaced.
pub fn execute_with(
    plan: &Plan,
    dp: &mut dyn Datapath,
    mirror: &mut MapState,
    refs: &mut Option<Refs>,
) -> ExecReport {
    let mut exec = Executor { dp, mirror, report: ExecReport::default(), refs: refs.take() };
    let units = &plan.units;
    let mut i = 0;
    while i < units.len() {
        match units[i].kind {
            UnitKind::Independent => {
                let ops: Vec<&MapOp> = units[i].ops.iter().collect();
                exec.apply_group(&ops);
                i += 1;
            }
            UnitKind::Transaction { .. } => {
                // Consecutive transactions are applied in phases, each phase
                // batched across services: every service's preparation, then
                // every switch, then every clean-up. A service's new set is
                // invisible until its own switch, so interleaving services
                // this way keeps each one transactional.
                let end = units[i..]
                    .iter()
                    .position(|u| u.kind == UnitKind::Independent)
                    .map_or(units.len(), |p| i + p);
                exec.transactions(&units[i..end]);
                i = end;
            }
        }
    }
    *refs = exec.refs.take();
    exec.report
}

/// Reference counts that make the delete preconditions O(1). Built on the
/// first delete that needs them, then kept current.
#[derive(Debug, Default)]
pub struct Refs {
    /// Slots per backend id.
    slots_per_backend: HashMap<u32, usize>,
    /// Entries that lead readers to a service id: frontends, NodePorts and
    /// node-local sets.
    frontends_per_service: HashMap<u32, usize>,
}

impl Refs {
    pub fn build(state: &MapState) -> Self {
        let mut refs = Self::default();
        for b in state.slots.values() {
            *refs.slots_per_backend.entry(*b).or_default() += 1;
        }
        let referred = state
            .frontends
            .values()
            .map(|f| f.service_id)
            .chain(state.node_ports.values().map(|n| n.service_id))
            .chain(state.node_local.values().map(|n| n.service_id));
        for id in referred {
            *refs.frontends_per_service.entry(id).or_default() += 1;
        }
        refs
    }

    fn count(map: &mut HashMap<u32, usize>, key: u32, delta: isize) {
        let n = map.entry(key).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            map.remove(&key);
        }
    }

    /// Updates the counts for `op`, given the maps before it.
    fn note(&mut self, op: &MapOp, before: &MapState) {
        match op {
            MapOp::PutSlot { key, backend_id } => {
                if let Some(&old) = before.slots.get(key) {
                    Self::count(&mut self.slots_per_backend, old, -1);
                }
                Self::count(&mut self.slots_per_backend, *backend_id, 1);
            }
            MapOp::DeleteSlot(key) => {
                if let Some(&old) = before.slots.get(key) {
                    Self::count(&mut self.slots_per_backend, old, -1);
                }
            }
            MapOp::PutFrontend { key, value } => {
                if let Some(old) = before.frontends.get(key) {
                    Self::count(&mut self.frontends_per_service, old.service_id, -1);
                }
                Self::count(&mut self.frontends_per_service, value.service_id, 1);
            }
            MapOp::DeleteFrontend(key) => {
                if let Some(old) = before.frontends.get(key) {
                    Self::count(&mut self.frontends_per_service, old.service_id, -1);
                }
            }
            MapOp::PutNodePort { key, value } => {
                if let Some(old) = before.node_ports.get(key) {
                    Self::count(&mut self.frontends_per_service, old.service_id, -1);
                }
                Self::count(&mut self.frontends_per_service, value.service_id, 1);
            }
            MapOp::DeleteNodePort(key) => {
                if let Some(old) = before.node_ports.get(key) {
                    Self::count(&mut self.frontends_per_service, old.service_id, -1);
                }
            }
            MapOp::PutNodeLocal { key, value } => {
                if let Some(old) = before.node_local.get(key) {
                    Self::count(&mut self.frontends_per_service, old.service_id, -1);
                }
                Self::count(&mut self.frontends_per_service, value.service_id, 1);
            }
            MapOp::DeleteNodeLocal(key) => {
                if let Some(old) = before.node_local.get(key) {
                    Self::count(&mut self.frontends_per_service, old.service_id, -1);
                }
            }
            _ => {}
        }
    }
}

struct Executor<'a> {
    dp: &'a mut dyn Datapath,
    mirror: &'a mut MapState,
    report: ExecReport,
    refs: Option<Refs>,
}

impl Executor<'_> {
    /// Applies operations in order, batching runs that write the same map
    /// the same way. Returns, per operation, whether it took effect.
    fn apply_group(&mut self, ops: &[&MapOp]) -> Vec<bool> {
        let mut done = vec![false; ops.len()];
        let mut i = 0;
        while i < ops.len() {
            // A run of the same kind, whose preconditions hold.
            let kind = std::mem::discriminant(ops[i]);
            let mut run: Vec<usize> = Vec::new();
            let mut j = i;
            while j < ops.len() && std::mem::discriminant(ops[j]) == kind {
                match self.blocked(ops[j]) {
                    Some(reason) => {
                        self.report.failures.push(OpFailure::Blocked { op: ops[j].clone(), reason });
                    }
                    None => run.push(j),
                }
                // Operations of one kind never satisfy each other's
                // preconditions, so checking them all up front is exact.
                j += 1;
            }
            let mut k = 0;
            while k < run.len() {
                let batch: Vec<&MapOp> = run[k..].iter().map(|&x| ops[x]).collect();
                let (applied, error) = self.dp.apply_batch(&batch);
                for (n, &x) in run[k..k + applied].iter().enumerate() {
                    if let Some(refs) = &mut self.refs {
                        refs.note(batch[n], self.mirror);
                    }
                    self.mirror.apply(batch[n]);
                    done[x] = true;
                }
                self.report.applied += applied;
                k += applied;
                if let Some(error) = error {
                    self.report.failures.push(OpFailure::Failed { op: (*batch[applied]).clone(), error });
                    k += 1;
                }
            }
            i = j;
        }
        done
    }

    /// Runs transaction units in phases (see `execute_with`).
    fn transactions(&mut self, units: &[Unit]) {
        let parts: Vec<(u32, usize)> = units
            .iter()
            .map(|u| match u.kind {
                UnitKind::Transaction { service_id, commit } => (service_id, commit),
                UnitKind::Independent => (0, 0),
            })
            .collect();
        let mut failed = vec![false; units.len()];
        let mut written: Vec<Vec<SlotKey>> = vec![Vec::new(); units.len()];

        // Preparation, grouped by operation kind in each unit's own order.
        let kinds = |op: &MapOp| match op {
            MapOp::DeleteMember(_) => 0,
            MapOp::PutMember(_) => 1,
            MapOp::PutName { .. } => 2,
            MapOp::PutSlot { .. } => 3,
            _ => 4,
        };
        for kind in 0..=4 {
            let mut ops: Vec<&MapOp> = Vec::new();
            let mut owner: Vec<usize> = Vec::new();
            for (u, unit) in units.iter().enumerate().filter(|(u, _)| !failed[*u]) {
                for op in unit.ops[..parts[u].1].iter().filter(|op| kinds(op) == kind) {
                    ops.push(op);
                    owner.push(u);
                }
            }
            if ops.is_empty() {
                continue;
            }
            for (n, ok) in self.apply_group(&ops).into_iter().enumerate() {
                let u = owner[n];
                if !ok {
                    failed[u] = true;
                } else if let MapOp::PutSlot { key, .. } = ops[n] {
                    written[u].push(*key);
                }
            }
        }

        // A failure in a batch may be another service's doing (it took the
        // last room in a map): free what the failed services wrote, then
        // give each of them a second, separate try.
        if failed.iter().any(|f| *f) {
            for u in 0..units.len() {
                if failed[u] {
                    let slots = std::mem::take(&mut written[u]);
                    self.roll_back(&slots);
                }
            }
            let retry: Vec<usize> = (0..units.len()).filter(|u| failed[*u]).collect();
            for u in retry {
                let prep: Vec<&MapOp> = units[u].ops[..parts[u].1].iter().collect();
                let results = self.apply_group(&prep);
                failed[u] = results.iter().any(|ok| !ok);
                written[u] = prep
                    .iter()
                    .zip(&results)
                    .filter_map(|(op, ok)| match op {
                        MapOp::PutSlot { key, .. } if *ok => Some(*key),
                        _ => None,
                    })
                    .collect();
                if failed[u] {
                    let slots = std::mem::take(&mut written[u]);
                    self.roll_back(&slots);
                }
            }
        }

        // The switches, for the services whose preparation fully succeeded.
        let mut switches: Vec<&MapOp> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        for (u, unit) in units.iter().enumerate() {
            if !failed[u] {
                if let Some(op) = unit.ops.get(parts[u].1) {
                    switches.push(op);
                    owner.push(u);
                }
            }
        }
        for (n, ok) in self.apply_group(&switches).into_iter().enumerate() {
            if !ok {
                failed[owner[n]] = true;
            }
        }

        // Failed services keep their previous version; their half-written
        // slots go. Switched services drop their old generation.
        let mut cleanup: Vec<&MapOp> = Vec::new();
        let mut rollback: Vec<SlotKey> = Vec::new();
        for (u, unit) in units.iter().enumerate() {
            if failed[u] {
                self.report.services_failed.insert(parts[u].0);
                rollback.extend(written[u].iter().copied());
            } else {
                cleanup.extend(unit.ops.iter().skip(parts[u].1 + 1));
            }
        }
        self.roll_back(&rollback);
        self.apply_group(&cleanup);
    }

    /// Removes slots a failed transaction wrote for a generation it never
    /// switched to, so they do not take room from other services.
    fn roll_back(&mut self, written: &[SlotKey]) {
        let deletes: Vec<MapOp> = written
            .iter()
            .filter(|key| {
                // A slot of the live generation belongs to the set readers use.
                let live = self.mirror.services.get(&key.service_id);
                live.is_none_or(|s| s.generation != key.generation)
            })
            .map(|k| MapOp::DeleteSlot(*k))
            .collect();
        let refs: Vec<&MapOp> = deletes.iter().collect();
        self.apply_group(&refs);
    }

    fn refs(&mut self) -> &Refs {
        self.refs.get_or_insert_with(|| Refs::build(self.mirror))
    }

    /// The precondition of an operation, checked against the maps as they are.
    fn blocked(&mut self, op: &MapOp) -> Option<&'static str> {
        let mirror = &*self.mirror;
        match op {
            MapOp::PutSlot { backend_id, .. } if !mirror.backends.contains_key(backend_id) => {
                Some("the slot's backend is not in the map")
            }
            MapOp::PutService { id, value } => {
                let complete = (0..value.count).all(|index| {
                    let key = SlotKey { service_id: *id, generation: value.generation, index };
                    mirror.slots.contains_key(&key)
                });
                (!complete).then_some("a slot of the new generation is missing")
            }
            MapOp::PutFrontend { value, .. } if mirror.active_backends(value.service_id).is_none() => {
                Some("the frontend's service is not complete in the map")
            }
            MapOp::PutNodePort { value, .. } if mirror.active_backends(value.service_id).is_none() => {
                Some("the NodePort's service is not complete in the map")
            }
            MapOp::PutNodeLocal { value, .. } if mirror.active_backends(value.service_id).is_none() => {
                Some("the node-local set is not complete in the map")
            }
            MapOp::DeleteService { id } => self
                .refs()
                .frontends_per_service
                .contains_key(id)
                .then_some("a frontend still points at the service"),
            MapOp::DeleteBackend { id } => {
                self.refs().slots_per_backend.contains_key(id).then_some("a slot still refers to the backend")
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
