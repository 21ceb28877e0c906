//! `socklb agent`: install or adopt the datapath, then keep it equal to
//! what the sources say, until SIGTERM. The datapath stays when the agent
//! stops; only `socklb uninstall` removes it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use socklb_common::{Config, FrontendKey, config_flags};
use tokio::{signal::unix::SignalKind, sync::mpsc};

use socklb_bpf::{
    affinity,
    loader::{self, Capacities, Generation, InstallOptions},
    maps::AyaMaps,
    stale::{self, Doomed},
};
use socklb_k8s::{
    model::{NodeContext, nodes::NodePortAddresses},
    store::SourceEvent,
};

use crate::{
    api_access, http,
    inspect::PinnedCounters,
    metrics::Metrics,
    reconcile::{Limits, Reconciler, SyncReport},
    source,
};

/// Everything `socklb agent` is told.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub kubeconfig: Option<PathBuf>,
    pub from_files: Vec<PathBuf>,
    pub node_name: String,
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
    /// Where `/healthz`, `/readyz` and `/metrics` answer.
    pub metrics_addrs: Vec<SocketAddr>,
    /// `serve`, or `remove` (take the datapath off this node and idle).
    pub mode: Mode,
    pub nodeport_addresses: NodePortAddresses,
    pub resync: Duration,
    /// The longest wait between API attempts after an error.
    pub api_retry_max: Duration,
    /// `/healthz` fails when changes wait longer than this for a sync.
    pub health_timeout: Duration,
    /// `--k8s-api-server`: replaces the configured API server address.
    pub k8s_api_server: Option<::http::Uri>,
    /// Sizes of the tables the programs fill (affinity, UDP reverse); the
    /// agent's own maps follow what it programs.
    pub capacities: Capacities,
    /// `--max-services` and `--max-backends`: how far the maps may grow.
    pub limits: Limits,
    /// Export counters per Service port (the series grow with the cluster).
    pub per_service_metrics: bool,
    pub service_proxy_name: Option<String>,
    /// Translate only sockets in the host network namespace.
    pub hostns_only: bool,
    /// Destroy sockets whose backend left their service.
    pub destroy_stale_sockets: bool,
    /// Tests only (`SOCKLB_TEST_NO_SET_RETVAL`): load the programs for
    /// kernels without `bpf_set_retval`.
    pub without_set_retval: bool,
    /// Tests only (`SOCKLB_TEST_FAIL_STORAGE`): the programs act as if
    /// socket storage could not be allocated.
    pub test_fail_storage: bool,
    /// How long a backend that left its services waits before its sockets
    /// are destroyed (it may be moving between EndpointSlices).
    pub stale_socket_grace: Duration,
    /// An unconnected UDP socket idle this long toward a VIP picks afresh.
    pub udp_idle_timeout: Duration,
}

/// The most events one sync takes (more wait for the next, so that a flood
/// cannot hold the datapath back for long).
const MAX_BATCH: usize = 16_384;

/// Events the sources may queue ahead of the loop. A list or a file sends
/// batches of a few hundred objects, so this bounds what waits decoded in
/// memory (a few thousand objects) while keeping the loop fed.
const EVENT_QUEUE: usize = 32;

/// How long the loop holds its sync while a source replaces everything it
/// has (a relist, a file reload), so that the replace lands as one change;
/// past this, what arrived is synced anyway.
const REPLACE_HOLD: Duration = Duration::from_secs(2);
/// Before the agent is ready: how soon to try a sync that did not complete.
const RETRY: Duration = Duration::from_secs(1);

/// What the agent does on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Attach (or adopt) the datapath and keep it in sync.
    Serve,
    /// Remove the datapath from this node and idle until stopped: rolled
    /// out through the DaemonSet before it is deleted, so that no node is
    /// left translating to backends that nobody updates any more.
    Remove,
}

