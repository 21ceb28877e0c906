//! The single owner of the agent's state: it takes source events, rebuilds
//! the models of the Services that changed, renders the desired state, plans
//! against what the maps hold and applies the plan.
//!
//! Nothing here is async and nothing here knows the kernel: the datapath is a
//! trait object, so the whole loop is tested against the fake datapath.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Instant, SystemTime},
};

use socklb_bpf::stale::Doomed;
use socklb_k8s::{
    model::{
        BackendSet, NodeContext, ObjKey, Problem, ServiceModel, SetId, build_service,
        service::ServiceOutcome, slices::ParsedSlice,
    },
    store::{SourceEvent, Store},
};
use socklb_lb::{
    datapath::{Datapath, DatapathError, DesiredState, MapState},
    ids::IdAllocator,
    plan::{self, ExecReport, OpFailure},
    render::{Renderer, Touched},
};

use crate::metrics::{KindLabel, MapLabel, Metrics};

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_services: u32,
    pub max_backends: u32,
}

/// What one sync did, for logs and tests.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub ops_applied: usize,
    pub failures: usize,
    /// Every change took effect.
    pub complete: bool,
    /// Services whose model changed in this sync.
    pub changed: Vec<ObjKey>,
    /// Backends that left a service in this sync (their sockets are stale).
    pub doomed: Vec<Doomed>,
    /// Backends that joined (or rejoined) a changed service in this sync: a
    /// queued termination for them must be dropped.
    pub revived: Vec<Doomed>,
}

pub struct Reconciler {
    dp: Box<dyn Datapath + Send>,
    mirror: MapState,
    ids: IdAllocator,
    store: Store,
    ctx: NodeContext,
    models: BTreeMap<ObjKey, ServiceModel>,
    problems: BTreeMap<ObjKey, BTreeSet<Problem>>,
    renderer: Renderer,
    metrics: Arc<Metrics>,
    /// Plan from everything, not just what the last change touched: at the
    /// first sync (the maps may hold what a previous agent left) and after a
    /// sync that did not complete.
    full_plan: bool,
    /// The last sync left something to retry.
    pending: bool,
    /// Reference counts of the mirror, kept across syncs (see plan::Refs).
    refs: Option<plan::Refs>,
    /// Changes triggered before this are not measured (as kube-proxy).
    started: SystemTime,
    /// The node addresses were rendered at least once.
    nodes_rendered: bool,
    /// Warned that `primary` has no Node object to read.
    warned_no_node: bool,
}

impl Reconciler {
    /// Adopts what the maps hold: the mirror and the ids come from them, so
    /// an unchanged desired state writes nothing.
    pub fn new(
        dp: Box<dyn Datapath + Send>,
        ctx: NodeContext,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DatapathError> {
        let mirror = dp.read_state()?;
        let ids = IdAllocator::from_maps(&mirror, limits.max_services, limits.max_backends);
        // Built now, from what the maps hold, so that no sync pays for it.
        let refs = Some(plan::Refs::build(&mirror));
        Ok(Self {
            dp,
            mirror,
            ids,
            store: Store::default(),
            ctx,
            models: BTreeMap::new(),
            problems: BTreeMap::new(),
            renderer: Renderer::default(),
            metrics,
            full_plan: true,
            pending: false,
            refs,
            started: SystemTime::now(),
            nodes_rendered: false,
            warned_no_node: false,
        })
    }

    pub fn apply_event(&mut self, event: SourceEvent) {
        for p in self.store.apply(event) {
            self.report(&p);
        }
    }

    /// This node's context as the sources last described it: its zone
    /// (from its Node object; a change rebuilds every Service) and its
    /// interface addresses.
    fn refresh_node_context(&mut self) {
        if let Some(addrs) = self.store.host_addresses() {
            self.ctx.host_addresses = addrs.to_vec();
        }
        if let Some(me) = self.store.nodes().get(&self.ctx.node_name)
            && me.zone != self.ctx.zone
        {
            self.ctx.zone = me.zone.clone();
            self.store.mark_all_dirty();
        }
        if self.ctx.nodeport_addresses == socklb_k8s::model::nodes::NodePortAddresses::Primary
            && !self.store.nodes().contains_key(&self.ctx.node_name)
            && !std::mem::replace(&mut self.warned_no_node, true)
        {
            tracing::warn!(
                node = %self.ctx.node_name,
                "--nodeport-addresses primary, but there is no Node object of this name: NodePorts are not \
                 served on this node's addresses"
            );
        }
    }

    pub fn node_context(&self) -> &NodeContext {
        &self.ctx
    }

    pub fn needs_retry(&self) -> bool {
        self.pending
    }

    pub fn mirror(&self) -> &MapState {
        &self.mirror
    }

    pub fn desired(&self) -> &DesiredState {
        &self.renderer.desired
    }

    /// Which set each service id stands for.
    pub fn sets(&self) -> &BTreeMap<u32, SetId> {
        &self.renderer.sets
    }

    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.store.problems().chain(self.problems.values().flatten()).chain(self.renderer.problems())
    }

