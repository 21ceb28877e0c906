//! Operating the agent: a map that is too small, the inspection commands,
//! and least privilege (pin permissions, the only listener).

use std::{fs, os::unix::fs::PermissionsExt, process::Command, time::Duration};

use socklb_integration::{Sandbox, require_root, sa, sandbox::bin_path};

const ENETUNREACH: i32 = 101;

fn services(n: usize) -> String {
    let mut out = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 1..=n {
        out.push_str(&format!(
            "- apiVersion: v1\n  kind: Service\n  metadata: {{name: s{i}, namespace: ops}}\n  spec: {{clusterIP: 10.96.0.{i}, ports: [{{port: 80, targetPort: 8080}}]}}\n\
             - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: s{i}-1, namespace: ops, labels: {{kubernetes.io/service-name: s{i}}}}}\n  addressType: IPv4\n  endpoints: [{{addresses: [10.244.0.1]}}]\n  ports: [{{name: '', port: 8080}}]\n"
        ));
    }
    out
}

fn socklb(args: &[&str]) -> String {
    let out = Command::new(bin_path("socklb")).args(args).output().expect("socklb");
    assert!(out.status.success(), "socklb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn services_beyond_capacity_are_reported_and_the_rest_work() {
    require_root!();
    let sb = Sandbox::new("ops-cap").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32"]).expect("addresses");
    sb.serve(&[sa("10.244.0.1:8080")], &[], &[]).expect("server");
    let file = sb.workdir().join("cluster.yaml");
    fs::write(&file, services(5)).expect("write");
    // Three backend sets: three of the five services fit.
    let mut agent = sb.start_agent(&["--from-file", file.to_str().expect("utf8"), "--max-services", "3"]);
    agent.wait_ready(Duration::from_secs(20));

    let bpffs = sb.bpffs.to_str().expect("utf8");
    let rows: serde_json::Value =
        serde_json::from_str(&socklb(&["list", "--bpffs", bpffs, "-o", "json"])).expect("json");
    assert_eq!(rows.as_array().map(Vec::len), Some(3), "{rows:#}");
    let mut reached = 0;
    for i in 1..=5 {
        let vip = format!("10.96.0.{i}:80");
        let a = &sb.connect(sa(&vip), 1)[0];
        if a.ok {
            reached += 1;
        } else {
            assert_eq!(a.errno, Some(ENETUNREACH), "{vip}: not programmed at all, never half: {a:?}");
            let text = socklb(&["explain", &vip, "--bpffs", bpffs]);
            assert!(text.contains("is not a service"), "{text}");
        }
    }
    assert_eq!(reached, 3);
    let metrics = agent.get("/metrics").expect("metrics").1;
    assert!(metrics.contains("socklb_invalid_objects_total{reason=\"capacity\"} 2"), "{metrics}");
    let log = agent.log_text();
    assert!(log.contains("no free backend set id"), "{log}");

    let status = socklb(&["status", "--cgroup", sb.cgroup.to_str().expect("utf8"), "--bpffs", bpffs]);
    assert!(status.contains("connect4       yes"), "{status}");
    assert!(status.contains("SOCKLB_SETS           3         256"), "{status}");
}

/// The agent's listening TCP sockets, from the inodes of its descriptors.
fn listeners(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_string_lossy().strip_prefix("socket:[").map(|s| s.trim_end_matches(']').to_string())
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A = LISTEN for TCP; any bound UDP counts), inode
            let (local, state, inode) = (f[1], f[3], f[9]);
            let listening = if table.starts_with("tcp") { state == "0A" } else { true };
            if listening && inodes.iter().any(|i| i == inode) {
                out.push(format!("{table} {local}"));
            }
        }
    }
    out
}

#[test]
fn pins_are_private_and_the_only_listener_is_the_metrics_address_on_loopback() {
    require_root!();
    let sb = Sandbox::new("ops-priv").expect("sandbox");
    let file = sb.workdir().join("cluster.yaml");
    fs::write(&file, services(1)).expect("write");
    let mut agent = sb.start_agent(&["--from-file", file.to_str().expect("utf8")]);
    agent.wait_ready(Duration::from_secs(20));

    let mode = |p: &std::path::Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&sb.bpffs), 0o700, "the pin directory");
    for entry in fs::read_dir(&sb.bpffs).expect("pins").flatten() {
        let m = mode(&entry.path());
        if entry.path().is_dir() {
            assert_eq!(m, 0o700, "{}", entry.path().display());
        } else {
            assert_eq!(m & 0o077, 0, "{} is readable by others ({m:o})", entry.path().display());
        }
    }

    let found = listeners(agent.child.id());
    let port = agent.metrics.port();
    assert_eq!(found, vec![format!("tcp 0100007F:{port:04X}")], "only the metrics address, on 127.0.0.1");
}