pub async fn run(cfg: AgentConfig) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    // Bind before touching the kernel: a taken port fails the start cleanly.
    let listeners = http::bind_all(&cfg.metrics_addrs).await?;
    if cfg.mode == Mode::Remove {
        return remove(&cfg, listeners, metrics).await;
    }

    let install = InstallOptions {
        cgroup: cfg.cgroup.clone(),
        bpffs: cfg.bpffs.clone(),
        capacities: cfg.capacities,
        without_set_retval: cfg.without_set_retval,
        fresh_generation: false,
    };
    let installed = loader::install(&install)?;
    let report = &installed.report;
    let compat: Vec<&str> = report.support.choices.iter().filter(|c| c.compat).map(|c| c.hook).collect();
    tracing::info!(
        cgroup = %cfg.cgroup.display(),
        bpffs = %cfg.bpffs.display(),
        generation = %report.generation,
        links = ?report.links,
        maps_created = report.maps_created.len(),
        maps_adopted = report.maps_adopted.len(),
        removed = ?report.removed,
        "datapath attached"
    );
    if !compat.is_empty() {
        tracing::warn!(
            hooks = ?compat,
            "this kernel has no bpf_set_retval (Linux < 5.18): refused connects and NodePort binds fail with \
             EPERM instead of ECONNREFUSED and EADDRINUSE"
        );
    }
    if let Some(old) = &report.replacing {
        tracing::info!(
            serving = %old,
            new = %report.generation,
            shared = ?report.shared,
            "another map layout serves: building this layout's maps beside it; the programs switch once \
             they are filled"
        );
    }
    for (map, pinned, asked) in &report.size_mismatches {
        tracing::warn!(map, pinned, asked, "a pinned map keeps its size; run `socklb uninstall` to resize");
    }
    let mut maps = AyaMaps::open_dir(&installed.maps_dir)?.with_growth(install.clone());
    let mut pending_switch = installed.switch;
    let mut flags = if cfg.hostns_only { config_flags::HOSTNS_ONLY } else { 0 };
    if cfg.test_fail_storage {
        tracing::warn!("SOCKLB_TEST_FAIL_STORAGE: every translation fails as if out of memory (tests only)");
        flags |= config_flags::TEST_FAIL_STORAGE;
    }
    let config = Config {
        flags,
        _pad: 0,
        udp_idle_ns: u64::try_from(cfg.udp_idle_timeout.as_nanos()).unwrap_or(u64::MAX),
    };
    if maps.read_config()? != config {
        maps.write_config(config)?;
    }
    tracing::info!(
        hostns_only = cfg.hostns_only,
        destroy_stale_sockets = cfg.destroy_stale_sockets,
        stale_socket_grace = %humantime::format_duration(cfg.stale_socket_grace),
        udp_idle_timeout = %humantime::format_duration(cfg.udp_idle_timeout),
        "datapath settings"
    );
    let set_labels = cfg.per_service_metrics.then(Default::default);
    metrics.set_counter_source(Box::new(PinnedCounters::new(&cfg.bpffs, set_labels.clone())));
    metrics.health.set_timeout(cfg.health_timeout);
    {
        let (cgroup, bpffs) = (cfg.cgroup.clone(), cfg.bpffs.clone());
        metrics.health.set_datapath_check(Box::new(move || loader::check_attached(&cgroup, &bpffs)));
    }
    let ctx = NodeContext {
        node_name: cfg.node_name.clone(),
        zone: None,
        nodeport_addresses: cfg.nodeport_addresses.clone(),
        host_addresses: source::netlink::current(),
        service_proxy_name: cfg.service_proxy_name.clone(),
    };
    tracing::info!(node = %cfg.node_name, nodeport_addresses = %cfg.nodeport_addresses, "node");
    // The API client is set up before the maps move into the reconciler:
    // whether the server is an address the datapath translates is read
    // from them.
    let api = if cfg.from_files.is_empty() { Some(api_client(&cfg, &maps).await?) } else { None };
    let mut reconciler = Reconciler::new(Box::new(maps), ctx, &cfg.limits, metrics.clone())?;
    if let Some(labels) = set_labels {
        reconciler.publish_set_labels(labels);
    }

    for listener in listeners {
        tokio::spawn(http::serve(listener, metrics.clone()));
    }

    // Expired session-affinity entries, off the event loop.
    {
        let (bpffs, metrics) = (cfg.bpffs.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(affinity::SWEEP_EVERY);
            loop {
                every.tick().await;
                let (bpffs, metrics) = (bpffs.clone(), metrics.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    let dir = loader::pins::active_dir(&bpffs);
                    match affinity::sweep(&dir, affinity::monotonic_ns()) {
                        Ok(n) => {
                            metrics.affinity_expired.inc_by(n as u64);
                        }
                        Err(e) => tracing::debug!(error = %e, "affinity expiry"),
                    }
                })
                .await;
            }
        });
    }
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(EVENT_QUEUE);
    // This node's addresses, followed live (NodePorts on new addresses).
    tokio::spawn(source::netlink::run(tx.clone()));
    let mut expected: HashMap<&'static str, usize> = HashMap::new();
    if let Some((client, access)) = api {
        for part in ["services", "endpointslices", "nodes"] {
            expected.insert(part, 1);
        }
        let watch = source::kube::WatchConfig {
            node_name: cfg.node_name.clone(),
            service_proxy_name: cfg.service_proxy_name.clone(),
            access,
        };
        tokio::spawn(source::kube::run(client, watch, tx, metrics.clone()));
    } else {
        expected.insert("file", cfg.from_files.len());
        for (i, path) in cfg.from_files.iter().enumerate() {
            let origin = u16::try_from(i).context("too many --from-file")?;
            tokio::spawn(source::file::run(path.clone(), origin, tx.clone(), metrics.clone()));
        }
        drop(tx);
    }

    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    };
    let on_doomed = cfg.destroy_stale_sockets.then(|| stale_socket_handler(&cfg, metrics.clone()));
    // A new map layout: the programs move to the new maps once the first
    // complete sync has filled them, and only then is the agent ready.
    let before_ready: Option<BeforeReady> = pending_switch.take().map(|switch| {
        let mut switch = Some(switch);
        Box::new(move || {
            let Some(s) = switch.take() else { return Ok(()) };
            let (from, to) = (s.replacing().map(Generation::name), s.target().name());
            match s.commit() {
                Ok(done) => {
                    tracing::info!(from = ?from, to = %to, links = ?done.links, removed = ?done.removed,
                        "switched the datapath to this build's map layout");
                    Ok(())
                }
                Err(e) => Err(format!("switching to {to}: {e}")),
            }
        }) as BeforeReady
    });
    let (sets_tx, sets_rx) = mpsc::channel(4);
    if let Ok(mut q) = metrics.sets_query.lock() {
        *q = Some(sets_tx);
    }
    let mut loop_cfg =
        LoopConfig { expected, resync: cfg.resync, on_doomed, before_ready, sets_queries: Some(sets_rx) };
    drive(&mut reconciler, &mut rx, &mut loop_cfg, &metrics, shutdown).await;
    tracing::info!("stopping; the datapath stays attached (socklb uninstall removes it)");
    Ok(())
}

