//! The reconciler and the event loop against the fake datapath: restarts,
//! random event sequences, injected write failures, and the rule that a
//! partial initial state never touches the maps.

use std::{collections::HashMap, sync::Arc, time::Duration};

use proptest::prelude::*;
use socklb::{
    agent::{LoopConfig, drive},
    metrics::Metrics,
    reconcile::{Limits, Reconciler},
};
use socklb_common::{BackendValue, SetState};
use socklb_k8s::decode::objects::{EndpointSlice, Service};
use socklb_k8s::{decode::files::parse_objects, model::NodeContext, store::SourceEvent};
use socklb_lb::{
    capacity::Capacities,
    datapath::{
        Datapath, MapState,
        fake::{FakeDatapath, SharedFake},
        faulty::{FaultyDatapath, RandomFaults},
    },
};

fn node() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        zone: None,
        nodeport_addresses: Default::default(),
        host_addresses: vec!["192.168.50.10".parse().expect("ip")],
        service_proxy_name: None,
    }
}

const LIMITS: Limits = Limits { max_services: 4096, max_backends: 4096 };

fn reconciler(dp: impl Datapath + Send + 'static) -> Reconciler {
    Reconciler::new(Box::new(dp), node(), &LIMITS, Arc::new(Metrics::new())).expect("reconciler")
}

fn example() -> (Vec<Service>, Vec<EndpointSlice>) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster.yaml"))
        .expect("example");
    let (o, _) = parse_objects(&text).expect("parses");
    (o.services, o.slices)
}

fn load(r: &mut Reconciler, services: Vec<Service>, slices: Vec<EndpointSlice>) {
    r.apply_event(SourceEvent::replace(0, &services, &slices));
}

#[test]
fn a_restart_with_an_unchanged_desired_state_writes_nothing_and_keeps_ids() {
    let dp = SharedFake::default();
    let mut first = reconciler(dp.clone());
    let (services, slices) = example();
    load(&mut first, services.clone(), slices.clone());
    assert!(first.sync().complete);
    let before = dp.state();
    let ops_before = dp.ops();
    drop(first);

    // A new agent adopts the maps as they are.
    let mut second = reconciler(dp.clone());
    load(&mut second, services, slices);
    let report = second.sync();
    assert!(report.complete);
    assert_eq!(report.ops_applied, 0, "nothing may be written");
    assert_eq!(dp.ops(), ops_before);
    assert_eq!(dp.state(), before, "same ids, same generations");
}

#[test]
fn an_endpoint_change_rewrites_only_that_service() {
    let dp = SharedFake::default();
    let mut r = reconciler(dp.clone());
    let (services, mut slices) = example();
    load(&mut r, services.clone(), slices.clone());
    r.sync();
    let ops_before = dp.ops();
    let web = slices.iter_mut().find(|s| s.metadata.name.as_deref() == Some("web-7xk2p")).expect("web slice");
    web.endpoints.pop();
    load(&mut r, services, slices);
    let report = r.sync();
    assert_eq!(report.changed.len(), 1, "{:?}", report.changed);
    assert_eq!(report.changed[0].to_string(), "default/web");
    // The new slots (one batch) and the switch.
    assert_eq!(dp.ops() - ops_before, report.ops_applied);
    assert!(report.ops_applied <= 3, "{} ops for one small change", report.ops_applied);
}

#[test]
fn a_relist_deletes_what_it_no_longer_contains() {
    let dp = SharedFake::default();
    let mut r = reconciler(dp.clone());
    let (services, slices) = example();
    load(&mut r, services.clone(), slices.clone());
    r.sync();
    let web_frontends = dp.state().frontends.len();
    let kept: Vec<Service> =
        services.into_iter().filter(|s| s.metadata.name.as_deref() != Some("web")).collect();
    r.apply_event(SourceEvent::replace_services(0, &kept));
    r.sync();
    assert_eq!(dp.state().frontends.len(), web_frontends - 1);
    assert!(dp.state().is_tidy());
}