#[test]
fn the_agent_source_has_no_unsafe_code() {
    // `#![forbid(unsafe_code)]` in lib.rs and main.rs makes any `unsafe`
    // block a compile error; check the attribute stays.
    for file in ["lib.rs", "main.rs"] {
        let text =
            fs::read_to_string(format!("{}/../agent/src/{file}", env!("CARGO_MANIFEST_DIR"))).expect("read");
        assert!(text.contains("#![forbid(unsafe_code)]"), "agent/src/{file} lost #![forbid(unsafe_code)]");
    }
}

#[test]
fn healthz_fails_once_the_datapath_is_detached() {
    require_root!();
    let sb = Sandbox::new("ops-health").expect("sandbox");
    let file = sb.workdir().join("cluster.yaml");
    fs::write(&file, services(1)).expect("write");
    let mut agent = sb.start_agent(&["--from-file", file.to_str().expect("utf8")]);
    agent.wait_ready(Duration::from_secs(60));
    assert_eq!(agent.get("/healthz").map(|r| r.0), Some(200));
    // Someone removes the datapath under the running agent.
    socklb(&[
        "uninstall",
        "--cgroup",
        sb.cgroup.to_str().expect("utf8"),
        "--bpffs",
        sb.bpffs.to_str().expect("utf8"),
    ]);
    let (code, body) = agent.get("/healthz").expect("healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("datapath detached"), "{body}");
}

#[test]
fn a_missing_pin_directory_is_named_once() {
    require_root!();
    let sb = Sandbox::new("ops-nopin").expect("sandbox");
    let missing = sb.workdir().join("nothing-here");
    let out = Command::new(bin_path("socklb"))
        .args(["list", "--bpffs", missing.to_str().expect("utf8")])
        .output()
        .expect("socklb");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    assert!(err.contains("nothing-here") && err.contains("is the agent running?"), "{err}");
}

#[test]
fn remove_mode_takes_the_datapath_off_the_node_and_reports_ready() {
    require_root!();
    let sb = Sandbox::new("ops-remove").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32"]).expect("addresses");
    sb.serve(&[sa("10.244.0.1:8080")], &[], &[]).expect("server");
    let file = sb.workdir().join("cluster.yaml");
    fs::write(&file, services(1)).expect("write");
    let args = ["--from-file", file.to_str().expect("utf8")];
    let mut agent = sb.start_agent(&args);
    agent.wait_ready(Duration::from_secs(60));
    assert!(sb.connect(sa("10.96.0.1:80"), 3).iter().all(|a| a.ok));
    agent.kill();
    // The DaemonSet rolled to `mode: remove` (SOCKLB_MODE from the ConfigMap).
    let mut remover = sb.start_agent_env(&args, &[("SOCKLB_MODE", "remove")]);
    remover.wait_ready(Duration::from_secs(60));
    assert!(remover.log_text().contains("the datapath is off this node"), "{}", remover.log_text());
    assert!(!sb.bpffs.exists(), "every pin is removed");
    assert_eq!(socklb_integration::attached_programs(&sb.cgroup), 0);
    let a = &sb.connect(sa("10.96.0.1:80"), 1)[0];
    assert_eq!(a.errno, Some(ENETUNREACH), "nothing translates any more: {a:?}");
    assert!(remover.is_running(), "it idles until the DaemonSet is deleted");
    assert!(remover.terminate().success());
}

#[test]
fn node_init_mounts_cgroup2_and_a_shared_bpffs_in_the_hosts_mount_namespace() {
    require_root!();
    let sb = Sandbox::new("ops-nodeinit").expect("sandbox");
    // A private mount namespace stands for the host's: nothing mounted in
    // it is seen anywhere else, and it goes away with its process.
    let mut holder = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sleep", "600"])
        .spawn()
        .expect("unshare");
    std::thread::sleep(Duration::from_millis(300));
    let ns = format!("/proc/{}/ns/mnt", holder.id());
    let bpffs = sb.workdir().join("host/sys/fs/bpf");
    let cgroup2 = sb.workdir().join("host/run/socklb/cgroupv2");
    let init = || {
        let out = Command::new(bin_path("socklb"))
            .args(["node-init", "--mount-ns", &ns])
            .arg("--bpffs")
            .arg(&bpffs)
            .arg("--cgroup2")
            .arg(&cgroup2)
            .output()
            .expect("node-init");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = init();
    assert!(first.contains("mounted (shared)") && first.contains("cgroup2"), "{first}");
    let mountinfo = fs::read_to_string(format!("/proc/{}/mountinfo", holder.id())).expect("mountinfo");
    let line_of = |path: &std::path::Path| {
        mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == path.to_str())
            .map(str::to_string)
            .unwrap_or_default()
    };
    let bpf_line = line_of(&bpffs);
    assert!(bpf_line.contains(" - bpf ") && bpf_line.contains("shared:"), "{bpf_line}");
    assert!(line_of(&cgroup2).contains(" - cgroup2 "), "{mountinfo}");
    // Not in this (the test's) mount namespace.
    let ours = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!ours.contains(bpffs.to_str().expect("utf8")));
    let again = init();
    assert!(again.contains("already a shared bpffs") && again.contains("already mounted"), "{again}");
    let _ = holder.kill();
    let _ = holder.wait();
}
