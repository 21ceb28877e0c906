//! Prometheus metrics (prometheus-client), served on `/metrics`.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use crate::health::Health;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ServiceLabels {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

/// Datapath counters, read from the BPF maps at scrape time.
pub trait CounterSource: Send + Sync + std::fmt::Debug + 'static {
    /// Translations and refusals over every set.
    fn totals(&self) -> (u64, u64);

    /// (labels, translations, refusals), one row per service port; empty
    /// unless `--per-service-metrics` (the series grow with the cluster).
    fn read(&self) -> Vec<(ServiceLabels, u64, u64)>;

    /// The datapath's events (`socklb_common::stats`): (label, count).
    fn events(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

#[derive(Debug)]
struct DatapathCounters(Arc<Mutex<Option<Box<dyn CounterSource>>>>);

impl Collector for DatapathCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (totals, rows, events) = match self.0.lock() {
            Ok(guard) => guard.as_ref().map(|s| (s.totals(), s.read(), s.events())).unwrap_or_default(),
            Err(_) => ((0, 0), Vec::new(), Vec::new()),
        };
        for (name, help, value) in [
            (
                "socklb_translations",
                "Connects and datagrams translated to a backend, over all services",
                totals.0,
            ),
            (
                "socklb_refusals",
                "Connects and datagrams refused because the service had no usable endpoint, over all services",
                totals.1,
            ),
        ] {
            let metric = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            ConstCounter::new(value).encode(metric)?;
        }
        let mut family = encoder.encode_descriptor(
            "socklb_datapath_events",
            "Datapath events: connects and datagrams refused to fail closed (storage_failed, select_gone, \
             udp_reverse_full), clients left unpinned (affinity_full), UDP sockets re-balanced after idling \
             (udp_idle_repick)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (event, count) in &events {
            let labels = EventLabel { event: (*event).to_string() };
            let metric = family.encode_family(&labels)?;
            ConstCounter::new(*count).encode(metric)?;
        }
        if rows.is_empty() {
            return Ok(());
        }
        for (name, help, pick) in [
            (
                "socklb_service_translations",
                "Connects and datagrams translated to a backend, per service port",
                0usize,
            ),
            (
                "socklb_service_refusals",
                "Connects and datagrams refused because the service had no usable endpoint",
                1,
            ),
        ] {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (labels, translations, refusals) in &rows {
                let value = if pick == 0 { *translations } else { *refusals };
                let metric = family.encode_family(labels)?;
                ConstCounter::new(value).encode(metric)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub ready: AtomicBool,
    pub services: Gauge,
    pub frontends: Family<KindLabel, Gauge>,
    pub backends: Gauge,
    pub map_entries: Family<MapLabel, Gauge>,
    pub map_capacity: Family<MapLabel, Gauge>,
    pub sync_duration: Histogram,
    pub map_write_duration: Histogram,
    pub event_to_datapath: Histogram,
    pub map_operation_errors: Family<MapLabel, Counter>,
    pub reconcile_errors: Counter,
    pub invalid_objects: Family<ReasonLabel, Counter>,
    pub drift_repaired: Counter,
    pub source_errors: Family<SourceLabel, Counter>,
    pub syncs: Counter,
    pub stale_sockets_destroyed: Counter,
    pub network_programming: Histogram,
    pub affinity_expired: Counter,
    pub map_growths: Counter,
    pub health: Health,
    /// Answers `/sets` (set ids to their Services) from the event loop.
    pub sets_query: Mutex<Option<tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<String>>>>,
    counter_source: Arc<Mutex<Option<Box<dyn CounterSource>>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let services = Gauge::default();
        registry.register("socklb_services", "Kubernetes Services programmed", services.clone());
        let frontends = Family::<KindLabel, Gauge>::default();
        registry.register("socklb_frontends", "Frontends programmed, by kind", frontends.clone());
        let backends = Gauge::default();
        registry.register(
            "socklb_backends",
            "Backend slots programmed (a backend in two sets counts twice)",
            backends.clone(),
        );
        let map_entries = Family::<MapLabel, Gauge>::default();
        registry.register("socklb_map_entries", "Entries in each BPF map", map_entries.clone());
        let map_capacity = Family::<MapLabel, Gauge>::default();
        registry.register(
            "socklb_map_capacity",
            "Capacity (max_entries) of each BPF map",
            map_capacity.clone(),
        );
        let sync_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "socklb_sync_duration_seconds",
            "Time to rebuild, plan and apply one batch of changes",
            sync_duration.clone(),
        );
        let map_write_duration = Histogram::new(exponential_buckets(0.00001, 2.0, 20));
        registry.register(
            "socklb_map_write_seconds",
            "Time spent writing the BPF maps in one sync",
            map_write_duration.clone(),
        );
        let event_to_datapath = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "socklb_event_to_datapath_seconds",
            "Time from a source event's arrival to the datapath being updated",
            event_to_datapath.clone(),
        );
        let map_operation_errors = Family::<MapLabel, Counter>::default();
        registry.register(
            "socklb_map_operation_errors",
            "Failed BPF map writes and deletes",
            map_operation_errors.clone(),
        );
        let reconcile_errors = Counter::default();
        registry.register(
            "socklb_reconcile_errors",
            "Syncs that left some change unapplied (retried)",
            reconcile_errors.clone(),
        );
        let invalid_objects = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "socklb_invalid_objects",
            "Objects or fields skipped as invalid, by reason",
            invalid_objects.clone(),
        );
        let drift_repaired = Counter::default();
        registry.register(
            "socklb_resync_drift_repaired",
            "Map entries found different from the desired state on resync, and repaired",
            drift_repaired.clone(),
        );
        let source_errors = Family::<SourceLabel, Counter>::default();
        registry.register(
            "socklb_source_errors",
            "Errors reading a source (file, API server), by source",
            source_errors.clone(),
        );
        let syncs = Counter::default();
        registry.register("socklb_syncs", "Syncs applied to the datapath", syncs.clone());
        let stale_sockets_destroyed = Counter::default();
        registry.register(
            "socklb_stale_sockets_destroyed",
            "Sockets destroyed because their backend left the service",
            stale_sockets_destroyed.clone(),
        );
        // kube-proxy's SLI: from the EndpointSlice controller's change (its
        // last-change-trigger-time annotation) to the datapath programmed.
        let network_programming = Histogram::new(exponential_buckets(0.001, 2.0, 22));
        registry.register(
            "socklb_network_programming_duration_seconds",
            "Time from an EndpointSlice change (endpoints.kubernetes.io/last-change-trigger-time) to the datapath programmed",
            network_programming.clone(),
        );
        let affinity_expired = Counter::default();
        registry.register(
            "socklb_affinity_expired",
            "Session-affinity entries removed because their client was idle past the timeout",
            affinity_expired.clone(),
        );
        let map_growths = Counter::default();
        registry.register(
            "socklb_map_growths",
            "Times the maps were replaced by bigger ones (a new generation, filled, then switched to)",
            map_growths.clone(),
        );
        let counter_source = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(DatapathCounters(counter_source.clone())));
        Self {
            registry,
            ready: AtomicBool::new(false),
            services,
            frontends,
            backends,
            map_entries,
            map_capacity,
            sync_duration,
            map_write_duration,
            event_to_datapath,
            map_operation_errors,
            reconcile_errors,
            invalid_objects,
            drift_repaired,
            source_errors,
            syncs,
            stale_sockets_destroyed,
            network_programming,
            affinity_expired,
            map_growths,
            health: Health::default(),
            sets_query: Mutex::new(None),
            counter_source,
        }
    }

    pub fn set_counter_source(&self, source: Box<dyn CounterSource>) {
        if let Ok(mut guard) = self.counter_source.lock() {
            *guard = Some(source);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn invalid(&self, reason: &str) {
        self.invalid_objects.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    pub fn source_error(&self, source: &str) {
        self.source_errors.get_or_create(&SourceLabel { source: source.into() }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
