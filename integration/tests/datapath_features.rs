//! The full datapath against the real kernel: UDP (unconnected, connected,
//! a real resolver), refusal without endpoints, session affinity, NodePort
//! bind protection and host-namespace-only mode.

use std::{collections::BTreeSet, net::SocketAddr, process::Command, thread, time::Duration};

use socklb_bpf::maps::AyaMaps;
use socklb_common::{Config, config_flags};
use socklb_integration::{
    Programmer, Sandbox, Svc,
    agent::free_port,
    probe::{Attempt, by_backend},
    require_root, sa,
};

const ECONNREFUSED: i32 = 111;
const EADDRINUSE: i32 = 98;
const EPERM: i32 = 1;

/// Which programs a test loads: this kernel's, or those for kernels
/// without `bpf_set_retval` (< 5.18), whose refusals are EPERM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Current,
    Compat,
}

impl Variant {
    const ALL: [Variant; 2] = [Variant::Current, Variant::Compat];

    fn refused(self) -> i32 {
        match self {
            Variant::Current => ECONNREFUSED,
            Variant::Compat => EPERM,
        }
    }

    fn bind_refused(self) -> i32 {
        match self {
            Variant::Current => EADDRINUSE,
            Variant::Compat => EPERM,
        }
    }
}

fn udp_sandbox(tag: &str) -> (Sandbox, Programmer) {
    udp_sandbox_with(tag, Variant::Current)
}

fn udp_sandbox_with(tag: &str, variant: Variant) -> (Sandbox, Programmer) {
    let sb = Sandbox::new(tag).expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32", "10.244.0.2/32", "10.244.0.3/32", "fd00:244::1/128", "fd00:244::2/128"])
        .expect("addresses");
    let udp: Vec<SocketAddr> =
        ["10.244.0.1:5353", "10.244.0.2:5353", "10.244.0.3:5353", "[fd00:244::1]:5353", "[fd00:244::2]:5353"]
            .iter()
            .map(|s| sa(s))
            .collect();
    let tcp: Vec<SocketAddr> =
        ["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080", "[fd00:244::1]:8080", "[fd00:244::2]:8080"]
            .iter()
            .map(|s| sa(s))
            .collect();
    sb.serve(&tcp, &udp, &[]).expect("servers");
    let mut opts = sb.install_options();
    opts.without_set_retval = variant == Variant::Compat;
    let report = sb.install_with(&opts).expect("install");
    assert_eq!(report.support.refusals_are_eperm(), variant == Variant::Compat, "{:?}", report.support);
    let p = Programmer::open(&sb.bpffs).expect("maps");
    (sb, p)
}

const V4_UDP: [&str; 3] = ["10.244.0.1:5353", "10.244.0.2:5353", "10.244.0.3:5353"];
const V6_UDP: [&str; 2] = ["[fd00:244::1]:5353", "[fd00:244::2]:5353"];

fn udp_run(sb: &Sandbox, to: &str, count: u64, one_socket: bool) -> Vec<Attempt> {
    let mut cmd = sb.client_cmd("connect", sa(to));
    cmd.args(["--proto", "udp", "--count", &count.to_string()]);
    if one_socket {
        cmd.arg("--one-socket");
    }
    sb.run_client(cmd)
}

#[test]
fn unconnected_udp_replies_come_from_the_vip_and_a_socket_keeps_its_backend() {
    require_root!();
    let (sb, mut p) = udp_sandbox("udp-unconn");
    p.set(&[Svc::udp(1, "10.96.0.53:53", &V4_UDP), Svc::udp(2, "[fd00:96::53]:53", &V6_UDP)])
        .expect("program");

    for (vip, backends) in [
        ("10.96.0.53:53", &V4_UDP[..]),
        ("[fd00:96::53]:53", &V6_UDP[..]),
        ("[::ffff:10.96.0.53]:53", &V4_UDP[..]),
    ] {
        let attempts = udp_run(&sb, vip, 60, true);
        for a in &attempts {
            assert!(a.ok, "{vip}: {a:?}");
            assert_eq!(a.peer.as_deref(), Some(vip), "recvfrom must report the VIP as the source");
            assert!(backends.contains(&a.backend.as_deref().expect("backend")));
        }
        assert_eq!(
            by_backend(&attempts).len(),
            1,
            "{vip}: one socket, one backend: {:?}",
            by_backend(&attempts)
        );
    }

    // Many sockets (one datagram each) are spread over the backends.
    let spread: BTreeSet<String> = udp_run(&sb, "10.96.0.53:53", 60, false)
        .iter()
        .inspect(|a| assert!(a.ok, "{a:?}"))
        .filter_map(|a| a.backend.clone())
        .collect();
    assert!(spread.len() >= 2, "{spread:?}");
}