#[test]
fn a_resync_repairs_drift_and_counts_it() {
    let dp = SharedFake::default();
    let mut r = reconciler(dp.clone());
    let (services, slices) = example();
    load(&mut r, services, slices);
    r.sync();
    let want = dp.state();
    // Somebody deletes a frontend and overwrites a slot behind the agent's back.
    dp.with(|fake| {
        let fk = *fake.state.frontends.keys().next().expect("a frontend");
        fake.state.frontends.remove(&fk);
        let (_, entry) =
            fake.state.sets.iter().find(|(_, e)| SetState::unpack(e.state).count > 0).expect("a set");
        let slot = SetState::unpack(entry.state).base;
        fake.corrupt_slot(slot, BackendValue::new([0, 0, 0xffff_u32.to_be(), 0x0909_0909], 9u16.to_be(), 6));
    });
    let drift = r.resync().expect("resync");
    assert!(drift >= 2, "drift {drift}");
    assert_eq!(dp.state().logical_view(), want.logical_view());
    assert_eq!(r.resync().expect("resync"), 0, "nothing left to repair");
}

#[test]
fn a_deleted_backend_is_doomed_and_a_terminating_or_unready_one_is_not() {
    let dp = SharedFake::default();
    let mut r = reconciler(dp.clone());
    let (services, mut slices) = example();
    load(&mut r, services.clone(), slices.clone());
    r.sync();
    let web = |slices: &mut Vec<EndpointSlice>| {
        slices
            .iter_mut()
            .find(|s| s.metadata.name.as_deref() == Some("web-7xk2p"))
            .expect("web slice")
            .endpoints
            .clone()
    };
    let original = web(&mut slices);

    // Not ready (and not terminating): out of the set, but not gone.
    let slice =
        slices.iter_mut().find(|s| s.metadata.name.as_deref() == Some("web-7xk2p")).expect("web slice");
    slice.endpoints[0].conditions = Some(socklb_k8s::decode::objects::EndpointConditions {
        ready: Some(false),
        serving: Some(false),
        terminating: Some(false),
    });
    load(&mut r, services.clone(), slices.clone());
    let report = r.sync();
    assert_eq!(report.changed.len(), 1);
    assert!(report.doomed.is_empty(), "{:?}", report.doomed);

    // Deleted from the slice: doomed, with the service id of its set.
    let slice =
        slices.iter_mut().find(|s| s.metadata.name.as_deref() == Some("web-7xk2p")).expect("web slice");
    slice.endpoints.remove(0);
    load(&mut r, services.clone(), slices.clone());
    let report = r.sync();
    assert_eq!(report.doomed.len(), 1, "{:?}", report.doomed);
    assert_eq!(report.doomed[0].backend.to_string(), format!("{}:8080", original[0].addresses[0]));
    assert!(r.balancer().set(report.doomed[0].set_id).is_some());

    // The whole service deleted: every backend is doomed.
    let kept: Vec<Service> =
        services.into_iter().filter(|s| s.metadata.name.as_deref() != Some("web")).collect();
    r.apply_event(SourceEvent::replace_services(0, &kept));
    let report = r.sync();
    assert_eq!(report.doomed.len(), 2, "{:?}", report.doomed);
}

