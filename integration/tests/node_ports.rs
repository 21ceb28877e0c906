//! NodePorts of every node, from the Node objects, with
//! `externalTrafficPolicy: Local` on other nodes' addresses; and this node's
//! addresses followed live (netlink), with the agent inside a namespace.
//!
//! Node addresses need not exist anywhere: a connect to one is translated
//! at connect() to a backend inside the sandbox, and one that is not
//! translated fails with ENETUNREACH (no route), so nothing leaves.

use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use socklb_integration::{Sandbox, probe::by_backend, require_root, sa, sandbox::bin_path};

const ENETUNREACH: i32 = 101;
const ECONNREFUSED: i32 = 111;
const EPERM: i32 = 1;

fn node(name: &str, addresses: &[&str]) -> String {
    let addrs: Vec<String> =
        addresses.iter().map(|a| format!("{{type: InternalIP, address: {a}}}")).collect();
    format!(
        "- apiVersion: v1\n  kind: Node\n  metadata: {{name: {name}}}\n  status: {{addresses: [{}, {{type: Hostname, address: {name}}}]}}\n",
        addrs.join(", ")
    )
}

/// `web` (NodePort 30080, eTP Cluster) and `local` (NodePort 30081, eTP
/// Local), each with one endpoint on node-a (this node) and one on node-b.
fn cluster(nodes: &[(&str, &[&str])], local_ready_on_b: bool) -> String {
    let mut out = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for (name, np, etp) in [("web", 30080, "Cluster"), ("local", 30081, "Local")] {
        out.push_str(&format!(
            "- apiVersion: v1\n  kind: Service\n  metadata: {{name: {name}, namespace: np}}\n  spec: {{type: NodePort, clusterIP: 10.96.7.{}, externalTrafficPolicy: {etp}, ports: [{{port: 80, targetPort: 8080, nodePort: {np}}}]}}\n",
            np - 30079
        ));
        let b_ready = name == "web" || local_ready_on_b;
        out.push_str(&format!(
            "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: {name}-1, namespace: np, labels: {{kubernetes.io/service-name: {name}}}}}\n  addressType: IPv4\n  endpoints: [{{addresses: [10.244.0.1], nodeName: node-a}}, {{addresses: [10.244.0.2], nodeName: node-b, conditions: {{ready: {b_ready}}}}}]\n  ports: [{{name: '', port: 8080}}]\n"
        ));
    }
    for (name, addrs) in nodes {
        out.push_str(&node(name, addrs));
    }
    out
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn answering(sb: &Sandbox, to: &str, n: u64) -> BTreeSet<String> {
    let attempts = sb.connect(sa(to), n);
    for a in &attempts {
        assert!(a.ok, "{to}: {a:?}");
        assert_eq!(a.peer.as_deref(), Some(to), "getpeername shows the NodePort address");
    }
    by_backend(&attempts).into_keys().collect()
}

fn errno(sb: &Sandbox, to: &str) -> Option<i32> {
    sb.connect(sa(to), 1)[0].errno
}

/// Waits until `check` holds (the agent applies a file change).
fn eventually(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what} did not happen within 30 s");
        thread::sleep(Duration::from_millis(50));
    }
}

const NODES: [(&str, &[&str]); 3] =
    [("node-a", &["192.168.77.1"]), ("node-b", &["192.168.77.2"]), ("node-c", &["192.168.77.3"])];

#[test]
fn node_ports_answer_on_every_nodes_address_and_local_policy_uses_that_nodes_endpoints() {
    require_root!();
    for compat in [false, true] {
        check_every_node(compat);
    }
}

