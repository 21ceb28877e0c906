//! Stale sockets: when a backend is deleted from a service, the agent
//! destroys the sockets it translated to that backend (TCP reset, connected
//! UDP error) once `--stale-socket-grace` has passed; sockets to surviving
//! backends, sockets opened directly to the backend's address, sockets to a
//! backend that is merely terminating, and sockets to a backend that moves
//! from one EndpointSlice to another are left alone.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use socklb_integration::{Sandbox, probe::Attempt, require_root, sa};

fn cluster(endpoints: &[(&str, &str)]) -> String {
    // (address, condition): "ready" or "terminating".
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, c)| {
            let cond = if *c == "ready" {
                "{ready: true, serving: true, terminating: false}"
            } else {
                "{ready: false, serving: true, terminating: true}"
            };
            format!("  - {{addresses: [{a}], conditions: {cond}}}")
        })
        .collect();
    format!(
        r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: db, namespace: default}}
  spec:
    clusterIP: 10.96.0.10
    ports: [{{name: sql, port: 5432, targetPort: 5432}}, {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: db-1, namespace: default, labels: {{kubernetes.io/service-name: db}}}}
  addressType: IPv4
  endpoints:
{}
  ports: [{{name: sql, port: 5432}}, {{name: dns, port: 5353, protocol: UDP}}]
"#,
        eps.join("\n")
    )
}