#[test]
fn a_udp_socket_moves_only_when_its_backend_leaves_the_service() {
    require_root!();
    let (sb, mut p) = udp_sandbox("udp-sticky");
    p.set(&[Svc::udp(1, "10.96.0.53:53", &V4_UDP)]).expect("program");
    // One long-lived unconnected socket sends continuously while the service
    // first gains a backend (the socket must stay) and then loses the
    // backend the socket uses (it must move, and never come back).
    let mut cmd = sb.client_cmd("connect", sa("10.96.0.53:53"));
    cmd.args(["--proto", "udp", "--one-socket"]);
    let client = sb.start_load(cmd);
    thread::sleep(Duration::from_millis(400));
    p.set(&[Svc::udp(1, "10.96.0.53:53", &["10.244.0.1:5353", "10.244.0.2:5353"])]).expect("shrink");
    let shrunk = socklb_integration::probe::now_ns();
    thread::sleep(Duration::from_millis(400));
    p.set(&[Svc::udp(1, "10.96.0.53:53", &V4_UDP)]).expect("grow");
    thread::sleep(Duration::from_millis(400));
    let attempts = sb.finish(client);
    assert!(attempts.iter().all(|a| a.ok), "no datagram lost");
    let first = attempts[0].backend.clone().expect("backend");
    let before: BTreeSet<_> =
        attempts.iter().filter(|a| a.t_end_ns < shrunk).filter_map(|a| a.backend.clone()).collect();
    assert_eq!(before, BTreeSet::from([first.clone()]), "stuck to one backend before the change");
    let after: BTreeSet<_> =
        attempts.iter().filter(|a| a.t_start_ns > shrunk).filter_map(|a| a.backend.clone()).collect();
    if first == "10.244.0.3:5353" {
        assert_eq!(after.len(), 1, "moved once, then stuck: {after:?}");
        assert!(!after.contains(&first), "never back to the backend that left");
    } else {
        assert_eq!(after, BTreeSet::from([first]), "a backend that stays keeps its socket");
    }
}

#[test]
fn connected_udp_reports_the_vip_as_its_peer() {
    require_root!();
    let (sb, mut p) = udp_sandbox("udp-conn");
    p.set(&[Svc::udp(1, "10.96.0.53:53", &V4_UDP), Svc::udp(2, "[fd00:96::53]:53", &V6_UDP)])
        .expect("program");
    for vip in ["10.96.0.53:53", "[fd00:96::53]:53", "[::ffff:10.96.0.53]:53"] {
        for a in udp_run(&sb, vip, 20, false) {
            assert!(a.ok, "{vip}: {a:?}");
            assert_eq!(a.peer.as_deref(), Some(vip), "getpeername of a connected UDP socket");
        }
    }
}

#[test]
fn dig_resolves_through_a_vip_and_accepts_the_reply_source() {
    require_root!();
    let sb = Sandbox::new("udp-dig").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32", "10.244.0.2/32"]).expect("addresses");
    let mut serve = Command::new(socklb_integration::sandbox::bin_path("socklb-probe"));
    serve.args(["serve", "--netns", &sb.name, "--dns", "10.244.0.1:5353", "--dns", "10.244.0.2:5353"]);
    sb.start_server(serve, &[], &[], &[]).expect("dns servers");
    sb.install().expect("install");
    let mut p = Programmer::open(&sb.bpffs).expect("maps");
    p.set(&[Svc::udp(1, "10.96.0.10:53", &["10.244.0.1:5353", "10.244.0.2:5353"])]).expect("program");

    let mut answers = BTreeSet::new();
    for _ in 0..10 {
        let mut cmd = sb.probe_cmd("exec", true);
        cmd.args([
            "--",
            "dig",
            "@10.96.0.10",
            "-p",
            "53",
            "web.default.svc.cluster.local",
            "A",
            "+short",
            "+tries=1",
            "+time=2",
        ]);
        let out = cmd.output().expect("dig (scripts/setup.sh installs dnsutils)");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "dig failed: {text}");
        assert!(!text.contains("unexpected source"), "dig saw the backend's address: {text}");
        answers.insert(text.trim().to_string());
    }
    for a in &answers {
        assert!(a == "10.244.0.1" || a == "10.244.0.2", "unexpected answer {a:?}");
    }
}

