//! A guard on the agent's memory: the bytes its state holds per Service and
//! per endpoint after the first sync of generated objects, counted by a
//! global allocator. It fails when a change makes the state grow, long
//! before a 100k-Service node notices (docs/benchmarks.md has the RSS).
//!
//! The datapath here keeps nothing (the kernel holds the maps), so what is
//! counted is the agent's own: the store, the interned names and the
//! balancer. One test function, so that no other test allocates meanwhile.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::json;
use socklb::{
    metrics::Metrics,
    reconcile::{Limits, Reconciler},
};
use socklb_common::{BackendValue, SetCounters, SetEntry, counting_alloc::CountingAlloc};
use socklb_k8s::{
    decode::objects::{EndpointSlice, Service},
    model::NodeContext,
    store::{Kinds, SourceEvent},
};
use socklb_lb::{
    capacity::Capacities,
    datapath::{Datapath, DatapathError, MapOp, MapState},
    slots::Run,
};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Accepts every write and keeps none of it, like maps in the kernel.
struct KernelSide {
    capacities: Capacities,
}

impl Datapath for KernelSide {
    fn capacities(&self) -> Capacities {
        self.capacities
    }
    fn apply(&mut self, _: &MapOp) -> Result<(), DatapathError> {
        Ok(())
    }
    fn read_sets(&self) -> Result<Vec<(u32, SetEntry)>, DatapathError> {
        Ok(Vec::new())
    }
    fn read_slots(&self, run: Run) -> Result<Vec<BackendValue>, DatapathError> {
        Ok(vec![BackendValue::default(); run.len as usize])
    }
    fn read_state(&self) -> Result<MapState, DatapathError> {
        Ok(MapState::default())
    }
    fn read_counters(&self) -> Result<BTreeMap<u32, SetCounters>, DatapathError> {
        Ok(BTreeMap::new())
    }
    fn grow(&mut self, to: &Capacities) -> Result<(), DatapathError> {
        self.capacities = *to;
        Ok(())
    }
    fn epoch(&self) -> u64 {
        1
    }
    fn completed_epoch(&self) -> u64 {
        0
    }
    fn end_epoch(&mut self) {}
    fn wait_grace(&mut self) {}
}

/// Namespaces, nodes and zones as a mid-sized cluster has them.
const NAMESPACES: usize = 40;
const NODES: usize = 100;

/// A ClusterIP Service with two TCP ports, as most are.
fn service(i: usize) -> Service {
    let v = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": format!("service-{i}"), "namespace": format!("team-{}", i % NAMESPACES),
            "uid": format!("5f6c2a1e-0000-4000-8000-{i:012}"), "resourceVersion": "1",
            "labels": {"app": format!("service-{i}")},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
            "clusterIPs": [format!("10.96.{}.{}", i / 250, i % 250 + 1)],
            "ipFamilies": ["IPv4"],
            "selector": {"app": format!("service-{i}")},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"},
            ],
        },
    });
    serde_json::from_value(v).expect("a generated Service decodes")
}

/// The Service's one EndpointSlice, with `endpoints` ready endpoints spread
/// over the nodes.
fn slice(i: usize, endpoints: usize) -> EndpointSlice {
    let eps: Vec<_> = (0..endpoints)
        .map(|e| {
            let n = i * endpoints + e;
            json!({
                "addresses": [format!("10.{}.{}.{}", 64 + n / 65536 % 64, n / 256 % 256, n % 256)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", n % NODES),
                "targetRef": {"kind": "Pod", "name": format!("service-{i}-{e}"), "namespace": "x"},
            })
        })
        .collect();
    let v = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("service-{i}-abcde"), "namespace": format!("team-{}", i % NAMESPACES),
            "labels": {
                "kubernetes.io/service-name": format!("service-{i}"),
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "metrics", "port": 9090, "protocol": "TCP"},
        ],
    });
    serde_json::from_value(v).expect("a generated EndpointSlice decodes")
}

fn node() -> NodeContext {
    NodeContext {
        node_name: "node-0".into(),
        zone: None,
        nodeport_addresses: Default::default(),
        host_addresses: vec!["192.168.50.10".parse().expect("ip")],
        service_proxy_name: None,
    }
}

/// The bytes the agent's state holds after syncing `services` Services of
/// `endpoints` endpoints each, fed one object at a time as a watch does.
fn state_bytes(services: usize, endpoints: usize) -> isize {
    let objects: Vec<(Service, EndpointSlice)> =
        (0..services).map(|i| (service(i), slice(i, endpoints))).collect();
    let metrics = Arc::new(Metrics::new());
    let limits = Limits { max_services: 1 << 21, max_backends: 1 << 24 };
    let before = CountingAlloc::live();
    let mut r = Reconciler::new(
        Box::new(KernelSide { capacities: Capacities::default() }),
        node(),
        &limits,
        metrics.clone(),
    )
    .expect("reconciler");
    r.apply_event(SourceEvent::ReplaceStart { origin: 0, kinds: Kinds::ALL });
    for (s, e) in &objects {
        r.apply_event(SourceEvent::service(0, s));
        r.apply_event(SourceEvent::slice(0, e));
    }
    r.apply_event(SourceEvent::ReplaceEnd { origin: 0, kinds: Kinds::ALL });
    let report = r.sync();
    assert!(report.complete, "the sync completes");
    assert_eq!(r.balancer().stats().sets as usize, services * 2, "two backend sets per Service");
    let held = CountingAlloc::live() - before;
    drop(r);
    held
}

#[test]
fn the_agent_state_per_service_and_per_endpoint_stays_small() {
    // Warm up lazily allocated statics (tracing, metrics registries).
    state_bytes(10, 1);

    const N: usize = 4000;
    let one = state_bytes(N, 1);
    let ten = state_bytes(N, 10);
    let per_endpoint = (ten - one) as f64 / (N * 9) as f64;
    let per_service = one as f64 / N as f64 - per_endpoint;
    eprintln!(
        "agent state: {one} B for {N} Services x 1 endpoint, {ten} B for {N} x 10: \
         {per_service:.0} B per Service (2 ports), {per_endpoint:.0} B per endpoint"
    );
    // Bounds with about 25% headroom over what this layout measures (1016 B
    // and 106 B on x86_64): a Service of two ports and 10 endpoints may
    // hold at most about 2.6 KB of agent state.
    const PER_SERVICE: f64 = 1280.0;
    const PER_ENDPOINT: f64 = 135.0;
    assert!(per_service <= PER_SERVICE, "{per_service:.0} B per Service, bound {PER_SERVICE}");
    assert!(per_endpoint <= PER_ENDPOINT, "{per_endpoint:.0} B per endpoint, bound {PER_ENDPOINT}");
}
