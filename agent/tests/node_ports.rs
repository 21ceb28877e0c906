//! NodePorts on every node: map entries grow with nodes plus NodePorts,
//! never with their product, and node ids survive a restart.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use socklb::{
    metrics::Metrics,
    reconcile::{Limits, Reconciler},
};
use socklb_k8s::{
    decode::files::parse_objects,
    decode::node::IngestedNode,
    model::{
        NodeContext,
        nodes::{NodeInfo, NodePortAddresses},
    },
    store::{Kinds, SourceEvent},
};
use socklb_lb::datapath::fake::SharedFake;

const NODES: usize = 5_000;
const NODE_PORTS: usize = 1_000;
const LOCAL: usize = 100;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn nodes() -> Vec<IngestedNode> {
    (0..NODES)
        .map(|n| IngestedNode {
            name: format!("node-{n}"),
            info: NodeInfo {
                addresses: vec![
                    ip(&format!("10.{}.{}.1", n / 250, n % 250)),
                    ip(&format!("203.0.{}.{}", n / 250, n % 250)),
                ],
                zone: None,
            },
            problems: Vec::new(),
        })
        .collect()
}

/// NodePort services with two endpoints on two other nodes; the last
/// `LOCAL` of them with `externalTrafficPolicy: Local`.
fn services() -> String {
    let mut out = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..NODE_PORTS {
        let etp = if i >= NODE_PORTS - LOCAL { "Local" } else { "Cluster" };
        out.push_str(&format!(
            "- {{apiVersion: v1, kind: Service, metadata: {{name: s{i}, namespace: n}}, spec: {{type: NodePort, clusterIP: 10.96.{}.{}, externalTrafficPolicy: {etp}, ports: [{{port: 80, nodePort: {}}}]}}}}\n\
             - {{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {{name: s{i}-1, namespace: n, labels: {{kubernetes.io/service-name: s{i}}}}}, addressType: IPv4, endpoints: [{{addresses: [10.244.{}.1], nodeName: node-{}}}, {{addresses: [10.244.{}.2], nodeName: node-{}}}], ports: [{{name: '', port: 8080}}]}}\n",
            i / 250,
            i % 250,
            30000 + i,
            i % 250,
            1 + i % (NODES - 1),
            i % 250,
            1 + (i + 7) % (NODES - 1),
        ));
    }
    out
}

fn reconciler(dp: SharedFake) -> Reconciler {
    let ctx = NodeContext {
        node_name: "node-0".into(),
        nodeport_addresses: NodePortAddresses::Primary,
        ..Default::default()
    };
    let limits = Limits { max_services: 1 << 16, max_backends: 1 << 16 };
    Reconciler::new(Box::new(dp), ctx, &limits, Arc::new(Metrics::new())).expect("reconciler")
}

fn load(r: &mut Reconciler) {
    let (objects, problems) = parse_objects(&services()).expect("yaml");
    assert!(problems.is_empty(), "{problems:?}");
    r.apply_event(SourceEvent::Replace {
        origin: 0,
        kinds: Kinds::ALL,
        services: objects.services,
        slices: objects.slices,
        nodes: nodes(),
    });
}

#[test]
fn five_thousand_nodes_and_a_thousand_node_ports_cost_their_sum_in_entries() {
    let dp = SharedFake::default();
    let mut r = reconciler(dp.clone());
    load(&mut r);
    assert!(r.sync().complete);
    let st = dp.state();
    assert_eq!(st.node_addrs.len(), NODES * 2, "every node's two addresses, once");
    assert_eq!(st.node_ports.len(), NODE_PORTS, "one entry per NodePort, not per address");
    assert_eq!(st.node_local.len(), LOCAL * 2, "one per (Local NodePort, node with endpoints)");
    assert_eq!(st.frontends.len(), NODE_PORTS, "the ClusterIPs");
    let total = st.frontends.len() + st.node_addrs.len() + st.node_ports.len() + st.node_local.len();
    assert!(total < NODES * 2 + NODE_PORTS * 3, "{total} entries");
    // This node's addresses are marked as its own.
    let mine: BTreeMap<_, _> =
        st.node_addrs.iter().filter(|(_, v)| v.flags & socklb_common::node_flags::THIS_NODE != 0).collect();
    assert_eq!(mine.len(), 2);

    // A restart with the same objects adopts every id: nothing is written.
    let before = dp.ops();
    let mut again = reconciler(dp.clone());
    load(&mut again);
    assert!(again.sync().complete);
    assert_eq!(dp.ops(), before, "a restart rewrote {} entries", dp.ops() - before);
    assert_eq!(dp.state(), st);
}
