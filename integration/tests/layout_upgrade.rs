//! An upgrade across a map layout change, under load: a build whose maps
//! differ (`socklb-layout-next`: another LAYOUT_VERSION, a longer backend
//! value) replaces the running one, and back. The new agent builds its maps
//! beside the old ones, fills them, and only then swaps every program in
//! place; no connect fails, and sockets established before keep showing the
//! VIP to getpeername and recvmsg.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, ChildStdin, ChildStdout, Stdio},
    thread,
    time::Duration,
};

use socklb_common::LAYOUT_VERSION;
use socklb_integration::{Sandbox, probe::now_ns, require_root, sa};

const NEXT: &str = "socklb-layout-next";

fn cluster() -> String {
    let mut out = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for (name, vip, port, proto, target) in [
        ("web", "10.96.0.1", 80, "TCP", 8080),
        ("db", "10.96.0.2", 5432, "TCP", 5432),
        ("dns", "10.96.0.3", 53, "UDP", 5353),
    ] {
        let eps: Vec<String> = (1..=3).map(|b| format!("{{addresses: [10.244.0.{b}]}}")).collect();
        out.push_str(&format!(
            "- apiVersion: v1\n  kind: Service\n  metadata: {{name: {name}, namespace: up}}\n  spec: {{clusterIP: {vip}, ports: [{{port: {port}, protocol: {proto}, targetPort: {target}}}]}}\n\
             - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: {name}-1, namespace: up, labels: {{kubernetes.io/service-name: {name}}}}}\n  addressType: IPv4\n  endpoints: [{}]\n  ports: [{{name: '', port: {target}, protocol: {proto}}}]\n",
            eps.join(", ")
        ));
    }
    out
}

/// Sockets opened through VIPs before an upgrade, asked again after it.
struct Kept {
    child: Child,
    stdin: ChildStdin,
    lines: BufReader<ChildStdout>,
}

impl Kept {
    fn open(sb: &Sandbox) -> (Self, serde_json::Value) {
        let mut cmd = sb.probe_cmd("keep", true);
        cmd.args(["--tcp", "10.96.0.2:5432", "--udp", "10.96.0.3:53"]);
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("keep");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout"));
        let mut kept = Self { child, stdin, lines };
        let first = kept.read();
        (kept, first)
    }