    /// Rebuilds what changed and brings the maps to the desired state.
    pub fn sync(&mut self) -> SyncReport {
        let started = Instant::now();
        let mut touched = Touched::default();
        if self.store.take_nodes_dirty() || !self.nodes_rendered {
            self.nodes_rendered = true;
            self.refresh_node_context();
            self.renderer.update_nodes(
                &self.ctx,
                self.store.nodes(),
                &mut self.ids,
                &self.mirror,
                &mut touched,
            );
        }
        let keys = match self.store.take_dirty() {
            Some(dirty) => dirty,
            None => {
                let mut all = self.store.all_service_keys();
                all.extend(self.models.keys().cloned());
                all
            }
        };
        let mut changed = Vec::new();
        let mut before: Vec<(u32, BackendSet)> = Vec::new();
        for key in keys {
            let old = self.models.get(&key).cloned();
            if self.rebuild(&key) {
                // The ids the old sets had, for the stale-socket check.
                for set in old.into_iter().flat_map(|m| m.sets) {
                    if let Some(id) = self.ids.known_service(&set.id.to_string()) {
                        before.push((id, set));
                    }
                }
                changed.push(key);
            }
        }

        let rebuilt = started.elapsed();
        for key in &changed {
            let fresh =
                self.renderer.update(key, self.models.get(key), &mut self.ids, &self.mirror, &mut touched);
            for p in fresh {
                self.report(&p);
            }
        }

        let rendered_at = started.elapsed();
        let full = self.full_plan;
        let triggers = self.store.take_triggers();
        let report = self.execute(&touched);
        self.after_execute(&report, &changed, &touched, full);
        self.observe_programming(triggers, &report.services_failed);
        let (doomed, revived) = self.doomed(&before, &report.services_failed);
        let total = started.elapsed();
        self.metrics.sync_duration.observe(total.as_secs_f64());
        if total.as_millis() >= 100 {
            tracing::info!(
                services_changed = changed.len(),
                ops = report.applied,
                rebuild_ms = rebuilt.as_millis() as u64,
                render_ms = (rendered_at - rebuilt).as_millis() as u64,
                plan_and_write_ms = (total - rendered_at).as_millis() as u64,
                "slow sync"
            );
        }
        SyncReport {
            ops_applied: report.applied,
            failures: report.failures.len(),
            complete: report.is_complete(),
            changed,
            doomed,
            revived,
        }
    }

    /// `socklb_network_programming_duration_seconds`: for each Service whose
    /// change is now in the datapath, from its trigger time to now. Changes
    /// a sync could not apply wait for the next one.
    fn observe_programming(&mut self, triggers: BTreeMap<ObjKey, SystemTime>, failed: &BTreeSet<u32>) {
        if triggers.is_empty() {
            return;
        }
        let failed: BTreeSet<&ObjKey> =
            failed.iter().filter_map(|id| self.renderer.sets.get(id)).map(|s| &s.service).collect();
        let now = SystemTime::now();
        let mut retry = Vec::new();
        for (key, t) in triggers {
            if failed.contains(&key) {
                retry.push((key, t));
            } else if t >= self.started {
                let took = now.duration_since(t).unwrap_or_default();
                self.metrics.network_programming.observe(took.as_secs_f64());
            }
        }
        self.store.restore_triggers(retry);
    }