/// `--mode remove`: detaches the programs and removes every pin, then
/// answers ready (the rollout of the removal can wait for it) until SIGTERM.
async fn remove(
    cfg: &AgentConfig,
    listeners: Vec<tokio::net::TcpListener>,
    metrics: Arc<Metrics>,
) -> Result<()> {
    let report = loader::uninstall(&cfg.cgroup, &cfg.bpffs)
        .with_context(|| format!("removing the datapath pinned at {}", cfg.bpffs.display()))?;
    tracing::info!(
        links_detached = report.links_detached.len(),
        maps_removed = report.maps_removed.len(),
        bpffs = %cfg.bpffs.display(),
        "--mode remove: the datapath is off this node; idling until stopped (delete the DaemonSet now)"
    );
    metrics.set_ready();
    for listener in listeners {
        tokio::spawn(http::serve(listener, metrics.clone()));
    }
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    Ok(())
}

/// Takes (doomed, revived) backends after each sync.
pub type DoomedHandler = Arc<dyn Fn(&[Doomed], &[Doomed]) + Send + Sync>;

/// Runs once, after the first complete sync and before the agent reports
/// ready; an error is logged and retried with the next sync.
pub type BeforeReady = Box<dyn FnMut() -> Result<(), String> + Send>;

/// What the event loop waits for and how often it resyncs.
pub struct LoopConfig {
    /// How many `Synced` signals each source part must send before the
    /// first sync (one per file; one per API watcher).
    pub expected: HashMap<&'static str, usize>,
    pub resync: Duration,
    /// Called after a sync with the backends that left their services
    /// (their sockets are stale) and those that joined one.
    pub on_doomed: Option<DoomedHandler>,
    /// See [`BeforeReady`]: the switch to a new map layout.
    pub before_ready: Option<BeforeReady>,
    /// `/sets` requests, answered between syncs.
    pub sets_queries: Option<mpsc::Receiver<tokio::sync::oneshot::Sender<String>>>,
}