    fn read(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.lines.read_line(&mut line).expect("keep output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn ask(&mut self) -> serde_json::Value {
        writeln!(self.stdin, "again").expect("keep stdin");
        self.read()
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_shows_the_vips(v: &serde_json::Value, when: &str) {
    assert_eq!(v["tcp_peer"], "10.96.0.2:5432", "{when}: {v}");
    assert_eq!(v["tcp_state"], "open", "{when}: {v}");
    assert_eq!(v["udp_peer"], "10.96.0.3:53", "{when}: {v}");
    assert_eq!(v["udp_reply_from"], "10.96.0.3:53", "{when}: {v}");
}

fn generations(sb: &Sandbox) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(&sb.bpffs)
        .expect("bpffs")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('v'))
        .collect();
    out.sort();
    out
}

#[test]
fn an_upgrade_across_a_map_layout_and_back_fails_no_connect_and_keeps_the_vips_of_open_sockets() {
    require_root!();
    let sb = Sandbox::new("layout").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32", "10.244.0.2/32", "10.244.0.3/32"]).expect("addresses");
    let web: Vec<SocketAddr> = (1..=3).map(|b| sa(&format!("10.244.0.{b}:8080"))).collect();
    let dns: Vec<SocketAddr> = (1..=3).map(|b| sa(&format!("10.244.0.{b}:5353"))).collect();
    let db: Vec<SocketAddr> = (1..=3).map(|b| sa(&format!("10.244.0.{b}:5432"))).collect();
    sb.serve(&web, &dns, &db).expect("servers");
    let file = sb.workdir().join("cluster.yaml");
    std::fs::write(&file, cluster()).expect("write");
    let args = ["--from-file", file.to_str().expect("utf8")];

    let mut agent = sb.start_agent(&args);
    agent.wait_ready(Duration::from_secs(60));
    let before = generations(&sb);
    assert_eq!(before.len(), 1, "{before:?}");
    let ours = format!("v{LAYOUT_VERSION}-");
    assert!(before[0].starts_with(&ours), "{before:?}");
    let (mut kept, first) = Kept::open(&sb);
    assert_shows_the_vips(&first, "before");

    let load = sb.start_load(sb.client_cmd("connect", sa("10.96.0.1:80")));
    let mut windows = Vec::new();
    for (round, binary) in [NEXT, "socklb"].into_iter().enumerate() {
        thread::sleep(Duration::from_millis(500));
        agent.kill();
        let down = now_ns();
        agent = sb.start_agent_bin(binary, &args, &[]);
        agent.wait_ready(Duration::from_secs(90));
        windows.push((down, now_ns()));
        let log = agent.log_text();
        assert!(log.contains("another map layout serves"), "round {round}:\n{log}");
        assert!(log.contains("switched the datapath to this build's map layout"), "round {round}:\n{log}");
        let gens = generations(&sb);
        assert_eq!(gens.len(), 1, "round {round}: the old generation is removed: {gens:?}");
        // The layout-next build's LAYOUT_VERSION is this one's plus 1000.
        let want = if binary == NEXT { format!("v{}-", LAYOUT_VERSION + 1000) } else { ours.clone() };
        assert!(gens[0].starts_with(&want), "round {round}: {gens:?}");
        assert_shows_the_vips(&kept.ask(), &format!("after switching to {binary}"));
        assert!(
            log.contains("SOCKLB_SOCK_TCP") && log.contains("SOCKLB_UDP_REV"),
            "round {round}: the socket storage is shared with the new maps:\n{log}"
        );
    }
    thread::sleep(Duration::from_millis(500));
    let attempts = sb.finish(load);
    let failed: Vec<_> = attempts.iter().filter(|a| !a.ok).collect();
    assert!(
        failed.is_empty(),
        "{} of {} connects failed: {:?}",
        failed.len(),
        attempts.len(),
        failed.first()
    );
    for (i, (from, to)) in windows.iter().enumerate() {
        let during = attempts.iter().filter(|a| a.t_start_ns >= *from && a.t_end_ns <= *to).count();
        assert!(during > 0, "no connect while upgrade {i} ran");
    }
    for a in &attempts {
        let b = a.backend.as_deref().unwrap_or_default();
        assert!(web.iter().any(|w| w.to_string() == b), "a connect reached {b}");
    }
    // The maps of this build serve again, and list reads them.
    let out = std::process::Command::new(socklb_integration::sandbox::bin_path("socklb"))
        .args(["list", "--bpffs", sb.bpffs.to_str().expect("utf8")])
        .output()
        .expect("list");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10.96.0.1:80/TCP") && text.contains("10.244.0.3:8080"), "{text}");
}

#[test]
fn maps_pinned_before_generations_existed_are_replaced_by_a_generation() {
    require_root!();
    let sb = Sandbox::new("legacy").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32", "10.244.0.2/32", "10.244.0.3/32"]).expect("addresses");
    let web: Vec<SocketAddr> = (1..=3).map(|b| sa(&format!("10.244.0.{b}:8080"))).collect();
    let dns: Vec<SocketAddr> = (1..=3).map(|b| sa(&format!("10.244.0.{b}:5353"))).collect();
    let db: Vec<SocketAddr> = (1..=3).map(|b| sa(&format!("10.244.0.{b}:5432"))).collect();
    sb.serve(&web, &dns, &db).expect("servers");
    let file = sb.workdir().join("cluster.yaml");
    std::fs::write(&file, cluster()).expect("write");
    let args = ["--from-file", file.to_str().expect("utf8")];
    let mut agent = sb.start_agent(&args);
    agent.wait_ready(Duration::from_secs(60));
    agent.kill();
    // Move the maps to where builds before generations pinned them: at the
    // top of --bpffs. The links keep using them.
    let gens = generations(&sb);
    let dir = sb.bpffs.join(&gens[0]);
    for entry in std::fs::read_dir(&dir).expect("generation") {
        let entry = entry.expect("entry");
        let map = aya::maps::MapData::from_pin(entry.path()).expect("map");
        map.pin(sb.bpffs.join(entry.file_name())).expect("pin at the top");
        std::fs::remove_file(entry.path()).expect("unpin");
    }
    std::fs::remove_dir(&dir).expect("rmdir");
    assert!(generations(&sb).is_empty());
    let (mut kept, first) = Kept::open(&sb);
    assert_shows_the_vips(&first, "before");

    let load = sb.start_load(sb.client_cmd("connect", sa("10.96.0.1:80")));
    thread::sleep(Duration::from_millis(300));
    let mut agent = sb.start_agent(&args);
    agent.wait_ready(Duration::from_secs(90));
    let log = agent.log_text();
    assert!(log.contains("serving=layout 1 (unversioned pins)"), "{log}");
    thread::sleep(Duration::from_millis(300));
    let attempts = sb.finish(load);
    assert!(attempts.iter().all(|a| a.ok), "{:?}", attempts.iter().find(|a| !a.ok));
    assert_shows_the_vips(&kept.ask(), "after the switch");
    let gens = generations(&sb);
    assert_eq!(gens.len(), 1, "{gens:?}");
    let top: Vec<_> = std::fs::read_dir(&sb.bpffs)
        .expect("bpffs")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("SOCKLB_"))
        .collect();
    assert!(top.is_empty(), "the old pins are removed");
}
