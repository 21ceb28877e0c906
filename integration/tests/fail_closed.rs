//! Failing closed, a pod's own loopback, and session affinity at scale,
//! against the real kernel.

use std::{collections::BTreeSet, net::SocketAddr, process::Command, time::Duration};

use socklb_bpf::{affinity, loader::pins, maps::AyaMaps};
use socklb_integration::{
    Programmer, Sandbox, Svc,
    agent::free_port,
    probe::{Attempt, by_backend, parse_attempts},
    require_root, sa,
    sandbox::bin_path,
};

const EPERM: i32 = 1;
const ENOBUFS: i32 = 105;

/// A dual-stack service with a TCP and a UDP port.
fn cluster() -> String {
    "apiVersion: v1\nkind: List\nitems:\n\
     - {apiVersion: v1, kind: Service, metadata: {name: web, namespace: fc}, spec: {clusterIP: 10.96.6.1, clusterIPs: [10.96.6.1, 'fd00:96::6:1'], ipFamilies: [IPv4, IPv6], ports: [{name: t, port: 80, targetPort: 8080}, {name: u, port: 53, protocol: UDP, targetPort: 5353}]}}\n\
     - {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: web-1, namespace: fc, labels: {kubernetes.io/service-name: web}}, addressType: IPv4, endpoints: [{addresses: [10.244.0.1]}], ports: [{name: t, port: 8080}, {name: u, port: 5353, protocol: UDP}]}\n\
     - {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: web-2, namespace: fc, labels: {kubernetes.io/service-name: web}}, addressType: IPv6, endpoints: [{addresses: ['fd00:244::1']}], ports: [{name: t, port: 8080}, {name: u, port: 5353, protocol: UDP}]}\n"
        .to_string()
}

fn udp_send(sb: &Sandbox, to: &str) -> Attempt {
    let mut cmd = sb.client_cmd("connect", sa(to));
    cmd.args(["--proto", "udp", "--one-socket"]);
    sb.run_client(cmd).remove(0)
}

#[test]
fn when_socket_storage_cannot_be_allocated_connects_and_sends_are_refused_and_counted() {
    require_root!();
    for compat in [false, true] {
        let sb = Sandbox::new("failclosed").expect("sandbox");
        sb.add_addrs(&["10.244.0.1/32", "fd00:244::1/128"]).expect("addresses");
        sb.serve(&[sa("10.244.0.1:8080"), sa("[fd00:244::1]:8080")], &[sa("10.244.0.1:5353")], &[])
            .expect("servers");
        let file = sb.workdir().join("cluster.yaml");
        std::fs::write(&file, cluster()).expect("write");
        let mut envs = vec![("SOCKLB_TEST_FAIL_STORAGE", "1")];
        if compat {
            envs.push(("SOCKLB_TEST_NO_SET_RETVAL", "1"));
        }
        let mut agent = sb.start_agent_env(&["--from-file", file.to_str().expect("utf8")], &envs);
        agent.wait_ready(Duration::from_secs(60));
        let refused = if compat { EPERM } else { ENOBUFS };
        // Never translated without a way back: refused, with an error the
        // application retries.
        for vip in ["10.96.6.1", "[fd00:96::6:1]", "[::ffff:10.96.6.1]"] {
            let tcp = &sb.connect(sa(&format!("{vip}:80")), 1)[0];
            assert_eq!(tcp.errno, Some(refused), "compat={compat} {vip}: {tcp:?}");
            let udp = udp_send(&sb, &format!("{vip}:53"));
            assert_eq!(udp.errno, Some(refused), "compat={compat} {vip}: {udp:?}");
        }
        // Traffic that is not to a service is untouched.
        assert!(sb.connect(sa("10.244.0.1:8080"), 1)[0].ok);
        assert!(sb.connect(sa("[fd00:244::1]:8080"), 1)[0].ok);
        let metrics = agent.get("/metrics").expect("metrics").1;
        let line = metrics
            .lines()
            .find(|l| l.starts_with("socklb_datapath_events_total{event=\"storage_failed\"}"))
            .unwrap_or_else(|| panic!("no storage_failed counter:\n{metrics}"));
        let n: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("value");
        assert!(n >= 6, "{line}");
        let status = Command::new(bin_path("socklb"))
            .args(["status", "--cgroup", sb.cgroup.to_str().expect("utf8"), "--bpffs"])
            .arg(&sb.bpffs)
            .output()
            .expect("status");
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(text.contains("storage_failed") && text.contains(&n.to_string()), "{text}");
    }
}

#[test]
fn a_pods_own_loopback_is_its_own_while_host_processes_get_the_node_port() {
    require_root!();
    for loopback in
        [std::net::IpAddr::from([127, 0, 0, 1]), std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)]
    {
        own_loopback(loopback);
    }
}

