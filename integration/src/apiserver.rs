//! A test API server that speaks the real list/watch protocol over HTTP for
//! Services, EndpointSlices and Nodes: resourceVersions, label and field
//! selectors, bookmarks, watch timeouts and `410 Gone` after a compaction.
//! It can go away and come back on the same port, and inject faults, so the
//! agent's real kube-rs client path is tested end to end.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn of(obj: &Value) -> Option<Self> {
        match obj.get("kind")?.as_str()? {
            "Service" => Some(Self::Service),
            "EndpointSlice" => Some(Self::EndpointSlice),
            "Node" => Some(Self::Node),
            _ => None,
        }
    }

    fn list_kind(self) -> &'static str {
        match self {
            Self::Service => "ServiceList",
            Self::EndpointSlice => "EndpointSliceList",
            Self::Node => "NodeList",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::Service | Self::Node => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
        }
    }
}

#[derive(Clone, Debug)]
struct WatchEvent {
    rv: u64,
    kind: Kind,
    kind_of_event: &'static str,
    object: Value,
}

/// Faults the server injects.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Answer this many list requests with HTTP 500.
    pub fail_lists: u32,
    /// Answer this many watch requests with HTTP 500.
    pub fail_watches: u32,
    /// Cut every watch after this long (kube-rs must re-watch).
    pub watch_lifetime: Option<Duration>,
    /// Delay every response by this much (a slow server).
    pub delay: Option<Duration>,
    /// How the server treats `sendInitialEvents` (streaming lists).
    pub streaming_lists: StreamingLists,
}

/// What a watch with `sendInitialEvents=true` gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamingLists {
    /// The objects as ADDED events, then a bookmark marking their end
    /// (Kubernetes 1.27+ with WatchList).
    #[default]
    Supported,
    /// 422, as a server with the WatchList feature off answers.
    Refused,
    /// The parameter is ignored: the objects as ADDED events (a watch from
    /// resourceVersion 0) and never a bookmark marking their end.
    Ignored,
}

#[derive(Debug)]
struct ApiState {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    history: Vec<WatchEvent>,
    /// Watches from before this resourceVersion get 410 Gone.
    compacted: u64,
    faults: Faults,
    requests: u64,
    /// Watch requests served (each re-watch counts).
    watches: u64,
    /// When each list request arrived, per kind.
    list_times: BTreeMap<Kind, Vec<std::time::Instant>>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<ApiState>>,
    events: broadcast::Sender<WatchEvent>,
}

pub struct FakeApiServer {
    shared: Shared,
    pub addr: SocketAddr,
    /// The server's own runtime: dropping it kills the listener and every
    /// open connection, which is what "the API server went away" means.
    runtime: Option<tokio::runtime::Runtime>,
}

fn new_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn key_of(obj: &Value) -> Option<(Kind, String, String)> {
    let kind = Kind::of(obj)?;
    let meta = obj.get("metadata")?;
    let ns = meta.get("namespace").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = meta.get("name")?.as_str()?.to_string();
    Some((kind, ns, name))
}

impl FakeApiServer {
    /// Starts on an ephemeral loopback port.
    pub fn start() -> Self {
        let runtime = new_runtime();
        let (events, _) = broadcast::channel(65_536);
        let shared = Shared {
            state: Arc::new(Mutex::new(ApiState {
                rv: 1000,
                objects: BTreeMap::new(),
                history: Vec::new(),
                compacted: 0,
                faults: Faults::default(),
                requests: 0,
                watches: 0,
                list_times: BTreeMap::new(),
            })),
            events,
        };
        let listener =
            runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind test API server");
        let addr = listener.local_addr().expect("addr");
        let server = Self { shared, addr, runtime: None };
        server.serve(runtime, listener)
    }