#[test]
fn a_service_that_no_longer_fits_keeps_its_previous_version_and_others_go_on() {
    // Four backend slots for the whole node, and no growth beyond them.
    let dp = SharedFake::from(
        FakeDatapath::default().with_capacities(Capacities { slots: 4, ..Capacities::default() }),
    );
    let limits = Limits { max_services: 64, max_backends: 4 };
    let mut r = Reconciler::new(Box::new(dp.clone()), node(), &limits, Arc::new(Metrics::new())).expect("r");
    let yaml = |web: &[&str], other: &[&str]| {
        let eps =
            |v: &[&str]| v.iter().map(|a| format!("{{addresses: [{a}]}}")).collect::<Vec<_>>().join(", ");
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ns}}\nspec: {{clusterIP: 10.96.0.1, ports: [{{port: 80}}]}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: other, namespace: ns}}\nspec: {{clusterIP: 10.96.0.2, ports: [{{port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: ns, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nendpoints: [{}]\nports: [{{name: '', port: 8080}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: other-1, namespace: ns, labels: {{kubernetes.io/service-name: other}}}}\naddressType: IPv4\nendpoints: [{}]\nports: [{{name: '', port: 8080}}]\n",
            eps(web),
            eps(other)
        )
    };
    let apply = |r: &mut Reconciler, text: String| {
        let (o, _) = parse_objects(&text).expect("yaml");
        r.apply_event(SourceEvent::replace(0, &o.services, &o.slices));
        r.sync()
    };
    assert!(apply(&mut r, yaml(&["10.244.0.1", "10.244.0.2"], &["10.244.0.3"])).complete);
    let before = dp.state().logical_view();

    // web moves to two new backends: there are no free slots for them.
    let report = apply(&mut r, yaml(&["10.244.0.4", "10.244.0.5"], &["10.244.0.3"]));
    assert!(report.complete, "nothing half-written");
    let after = dp.state().logical_view();
    assert_eq!(after, before, "web keeps its previous version, other is untouched");
    assert!(r.problems().any(|p| p.object == "Service ns/web" && p.kind.label() == "capacity"));

    // Once there is room (other loses its backend), web's next change fits.
    // (A switch holds the old and the new set at once, so it needs room for both.)
    assert!(apply(&mut r, yaml(&["10.244.0.4", "10.244.0.5"], &[])).complete);
    assert!(apply(&mut r, yaml(&["10.244.0.4"], &[])).complete);
    let backends: Vec<String> = dp
        .state()
        .logical_view()
        .sets
        .values()
        .flat_map(|(_, b)| {
            b.iter().map(|b| socklb_common::ip_from_addr(&b.addr).to_string()).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(backends, ["10.244.0.4"]);
    assert!(dp.state().is_tidy());
}

#[tokio::test]
async fn the_loop_touches_nothing_until_every_source_part_has_synced() {
    let dp = SharedFake::default();
    // The maps already serve something from before a restart.
    {
        let mut r = reconciler(dp.clone());
        let (services, slices) = example();
        load(&mut r, services, slices);
        r.sync();
    }
    let before = dp.state();
    let metrics = Arc::new(Metrics::new());
    let mut r = Reconciler::new(Box::new(dp.clone()), node(), &LIMITS, metrics.clone()).expect("reconciler");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let mut cfg = LoopConfig {
        expected: HashMap::from([("services", 1), ("endpointslices", 1)]),
        resync: Duration::from_secs(3600),
        on_doomed: None,
        before_ready: None,
        sets_queries: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        drive(&mut r, &mut rx, &mut cfg, &metrics.clone(), async {
            let _ = stop_rx.await;
        })
        .await;
        metrics
    });

    // Services listed, slices not yet: a prune now would drop every backend.
    let (services, slices) = example();
    tx.send(SourceEvent::replace_services(9, &services)).await.expect("send");
    tx.send(SourceEvent::Synced("services")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(dp.state(), before, "a partial initial state must not touch the maps");

    tx.send(SourceEvent::replace_slices(9, &slices)).await.expect("send");
    tx.send(SourceEvent::Synced("endpointslices")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(dp.state().logical_view(), before.logical_view(), "same content once complete");
    stop_tx.send(()).expect("stop");
    let metrics = task.await.expect("loop");
    assert!(metrics.is_ready());
}

#[tokio::test]
async fn a_relist_under_way_is_synced_once_it_ends_not_object_by_object() {
    let dp = SharedFake::default();
    let metrics = Arc::new(Metrics::new());
    let mut r = Reconciler::new(Box::new(dp.clone()), node(), &LIMITS, metrics.clone()).expect("reconciler");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let mut cfg = LoopConfig {
        expected: HashMap::from([("file", 1)]),
        resync: Duration::from_secs(3600),
        on_doomed: None,
        before_ready: None,
        sets_queries: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        drive(&mut r, &mut rx, &mut cfg, &metrics.clone(), async {
            let _ = stop_rx.await;
        })
        .await;
    });
    let (services, slices) = example();
    tx.send(SourceEvent::replace(0, &services, &slices)).await.expect("send");
    tx.send(SourceEvent::Synced("file")).await.expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dp.ops() == 0 {
        assert!(std::time::Instant::now() < deadline, "the first sync never happened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let settled = dp.ops();

    // A relist starts and sends a changed slice: nothing is written while
    // the relist is open (it is one change), everything once it ends.
    let mut changed = slices.clone();
    changed[0].endpoints.truncate(1);
    let kinds = socklb_k8s::store::Kinds::ALL;
    tx.send(SourceEvent::ReplaceStart { origin: 0, kinds }).await.expect("send");
    for s in &services {
        tx.send(SourceEvent::service(0, s)).await.expect("send");
    }
    tx.send(SourceEvent::slice(0, &changed[0])).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dp.ops(), settled, "nothing written while the relist is open");
    for s in &changed[1..] {
        tx.send(SourceEvent::slice(0, s)).await.expect("send");
    }
    tx.send(SourceEvent::ReplaceEnd { origin: 0, kinds }).await.expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dp.ops() == settled {
        assert!(std::time::Instant::now() < deadline, "the relist was never synced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(()).expect("stop");
    task.await.expect("loop");
}

#[test]
fn in_a_big_cluster_the_gauges_follow_each_period_not_each_sync() {
    let big = Limits { max_services: 1 << 16, max_backends: 1 << 16 };
    let metrics = Arc::new(Metrics::new());
    let mut r =
        Reconciler::new(Box::new(SharedFake::default()), node(), &big, metrics.clone()).expect("reconciler");
    // A period no slow machine outruns.
    r.set_gauge_period(Duration::from_secs(3600));
    let service = |i: usize| -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}"), "namespace": "big"},
            "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1), "ports": [{"port": 80}]},
        }))
        .expect("service")
    };
    let slice = |i: usize| -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("s{i}-x"), "namespace": "big",
                         "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [format!("10.1.{}.{}", i / 250, i % 250 + 1)], "conditions": {"ready": true}}],
            "ports": [{"port": 8080}],
        }))
        .expect("slice")
    };
    let n = 10_001;
    let services: Vec<Service> = (0..n).map(service).collect();
    let slices: Vec<EndpointSlice> = (0..n).map(slice).collect();
    r.apply_event(SourceEvent::replace(0, &services, &slices));
    assert!(r.sync().complete);
    assert_eq!(metrics.services.get(), n as i64, "the first sync refreshes the gauges");

    // One more Service right away: programmed, but the gauge waits for the
    // period (a refresh counts over every Service).
    r.apply_event(SourceEvent::service(0, &service(n)));
    r.apply_event(SourceEvent::slice(0, &slice(n)));
    assert!(r.sync().complete);
    assert_eq!(metrics.services.get(), n as i64, "not refreshed by a sync within the period");
    r.flush_gauges();
    assert_eq!(metrics.services.get(), n as i64 + 1, "the loop's tick brings it up to date");
}

