//! The API server: kube-rs watchers for Services, EndpointSlices and this
//! node's Node object.
//!
//! * Label selectors as kube-proxy's informers: no
//!   `service.kubernetes.io/service-proxy-name` (or ours, when a proxy name
//!   is set) and no `service.kubernetes.io/headless`.
//! * Nothing is forwarded until a (re)list is complete (`InitDone`); the
//!   complete list then replaces what the agent had, so a relist deletes what
//!   it no longer contains, and a partial list never prunes (Cilium #27215).
//! * Expired watches (410 Gone), API errors and an unreachable server are
//!   retried with [`WatchBackoff`] (at most `--api-retry-max` apart);
//!   meanwhile nothing is sent and the datapath keeps its state.

use std::{fmt::Debug, sync::Arc, time::Duration};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::backoff::WatchBackoff;
use crate::{
    metrics::Metrics,
    model::service::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME},
    store::{
        IngestedService, IngestedSlice, Origin, SourceEvent, ingest_service, ingest_slice, service_key,
        slice_key,
    },
};

/// The origin of API server objects (files use 0..n).
pub const ORIGIN: Origin = u16::MAX;

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// kube-proxy's informer label selector.
pub fn label_selector(service_proxy_name: Option<&str>) -> String {
    match service_proxy_name {
        None => format!("!{LABEL_SERVICE_PROXY_NAME},!{LABEL_HEADLESS}"),
        Some(name) => format!("{LABEL_SERVICE_PROXY_NAME}={name},!{LABEL_HEADLESS}"),
    }
}

/// What the watchers need besides the client and the channel.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub node_name: String,
    pub service_proxy_name: Option<String>,
    /// The longest wait between two attempts after an error.
    pub retry_max: Duration,
}

/// Runs the three watchers until the receiver goes away.
pub async fn run(client: Client, cfg: WatchConfig, tx: mpsc::Sender<SourceEvent>, metrics: Arc<Metrics>) {
    let WatchConfig { node_name, service_proxy_name, retry_max } = cfg;
    let selector = label_selector(service_proxy_name.as_deref());
    let proxy = service_proxy_name.clone();
    let services = watch_kind::<Service, IngestedService>(
        Api::all(client.clone()),
        watcher::Config::default().labels(&selector),
        "services",
        retry_max,
        tx.clone(),
        metrics.clone(),
        move |obj| ingest_service(obj, proxy.as_deref()),
        |objs| SourceEvent::ReplaceServices { origin: ORIGIN, services: objs },
        |obj| SourceEvent::ServiceApplied { origin: ORIGIN, service: Box::new(obj) },
        |obj| SourceEvent::ServiceDeleted { key: service_key(&obj) },
    );
    let slices = watch_kind::<EndpointSlice, IngestedSlice>(
        Api::all(client.clone()),
        watcher::Config::default().labels(&selector),
        "endpointslices",
        retry_max,
        tx.clone(),
        metrics.clone(),
        ingest_slice,
        |objs| SourceEvent::ReplaceSlices { origin: ORIGIN, slices: objs },
        |obj| SourceEvent::SliceApplied { origin: ORIGIN, slice: Box::new(obj) },
        |obj| SourceEvent::SliceDeleted { key: slice_key(&obj) },
    );
    let nodes = watch_kind::<Node, Option<String>>(
        Api::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        "nodes",
        retry_max,
        tx,
        metrics,
        |node| node.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).cloned(),
        |zones| SourceEvent::NodeZone(zones.into_iter().next().flatten()),
        SourceEvent::NodeZone,
        |_| SourceEvent::NodeZone(None),
    );
    tokio::join!(services, slices, nodes);
}

/// Watches one kind. Objects are validated as they arrive (`ingest`), so a
/// relist buffers only their small validated forms.
#[allow(clippy::too_many_arguments)]
async fn watch_kind<K, I>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    retry_max: Duration,
    tx: mpsc::Sender<SourceEvent>,
    metrics: Arc<Metrics>,
    ingest: impl Fn(&K) -> I,
    replace: impl Fn(Vec<I>) -> SourceEvent,
    applied: impl Fn(I) -> SourceEvent,
    deleted: impl Fn(K) -> SourceEvent,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut stream = watcher(api, config).backoff(WatchBackoff::for_watchers(retry_max)).boxed();
    let mut buffer: Vec<I> = Vec::new();
    let mut synced = false;
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                // The stream backs off and re-lists by itself.
                tracing::warn!(error = %e, what, "watch failed; retrying with backoff, datapath unchanged");
                metrics.source_error(what);
                continue;
            }
        };
        let list_done = matches!(event, watcher::Event::InitDone);
        let out = match event {
            watcher::Event::Init => {
                buffer.clear();
                None
            }
            watcher::Event::InitApply(obj) => {
                buffer.push(ingest(&obj));
                None
            }
            watcher::Event::InitDone => {
                tracing::info!(what, objects = buffer.len(), "list complete");
                Some(replace(std::mem::take(&mut buffer)))
            }
            watcher::Event::Apply(obj) => Some(applied(ingest(&obj))),
            watcher::Event::Delete(obj) => Some(deleted(obj)),
        };
        if let Some(event) = out {
            if tx.send(event).await.is_err() {
                return;
            }
            if list_done && !synced {
                synced = true;
                if tx.send(SourceEvent::Synced(what)).await.is_err() {
                    return;
                }
            }
        }
    }
}