fn own_loopback(loopback: std::net::IpAddr) {
    let sb = Sandbox::new("loopback").expect("sandbox");
    let node_port = free_port();
    let backend = SocketAddr::new(loopback, free_port());
    // The NodePort's backend, on the host's loopback (host traffic stays on
    // loopback, translated or not).
    let mut host = Command::new(bin_path("socklb-probe"));
    host.arg("serve");
    sb.start_server(host, &[backend], &[], &[]).expect("host server");
    // A sidecar in the pod listening on the same port on its own loopback.
    let sidecar = SocketAddr::new(loopback, node_port);
    sb.serve(&[sidecar], &[], &[]).expect("pod server");
    sb.install().expect("install");
    let mut p = Programmer::open(&sb.bpffs).expect("maps");
    let vip = if loopback.is_ipv4() { "10.96.6.9:80" } else { "[fd00:96::6:9]:80" };
    p.set(&[Svc::tcp(1, vip, &[&backend.to_string()])]).expect("program");
    {
        use socklb_common::{
            FAMILY_V4, FAMILY_V6, NodeAddrValue, NodePortKey, NodePortValue, PROTO_TCP, addr_from_ip,
            node_flags,
        };
        use socklb_lb::datapath::{Datapath, MapOp};
        let family = if loopback.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 };
        let key = NodePortKey { port: node_port.to_be(), proto: PROTO_TCP, family };
        p.maps
            .apply(&MapOp::PutNodePort {
                key,
                value: NodePortValue { set_id: p.set_id(1), flags: 0, _pad: 0 },
            })
            .expect("nodeport");
        let lo = NodeAddrValue { node_id: 1, flags: node_flags::THIS_NODE | node_flags::HOST_NETNS_ONLY };
        p.maps
            .apply(&MapOp::PutNodeAddr { addr: addr_from_ip(sidecar.ip()), value: lo })
            .expect("node address");
    }
    // In the pod: its own sidecar answers.
    let pod = sb.connect(sidecar, 5);
    assert!(
        pod.iter().all(|a| a.ok && a.backend.as_deref() == Some(sidecar.to_string().as_str())),
        "{pod:?}"
    );
    // On the host: the NodePort, translated to its backend.
    let mut cmd = sb.probe_cmd("connect", false);
    cmd.args(["--to", &sidecar.to_string(), "--count", "5"]);
    let from_host = sb.run_client(cmd);
    for a in &from_host {
        assert!(a.ok, "{a:?}");
        assert_eq!(a.backend.as_deref(), Some(backend.to_string().as_str()), "{a:?}");
        assert_eq!(a.peer.as_deref(), Some(sidecar.to_string().as_str()), "getpeername shows the NodePort");
    }
}

#[test]
fn a_full_affinity_table_leaves_new_clients_unpinned_and_never_evicts_a_live_one() {
    require_root!();
    // Three client network namespaces, each with the same backends; the
    // programs of the first sandbox's cgroup serve all three.
    let sandboxes: Vec<Sandbox> = (0..3).map(|_| Sandbox::new("affinity-cap").expect("sandbox")).collect();
    let backends = ["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080"];
    for sb in &sandboxes {
        sb.add_addrs(&["10.244.0.1/32", "10.244.0.2/32", "10.244.0.3/32"]).expect("addresses");
        sb.serve(&backends.map(sa), &[], &[]).expect("servers");
    }
    let owner = &sandboxes[0];
    let mut opts = owner.install_options();
    opts.capacities.affinity = 2;
    owner.install_with(&opts).expect("install");
    let mut p = Programmer::open(&owner.bpffs).expect("maps");
    p.set(&[Svc::tcp(1, "10.96.6.20:80", &backends).with_affinity(60)]).expect("program");
    let connect = |netns: &str, n: u64| -> Vec<Attempt> {
        let out = Command::new(bin_path("socklb-probe"))
            .arg("connect")
            .arg("--cgroup")
            .arg(&owner.cgroup)
            .args(["--netns", netns, "--to", "10.96.6.20:80", "--count", &n.to_string()])
            .output()
            .expect("probe");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        parse_attempts(&out.stdout)
    };
    let a = by_backend(&connect(&sandboxes[0].name, 30));
    let b = by_backend(&connect(&sandboxes[1].name, 30));
    assert_eq!((a.len(), b.len()), (1, 1), "two clients fit and are pinned: {a:?} {b:?}");
    // The third does not fit: it is balanced, not pinned, and counted.
    let c = by_backend(&connect(&sandboxes[2].name, 60));
    assert!(c.len() > 1, "an unpinned client spreads: {c:?}");
    let stats = AyaMaps::open(&owner.bpffs).expect("maps").read_stats().expect("stats");
    let full = stats.iter().find(|(e, _)| *e == "affinity_full").map_or(0, |(_, n)| *n);
    assert!(full >= 1, "{stats:?}");
    // The first two kept their backends: nothing was evicted.
    let a2: BTreeSet<String> = by_backend(&connect(&sandboxes[0].name, 30)).into_keys().collect();
    let b2: BTreeSet<String> = by_backend(&connect(&sandboxes[1].name, 30)).into_keys().collect();
    assert_eq!(a2, a.into_keys().collect(), "client A is still pinned");
    assert_eq!(b2, b.into_keys().collect(), "client B is still pinned");
    // Once idle past the timeout, the agent's sweep frees the entries.
    let dir = pins::active_dir(&owner.bpffs);
    assert_eq!(affinity::sweep(&dir, affinity::monotonic_ns()).expect("sweep"), 0, "none expired yet");
    let later = affinity::monotonic_ns() + 61_000_000_000;
    assert_eq!(affinity::sweep(&dir, later).expect("sweep"), 2);
}