/// The same service with its endpoints split over two slices (the
/// EndpointSlice controller repacking them): `a` in db-1, `b` in db-2.
fn two_slices(a: &[&str], b: &[&str]) -> String {
    let slice = |name: &str, addrs: &[&str]| {
        let eps: Vec<String> = addrs.iter().map(|a| format!("{{addresses: [{a}]}}")).collect();
        format!(
            "- {{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: db}}}}, addressType: IPv4, endpoints: [{}], ports: [{{name: sql, port: 5432}}, {{name: dns, port: 5353, protocol: UDP}}]}}\n",
            eps.join(", ")
        )
    };
    format!(
        "apiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: Service, metadata: {{name: db, namespace: default}}, spec: {{clusterIP: 10.96.0.10, ports: [{{name: sql, port: 5432, targetPort: 5432}}, {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}]}}}}\n{}{}",
        slice("db-1", a),
        slice("db-2", b)
    )
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

/// A long-lived connection held by a probe in the sandbox.
struct Held {
    child: Child,
    lines: std::sync::mpsc::Receiver<Attempt>,
    pub backend: String,
}

fn hold(sb: &Sandbox, to: &str) -> Held {
    hold_proto(sb, to, "tcp")
}

fn hold_proto(sb: &Sandbox, to: &str, proto: &str) -> Held {
    let mut cmd = sb.client_cmd("hold", sa(to));
    cmd.args(["--max-ms", "120000", "--proto", proto]);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("hold");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(a) = serde_json::from_str::<Attempt>(&line) {
                let _ = tx.send(a);
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).expect("connected");
    Held { child, lines: rx, backend: first.backend.expect("backend") }
}

impl Held {
    /// The time the connection broke, if it did within `within`.
    fn broken_within(&self, within: Duration) -> Option<Attempt> {
        self.lines.recv_timeout(within).ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn deleting_a_backend_resets_its_sockets_and_spares_the_others() {
    require_root!();
    let sb = Sandbox::new("stale").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32", "10.244.0.2/32"]).expect("addresses");
    sb.serve(
        &[],
        &[sa("10.244.0.1:5353"), sa("10.244.0.2:5353")],
        &[sa("10.244.0.1:5432"), sa("10.244.0.2:5432")],
    )
    .expect("servers");
    let file = sb.workdir().join("cluster.yaml");
    write(&file, &cluster(&[("10.244.0.1", "ready"), ("10.244.0.2", "ready")]));
    let mut agent = sb.start_agent(&["--from-file", file.to_str().expect("utf8")]);
    agent.wait_ready(Duration::from_secs(20));

    // Connections through the VIP until both backends hold one each, plus a
    // direct connection to backend 1 (not translated: never destroyed).
    let mut held: Vec<Held> = Vec::new();
    let start = Instant::now();
    while !(held.iter().any(|h| h.backend == "10.244.0.1:5432")
        && held.iter().any(|h| h.backend == "10.244.0.2:5432"))
    {
        assert!(start.elapsed() < Duration::from_secs(60), "could not reach both backends");
        held.push(hold(&sb, "10.96.0.10:5432"));
    }
    let direct = hold(&sb, "10.244.0.1:5432");
    // Connected UDP sockets, likewise.
    let mut udp: Vec<Held> = Vec::new();
    while !(udp.iter().any(|h| h.backend == "10.244.0.1:5353")
        && udp.iter().any(|h| h.backend == "10.244.0.2:5353"))
    {
        assert!(start.elapsed() < Duration::from_secs(60), "could not reach both UDP backends");
        udp.push(hold_proto(&sb, "10.96.0.10:53", "udp"));
    }

    // Backend 1 starts terminating: still in the slice, so its sockets stay.
    write(&file, &cluster(&[("10.244.0.1", "terminating"), ("10.244.0.2", "ready")]));
    for h in &held {
        assert!(
            h.broken_within(Duration::from_millis(1500)).is_none(),
            "terminating is not deleted: {} broke",
            h.backend
        );
    }

    // Backend 1 is deleted: its translated sockets break (at once on an idle
    // machine; the deadline is for a busy one).
    write(&file, &cluster(&[("10.244.0.2", "ready")]));
    for h in held.iter().filter(|h| h.backend == "10.244.0.1:5432") {
        let ev = h.broken_within(Duration::from_secs(20)).expect("the stale socket was not destroyed");
        assert!(ev.errno.is_some(), "aborted, not closed: {ev:?}");
    }
    for h in udp.iter().filter(|h| h.backend == "10.244.0.1:5353") {
        let ev = h
            .broken_within(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("the stale UDP socket was not destroyed:\n{}", agent.log_text()));
        assert!(ev.errno.is_some(), "{ev:?}");
    }
    for h in held
        .iter()
        .filter(|h| h.backend == "10.244.0.2:5432")
        .chain(udp.iter().filter(|h| h.backend == "10.244.0.2:5353"))
    {
        assert!(
            h.broken_within(Duration::from_millis(500)).is_none(),
            "a socket to a surviving backend broke"
        );
    }
    assert!(direct.broken_within(Duration::from_millis(200)).is_none(), "a direct connection was destroyed");
    let metrics = agent.get("/metrics").expect("metrics").1;
    assert!(
        metrics.lines().any(|l| l.starts_with("socklb_stale_sockets_destroyed_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[test]
fn with_the_flag_off_stale_sockets_are_left_alone() {
    require_root!();
    let sb = Sandbox::new("stale-off").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32"]).expect("addresses");
    sb.serve(&[], &[], &[sa("10.244.0.1:5432")]).expect("servers");
    let file = sb.workdir().join("cluster.yaml");
    write(&file, &cluster(&[("10.244.0.1", "ready")]));
    let mut agent =
        sb.start_agent(&["--from-file", file.to_str().expect("utf8"), "--destroy-stale-sockets=false"]);
    agent.wait_ready(Duration::from_secs(20));
    let h = hold(&sb, "10.96.0.10:5432");
    write(&file, &cluster(&[]));
    assert!(h.broken_within(Duration::from_secs(2)).is_none(), "destroyed although the flag is off");
}

/// Holds TCP and connected UDP sockets through the VIP until each backend
/// has at least one of each.
fn hold_both(sb: &Sandbox) -> (Vec<Held>, Vec<Held>) {
    let start = Instant::now();
    let mut tcp: Vec<Held> = Vec::new();
    while !(tcp.iter().any(|h| h.backend == "10.244.0.1:5432")
        && tcp.iter().any(|h| h.backend == "10.244.0.2:5432"))
    {
        assert!(start.elapsed() < Duration::from_secs(60), "could not reach both backends");
        tcp.push(hold(sb, "10.96.0.10:5432"));
    }
    let mut udp: Vec<Held> = Vec::new();
    while !(udp.iter().any(|h| h.backend == "10.244.0.1:5353")
        && udp.iter().any(|h| h.backend == "10.244.0.2:5353"))
    {
        assert!(start.elapsed() < Duration::from_secs(60), "could not reach both UDP backends");
        udp.push(hold_proto(sb, "10.96.0.10:53", "udp"));
    }
    (tcp, udp)
}

#[test]
fn an_endpoint_moving_between_slices_keeps_its_connections_and_a_deletion_still_ends_them() {
    require_root!();
    let sb = Sandbox::new("stale-move").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32", "10.244.0.2/32"]).expect("addresses");
    sb.serve(
        &[],
        &[sa("10.244.0.1:5353"), sa("10.244.0.2:5353")],
        &[sa("10.244.0.1:5432"), sa("10.244.0.2:5432")],
    )
    .expect("servers");
    let file = sb.workdir().join("cluster.yaml");
    write(&file, &two_slices(&["10.244.0.1", "10.244.0.2"], &[]));
    let mut agent = sb.start_agent(&["--from-file", file.to_str().expect("utf8")]);
    agent.wait_ready(Duration::from_secs(60));
    let (tcp, udp) = hold_both(&sb);

    // The controller moves 10.244.0.1 from db-1 to db-2 in two writes; the
    // first is seen alone for 300 ms, then for 1.5 s (the grace is 2 s).
    for gap in [Duration::from_millis(300), Duration::from_millis(1500)] {
        write(&file, &two_slices(&["10.244.0.2"], &[]));
        thread::sleep(gap);
        write(&file, &two_slices(&["10.244.0.2"], &["10.244.0.1"]));
        // Past the grace: nothing may have broken (a break would be queued
        // on the holder's channel by now).
        thread::sleep(Duration::from_millis(2500));
        for h in tcp.iter().chain(&udp) {
            assert!(
                h.broken_within(Duration::from_millis(10)).is_none(),
                "gap {gap:?}: a connection to {} was lost although its pod only moved slices",
                h.backend
            );
        }
        // Back to the first layout for the next round.
        write(&file, &two_slices(&["10.244.0.1", "10.244.0.2"], &[]));
        thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        agent.get("/metrics").map(|(_, m)| m.contains("socklb_stale_sockets_destroyed_total 0")),
        Some(true)
    );

    // A real deletion: the sockets go, but only after the grace.
    write(&file, &two_slices(&["10.244.0.2"], &[]));
    let deleted = Instant::now();
    for h in tcp.iter().chain(&udp).filter(|h| h.backend.starts_with("10.244.0.1:")) {
        let ev =
            h.broken_within(Duration::from_secs(30)).expect("the deleted backend's socket was not destroyed");
        assert!(ev.errno.is_some(), "aborted, not closed: {ev:?}");
    }
    assert!(
        deleted.elapsed() >= Duration::from_millis(1500),
        "destroyed before the grace: {:?}",
        deleted.elapsed()
    );
    for h in tcp.iter().chain(&udp).filter(|h| h.backend.starts_with("10.244.0.2:")) {
        assert!(h.broken_within(Duration::from_millis(300)).is_none(), "a surviving backend's socket broke");
    }
}
