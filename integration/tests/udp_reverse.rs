//! Unconnected UDP against the real kernel: one socket talking to many VIPs
//! gets every reply from the right VIP (for IPv4, IPv6 and an IPv6 socket
//! sending to `::ffff:VIP`), nothing is left in the reverse table once the
//! socket closes, and an idle socket is load-balanced afresh.

use std::{collections::BTreeMap, net::SocketAddr, process::Command, thread, time::Duration};

use aya::maps::{HashMap, Map, MapData};
use socklb_bpf::{loader::map_pin, maps::AyaMaps};
use socklb_common::{Config, UdpIndexKey, UdpIndexValue, UdpRevKey, UdpRevValue, map_names};
use socklb_integration::{Programmer, Sandbox, Svc, require_root, sa, sandbox::bin_path};

#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
    /// An IPv6 socket sending to `::ffff:a.b.c.d`.
    Mapped,
}

impl Family {
    const ALL: [Family; 3] = [Family::V4, Family::V6, Family::Mapped];

    fn backend(self, i: usize) -> SocketAddr {
        match self {
            Family::V4 | Family::Mapped => sa(&format!("10.244.1.{}:5353", i + 1)),
            Family::V6 => sa(&format!("[fd00:244::1:{:x}]:5353", i + 1)),
        }
    }

    /// The VIP as programmed.
    fn vip(self, i: usize) -> SocketAddr {
        match self {
            Family::V4 | Family::Mapped => sa(&format!("10.96.5.{}:53", i + 1)),
            Family::V6 => sa(&format!("[fd00:96::5:{:x}]:53", i + 1)),
        }
    }

    /// The VIP as the client addresses it.
    fn dest(self, i: usize) -> SocketAddr {
        match self {
            Family::Mapped => sa(&format!("[::ffff:10.96.5.{}]:53", i + 1)),
            _ => self.vip(i),
        }
    }

    fn cidr(self, i: usize) -> String {
        match self {
            Family::V6 => format!("{}/128", self.backend(i).ip()),
            _ => format!("{}/32", self.backend(i).ip()),
        }
    }
}

fn sandbox(tag: &str, family: Family, backends: usize) -> (Sandbox, Programmer) {
    let sb = Sandbox::new(tag).expect("sandbox");
    let cidrs: Vec<String> = (0..backends).map(|i| family.cidr(i)).collect();
    sb.add_addrs(&cidrs.iter().map(String::as_str).collect::<Vec<_>>()).expect("addresses");
    let servers: Vec<SocketAddr> = (0..backends).map(|i| family.backend(i)).collect();
    sb.serve(&[], &servers, &[]).expect("servers");
    sb.install().expect("install");
    let p = Programmer::open(&sb.bpffs).expect("maps");
    (sb, p)
}

#[derive(Debug, serde::Deserialize)]
struct Reply {
    to: Option<String>,
    from: Option<String>,
    backend: Option<String>,
    error: Option<String>,
    round: u32,
}