/// The agent's event loop: takes every event that has arrived and syncs
/// them at once (a lone event is applied without waiting; what arrives
/// while a sync runs is taken together by the next). It syncs only once
/// every source has delivered its initial state (never before: a partial
/// initial state must not prune a live datapath), retries failed Services
/// when their backoff ends, reads the maps back a chunk at a time between
/// events (resync), and returns when `shutdown` completes or every source
/// is gone.
pub async fn drive(
    reconciler: &mut Reconciler,
    rx: &mut mpsc::Receiver<SourceEvent>,
    cfg: &mut LoopConfig,
    metrics: &Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut resync = tokio::time::interval(cfg.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    let mut gauges = tokio::time::interval(crate::reconcile::GAUGE_PERIOD);
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut synced: HashMap<&'static str, usize> = HashMap::new();
    let mut all_synced = false;
    let mut not_ready_retry: Option<tokio::time::Instant> = None;
    let mut queries = cfg.sets_queries.take();
    // Since when events wait for a replace to end (see REPLACE_HOLD).
    let mut held_since: Option<Instant> = None;

    loop {
        let hold_until = held_since.map(|t| tokio::time::Instant::from_std(t + REPLACE_HOLD));
        let retry_at = if all_synced {
            reconciler
                .next_retry()
                .map(tokio::time::Instant::from_std)
                .into_iter()
                .chain(not_ready_retry)
                .min()
        } else {
            None
        };
        tokio::select! {
            biased;
            _ = &mut shutdown => return,
            event = rx.recv() => {
                let Some(event) = event else {
                    tracing::error!("every source stopped");
                    return;
                };
                let first_at = Instant::now();
                if all_synced {
                    metrics.health.queued(first_at);
                }
                let mut next = Some(event);
                let mut taken = 0;
                while let Some(event) = next.take() {
                    if let SourceEvent::Synced(part) = &event {
                        *synced.entry(part).or_default() += 1;
                    }
                    reconciler.apply_event(event);
                    taken += 1;
                    if taken < MAX_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if !all_synced {
                    all_synced = cfg.expected.iter().all(|(k, n)| synced.get(k).copied().unwrap_or(0) >= *n);
                    if !all_synced {
                        continue;
                    }
                }
                let since = *held_since.get_or_insert(first_at);
                if reconciler.replacing() && since.elapsed() < REPLACE_HOLD {
                    continue;
                }
                held_since = None;
                let report = reconciler.sync();
                after_sync(reconciler, cfg, metrics, &report, &mut not_ready_retry);
                metrics.event_to_datapath.observe(since.elapsed().as_secs_f64());
            }
            _ = async { tokio::time::sleep_until(hold_until.unwrap_or_else(tokio::time::Instant::now)).await }, if hold_until.is_some() => {
                let since = held_since.take().unwrap_or_else(Instant::now);
                let report = reconciler.sync();
                after_sync(reconciler, cfg, metrics, &report, &mut not_ready_retry);
                metrics.event_to_datapath.observe(since.elapsed().as_secs_f64());
            }
            query = async { queries.as_mut()?.recv().await }, if queries.is_some() => {
                match query {
                    Some(reply) => {
                        let _ = reply.send(reconciler.set_names());
                    }
                    None => queries = None,
                }
            }
            _ = async { tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)).await }, if retry_at.is_some() => {
                not_ready_retry = None;
                let report = reconciler.sync();
                after_sync(reconciler, cfg, metrics, &report, &mut not_ready_retry);
            }
            _ = resync.tick(), if all_synced => {
                reconciler.start_resync();
            }
            _ = gauges.tick() => {
                reconciler.flush_gauges();
            }
            // A chunk of the resync, when no event waits (biased order).
            _ = std::future::ready(()), if reconciler.resyncing() => {
                match reconciler.resync_step() {
                    Ok(Some(found)) => tracing::debug!(found, "resync round done"),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "resync could not read the maps");
                        reconciler.stop_resync();
                    }
                }
                if reconciler.needs_retry() {
                    metrics.health.queued(Instant::now());
                }
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Bookkeeping after a sync: stale sockets, health, readiness.
fn after_sync(
    reconciler: &Reconciler,
    cfg: &mut LoopConfig,
    metrics: &Metrics,
    report: &SyncReport,
    not_ready_retry: &mut Option<tokio::time::Instant>,
) {
    if report.services > 1_024 {
        // The models of a big sync are gone: give their memory back.
        socklb_common::sys::release_free_memory();
    }
    if let (Some(f), false) = (&cfg.on_doomed, report.doomed.is_empty() && report.revived.is_empty()) {
        f(&report.doomed, &report.revived);
    }
    if report.complete {
        metrics.health.synced();
    } else {
        metrics.health.queued(Instant::now());
    }
    if !metrics.is_ready() {
        if become_ready(cfg, report.complete) {
            metrics.set_ready();
            tracing::info!(
                ops = report.ops_applied,
                complete = report.complete,
                "first full sync programmed; ready"
            );
        } else {
            *not_ready_retry = Some(tokio::time::Instant::now() + RETRY);
        }
    }
    let _ = reconciler;
}

/// Whether the agent may report ready after a first sync: at once, or, with
/// a pending layout switch, once a complete sync filled the new maps and
/// the switch succeeded.
fn become_ready(cfg: &mut LoopConfig, complete: bool) -> bool {
    let Some(before) = cfg.before_ready.as_mut() else { return true };
    if !complete {
        tracing::warn!("the new maps are not complete yet; the old layout keeps serving, retrying");
        return false;
    }
    match before() {
        Ok(()) => {
            cfg.before_ready = None;
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "the old layout keeps serving; retrying");
            false
        }
    }
}

/// Destroys stale sockets off the event loop, one sweep at a time, after
/// `--stale-socket-grace`.
///
/// A doomed backend waits out the grace (an endpoint that moves between
/// EndpointSlices is missing for a moment); one that rejoins its service
/// meanwhile is taken off the queue (`stale::StaleQueue`). A sweep walks
/// every socket of every network namespace in the cgroup, on a few threads
/// (`stale::SWEEP_WORKERS`); backends that come due while one runs are
/// swept by the next. Memory and threads stay bounded however fast
/// endpoints churn.
fn stale_socket_handler(cfg: &AgentConfig, metrics: Arc<Metrics>) -> DoomedHandler {
    let queue = Arc::new(std::sync::Mutex::new(stale::StaleQueue::new(cfg.stale_socket_grace)));
    let wake = Arc::new(tokio::sync::Notify::new());
    let (cgroup, bpffs) = (cfg.cgroup.clone(), cfg.bpffs.clone());
    {
        let (queue, wake) = (queue.clone(), wake.clone());
        tokio::spawn(async move {
            loop {
                let next = match queue.lock() {
                    Ok(q) => q.next_due(),
                    Err(_) => return,
                };
                // Wait for the next backend's grace to end, or for news.
                match next {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                            _ = wake.notified() => continue,
                        }
                    }
                    None => {
                        wake.notified().await;
                        continue;
                    }
                }
                let batch: Vec<Doomed> = match queue.lock() {
                    Ok(mut q) => q.take_due(Instant::now()),
                    Err(_) => return,
                };
                if batch.is_empty() {
                    continue;
                }
                let (cgroup, bpffs, metrics) = (cgroup.clone(), bpffs.clone(), metrics.clone());
                let swept = tokio::task::spawn_blocking(move || {
                    let report = stale::terminate(&cgroup, &bpffs, &batch);
                    metrics.stale_sockets_destroyed.inc_by(report.destroyed as u64);
                    for e in &report.errors {
                        tracing::warn!(error = %e, "stale-socket termination");
                    }
                    if report.destroyed > 0 {
                        tracing::info!(
                            backends = batch.len(),
                            namespaces = report.namespaces,
                            destroyed = report.destroyed,
                            "destroyed sockets of backends that left their services"
                        );
                    }
                })
                .await;
                if let Err(e) = swept {
                    tracing::warn!(error = %e, "stale-socket sweep failed");
                }
            }
        });
    }
    Arc::new(move |doomed: &[Doomed], revived: &[Doomed]| {
        if let Ok(mut q) = queue.lock() {
            q.doomed(doomed, Instant::now());
            q.revived(revived);
        }
        wake.notify_one();
    })
}

