//! The single owner of the agent's state: it takes source events, builds
//! the models of the Services that changed and hands them to the balancer,
//! which writes what differs into the maps.
//!
//! Nothing here is async and nothing here knows the kernel: the datapath is
//! a trait object, so the whole loop is tested against the fake datapath.
//! A Service whose update failed is retried on its own, with exponential
//! backoff; nothing else is planned again.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use socklb_bpf::stale::Doomed;
use socklb_k8s::{
    model::{NodeContext, ObjKey, Problem, build::NamedSlice, build_service, service::ServiceOutcome},
    store::{ServiceId, SourceEvent, Store},
};
use socklb_lb::{
    Balancer, ServiceRef,
    balancer::{Drift, Failure, Stats},
    capacity::Ceilings,
    datapath::{Datapath, DatapathError},
};

use crate::metrics::{KindLabel, MapLabel, Metrics};

#[derive(Clone, Debug)]
pub struct Limits {
    /// `--max-services`: the most backend sets the maps may grow to.
    pub max_services: u32,
    /// `--max-backends`: the most backend slots.
    pub max_backends: u32,
}

/// What one sync did, for logs and tests.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub ops_applied: usize,
    pub failures: usize,
    /// Every change took effect.
    pub complete: bool,
    /// Services handed to the balancer in this sync (at most the first
    /// few named in `changed`).
    pub services: usize,
    pub changed: Vec<ObjKey>,
    /// Backends that left a set in this sync (their sockets are stale).
    pub doomed: Vec<Doomed>,
    /// Backends that joined (or rejoined) a set in this sync: a queued
    /// termination for them must be dropped.
    pub revived: Vec<Doomed>,
}

/// Per-Service retries after a failure: 1 s, doubling to 60 s.
#[derive(Debug, Default)]
struct Retries {
    due: BTreeMap<ServiceId, (u32, Instant)>,
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

impl Retries {
    fn failed(&mut self, id: ServiceId, now: Instant) -> Duration {
        let attempts = self.due.get(&id).map_or(0, |(n, _)| *n);
        let wait = RETRY_FIRST.saturating_mul(1 << attempts.min(6)).min(RETRY_MAX);
        self.due.insert(id, (attempts + 1, now + wait));
        wait
    }

    fn succeeded(&mut self, id: ServiceId) {
        self.due.remove(&id);
    }

    fn take_due(&mut self, now: Instant) -> Vec<ServiceId> {
        self.due.iter().filter(|(_, (_, at))| *at <= now).map(|(k, _)| *k).collect()
    }