fn check_every_node(compat: bool) {
    let sb = Sandbox::new("nodeports").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32", "10.244.0.2/32"]).expect("addresses");
    sb.serve(&[sa("10.244.0.1:8080"), sa("10.244.0.2:8080")], &[], &[]).expect("servers");
    let file = sb.workdir().join("cluster.yaml");
    write(&file, &cluster(&NODES, true));
    let envs: &[(&str, &str)] = if compat { &[("SOCKLB_TEST_NO_SET_RETVAL", "1")] } else { &[] };
    let args = ["--from-file", file.to_str().expect("utf8"), "--nodeport-addresses", "primary"];
    let mut agent = sb.start_agent_env(&args, envs);
    agent.wait_ready(Duration::from_secs(60));
    let refused = if compat { EPERM } else { ECONNREFUSED };
    let both = set(&["10.244.0.1:8080", "10.244.0.2:8080"]);

    // eTP Cluster: every node's address reaches every endpoint.
    for addr in ["192.168.77.1", "192.168.77.2", "192.168.77.3"] {
        assert_eq!(answering(&sb, &format!("{addr}:30080"), 40), both, "{addr}:30080");
    }
    // eTP Local: this node's own address uses the cluster set (kube-proxy's
    // short-circuit); node-b's address only node-b's endpoint; node-c has
    // none and refuses.
    assert_eq!(answering(&sb, "192.168.77.1:30081", 40), both);
    assert_eq!(answering(&sb, "192.168.77.2:30081", 20), set(&["10.244.0.2:8080"]));
    assert_eq!(errno(&sb, "192.168.77.3:30081"), Some(refused), "compat={compat}");
    // Not a node address, or not a NodePort: untouched.
    assert_eq!(errno(&sb, "192.168.77.9:30080"), Some(ENETUNREACH));
    assert_eq!(errno(&sb, "192.168.77.2:30099"), Some(ENETUNREACH));
    let explain = Command::new(bin_path("socklb"))
        .args(["explain", "192.168.77.3:30081", "--bpffs", sb.bpffs.to_str().expect("utf8")])
        .output()
        .expect("explain");
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(text.contains("refused") && text.contains("externalTrafficPolicy: Local"), "{text}");

    // node-b's endpoint stops being ready: its address refuses too.
    write(&file, &cluster(&NODES, false));
    eventually("node-b's address refusing", || errno(&sb, "192.168.77.2:30081") == Some(refused));
    // node-c leaves the cluster and node-d joins: addresses follow.
    let nodes = [NODES[0], NODES[1], ("node-d", &["192.168.77.4"][..])];
    write(&file, &cluster(&nodes, true));
    eventually("node-d's address", || sb.connect(sa("192.168.77.4:30080"), 1)[0].ok);
    assert_eq!(
        errno(&sb, "192.168.77.3:30080"),
        Some(ENETUNREACH),
        "node-c's address is no NodePort address"
    );
    assert_eq!(answering(&sb, "192.168.77.2:30081", 20), set(&["10.244.0.2:8080"]));
    assert!(agent.is_running());
}

#[test]
fn node_ports_follow_this_nodes_addresses_as_they_come_and_go() {
    require_root!();
    let sb = Sandbox::new("nodeport-live").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32", "10.244.0.2/32"]).expect("addresses");
    sb.serve(&[sa("10.244.0.1:8080"), sa("10.244.0.2:8080")], &[], &[]).expect("servers");
    let file = sb.workdir().join("cluster.yaml");
    write(&file, &cluster(&[], true));
    // The agent runs inside the sandbox's namespace: its addresses are this
    // node's, and netlink tells it when they change.
    let args = ["--from-file", file.to_str().expect("utf8"), "--nodeport-addresses", "10.99.0.0/16"];
    let mut agent = sb.start_agent_in_netns(&args);
    agent.wait_ready(Duration::from_secs(60));
    assert_eq!(errno(&sb, "10.99.0.5:30080"), Some(ENETUNREACH), "not an address of this node yet");

    sb.add_addrs(&["10.99.0.5/32"]).expect("add");
    let added = Instant::now();
    eventually("the new address serving the NodePort", || {
        let a = &sb.connect(sa("10.99.0.5:30080"), 1)[0];
        // Once the address exists, an untranslated connect reaches nobody:
        // only a translated one gets a backend.
        a.ok && a.backend.as_deref().is_some_and(|b| b.starts_with("10.244.0."))
    });
    let took = added.elapsed();
    eprintln!("NodePort on a new address after {took:?}");
    let log = agent.log_text();
    assert!(log.contains("this node's addresses changed"), "{log}");

    sb.del_addrs(&["10.99.0.5/32"]).expect("del");
    eventually("the removed address no longer serving", || {
        errno(&sb, "10.99.0.5:30080") == Some(ENETUNREACH)
    });
    // Addresses outside the CIDR never serve NodePorts.
    sb.add_addrs(&["10.98.0.5/32"]).expect("add");
    thread::sleep(Duration::from_millis(500));
    let a = &sb.connect(sa("10.98.0.5:30080"), 1)[0];
    assert!(!a.ok || a.backend.is_none(), "outside --nodeport-addresses: {a:?}");
}