/// The API client, and how to retry and advise when the server cannot be
/// reached. A server that cannot be reached at start is reported at once,
/// naming `--k8s-api-server` when that is the likely fix; the watchers keep
/// retrying (it may only be slow to come up).
async fn api_client(cfg: &AgentConfig, maps: &AyaMaps) -> Result<(kube::Client, source::kube::Access)> {
    let (config, origin) =
        api_access::load_config(cfg.kubeconfig.as_deref(), cfg.k8s_api_server.as_ref()).await?;
    let url = config.cluster_url.clone();
    let translated = api_access::server_socket_addr(&url).is_some_and(|addr| {
        let key = FrontendKey {
            addr: socklb_common::addr_from_ip(addr.ip()),
            port: addr.port().to_be(),
            proto: socklb_common::PROTO_TCP,
            scope: socklb_common::SCOPE_INTERNAL,
        };
        maps.frontend(&key).is_some()
    });
    let advice = api_access::Advice::new(&url, origin.clone(), translated);
    tracing::info!(server = %url, ?origin, "API server");
    if let Err(error) = api_access::probe_reachable(&url, PROBE_TIMEOUT).await {
        if advice.applies() {
            tracing::error!(server = %url, error, advice = %advice, "cannot reach the API server");
        } else {
            tracing::error!(server = %url, error, "cannot reach the API server given by --k8s-api-server");
        }
    }
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    let access =
        source::kube::Access { server: url.to_string(), retry_max: cfg.api_retry_max, advice: Some(advice) };
    Ok((client, access))
}

/// How long the start-up reachability check waits for the API server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