    fn next(&self) -> Option<Instant> {
        self.due.values().map(|(_, at)| *at).min()
    }
}

/// Services built and applied at a time in a big sync.
const SYNC_CHUNK: usize = 1_024;

/// Up to this many changed Services are logged one line each; more get one
/// summary line.
const PER_SERVICE_LINES: usize = 20;

/// Sets checked per resync step: a step takes a few milliseconds, so an
/// event never waits long behind a resync.
const RESYNC_CHUNK: u32 = 4_096;

pub struct Reconciler {
    dp: Box<dyn Datapath + Send>,
    balancer: Balancer,
    store: Store,
    ctx: NodeContext,
    /// Problems of the models (invalid input is reported once).
    problems: BTreeMap<ServiceId, BTreeSet<Problem>>,
    retries: Retries,
    metrics: Arc<Metrics>,
    /// The first sync after start adopts what a previous agent left.
    adopting: bool,
    /// Something no Service's change will bring waits for a retry.
    leftovers: bool,
    /// Changes triggered before this are not measured (as kube-proxy).
    started: SystemTime,
    nodes_rendered: bool,
    warned_no_node: bool,
    /// A resync round is under way.
    resyncing: bool,
    resync_found: usize,
    first_sync_done: bool,
    /// `--per-service-metrics`: each set's labels, for the counters.
    set_labels: Option<crate::inspect::SetLabels>,
    /// When the gauges were last refreshed, and whether a sync since left
    /// them behind (see `GAUGES_EVERY_SYNC_UP_TO`).
    gauges_at: Option<Instant>,
    gauges_stale: bool,
    gauge_period: Duration,
}

/// Up to this many Services the gauges are refreshed at every sync. Above,
/// at most once per [`GAUGE_PERIOD`] (and by the loop's tick): they count
/// over every Service and frontend, which at 100k Services costs more than
/// the sync of one change.
const GAUGES_EVERY_SYNC_UP_TO: usize = 10_000;
pub const GAUGE_PERIOD: Duration = Duration::from_secs(1);

impl Reconciler {
    /// Adopts what the maps hold: the sets keep their ids and slots, so an
    /// unchanged cluster writes nothing.
    pub fn new(
        dp: Box<dyn Datapath + Send>,
        ctx: NodeContext,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DatapathError> {
        let ceilings = Ceilings::new(limits.max_services, limits.max_backends);
        let balancer = Balancer::adopt(dp.as_ref(), ceilings)?;
        Ok(Self {
            dp,
            balancer,
            store: Store::new(ctx.service_proxy_name.clone()),
            ctx,
            problems: BTreeMap::new(),
            retries: Retries::default(),
            metrics,
            adopting: true,
            leftovers: false,
            started: SystemTime::now(),
            nodes_rendered: false,
            warned_no_node: false,
            resyncing: false,
            gauges_at: None,
            gauges_stale: false,
            gauge_period: GAUGE_PERIOD,
            resync_found: 0,
            first_sync_done: false,
            set_labels: None,
        })
    }

    pub fn apply_event(&mut self, event: SourceEvent) {
        for p in self.store.apply(event) {
            self.report(&p);
        }
    }

    /// Whether a source is in the middle of a relist or a file reload.
    pub fn replacing(&self) -> bool {
        self.store.replacing()
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

    /// Whether something failed and waits for a retry.
    pub fn needs_retry(&self) -> bool {
        self.leftovers || !self.retries.due.is_empty()
    }

    /// Makes every pending retry due now (tests; an operator's nudge).
    pub fn retry_all_now(&mut self) {
        let now = Instant::now();
        for (_, at) in self.retries.due.values_mut() {
            *at = now;
        }
    }

    /// When the next retry is due.
    pub fn next_retry(&self) -> Option<Instant> {
        let leftovers = self.leftovers.then(|| Instant::now() + RETRY_FIRST);
        self.retries.next().into_iter().chain(leftovers).min()
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    pub fn datapath(&self) -> &dyn Datapath {
        self.dp.as_ref()
    }

    /// The Service a set belongs to, and the set's identity, as text.
    pub fn set_name(&self, id: u32) -> Option<String> {
        let rec = self.balancer.set(id)?;
        let key = self.store.key(rec.owner.0)?;
        let policy = match rec.key.policy {
            socklb_lb::desired::PolicyKey::Cluster => "cluster".to_string(),
            socklb_lb::desired::PolicyKey::Local => "local".to_string(),
            socklb_lb::desired::PolicyKey::Node(n) => {
                format!("node:{}", self.balancer.node_ids().name(n).unwrap_or("?"))
            }
        };
        Some(format!("{key}:{}/{} {} {policy}", rec.key.port, rec.key.proto, rec.key.family))
    }

    /// Every set's name, one `id<TAB>name` line each (`/sets`).
    pub fn set_names(&self) -> String {
        let mut out = String::new();
        for (id, _) in self.balancer.sets() {
            if let Some(name) = self.set_name(id) {
                out.push_str(&format!("{id}\t{name}\n"));
            }
        }
        out
    }

    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.store
            .problems()
            .chain(self.problems.values().flatten())
            .chain(self.balancer.problems().map(|(_, p)| p))
    }

    /// Rebuilds what changed (and what is due for a retry) and writes it.
    pub fn sync(&mut self) -> SyncReport {
        let started = Instant::now();
        let now = Instant::now();
        let mut report = socklb_lb::ApplyReport::default();
        let mut nodes_complete = true;
        if self.store.take_nodes_dirty() || !self.nodes_rendered || self.leftovers {
            self.nodes_rendered = true;
            self.refresh_node_context();
            nodes_complete =
                self.balancer.update_nodes(&self.ctx, self.store.nodes(), self.dp.as_mut(), &mut report);
        }
        let mut ids = self.store.take_dirty().unwrap_or_else(|| self.store.all_ids());
        ids.extend(self.retries.take_due(now));
        let ids: Vec<ServiceId> = ids.into_iter().collect();

        // A big change goes in chunks, so that only a chunk's models exist
        // at a time; the maps grow once, up front.
        let mut applied = socklb_lb::ApplyReport::default();
        let (mut built, mut write_time) = (Duration::ZERO, Duration::ZERO);
        if ids.len() > SYNC_CHUNK {
            let t = Instant::now();
            let need = self.estimate(&ids);
            applied.merge(self.balancer.reserve(need, self.dp.as_mut()));
            write_time += t.elapsed();
        }
        let mut gone: Vec<ServiceId> = Vec::new();
        // With nothing changed, one empty apply still retries what is left
        // over (a set to remove, a frontend whose write failed).
        let chunks: Vec<&[ServiceId]> =
            if ids.is_empty() { vec![&[]] } else { ids.chunks(SYNC_CHUNK).collect() };
        for chunk in chunks {
            let t = Instant::now();
            let models: Vec<_> = chunk.iter().map(|&id| (ServiceRef(id), self.model_of(id))).collect();
            built += t.elapsed();
            let t = Instant::now();
            let changes: Vec<_> = models.iter().map(|(r, m)| (*r, m.as_ref())).collect();
            applied.merge(self.balancer.apply(&changes, &self.store, self.dp.as_mut()));
            write_time += t.elapsed();
            gone.extend(models.iter().filter(|(_, m)| m.is_none()).map(|(r, _)| r.0));
        }
        let write_started = Instant::now();
        if self.adopting {
            let done = self.balancer.finish_adoption(&self.store, self.dp.as_mut());
            applied.ops += done.ops;
            applied.departed.extend(done.departed);
            applied.failed.extend(done.failed);
            self.adopting = false;
        }
        write_time += write_started.elapsed();
        if applied.ops > 0 {
            self.metrics.map_write_duration.observe(write_time.as_secs_f64());
            self.metrics.syncs.inc();
        }
        report.ops += applied.ops;
        if let Some(to) = &applied.grew {
            tracing::info!(to = %to, "grew the maps (a new generation, filled and switched to)");
            self.metrics.map_growths.inc();
        }
        if let Some(e) = &applied.grow_error {
            tracing::error!(error = %e, "the maps need to grow and could not");
        }
        for (s, p) in &applied.problems {
            let _ = s;
            self.report(p);
        }

        let triggers = self.store.take_triggers();
        let mut failed_ids: BTreeSet<ServiceId> = BTreeSet::new();
        // Over capacity is not "stuck": retrying cannot help until the
        // cluster or the limits change (it is retried all the same, and
        // reported as a problem); health waits only for write failures.
        let mut write_failures = 0;
        for (r, f) in &applied.failed {
            let Some(key) = self.store.key(r.0) else { continue };
            let wait = self.retries.failed(r.0, now);
            self.metrics.reconcile_errors.inc();
            match f {
                Failure::Capacity(why) => {
                    // (Counted as an invalid object by its problem.)
                    tracing::error!(service = %key, reason = %why, retry_in = ?wait,
                        "does not fit in the maps: the service keeps its previous version");
                }
                Failure::Write(why) => {
                    write_failures += 1;
                    self.metrics.map_operation_errors.get_or_create(&MapLabel { map: "any".into() }).inc();
                    tracing::warn!(service = %key, error = %why, retry_in = ?wait,
                        "update failed: the service keeps its previous version");
                }
            }
            failed_ids.insert(r.0);
        }
        let mut changed = Vec::with_capacity(ids.len().min(PER_SERVICE_LINES + 1));
        for &id in &ids {
            if changed.len() <= PER_SERVICE_LINES
                && let Some(key) = self.store.key(id)
            {
                changed.push(key.clone());
            }
            if !failed_ids.contains(&id) {
                self.retries.succeeded(id);
            }
        }
        for id in gone {
            if !failed_ids.contains(&id) {
                self.store.release(id);
            }
        }
        let failed_keys: BTreeSet<ObjKey> = failed_ids.iter().filter_map(|id| self.store.key(*id)).collect();
        self.observe_programming(triggers, &failed_ids);
        self.leftovers = self.balancer.has_leftovers() || !nodes_complete;
        let complete = write_failures == 0 && !self.leftovers;
        self.log_sync(ids.len(), &changed, &failed_keys, applied.ops, built, write_time);
        self.refresh_gauges();
        if applied.ops > 0 {
            self.refresh_set_labels();
        }
        let total = started.elapsed();
        self.metrics.sync_duration.observe(total.as_secs_f64());
        SyncReport {
            services: ids.len(),
            ops_applied: report.ops,
            failures: failed_keys.len(),
            complete,
            changed,
            doomed: applied.departed,
            revived: applied.rejoined,
        }
    }

    /// One summary line for a big sync (the first one, a relist), a line
    /// per Service for a few.
    fn log_sync(
        &mut self,
        count: usize,
        changed: &[ObjKey],
        failed: &BTreeSet<ObjKey>,
        ops: usize,
        built: Duration,
        wrote: Duration,
    ) {
        if !self.first_sync_done || count > PER_SERVICE_LINES {
            self.first_sync_done = true;
            let stats = self.balancer.stats();
            tracing::info!(
                services = count.saturating_sub(failed.len()),
                failed = failed.len(),
                sets = stats.sets,
                slots = stats.slots,
                frontends = stats.frontends,
                ops,
                model_ms = built.as_millis() as u64,
                write_ms = wrote.as_millis() as u64,
                "sync"
            );
            return;
        }
        for key in changed.iter().filter(|k| !failed.contains(*k)) {
            match self.store.id(key).filter(|id| !self.balancer.sets_of(ServiceRef(*id)).is_empty()) {
                Some(id) => {
                    let sets = self.balancer.sets_of(ServiceRef(id));
                    let backends: u64 = sets
                        .iter()
                        .filter_map(|id| self.balancer.set(*id))
                        .map(|s| u64::from(s.state().count))
                        .sum();
                    tracing::info!(service = %key, sets = sets.len(), backends, "service applied");
                }
                None => tracing::info!(service = %key, "service removed"),
            }
        }
    }

    /// `socklb_network_programming_duration_seconds`: for each Service whose
    /// change is now in the datapath, from its trigger time to now. Changes
    /// a sync could not apply wait for the next one.
    fn observe_programming(
        &mut self,
        triggers: BTreeMap<ServiceId, SystemTime>,
        failed: &BTreeSet<ServiceId>,
    ) {
        if triggers.is_empty() {
            return;
        }
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

    /// Starts a round of reading the maps back (see [`Self::resync_step`]).
    pub fn start_resync(&mut self) {
        self.resyncing = true;
        self.resync_found = 0;
    }

    pub fn resyncing(&self) -> bool {
        self.resyncing
    }

    /// Abandons a resync round (the maps could not be read).
    pub fn stop_resync(&mut self) {
        self.resyncing = false;
    }

    /// Keeps `labels` filled with each set's Service labels (for the
    /// per-service counters).
    pub fn publish_set_labels(&mut self, labels: crate::inspect::SetLabels) {
        self.set_labels = Some(labels);
        self.refresh_set_labels();
    }

    fn refresh_set_labels(&self) {
        let Some(labels) = &self.set_labels else { return };
        let fresh: BTreeMap<u32, crate::metrics::ServiceLabels> = self
            .balancer
            .sets()
            .filter_map(|(id, rec)| {
                let key = self.store.key(rec.owner.0)?;
                Some((
                    id,
                    crate::metrics::ServiceLabels {
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                        port: format!("{}/{}", rec.key.port, rec.key.proto),
                    },
                ))
            })
            .collect();
        if let Ok(mut l) = labels.lock() {
            *l = fresh;
        }
    }

    /// Checks the next chunk of the maps against what was programmed and
    /// repairs what drifted. Returns the differences found in the round
    /// once it is complete.
    pub fn resync_step(&mut self) -> Result<Option<usize>, DatapathError> {
        if !self.resyncing {
            return Ok(None);
        }
        let drift: Drift = self.balancer.verify_chunk(RESYNC_CHUNK, self.dp.as_mut())?;
        self.resync_found += drift.found;
        if !drift.services.is_empty() {
            // Sets that differ: write those Services again from their models.
            let models: Vec<_> = drift.services.iter().map(|r| (*r, self.model_of(r.0))).collect();
            let changes: Vec<_> = models.iter().map(|(r, m)| (*r, m.as_ref())).collect();
            let force: BTreeSet<ServiceRef> = drift.services.clone();
            let r = self.balancer.apply_forced(&changes, &force, &self.store, self.dp.as_mut());
            for s in r.failed.keys() {
                self.retries.failed(s.0, Instant::now());
            }
        }
        if !drift.round_done {
            return Ok(None);
        }
        self.resyncing = false;
        let found = self.resync_found;
        if found > 0 {
            self.metrics.drift_repaired.inc_by(found as u64);
            tracing::warn!(
                differences = found,
                "resync found the maps drifted from what was programmed; repaired"
            );
        }
        self.refresh_gauges();
        Ok(Some(found))
    }

    /// Reads the whole maps back at once and repairs drift (tests, and the
    /// first check after start). Returns the differences found.
    pub fn resync(&mut self) -> Result<usize, DatapathError> {
        self.start_resync();
        loop {
            if let Some(found) = self.resync_step()? {
                return Ok(found);
            }
        }
    }

    /// Refreshes the gauges now, or leaves it to the next period in a big
    /// cluster.
    fn refresh_gauges(&mut self) {
        let small = self.store.service_count() <= GAUGES_EVERY_SYNC_UP_TO;
        if small || self.gauges_at.is_none_or(|t| t.elapsed() >= self.gauge_period) {
            self.update_gauges();
            self.gauges_at = Some(Instant::now());
            self.gauges_stale = false;
        } else {
            self.gauges_stale = true;
        }
    }

    /// How often the gauges of a big cluster are refreshed (tests).
    pub fn set_gauge_period(&mut self, period: Duration) {
        self.gauge_period = period;
    }

    /// Brings gauges that a sync left behind up to date (the loop calls it
    /// every [`GAUGE_PERIOD`]).
    pub fn flush_gauges(&mut self) {
        if self.gauges_stale {
            self.update_gauges();
            self.gauges_at = Some(Instant::now());
            self.gauges_stale = false;
        }
    }

    fn update_gauges(&self) {
        use socklb_common::{frontend_flags as f, map_names as m};
        let stats: Stats = self.balancer.stats();
        self.metrics.services.set(stats.services as i64);
        self.metrics.backends.set(stats.slots as i64);
        let mut kinds = [0i64; 4];
        for (k, v) in self.balancer.programmed_frontends() {
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
        kinds[1] += stats.node_ports as i64;
        for (kind, n) in ["ClusterIP", "NodePort", "ExternalIP", "LoadBalancer"].into_iter().zip(kinds) {
            self.metrics.frontends.get_or_create(&KindLabel { kind: kind.into() }).set(n);
        }
        let entries = [
            (m::FRONTENDS, stats.frontends as u64),
            (m::SETS, u64::from(stats.sets)),
            (m::BACKENDS, stats.slots),
            (m::MEMBERS, stats.members),
            (m::NODE_ADDRS, stats.node_addrs as u64),
            (m::NODEPORTS, stats.node_ports as u64),
            (m::NODE_LOCAL, stats.node_local as u64),
        ];
        for (map, n) in entries {
            self.metrics.map_entries.get_or_create(&MapLabel { map: map.into() }).set(n as i64);
        }
        let caps = self.balancer.capacities();
        for (map, n) in [
            (m::FRONTENDS, caps.frontends),
            (m::SETS, caps.sets),
            (m::BACKENDS, caps.slots),
            (m::MEMBERS, caps.members),
            (m::NODE_ADDRS, caps.node_addrs),
            (m::NODEPORTS, caps.node_ports),
            (m::NODE_LOCAL, caps.node_local),
            (m::AFFINITY, caps.affinity),
            (m::UDP_REV, caps.udp_reverse),
            (m::UDP_CONNECTED, caps.udp_connected),
        ] {
            self.metrics.map_capacity.get_or_create(&MapLabel { map: map.into() }).set(i64::from(n));
        }
    }

    /// A generous estimate of the map entries `ids` will need (before a big
    /// change, so that the maps grow once).
    fn estimate(&self, ids: &[ServiceId]) -> socklb_lb::capacity::Usage {
        let mut u = socklb_lb::capacity::Usage::default();
        for &id in ids {
            let Some(ServiceOutcome::Proxied(svc)) = self.store.service(id) else { continue };
            let (families, ports) = (svc.cluster_ips.len() as u64, svc.ports.len() as u64);
            let policies = 1 + u64::from(svc.internal_local || svc.external_local);
            let externals = (svc.external_ips.len() + svc.load_balancer_ips.len()) as u64;
            u.sets += families * ports * policies;
            u.frontends += ports * (families + externals * policies);
            u.node_ports += svc.ports.iter().filter(|p| p.node_port.is_some()).count() as u64 * families;
            let endpoints: u64 = self.store.slices_of(id).map(|(_, s)| s.endpoints.len() as u64).sum();
            u.slots += endpoints * ports * policies;
            if svc.affinity_timeout_secs.is_some()
                || svc.ports.iter().any(|p| p.proto == socklb_k8s::model::Proto::Udp)
            {
                u.members += endpoints * ports;
            }
        }
        u
    }

    /// One Service's model, or `None` when it is gone or not proxied.
    fn model_of(&mut self, id: ServiceId) -> Option<socklb_k8s::model::ServiceModel> {
        let key = self.store.key(id)?;
        let mut problems = BTreeSet::new();
        let model = match self.store.service(id) {
            Some(ServiceOutcome::Proxied(svc)) => {
                let slices: Vec<NamedSlice<'_>> = self.store.slices_of(id).collect();
                let (model, ps) = build_service(&key, svc, &slices, &self.ctx, self.store.names());
                problems.extend(ps);
                Some(model)
            }
            Some(ServiceOutcome::NotProxied(why)) => {
                tracing::debug!(service = %key, why, "not proxied");
                None
            }
            None => None,
        };
        let old = self.problems.remove(&id).unwrap_or_default();
        for p in problems.difference(&old) {
            self.report(p);
        }
        if !problems.is_empty() {
            self.problems.insert(id, problems);
        }
        model
    }

    fn report(&self, p: &Problem) {
        tracing::warn!(object = %p.object, field = %p.field, reason = %p.reason, "skipped invalid input");
        self.metrics.invalid(p.kind.label());
    }
}
