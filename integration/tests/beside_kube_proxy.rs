//! socklb beside kube-proxy, the safe first step for a cluster: kube-proxy's
//! rules (its nftables layout, and separately its iptables layout, from the
//! benchmark's generators) are loaded in the test's node namespace for the
//! same services, with a default route as a real node has. With socklb
//! running:
//! * connects from the cgroup reach every backend, and kube-proxy's rules
//!   for the VIPs count no packet (socklb translated at connect(), so no
//!   packet ever carried a VIP);
//! * a connection that arrives over a veth from another namespace to the
//!   node's address:NodePort is still DNATed by kube-proxy's rules.
//!
//! The "outside" namespace is the test's own; nothing leaves the machine.

use std::{
    collections::BTreeSet,
    io::Write,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use socklb_integration::{
    Sandbox,
    bench::{
        kubeproxy::{iptables_restore, nftables_with},
        workload::Workload,
    },
    probe::{Attempt, by_backend, parse_attempts},
    require_root, sa,
    sandbox::bin_path,
};

const NODE_ADDR: &str = "172.30.0.1";
const OUTSIDE_ADDR: &str = "172.30.0.2";
const NODE_PORT: u16 = 30555;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Nftables,
    Iptables,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_netns(netns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, program]);
    c
}

/// The namespace "outside the node", removed on drop.
struct Outside(String);

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Three TCP services with three endpoints each; the first has a NodePort.
fn workload() -> Workload {
    let mut w = Workload::new(3, 3);
    w.service_mut(0).node_port = Some(NODE_PORT);
    w
}