// ---- Random event sequences ----

fn service(i: u8, ports: &[u16], local: bool, node_port: bool) -> Service {
    let ports: Vec<String> = ports
        .iter()
        .map(|p| {
            let np = if node_port { format!(", nodePort: {}", 30000 + u32::from(*p)) } else { String::new() };
            format!("{{name: p{p}, port: {p}{np}}}")
        })
        .collect();
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns}}\nspec:\n  type: {}\n  clusterIP: 10.96.0.{i}\n  internalTrafficPolicy: {}\n  ports: [{}]\n",
        if node_port { "NodePort" } else { "ClusterIP" },
        if local { "Local" } else { "Cluster" },
        ports.join(", ")
    );
    parse_objects(&yaml).expect("yaml").0.services.remove(0)
}

fn slice(i: u8, n: u8, endpoints: &[(u8, bool, bool)]) -> EndpointSlice {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, ready, here)| {
            format!(
                "{{addresses: [10.244.0.{a}], conditions: {{ready: {ready}, serving: true, terminating: {}}}, nodeName: {}}}",
                !ready,
                if *here { "node-a" } else { "node-b" }
            )
        })
        .collect();
    let yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-{n}, namespace: ns, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nendpoints: [{}]\nports: [{{name: p80, port: 8080}}, {{name: p443, port: 8443}}]\n",
        eps.join(", ")
    );
    parse_objects(&yaml).expect("yaml").0.slices.remove(0)
}

#[derive(Clone, Debug)]
enum Ev {
    Service { i: u8, ports: Vec<u16>, local: bool, node_port: bool },
    DeleteService(u8),
    Slice { i: u8, n: u8, endpoints: Vec<(u8, bool, bool)> },
    DeleteSlice(u8, u8),
}