    fn serve(mut self, runtime: tokio::runtime::Runtime, listener: tokio::net::TcpListener) -> Self {
        let app = app(self.shared.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self.runtime = Some(runtime);
        self
    }

    /// Goes away: the port refuses connections and open watches break.
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// Comes back on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let addr = self.addr;
        let runtime = new_runtime();
        let listener = runtime
            .block_on(async {
                for _ in 0..50 {
                    if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
                        return Some(l);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None
            })
            .expect("rebind the test API server's port");
        let app = app(self.shared.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self.runtime = Some(runtime);
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n",
            self.addr
        )
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.state.lock().expect("lock").faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.shared.state.lock().expect("lock").faults.clone()
    }

    pub fn requests(&self) -> u64 {
        self.shared.state.lock().expect("lock").requests
    }

    /// When each list request of `kind` arrived (failed ones included).
    pub fn list_times(&self, kind: Kind) -> Vec<std::time::Instant> {
        self.shared.state.lock().expect("lock").list_times.get(&kind).cloned().unwrap_or_default()
    }

    /// Watch requests so far: every re-watch after a cut counts.
    pub fn watches(&self) -> u64 {
        self.shared.state.lock().expect("lock").watches
    }

    /// Creates or replaces an object (JSON, with kind and metadata).
    pub fn apply(&self, mut obj: Value) {
        let key = key_of(&obj).expect("object with a kind and a name");
        let mut st = self.shared.state.lock().expect("lock");
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"].get("uid").is_none() {
            obj["metadata"]["uid"] = json!(format!("uid-{}-{}-{}", key.1, key.2, rv));
        }
        let kind_of_event = if st.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        st.objects.insert(key.clone(), obj.clone());
        let ev = WatchEvent { rv, kind: key.0, kind_of_event, object: obj };
        st.history.push(ev.clone());
        drop(st);
        let _ = self.shared.events.send(ev);
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut st = self.shared.state.lock().expect("lock");
        let Some(mut obj) = st.objects.remove(&(kind, namespace.to_string(), name.to_string())) else {
            return;
        };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let ev = WatchEvent { rv, kind, kind_of_event: "DELETED", object: obj };
        st.history.push(ev.clone());
        drop(st);
        let _ = self.shared.events.send(ev);
    }

    /// Forgets the event history, as etcd compaction does: every watch that
    /// resumes from an older resourceVersion gets 410 Gone and must relist.
    /// (See also [`FakeApiServer::drop_watches`].)
    pub fn compact(&self) {
        let mut st = self.shared.state.lock().expect("lock");
        st.rv += 1;
        st.compacted = st.rv;
        st.history.clear();
        drop(st);
        // Open watches are told too.
        let gone = WatchEvent { rv: 0, kind: Kind::Service, kind_of_event: "GONE", object: Value::Null };
        let _ = self.shared.events.send(gone);
    }
}

impl FakeApiServer {
    /// Ends every open watch stream cleanly, as an API server does when a
    /// watch times out; clients re-watch from their resourceVersion.
    pub fn drop_watches(&self) {
        let cut = WatchEvent { rv: 0, kind: Kind::Service, kind_of_event: "CUT", object: Value::Null };
        let _ = self.shared.events.send(cut);
    }
}

fn app(shared: Shared) -> Router {
    Router::new()
        .route("/api/v1/services", get(handle_services))
        .route("/apis/discovery.k8s.io/v1/endpointslices", get(handle_slices))
        .route("/api/v1/nodes", get(handle_nodes))
        .with_state(shared)
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    watch: Option<String>,
    resource_version: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    timeout_seconds: Option<u64>,
    allow_watch_bookmarks: Option<String>,
    send_initial_events: Option<String>,
}

async fn handle_services(State(s): State<Shared>, Query(q): Query<ListParams>) -> Response {
    handle(s, q, Kind::Service).await
}

async fn handle_slices(State(s): State<Shared>, Query(q): Query<ListParams>) -> Response {
    handle(s, q, Kind::EndpointSlice).await
}

async fn handle_nodes(State(s): State<Shared>, Query(q): Query<ListParams>) -> Response {
    handle(s, q, Kind::Node).await
}

/// Label selector terms: `key`, `!key`, `key=value`, `key!=value`.
fn selector_matches(selector: Option<&str>, obj: &Value) -> bool {
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector.unwrap_or_default().split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some(key) = term.strip_prefix('!') {
            get(key).is_none()
        } else if let Some((k, v)) = term.split_once("!=") {
            get(k) != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            get(k.trim_end_matches('=')) == Some(v)
        } else {
            get(term).is_some()
        }
    })
}