fn load_rules(node: &str, layout: Layout, w: &Workload) {
    let (program, args, text): (&str, &[&str], String) = match layout {
        Layout::Nftables => ("nft", &["-f", "-"], nftables_with(w, true)),
        Layout::Iptables => ("iptables-restore", &[], iptables_restore(w)),
    };
    let mut child = in_netns(node, program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect(program);
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("rules");
    let out = child.wait_with_output().expect(program);
    assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Packets kube-proxy's rules matched for the VIPs, and for the NodePort.
fn counters(node: &str, layout: Layout, w: &Workload) -> (u64, u64) {
    match layout {
        Layout::Iptables => {
            let text = run(in_netns(node, "iptables-save").args(["-c", "-t", "nat"]));
            let packets = |line: &str| -> u64 {
                line.strip_prefix('[')
                    .and_then(|l| l.split(':').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            let mut vips = 0;
            for s in w.services() {
                let needle = format!("-d {}/32", s.vip);
                vips += text
                    .lines()
                    .filter(|l| l.contains("-A KUBE-SERVICES") && l.contains(&needle))
                    .map(packets)
                    .sum::<u64>();
            }
            let node_port = text
                .lines()
                .filter(|l| l.contains("-A KUBE-NODEPORTS") && l.contains(&format!("--dport {NODE_PORT}")))
                .map(packets)
                .sum();
            (vips, node_port)
        }
        Layout::Nftables => {
            let text = run(in_netns(node, "nft").args(["list", "table", "ip", "kube-proxy"]));
            let packets = |line: &str| -> u64 {
                line.split_whitespace()
                    .skip_while(|w| *w != "packets")
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            // The counters sit at the head of the service chains (matching
            // the VIP) and of the external (NodePort) chain.
            let vips = text
                .lines()
                .filter(|l| l.contains("ip daddr 10.") && l.contains("counter"))
                .map(packets)
                .sum();
            let mut in_external = false;
            let mut node_port = 0;
            for line in text.lines() {
                if line.trim_start().starts_with("chain ") {
                    in_external = line.contains("chain external-");
                } else if in_external && line.contains("counter") {
                    node_port += packets(line);
                }
            }
            (vips, node_port)
        }
    }
}

fn outside_connect(outside: &str, to: SocketAddr, n: u64) -> Vec<Attempt> {
    // Not in the sandbox's cgroup: socklb does not see this socket, as it
    // would not see a packet arriving from another machine.
    let out = Command::new(bin_path("socklb-probe"))
        .args(["connect", "--netns", outside, "--to", &to.to_string(), "--count", &n.to_string()])
        .output()
        .expect("probe");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    parse_attempts(&out.stdout)
}

#[test]
fn beside_kube_proxy_socklb_serves_the_node_and_kube_proxy_keeps_traffic_from_outside() {
    require_root!();
    for layout in [Layout::Nftables, Layout::Iptables] {
        beside(layout);
    }
}

fn beside(layout: Layout) {
    let sb = Sandbox::new("beside").expect("sandbox");
    let node = sb.name.clone();
    let outside = Outside(format!("{node}-out"));
    run(Command::new("ip").args(["netns", "add", &outside.0]));
    run(Command::new("ip").args(["-n", &outside.0, "link", "set", "lo", "up"]));
    run(Command::new("ip")
        .args(["-n", &node, "link", "add", "vn", "type", "veth", "peer", "name", "vo", "netns", &outside.0]));
    run(Command::new("ip").args(["-n", &node, "addr", "add", &format!("{NODE_ADDR}/24"), "dev", "vn"]));
    run(Command::new("ip").args([
        "-n",
        &outside.0,
        "addr",
        "add",
        &format!("{OUTSIDE_ADDR}/24"),
        "dev",
        "vo",
    ]));
    run(Command::new("ip").args(["-n", &node, "link", "set", "vn", "up"]));
    run(Command::new("ip").args(["-n", &outside.0, "link", "set", "vo", "up"]));
    // A real node routes VIPs somewhere (its default route); the endpoints
    // are local here, answered by one server on the wildcard address.
    run(Command::new("ip").args(["-n", &node, "route", "add", "default", "via", OUTSIDE_ADDR]));
    run(Command::new("ip").args(["-n", &node, "route", "add", "local", "10.128.0.0/16", "dev", "lo"]));
    sb.serve(&[sa("0.0.0.0:8080")], &[], &[]).expect("server");

    let w = workload();
    load_rules(&node, layout, &w);
    let file = sb.workdir().join("cluster.json");
    std::fs::write(&file, w.cluster_json()).expect("write");
    let mut agent =
        sb.start_agent(&["--from-file", file.to_str().expect("utf8"), "--nodeport-addresses", NODE_ADDR]);
    agent.wait_ready(Duration::from_secs(60));

    // From the node (the cgroup): socklb translates every VIP and the
    // NodePort at connect(); kube-proxy's VIP rules never see a packet.
    for s in w.services().filter(|s| s.proto == "TCP") {
        let to = SocketAddr::from((s.vip, s.port));
        let attempts = sb.connect(to, 60);
        assert!(attempts.iter().all(|a| a.ok), "{layout:?} {to}: {:?}", attempts.iter().find(|a| !a.ok));
        let want: BTreeSet<String> = s.endpoints.iter().map(|e| format!("{e}:{}", s.target_port)).collect();
        let got: BTreeSet<String> = by_backend(&attempts).into_keys().collect();
        assert_eq!(got, want, "{layout:?} {to}");
    }
    let np = sb.connect(sa(&format!("{NODE_ADDR}:{NODE_PORT}")), 20);
    assert!(np.iter().all(|a| a.ok), "{layout:?}: {np:?}");
    let (vips, node_port) = counters(&node, layout, &w);
    assert_eq!(vips, 0, "{layout:?}: kube-proxy's rules matched {vips} packets to the VIPs");
    assert_eq!(node_port, 0, "{layout:?}: the node's own NodePort connects were socklb's");

    // From outside the node: kube-proxy's rules DNAT the NodePort.
    let from_outside = outside_connect(&outside.0, sa(&format!("{NODE_ADDR}:{NODE_PORT}")), 10);
    assert!(from_outside.iter().all(|a| a.ok), "{layout:?}: {from_outside:?}");
    let s0 = w.service(0);
    for a in &from_outside {
        let b = a.backend.as_deref().unwrap_or_default();
        assert!(
            s0.endpoints.iter().any(|e| b == format!("{e}:{}", s0.target_port)),
            "{layout:?}: reached {b}"
        );
    }
    let (vips, node_port) = counters(&node, layout, &w);
    assert!(node_port >= 10, "{layout:?}: kube-proxy's NodePort rule counted {node_port} packets");
    assert_eq!(vips, 0, "{layout:?}");

    // The counters do count: without socklb, kube-proxy serves the VIPs.
    drop(agent);
    socklb_bpf::loader::uninstall(&sb.cgroup, &sb.bpffs).expect("uninstall");
    let s1 = w.service(1);
    let attempts = sb.connect(SocketAddr::from((s1.vip, s1.port)), 5);
    assert!(attempts.iter().all(|a| a.ok), "{layout:?}: kube-proxy alone: {attempts:?}");
    let (vips, _) = counters(&node, layout, &w);
    assert!(vips >= 5, "{layout:?}: kube-proxy's VIP rules counted {vips}");
}