fn arb_event() -> impl Strategy<Value = Ev> {
    prop_oneof![
        3 => (1u8..=4, prop::sample::subsequence(vec![80u16, 443], 1..=2), any::<bool>(), any::<bool>())
            .prop_map(|(i, ports, local, node_port)| Ev::Service { i, ports, local, node_port }),
        1 => (1u8..=4).prop_map(Ev::DeleteService),
        4 => (1u8..=4, 0u8..2, prop::collection::vec((1u8..=8, any::<bool>(), any::<bool>()), 0..5))
            .prop_map(|(i, n, endpoints)| Ev::Slice { i, n, endpoints }),
        1 => (1u8..=4, 0u8..2).prop_map(|(i, n)| Ev::DeleteSlice(i, n)),
    ]
}

fn to_source(ev: &Ev) -> SourceEvent {
    match ev {
        Ev::Service { i, ports, local, node_port } => {
            SourceEvent::service(0, &service(*i, ports, *local, *node_port))
        }
        Ev::DeleteService(i) => {
            SourceEvent::ServiceDeleted { key: socklb_k8s::model::ObjKey::new("ns", format!("s{i}")) }
        }
        Ev::Slice { i, n, endpoints } => SourceEvent::slice(0, &slice(*i, *n, endpoints)),
        Ev::DeleteSlice(i, n) => {
            SourceEvent::SliceDeleted { key: socklb_k8s::model::ObjKey::new("ns", format!("s{i}-{n}")) }
        }
    }
}

/// What a reader sees, ids aside: per frontend, its set's flags and
/// backends.
fn served(
    st: &MapState,
) -> std::collections::BTreeMap<socklb_common::FrontendKey, (u16, u16, Vec<BackendValue>)> {
    let view = st.logical_view();
    st.frontends
        .iter()
        .map(|(k, f)| {
            let (entry, backends) = view.sets.get(&f.set_id).cloned().unwrap_or_default();
            (*k, (SetState::unpack(entry.state).flags, f.flags, backends))
        })
        .collect()
}

/// The maps a fresh agent programs for the whole history at once.
fn from_scratch(history: &[Ev]) -> MapState {
    let dp = SharedFake::default();
    let mut fresh = reconciler(dp.clone());
    for ev in history {
        fresh.apply_event(to_source(ev));
    }
    fresh.sync();
    dp.state()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn after_each_sync_the_maps_serve_what_a_fresh_agent_programs_and_a_resync_finds_nothing(
        batches in prop::collection::vec(prop::collection::vec(arb_event(), 1..6), 1..8)
    ) {
        let dp = SharedFake::default();
        let mut r = reconciler(dp.clone());
        let mut history: Vec<Ev> = Vec::new();
        for batch in &batches {
            for ev in batch {
                r.apply_event(to_source(ev));
                history.push(ev.clone());
            }
            let report = r.sync();
            prop_assert!(report.complete);
            let state = dp.state();
            prop_assert!(state.is_tidy());
            prop_assert_eq!(served(&state), served(&from_scratch(&history)));
            prop_assert_eq!(r.resync().expect("resync"), 0);
        }
    }

    #[test]
    fn with_injected_write_failures_retries_converge(
        batches in prop::collection::vec(prop::collection::vec(arb_event(), 1..6), 1..6),
        seed in any::<u64>(),
    ) {
        let dp = SharedFake::default();
        let mut r = reconciler(FaultyDatapath::new(dp.clone(), RandomFaults::new(seed, 250)));
        let mut history: Vec<Ev> = Vec::new();
        for batch in &batches {
            for ev in batch {
                r.apply_event(to_source(ev));
                history.push(ev.clone());
            }
            let mut report = r.sync();
            let mut rounds = 0;
            while !report.complete || r.needs_retry() {
                rounds += 1;
                prop_assert!(rounds < 200, "no convergence");
                // Retries wait for their backoff; the test does not.
                r.retry_all_now();
                report = r.sync();
            }
            let state = dp.state();
            prop_assert!(state.is_tidy());
            prop_assert_eq!(served(&state), served(&from_scratch(&history)));
        }
    }
}