fn fields_match(selector: Option<&str>, obj: &Value) -> bool {
    selector.unwrap_or_default().split(',').filter(|t| !t.is_empty()).all(|term| match term.split_once('=') {
        Some(("metadata.name", v)) => obj.pointer("/metadata/name").and_then(Value::as_str) == Some(v),
        Some(("metadata.namespace", v)) => {
            obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(v)
        }
        _ => true,
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

async fn handle(s: Shared, q: ListParams, kind: Kind) -> Response {
    let is_watch = q.watch.as_deref().is_some_and(|w| w == "true" || w == "1");
    let initial_events = is_watch && q.send_initial_events.as_deref() == Some("true");
    let (delay, fail, lifetime, streaming) = {
        let mut st = s.state.lock().expect("lock");
        st.requests += 1;
        // A streaming list is a list and a watch in one request: it is
        // counted as both, and fails as a list first, then as a watch.
        let lists = !is_watch || (initial_events && st.faults.streaming_lists == StreamingLists::Supported);
        if is_watch {
            st.watches += 1;
        }
        if lists {
            st.list_times.entry(kind).or_default().push(std::time::Instant::now());
        }
        let fail = if lists && st.faults.fail_lists > 0 {
            st.faults.fail_lists -= 1;
            true
        } else if is_watch && st.faults.fail_watches > 0 {
            st.faults.fail_watches -= 1;
            true
        } else {
            false
        };
        (st.faults.delay, fail, st.faults.watch_lifetime, st.faults.streaming_lists)
    };
    if initial_events && streaming == StreamingLists::Refused {
        let body = status(
            422,
            "Invalid",
            "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
        )
        .to_string();
        return (StatusCode::UNPROCESSABLE_ENTITY, [(header::CONTENT_TYPE, "application/json")], body)
            .into_response();
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if fail {
        let body = status(500, "InternalError", "injected failure").to_string();
        return (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "application/json")], body)
            .into_response();
    }
    let matches = {
        let label = q.label_selector.clone();
        let field = q.field_selector.clone();
        move |o: &Value| selector_matches(label.as_deref(), o) && fields_match(field.as_deref(), o)
    };
    if !is_watch {
        let st = s.state.lock().expect("lock");
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((k, _, _), o)| *k == kind && matches(o))
            .map(|(_, o)| o.clone())
            .collect();
        let body = json!({
            "apiVersion": kind.api_version(),
            "kind": kind.list_kind(),
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        });
        return ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    }

    let from: u64 = q.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut rx = s.events.subscribe();
    let (backlog, too_old, current) = {
        let st = s.state.lock().expect("lock");
        let too_old = from != 0 && from < st.compacted;
        // A streaming list, or a watch from 0 that ignores it: every
        // object as ADDED, then (if supported) the bookmark that ends them.
        let backlog: Vec<WatchEvent> =
            if initial_events || (from == 0 && streaming == StreamingLists::Ignored) {
                st.objects
                    .iter()
                    .filter(|((k, _, _), _)| *k == kind)
                    .map(|(_, o)| WatchEvent { rv: st.rv, kind, kind_of_event: "ADDED", object: o.clone() })
                    .collect()
            } else {
                st.history.iter().filter(|e| e.rv > from && e.kind == kind).cloned().collect()
            };
        (backlog, too_old, st.rv)
    };
    let end_of_initial = initial_events && streaming == StreamingLists::Supported;
    let bookmarks = q.allow_watch_bookmarks.as_deref() == Some("true");
    let timeout = Duration::from_secs(q.timeout_seconds.unwrap_or(300))
        .min(lifetime.unwrap_or(Duration::from_secs(3600)));
    let line = |v: Value| format!("{v}\n");
    let stream = async_stream(move |tx| async move {
        if too_old {
            let gone = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
            let _ = tx.send(line(gone)).await;
            return;
        }
        for e in backlog {
            if matches(&e.object) {
                let _ = tx.send(line(json!({"type": e.kind_of_event, "object": e.object}))).await;
            }
        }
        if end_of_initial {
            let bm = json!({"type": "BOOKMARK", "object": {
                "kind": match kind { Kind::Service => "Service", Kind::EndpointSlice => "EndpointSlice", Kind::Node => "Node" },
                "apiVersion": kind.api_version(),
                "metadata": {"resourceVersion": current.to_string(),
                             "annotations": {"k8s.io/initial-events-end": "true"}}}});
            if tx.send(line(bm)).await.is_err() {
                return;
            }
        }
        let mut last_rv = current;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(e) if e.kind_of_event == "CUT" => return,
                    Ok(e) if e.kind_of_event == "GONE" => {
                        let gone = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
                        let _ = tx.send(line(gone)).await;
                        return;
                    }
                    Ok(e) if e.kind == kind && e.rv > from => {
                        last_rv = last_rv.max(e.rv);
                        if matches(&e.object) && tx.send(line(json!({"type": e.kind_of_event, "object": e.object}))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"type": "BOOKMARK", "object": {
                        "kind": match kind { Kind::Service => "Service", Kind::EndpointSlice => "EndpointSlice", Kind::Node => "Node" },
                        "apiVersion": kind.api_version(),
                        "metadata": {"resourceVersion": last_rv.to_string()}}});
                    if tx.send(line(bm)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream.map(Ok::<_, std::io::Error>)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A stream fed by a task through a channel (the task ends the stream).
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = String>
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(f(tx));
    tokio_stream_from(rx)
}

fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<String>) -> impl futures::Stream<Item = String> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Object builders for tests.
pub mod objects {
    use serde_json::{Value, json};

    pub fn service(ns: &str, name: &str, cluster_ip: &str, port: u16) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                     "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": "http"}]}
        })
    }

    pub fn slice(ns: &str, name: &str, service: &str, addresses: &[&str], port: u16) -> Value {
        let endpoints: Vec<Value> = addresses
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false}}))
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]
        })
    }

    pub fn node(name: &str, zone: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}
        })
    }
}