#[test]
fn a_service_without_endpoints_refuses_quickly_for_tcp_and_udp() {
    require_root!();
    for variant in Variant::ALL {
        refuses_quickly(variant);
    }
}

fn refuses_quickly(variant: Variant) {
    let (sb, mut p) = udp_sandbox_with("refuse", variant);
    p.set(&[
        Svc::tcp(1, "10.96.0.80:80", &[]).also("[fd00:96::80]:80"),
        Svc::udp(2, "10.96.0.53:53", &[]).also("[fd00:96::53]:53"),
    ])
    .expect("program");
    for vip in ["10.96.0.80:80", "[fd00:96::80]:80", "[::ffff:10.96.0.80]:80"] {
        let a = &sb.connect(sa(vip), 1)[0];
        assert_eq!(a.errno, Some(variant.refused()), "{variant:?} TCP {vip}: {a:?}");
        assert!(
            a.t_end_ns - a.t_start_ns < 100_000_000,
            "TCP {vip}: refused after {} ns",
            a.t_end_ns - a.t_start_ns
        );
    }
    for vip in ["10.96.0.53:53", "[fd00:96::53]:53"] {
        for one_socket in [false, true] {
            // false: connect() refuses; true: sendto() refuses.
            let a = &udp_run(&sb, vip, 1, one_socket)[0];
            assert_eq!(
                a.errno,
                Some(variant.refused()),
                "{variant:?} UDP {vip} one_socket={one_socket}: {a:?}"
            );
            assert!(a.t_end_ns - a.t_start_ns < 100_000_000);
        }
    }
}

#[test]
fn client_ip_affinity_holds_then_expires_and_never_returns_a_removed_backend() {
    require_root!();
    let (sb, mut p) = udp_sandbox("affinity");
    let all = ["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080"];
    p.set(&[Svc::tcp(1, "10.96.0.10:80", &all).with_affinity(1)]).expect("program");

    let pinned = by_backend(&sb.connect(sa("10.96.0.10:80"), 50));
    assert_eq!(pinned.len(), 1, "50 connects from one client namespace, one backend: {pinned:?}");
    let first = pinned.keys().next().expect("backend").clone();

    // After the timeout the client is load-balanced afresh.
    let mut seen = BTreeSet::from([first.clone()]);
    for _ in 0..8 {
        thread::sleep(Duration::from_millis(1300));
        let round = by_backend(&sb.connect(sa("10.96.0.10:80"), 3));
        assert_eq!(round.len(), 1, "affinity holds within a round: {round:?}");
        seen.extend(round.into_keys());
    }
    assert!(seen.len() >= 2, "affinity never expired: {seen:?}");

    // Pin again, then remove the pinned backend: it is never chosen.
    let pinned = by_backend(&sb.connect(sa("10.96.0.10:80"), 5)).into_keys().next().expect("backend");
    let rest: Vec<&str> = all.iter().copied().filter(|b| *b != pinned).collect();
    p.set(&[Svc::tcp(1, "10.96.0.10:80", &rest).with_affinity(60)]).expect("remove pinned");
    let after = by_backend(&sb.connect(sa("10.96.0.10:80"), 30));
    assert!(!after.contains_key(&pinned), "a stale affinity entry returned removed backend {pinned}");
}

#[test]
fn a_host_process_cannot_bind_a_node_port() {
    require_root!();
    for variant in Variant::ALL {
        bind_guard(variant);
    }
}