fn udp_multi(sb: &Sandbox, to: &[SocketAddr], extra: &[&str]) -> Vec<Reply> {
    let mut cmd = Command::new(bin_path("socklb-probe"));
    cmd.arg("udp-multi").arg("--cgroup").arg(&sb.cgroup).args(["--netns", &sb.name]);
    for t in to {
        cmd.arg("--to").arg(t.to_string());
    }
    cmd.args(extra);
    let out = cmd.output().expect("probe");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Entries in the reverse table and its index.
fn reverse_entries(sb: &Sandbox) -> (usize, usize) {
    let rev: HashMap<MapData, UdpRevKey, UdpRevValue> = HashMap::try_from(Map::HashMap(
        MapData::from_pin(map_pin(&sb.bpffs, map_names::UDP_REV)).expect("pin"),
    ))
    .expect("map");
    let idx: HashMap<MapData, UdpIndexKey, UdpIndexValue> = HashMap::try_from(Map::HashMap(
        MapData::from_pin(map_pin(&sb.bpffs, map_names::UDP_REV_INDEX)).expect("pin"),
    ))
    .expect("map");
    (rev.keys().count(), idx.keys().count())
}

/// The VIP a client addresses, as recvfrom would show it.
fn shown(family: Family, vip: SocketAddr) -> String {
    match family {
        Family::Mapped => format!("[::ffff:{}]:{}", vip.ip(), vip.port()),
        _ => vip.to_string(),
    }
}

#[test]
fn sixty_four_vips_in_flight_on_one_socket_each_reply_from_its_vip() {
    require_root!();
    const N: usize = 64;
    for family in Family::ALL {
        let (sb, mut p) = sandbox("udp64", family, N);
        let services: Vec<Svc> = (0..N)
            .map(|i| Svc::udp(i as u32 + 1, &family.vip(i).to_string(), &[&family.backend(i).to_string()]))
            .collect();
        p.set(&services).expect("program");
        let dests: Vec<SocketAddr> = (0..N).map(|i| family.dest(i)).collect();
        let replies = udp_multi(&sb, &dests, &["--burst"]);
        assert_eq!(replies.len(), N, "{family:?}: {replies:?}");
        // Each backend serves one VIP: the reply from backend i must show VIP i.
        let vip_of: BTreeMap<String, String> =
            (0..N).map(|i| (family.backend(i).to_string(), shown(family, family.vip(i)))).collect();
        for r in &replies {
            assert!(r.error.is_none(), "{family:?}: {r:?}");
            let backend = r.backend.as_deref().expect("backend");
            assert_eq!(r.from.as_deref(), vip_of.get(backend).map(String::as_str), "{family:?}: {r:?}");
        }
        // The socket closed: its 64 reverse entries went with it.
        assert_eq!(reverse_entries(&sb), (0, 0), "{family:?}: entries left after the socket closed");
    }
}

#[test]
fn vips_that_share_backends_answer_from_the_vip_asked_one_request_at_a_time() {
    require_root!();
    for family in Family::ALL {
        let (sb, mut p) = sandbox("udpshare", family, 3);
        let backends: Vec<String> = (0..3).map(|i| family.backend(i).to_string()).collect();
        let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
        let services: Vec<Svc> =
            (0..4).map(|i| Svc::udp(i as u32 + 1, &family.vip(i).to_string(), &refs)).collect();
        p.set(&services).expect("program");
        let dests: Vec<SocketAddr> = (0..4).map(|i| family.dest(i)).collect();
        let replies = udp_multi(&sb, &dests, &["--rounds", "6"]);
        assert_eq!(replies.len(), 24);
        for r in &replies {
            assert!(r.error.is_none(), "{family:?}: {r:?}");
            // The destination the request went to is the source of its reply.
            let to: SocketAddr = r.to.as_deref().expect("to").parse().expect("addr");
            assert_eq!(r.from.as_deref(), Some(to.to_string().as_str()), "{family:?}: {r:?}");
        }
        assert_eq!(reverse_entries(&sb), (0, 0), "{family:?}: entries left after the socket closed");
    }
}

#[test]
fn an_idle_udp_socket_reaches_backends_added_since() {
    require_root!();
    for family in Family::ALL {
        idle_rebalance(family);
    }
}

fn idle_rebalance(family: Family) {
    let (sb, mut p) = sandbox("udpidle", family, 8);
    let vip = family.vip(0);
    let dest = family.dest(0);
    let first = family.backend(0).to_string();
    p.set(&[Svc::udp(1, &vip.to_string(), &[&first])]).expect("program");
    // Idle re-picks after 300 ms (the agent's --udp-idle-timeout).
    AyaMaps::open(&sb.bpffs)
        .expect("maps")
        .write_config(Config { udp_idle_ns: 300_000_000, ..Default::default() })
        .expect("config");
    // Scale up from one backend to eight while one socket sends: without a
    // pause it stays on its backend; after each idle pause it is balanced
    // afresh, so it soon reaches the new ones.
    let all: Vec<String> = (0..8).map(|i| family.backend(i).to_string()).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let scaled = {
        let sb = &sb;
        thread::scope(|s| {
            let client = s.spawn(|| udp_multi(sb, &[dest], &["--rounds", "16", "--pause-ms", "500"]));
            thread::sleep(Duration::from_millis(200));
            p.set(&[Svc::udp(1, &vip.to_string(), &refs)]).expect("scale up");
            thread::sleep(Duration::from_secs(2));
            let (rev, idx) = reverse_entries(sb);
            assert!(rev >= 1 && rev == idx, "while the socket lives it has its entries: {rev}, {idx}");
            client.join().expect("client")
        })
    };
    assert_eq!(scaled.len(), 16);
    let shown_vip = shown(family, vip);
    assert!(
        scaled.iter().all(|r| r.error.is_none() && r.from.as_deref() == Some(shown_vip.as_str())),
        "{family:?}: {scaled:?}"
    );
    let reached: std::collections::BTreeSet<&str> =
        scaled.iter().filter(|r| r.round > 0).filter_map(|r| r.backend.as_deref()).collect();
    assert!(reached.iter().any(|b| *b != first), "{family:?}: never left {first}: {reached:?}");

    // Without idling the socket keeps its backend.
    let busy = udp_multi(&sb, &[dest], &["--rounds", "30"]);
    let backends: std::collections::BTreeSet<&str> =
        busy.iter().filter_map(|r| r.backend.as_deref()).collect();
    assert_eq!(backends.len(), 1, "{family:?}: a busy socket keeps its backend: {backends:?}");
}