    /// Backends of the changed services that the EndpointSlices no longer
    /// list at all, per service id, where the new version was applied; and
    /// those the new version lists that the old one did not.
    fn doomed(&self, before: &[(u32, BackendSet)], failed: &BTreeSet<u32>) -> (Vec<Doomed>, Vec<Doomed>) {
        let (mut doomed, mut revived) = (Vec::new(), Vec::new());
        for (id, set) in before {
            let id = *id;
            if failed.contains(&id) {
                continue; // the old set still serves
            }
            let now = self.models.get(&set.id.service).and_then(|m| m.sets.iter().find(|s| s.id == set.id));
            let proto = set.id.proto.number();
            let was: BTreeSet<&std::net::SocketAddr> = set.backends.iter().chain(set.known.iter()).collect();
            let is: BTreeSet<&std::net::SocketAddr> =
                now.map(|n| n.backends.iter().chain(n.known.iter()).collect()).unwrap_or_default();
            let entry = |b: &&std::net::SocketAddr| Doomed { service_id: id, backend: **b, proto };
            doomed.extend(was.difference(&is).map(entry));
            revived.extend(is.difference(&was).map(entry));
        }
        (doomed, revived)
    }

    /// Reads the maps back, counts what differs from the desired state and
    /// repairs it. Returns the number of operations the repair took.
    pub fn resync(&mut self) -> Result<usize, DatapathError> {
        let actual = self.dp.read_state()?;
        let drift = plan::plan(&actual, &self.renderer.desired).op_count();
        self.mirror = actual;
        self.refs = Some(plan::Refs::build(&self.mirror));
        self.full_plan = true;
        let touched = Touched::default();
        let report = self.execute(&touched);
        self.after_execute(&report, &[], &touched, true);
        if drift > 0 {
            self.metrics.drift_repaired.inc_by(drift as u64);
            tracing::warn!(
                operations = drift,
                "resync found the maps drifted from the desired state; repaired"
            );
        }
        Ok(drift)
    }

    fn execute(&mut self, touched: &Touched) -> ExecReport {
        let full = std::mem::take(&mut self.full_plan);
        let p = if full {
            plan::plan(&self.mirror, &self.renderer.desired)
        } else {
            plan::plan_touched(&self.mirror, &self.renderer.desired, touched)
        };
        if p.is_empty() {
            return ExecReport::default();
        }
        let started = Instant::now();
        let report = plan::execute_with(&p, self.dp.as_mut(), &mut self.mirror, &mut self.refs);
        self.metrics.map_write_duration.observe(started.elapsed().as_secs_f64());
        report
    }

    fn after_execute(&mut self, report: &ExecReport, changed: &[ObjKey], touched: &Touched, full: bool) {
        self.pending = !report.is_complete();
        if self.pending {
            self.full_plan = true;
        }
        for f in &report.failures {
            if let OpFailure::Failed { op, error } = f {
                self.metrics
                    .map_operation_errors
                    .get_or_create(&MapLabel { map: op.map_name().into() })
                    .inc();
                tracing::debug!(%error, "map operation failed");
            }
        }
        if self.pending {
            self.metrics.reconcile_errors.inc();
            let full = report.map_full();
            for id in &report.services_failed {
                let name =
                    self.renderer.sets.get(id).map(ToString::to_string).unwrap_or_else(|| format!("id {id}"));
                if full {
                    tracing::error!(set = %name, "map full: the service keeps its previous version");
                    self.metrics.invalid("capacity");
                } else {
                    tracing::warn!(set = %name, "update failed: the service keeps its previous version; retrying");
                }
            }
        }
        if report.applied > 0 {
            self.metrics.syncs.inc();
        }
        let failed: BTreeSet<&ObjKey> = report
            .services_failed
            .iter()
            .filter_map(|id| self.renderer.sets.get(id))
            .map(|s| &s.service)
            .collect();
        for key in changed {
            match self.models.get(key) {
                Some(m) if !failed.contains(key) => {
                    let backends: BTreeSet<_> = m.sets.iter().flat_map(|s| s.backends.iter()).collect();
                    tracing::info!(
                        service = %key,
                        frontends = m.frontends.len(),
                        backends = backends.len(),
                        "service applied"
                    );
                }
                Some(_) => {}
                None => tracing::info!(service = %key, "service removed"),
            }
        }
        // Ids that are in neither the maps nor the desired state are free.
        let desired = &self.renderer.desired;
        let (mirror, ids) = (&self.mirror, &mut self.ids);
        if full {
            let svc_ids: BTreeSet<u32> =
                mirror.services.keys().chain(desired.services.keys()).copied().collect();
            let be_ids: BTreeSet<u32> =
                mirror.backends.keys().chain(desired.backends.keys()).copied().collect();
            ids.release_unused(&svc_ids, &be_ids);
        } else {
            let gone = |id: &&u32| !mirror.services.contains_key(id) && !desired.services.contains_key(id);
            for id in touched.services.iter().filter(gone) {
                ids.release_service(*id);
            }
            let gone = |id: &&u32| !mirror.backends.contains_key(id) && !desired.backends.contains_key(id);
            for id in touched.backends.iter().filter(gone) {
                ids.release_backend(*id);
            }
        }
        if report.applied > 0 {
            self.update_gauges();
        }
    }