fn bind_guard(variant: Variant) {
    let (sb, mut p) = udp_sandbox_with("bindguard", variant);
    let np = free_port();
    p.set(&[Svc::tcp(1, "10.96.0.10:80", &["10.244.0.1:8080"])]).expect("program");
    // A NodePort of the service, with loopback as this node's address, as
    // the agent writes it.
    {
        use socklb_common::{
            FAMILY_V4, FAMILY_V6, NodeAddrValue, NodePortKey, NodePortValue, PROTO_TCP, addr_from_ip,
            node_flags,
        };
        use socklb_lb::datapath::{Datapath, MapOp};
        let value = NodePortValue { set_id: p.set_id(1), flags: 0, _pad: 0 };
        for family in [FAMILY_V4, FAMILY_V6] {
            let key = NodePortKey { port: np.to_be(), proto: PROTO_TCP, family };
            p.maps.apply(&MapOp::PutNodePort { key, value }).expect("nodeport");
        }
        let lo = NodeAddrValue { node_id: 1, flags: node_flags::THIS_NODE | node_flags::HOST_NETNS_ONLY };
        let addr = addr_from_ip("127.0.0.1".parse().expect("ip"));
        p.maps.apply(&MapOp::PutNodeAddr { addr, value: lo }).expect("node address");
    }
    let bind = |addr: SocketAddr, in_netns: bool| -> Option<i32> {
        let mut cmd = sb.probe_cmd("bind", in_netns);
        cmd.arg("--addr").arg(addr.to_string());
        let out = cmd.output().expect("bind probe");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["errno"].as_i64().map(|e| e as i32)
    };
    // In the host namespace (only loopback and wildcard binds, nothing is sent).
    let refused = Some(variant.bind_refused());
    assert_eq!(bind(SocketAddr::from(([127, 0, 0, 1], np)), false), refused, "{variant:?}");
    assert_eq!(bind(SocketAddr::from(([0, 0, 0, 0], np)), false), refused, "{variant:?}");
    assert_eq!(bind(sa(&format!("[::]:{np}")), false), refused, "{variant:?}");
    let other = free_port();
    assert_eq!(bind(SocketAddr::from(([127, 0, 0, 1], other)), false), None, "other ports are free");
    // A pod (any other network namespace) has its own ports.
    assert_eq!(bind(SocketAddr::from(([127, 0, 0, 1], np)), true), None);
}

#[test]
fn host_namespace_only_mode_leaves_pod_sockets_alone() {
    require_root!();
    let sb = Sandbox::new("hostns").expect("sandbox");
    // The backend listens on the host's loopback; the VIP is in 127/8 too,
    // so nothing here can leave the machine, translated or not.
    let port = free_port();
    let backend = SocketAddr::from(([127, 0, 0, 1], port));
    let mut serve = Command::new(socklb_integration::sandbox::bin_path("socklb-probe"));
    serve.arg("serve");
    sb.start_server(serve, &[backend], &[], &[]).expect("host loopback server");
    // The same address inside the pod namespace, to see translation there.
    sb.serve(&[backend], &[], &[]).expect("pod loopback server");
    sb.install().expect("install");
    let mut p = Programmer::open(&sb.bpffs).expect("maps");
    p.set(&[Svc::tcp(1, "127.96.0.10:80", &[&backend.to_string()])]).expect("program");
    AyaMaps::open(&sb.bpffs)
        .expect("maps")
        .write_config(Config { flags: config_flags::HOSTNS_ONLY, ..Default::default() })
        .expect("config");

    let host = {
        let mut cmd = sb.probe_cmd("connect", false);
        cmd.args(["--to", "127.96.0.10:80", "--count", "5"]);
        sb.run_client(cmd)
    };
    for a in &host {
        assert!(a.ok, "host namespace is translated: {a:?}");
        assert_eq!(a.backend.as_deref(), Some(backend.to_string().as_str()));
        assert_eq!(a.peer.as_deref(), Some("127.96.0.10:80"));
    }
    let pod = &sb.connect(sa("127.96.0.10:80"), 1)[0];
    assert_eq!(
        pod.errno,
        Some(ECONNREFUSED),
        "a pod namespace keeps the VIP (nobody listens there): {pod:?}"
    );

    // Back to normal mode: the pod is translated too.
    AyaMaps::open(&sb.bpffs).expect("maps").write_config(Config::default()).expect("config");
    let pod = &sb.connect(sa("127.96.0.10:80"), 1)[0];
    assert!(pod.ok, "{pod:?}");
    assert_eq!(pod.peer.as_deref(), Some("127.96.0.10:80"));
}
