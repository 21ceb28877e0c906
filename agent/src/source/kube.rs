//! The API server: kube-rs watchers for Services, EndpointSlices and Nodes
//! (every node's addresses serve NodePorts; this node's also gives its zone).
//!
//! * Label selectors as kube-proxy's informers: no
//!   `service.kubernetes.io/service-proxy-name` (or ours, when a proxy name
//!   is set) and no `service.kubernetes.io/headless`.
//! * Nothing is forwarded until a (re)list is complete (`InitDone`); the
//!   complete list then replaces what the agent had, so a relist deletes what
//!   it no longer contains, and a partial list never prunes (Cilium #27215).
//! * API errors and an unreachable server are retried with a backoff that
//!   only real progress resets (at most `--api-retry-max` apart), and logged
//!   once per failure streak; an expired watch (410 Gone) relists at once
//!   (see [`super::backoff`]). Meanwhile nothing is sent and the datapath
//!   keeps its state.

use std::{
    fmt::Debug,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use kube::{Api, Client, Resource, runtime::watcher};
use serde::de::DeserializeOwned;
use socklb_k8s::decode::objects::{EndpointSlice, Service};
use tokio::sync::mpsc;

use socklb_k8s::{
    decode::node::{NodeObject, ingest_node},
    model::service::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME},
    store::{Kinds, Origin, SourceEvent, service_key, slice_key},
};

use super::backoff::{Report, Retry, error_chain, is_transport_error};
use crate::{api_access::Advice, metrics::Metrics};

/// The origin of API server objects (files use 0..n).
pub const ORIGIN: Origin = u16::MAX;

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
    pub access: Access,
}

/// How the API server is reached, for retries and their messages.
#[derive(Clone, Debug)]
pub struct Access {
    /// The server URL (for messages: the request URL is this plus the path).
    pub server: String,
    /// The longest wait between two attempts after an error.
    pub retry_max: Duration,
    /// What to tell the operator when the server cannot be reached.
    pub advice: Option<Advice>,
}

/// Runs the three watchers until the receiver goes away.
pub async fn run(client: Client, cfg: WatchConfig, tx: mpsc::Sender<SourceEvent>, metrics: Arc<Metrics>) {
    let WatchConfig { node_name, service_proxy_name, access } = cfg;
    let selector = label_selector(service_proxy_name.as_deref());
    let services = watch_kind::<Service>(
        Api::all(client.clone()),
        watcher::Config::default().labels(&selector),
        "services",
        Kinds::SERVICES,
        &access,
        tx.clone(),
        metrics.clone(),
        |obj| Some(SourceEvent::ServiceApplied { origin: ORIGIN, service: Box::new(obj) }),
        |obj| SourceEvent::ServiceDeleted { key: service_key(&obj) },
    );
    let slices = watch_kind::<EndpointSlice>(
        Api::all(client.clone()),
        watcher::Config::default().labels(&selector),
        "endpointslices",
        Kinds::SLICES,
        &access,
        tx.clone(),
        metrics.clone(),
        |obj| Some(SourceEvent::SliceApplied { origin: ORIGIN, slice: Box::new(obj) }),
        |obj| SourceEvent::SliceDeleted { key: slice_key(&obj) },
    );
    // Every Node: NodePorts are served on every node's addresses. Only
    // their names, addresses and zone are decoded (see `node`).
    let _ = node_name;
    let nodes = watch_kind::<NodeObject>(
        Api::all(client),
        watcher::Config::default(),
        "nodes",
        Kinds::NODES,
        &access,
        tx,
        metrics,
        |node| {
            ingest_node(&node).map(|node| SourceEvent::NodeApplied { origin: ORIGIN, node: Box::new(node) })
        },
        |node| SourceEvent::NodeDeleted { name: node.metadata.name.unwrap_or_default() },
    );
    tokio::join!(services, slices, nodes);
}

/// How long an initial watch (a streaming list) may go quiet before the
/// initial-events-end bookmark: a server that ignores `sendInitialEvents`
/// sends the objects and then nothing, so it is listed instead.
const STREAMING_LIST_QUIET: Duration = Duration::from_secs(10);

/// Whether a failed watch start means the server refuses streaming lists
/// (an API server before 1.27, or with the WatchList feature off, answers
/// 400 or 422 to `sendInitialEvents`).
/// Listed objects per event sent to the agent.
const LIST_BATCH: usize = 256;

fn refuses_streaming_lists(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(status)) if matches!(status.code, 400 | 422))
}

