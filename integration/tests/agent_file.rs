//! The real agent with `--from-file` in a sandbox: ClusterIP, NodePort on a
//! node address and an external IP are reachable; editing the file moves
//! traffic; a broken file keeps the last good state; SIGKILL and restart of
//! the agent under a connect loop fail no connect and write nothing.

use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use socklb_integration::{
    Sandbox,
    probe::{by_backend, now_ns},
    require_root, sa,
};
use {socklb_bpf::maps::AyaMaps, socklb_lb::datapath::Datapath};

fn cluster(endpoints: &[&str]) -> String {
    let eps: Vec<String> =
        endpoints.iter().map(|a| format!("  - {{addresses: [{a}], conditions: {{ready: true}}}}")).collect();
    format!(
        r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: web, namespace: default}}
  spec:
    type: NodePort
    clusterIP: 10.96.0.10
    externalIPs: [203.0.113.5]
    ports: [{{name: http, port: 80, nodePort: 30080, targetPort: http}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
  addressType: IPv4
  endpoints:
{}
  ports: [{{name: http, port: 8080}}]
"#,
        eps.join("\n")
    )
}

/// Writes atomically, as editors and ConfigMap updates do.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

fn sandbox(tag: &str) -> Sandbox {
    let sb = Sandbox::new(tag).expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32", "10.244.0.2/32", "10.244.0.3/32", "10.244.0.4/32", "192.168.77.1/32"])
        .expect("addresses");
    let servers: Vec<_> = (1..=4).map(|i| sa(&format!("10.244.0.{i}:8080"))).collect();
    sb.serve(&servers, &[], &[]).expect("servers");
    sb
}

fn backends_of(sb: &Sandbox, to: &str, n: u64) -> BTreeSet<String> {
    let attempts = sb.connect(sa(to), n);
    for a in &attempts {
        assert!(a.ok, "connect to {to}: {a:?}");
        assert_eq!(a.peer.as_deref(), Some(to), "getpeername shows the frontend");
    }
    by_backend(&attempts).into_keys().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn cluster_ip_node_port_and_external_ip_reach_the_endpoints_and_file_edits_move_traffic() {
    require_root!();
    let sb = sandbox("agent-file");
    let file = sb.workdir().join("cluster.yaml");
    write(&file, &cluster(&["10.244.0.1", "10.244.0.2"]));
    let mut agent = sb.start_agent(&[
        "--from-file",
        file.to_str().expect("utf8"),
        "--nodeport-addresses",
        "192.168.77.1",
    ]);
    agent.wait_ready(Duration::from_secs(20));

    let first = set(&["10.244.0.1:8080", "10.244.0.2:8080"]);
    for frontend in ["10.96.0.10:80", "192.168.77.1:30080", "203.0.113.5:80"] {
        assert_eq!(backends_of(&sb, frontend, 40), first, "{frontend}");
    }

    // Edit the file: the new endpoints take over (within ~100 ms on an idle
    // machine; the deadline is for a busy one).
    write(&file, &cluster(&["10.244.0.3", "10.244.0.4"]));
    let written = Instant::now();
    let second = set(&["10.244.0.3:8080", "10.244.0.4:8080"]);
    loop {
        if backends_of(&sb, "10.96.0.10:80", 10).is_subset(&second) {
            break;
        }
        assert!(written.elapsed() < Duration::from_secs(20), "the edit was not applied within 20 s");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(backends_of(&sb, "192.168.77.1:30080", 40), second);

    // A broken file keeps the last good state and says where it broke.
    fs::write(&file, "apiVersion: v1\nkind: List\nitems: [\n  {unclosed\n").expect("write");
    thread::sleep(Duration::from_millis(800));
    assert_eq!(backends_of(&sb, "10.96.0.10:80", 20), second, "the last good state stays");
    let log = agent.log_text();
    assert!(
        log.lines().any(|l| l.contains("keeping the last good state")
            && l.contains("cluster.yaml")
            && l.contains("line ")),
        "no error naming the file and line:\n{log}"
    );
    assert!(agent.is_running());

    // A slow in-place rewrite (truncate, pause, write) leaves the file empty
    // for a while; no service is lost meanwhile.
    {
        use std::io::Write;
        let mut f = fs::File::create(&file).expect("truncate");
        let during = sb.connect(sa("10.96.0.10:80"), 20);
        thread::sleep(Duration::from_millis(300));
        let during_late = sb.connect(sa("10.96.0.10:80"), 20);
        f.write_all(cluster(&["10.244.0.3", "10.244.0.4"]).as_bytes()).expect("write");
        for a in during.iter().chain(&during_late) {
            assert!(a.ok, "a connect while the file was empty failed: {a:?}");
        }
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(backends_of(&sb, "10.96.0.10:80", 20), second);
    let log = agent.log_text();
    assert!(log.contains("the file is empty"), "the pause is visible in the log:\n{log}");
}

#[test]
fn sigkill_and_restart_under_load_fail_no_connect_and_write_nothing() {
    require_root!();
    let sb = sandbox("agent-kill");
    let file = sb.workdir().join("cluster.yaml");
    write(&file, &cluster(&["10.244.0.1", "10.244.0.2", "10.244.0.3"]));
    let args = ["--from-file", file.to_str().expect("utf8"), "--nodeport-addresses", "192.168.77.1"];
    let mut agent = sb.start_agent(&args);
    agent.wait_ready(Duration::from_secs(20));
    let before = AyaMaps::open(&sb.bpffs).expect("maps").read_state().expect("read");

    let client = sb.start_load(sb.client_cmd("connect", sa("10.96.0.10:80")));
    thread::sleep(Duration::from_millis(500));
    agent.kill();
    let killed = now_ns();
    thread::sleep(Duration::from_millis(700));
    let mut agent = sb.start_agent(&args);
    agent.wait_ready(Duration::from_secs(60));
    let ready = now_ns();
    thread::sleep(Duration::from_millis(300));
    let attempts = sb.finish(client);

    let failed = attempts.iter().filter(|a| !a.ok).count();
    let while_down = attempts.iter().filter(|a| a.t_start_ns > killed && a.t_end_ns < ready).count();
    assert!(while_down > 0, "no connect while the agent was down ({} in all)", attempts.len());
    assert_eq!(failed, 0, "{failed} of {} connects failed", attempts.len());
    let after = AyaMaps::open(&sb.bpffs).expect("maps").read_state().expect("read");
    assert_eq!(before, after, "a restart with the same desired state writes nothing");
    let log = agent.log_text();
    assert!(log.contains("Adopted"), "the restarted agent adopts the pinned links:\n{log}");

    // SIGTERM stops the agent cleanly and leaves the datapath in place.
    assert!(agent.terminate().success());
    assert!(sb.connect(sa("10.96.0.10:80"), 5).iter().all(|a| a.ok), "datapath outlives the agent");
}