    fn update_gauges(&self) {
        use socklb_common::frontend_flags as f;
        self.metrics.services.set(self.models.len() as i64);
        self.metrics.backends.set(self.mirror.backends.len() as i64);
        let mut kinds = [0i64; 4];
        for (k, v) in &self.mirror.frontends {
            if k.scope != socklb_common::SCOPE_INTERNAL {
                continue;
            }
            let i = match v.flags {
                x if x & f::NODE_PORT != 0 => 1,
                x if x & f::EXTERNAL_IP != 0 => 2,
                x if x & f::LOAD_BALANCER != 0 => 3,
                _ => 0,
            };
            kinds[i] += 1;
        }
        // NodePorts: one entry per (port, protocol, family), on every node.
        kinds[1] += self.mirror.node_ports.len() as i64;
        for (kind, n) in ["ClusterIP", "NodePort", "ExternalIP", "LoadBalancer"].into_iter().zip(kinds) {
            self.metrics.frontends.get_or_create(&KindLabel { kind: kind.into() }).set(n);
        }
        use socklb_common::map_names as m;
        let entries = [
            (m::FRONTENDS, self.mirror.frontends.len()),
            (m::SERVICES, self.mirror.services.len()),
            (m::SLOTS, self.mirror.slots.len()),
            (m::BACKENDS, self.mirror.backends.len()),
            (m::MEMBERS, self.mirror.members.len()),
            (m::SVC_NAMES, self.mirror.names.len()),
            (m::NODE_ADDRS, self.mirror.node_addrs.len()),
            (m::NODEPORTS, self.mirror.node_ports.len()),
            (m::NODE_LOCAL, self.mirror.node_local.len()),
        ];
        for (map, n) in entries {
            self.metrics.map_entries.get_or_create(&MapLabel { map: map.into() }).set(n as i64);
        }
    }

    /// Rebuilds one Service's model; returns whether it changed.
    fn rebuild(&mut self, key: &ObjKey) -> bool {
        let slices: Vec<&ParsedSlice> = self.store.slices_of(key).filter_map(|s| s.parsed.as_ref()).collect();
        let mut problems = BTreeSet::new();
        let model = match self.store.service(key).map(|s| &s.outcome) {
            Some(ServiceOutcome::Proxied(svc)) => {
                let (model, ps) = build_service(svc, &slices, &self.ctx);
                problems.extend(ps);
                Some(model)
            }
            Some(ServiceOutcome::NotProxied(why)) => {
                tracing::debug!(service = %key, why, "not proxied");
                None
            }
            None => None,
        };
        let old = self.problems.remove(key).unwrap_or_default();
        for p in problems.difference(&old) {
            self.report(p);
        }
        if !problems.is_empty() {
            self.problems.insert(key.clone(), problems);
        }
        let changed = match &model {
            Some(m) => self.models.get(key) != Some(m),
            None => self.models.contains_key(key),
        };
        match model {
            Some(m) => self.models.insert(key.clone(), m),
            None => self.models.remove(key),
        };
        changed
    }

    fn report(&self, p: &Problem) {
        tracing::warn!(object = %p.object, field = %p.field, reason = %p.reason, "skipped invalid input");
        self.metrics.invalid(p.kind.label());
    }
}