/// Watches one kind, and forwards each object as it arrives: the initial
/// state (a streaming list, `sendInitialEvents`, where the server supports
/// it; a paginated list otherwise) between a `ReplaceStart` and a
/// `ReplaceEnd`, so that nothing of the cluster is buffered here.
#[allow(clippy::too_many_arguments)]
async fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    kinds: Kinds,
    access: &Access,
    tx: mpsc::Sender<SourceEvent>,
    metrics: Arc<Metrics>,
    applied: impl Fn(K) -> Option<SourceEvent>,
    deleted: impl Fn(K) -> SourceEvent,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let url = format!("{}{}", access.server.trim_end_matches('/'), K::url_path(&(), None));
    // No stream backoff: kube-rs resets it on the Init that precedes every
    // list attempt, so it never grows (see `backoff`).
    let mut streaming = true;
    let mut stream = watcher(api.clone(), config.clone().streaming_lists()).boxed();
    let mut retry = Retry::new(access.retry_max);
    let mut synced = false;
    let mut initial = false;
    let mut listed = 0usize;
    let mut pending: Vec<SourceEvent> = Vec::new();
    loop {
        let next = if streaming && initial {
            match tokio::time::timeout(STREAMING_LIST_QUIET, stream.try_next()).await {
                Ok(next) => next,
                Err(_) => {
                    tracing::info!(what, url = %url, "the API server sends no end to a streaming list; listing instead");
                    streaming = false;
                    stream = watcher(api.clone(), config.clone()).boxed();
                    continue;
                }
            }
        } else {
            stream.try_next().await
        };
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                if streaming && refuses_streaming_lists(&e) {
                    tracing::info!(what, url = %url, error = %error_chain(&e),
                        "the API server refuses streaming lists; listing instead");
                    streaming = false;
                    stream = watcher(api.clone(), config.clone()).boxed();
                    continue;
                }
                metrics.source_error(what);
                if std::mem::take(&mut initial) {
                    // The list broke off: what it sent stays, nothing goes.
                    pending.push(SourceEvent::ReplaceAbort { origin: ORIGIN, kinds });
                    if tx.send(SourceEvent::Batch(std::mem::take(&mut pending))).await.is_err() {
                        return;
                    }
                }
                let gone = is_gone(&e);
                let (delay, report) = retry.failed(Instant::now(), gone);
                log_failure(&e, report, &url, what, access, delay);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                continue;
            }
        };
        if matches!(event, watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_))
            && let Some(r) = retry.progressed(Instant::now())
        {
            tracing::info!(
                what,
                url = %url,
                failures = r.failures,
                lasted = %humantime::format_duration(round_secs(r.lasted)),
                "the API server answers again"
            );
        }
        let list_done = matches!(event, watcher::Event::InitDone);
        let listing = matches!(event, watcher::Event::InitApply(_));
        let out = match event {
            watcher::Event::Init => {
                initial = true;
                listed = 0;
                Some(SourceEvent::ReplaceStart { origin: ORIGIN, kinds })
            }
            watcher::Event::InitApply(obj) => {
                listed += 1;
                applied(obj)
            }
            watcher::Event::InitDone => {
                initial = false;
                tracing::info!(what, objects = listed, streaming, "list complete");
                Some(SourceEvent::ReplaceEnd { origin: ORIGIN, kinds })
            }
            watcher::Event::Apply(obj) => applied(obj),
            watcher::Event::Delete(obj) => Some(deleted(obj)),
        };
        pending.extend(out);
        // The objects of a list go to the agent in batches (one wake-up
        // per batch); anything else goes at once, after them.
        if listing && pending.len() < LIST_BATCH {
            continue;
        }
        let event = match pending.len() {
            0 => None,
            1 => pending.pop(),
            _ => Some(SourceEvent::Batch(std::mem::take(&mut pending))),
        };
        if let Some(event) = event {
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

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// A 410 Gone: the watch position expired; the watcher relists.
fn is_gone(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// One line per failure streak (plus a reminder a minute), with the URL,
/// the whole error chain (the OS error included) and, when the server could
/// not be reached at all, what to do about it.
fn log_failure(
    e: &watcher::Error,
    report: Report,
    url: &str,
    what: &'static str,
    access: &Access,
    delay: Duration,
) {
    let error = error_chain(e);
    let advice = (is_transport_error(e) && access.advice.as_ref().is_some_and(|a| a.applies()))
        .then(|| access.advice.as_ref().map(ToString::to_string))
        .flatten();
    let retry_in = humantime::format_duration(Duration::from_millis(delay.as_millis() as u64));
    match report {
        Report::Expired => {
            tracing::info!(what, url, "watch expired (410 Gone); relisting now");
        }
        Report::First => match &advice {
            Some(advice) => tracing::warn!(
                what, url, error, %retry_in, advice = advice.as_str(),
                "cannot reach the API server; the datapath keeps its state, retrying with backoff"
            ),
            None => tracing::warn!(
                what, url, error, %retry_in,
                "API request failed; the datapath keeps its state, retrying with backoff"
            ),
        },
        Report::StillFailing { failures, since } => tracing::warn!(
            what, url, error, failures,
            failing_for = %humantime::format_duration(round_secs(since)),
            %retry_in,
            advice = advice.as_deref().unwrap_or(""),
            "the API server still fails"
        ),
        Report::Quiet => tracing::debug!(what, url, error, %retry_in, "API request failed again"),
    }
}
