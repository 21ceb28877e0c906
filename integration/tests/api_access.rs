//! How the agent reaches the API server: `--k8s-api-server` (the way in on
//! a node without kube-proxy), the advice when the configured server cannot
//! be reached, retries that really back off, one log line per failure
//! streak, and an immediate relist after 410 Gone.

use std::{
    thread,
    time::{Duration, Instant},
};

use socklb_integration::{
    Sandbox,
    agent::free_port,
    apiserver::{FakeApiServer, Faults, Kind, objects},
    require_root, sa,
};

fn sandbox(tag: &str) -> Sandbox {
    let sb = Sandbox::new(tag).expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32"]).expect("addresses");
    sb.serve(&[sa("10.244.0.1:8080")], &[], &[]).expect("servers");
    sb
}

fn api_with_a_service() -> FakeApiServer {
    let api = FakeApiServer::start();
    api.apply(objects::node("node-a", "zone-1"));
    api.apply(objects::service("access", "web", "10.96.3.1", 80));
    api.apply(objects::slice("access", "web-1", "web", &["10.244.0.1"], 8080));
    api
}

/// A kubeconfig whose server is a loopback port nobody listens on.
fn dead_kubeconfig(sb: &Sandbox) -> String {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: dead\n  cluster: {{server: \"http://127.0.0.1:{}\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: dead, user: u}}\ncurrent-context: c\n",
        free_port()
    );
    let path = sb.workdir().join("dead-kubeconfig");
    std::fs::write(&path, text).expect("kubeconfig");
    path.to_str().expect("utf8").to_string()
}

fn wait_for_log(agent: &socklb_integration::agent::AgentProc, within: Duration, what: impl Fn(&str) -> bool) {
    let start = Instant::now();
    while !what(&agent.log_text()) {
        assert!(start.elapsed() < within, "not in the log after {within:?}:\n{}", agent.log_text());
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_api_server_flag_replaces_a_dead_configured_server_and_the_agent_syncs_and_serves() {
    require_root!();
    let sb = sandbox("api-flag");
    let api = api_with_a_service();
    let kubeconfig = dead_kubeconfig(&sb);
    let server = format!("http://{}", api.addr);

    // The flag, given as its environment variable (as the DaemonSet does).
    let mut agent = sb.start_agent_env(&["--kubeconfig", &kubeconfig], &[("SOCKLB_K8S_API_SERVER", &server)]);
    agent.wait_ready(Duration::from_secs(60));
    let attempts = sb.connect(sa("10.96.3.1:80"), 10);
    assert!(attempts.iter().all(|a| a.ok && a.backend.as_deref() == Some("10.244.0.1:8080")), "{attempts:?}");
    assert!(!agent.log_text().contains("cannot reach"), "{}", agent.log_text());
    drop(agent);

    // The same as a flag.
    let mut agent = sb.start_agent(&["--kubeconfig", &kubeconfig, "--k8s-api-server", &server]);
    agent.wait_ready(Duration::from_secs(60));
    assert!(sb.connect(sa("10.96.3.1:80"), 5).iter().all(|a| a.ok));

    // A malformed value is refused at start, naming the flag.
    let mut bad = sb.start_agent(&["--kubeconfig", &kubeconfig, "--k8s-api-server", "ftp://x:1"]);
    let status = bad.child.wait().expect("exits");
    assert!(!status.success());
    assert!(bad.log_text().contains("--k8s-api-server"), "{}", bad.log_text());
}

#[test]
fn an_unreachable_server_is_reported_once_per_streak_with_the_os_error_and_the_flag() {
    require_root!();
    let sb = sandbox("api-dead");
    let kubeconfig = dead_kubeconfig(&sb);
    let agent = sb.start_agent(&["--kubeconfig", &kubeconfig, "--api-retry-max", "2s"]);
    wait_for_log(&agent, Duration::from_secs(60), |log| {
        log.contains("cannot reach the API server") && log.contains("/api/v1/services")
    });
    // Several attempts later, each watcher has still said it once.
    thread::sleep(Duration::from_secs(8));
    let log = agent.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("cannot reach the API server")).collect();
    // One at start, one per watcher (services, endpointslices, nodes).
    assert!(lines.len() <= 4, "{} lines for one failure streak:\n{log}", lines.len());
    for line in &lines {
        assert!(line.contains("--k8s-api-server"), "no advice: {line}");
        assert!(line.contains("Connection refused") && line.contains("os error 111"), "no OS error: {line}");
    }
    assert!(log.contains("http://127.0.0.1:"), "the URL is named:\n{log}");
    // Not one line per attempt from the client library either.
    assert!(!log.contains("kube_client"), "{log}");
    assert!(!matches!(agent.get("/readyz"), Some((200, _))), "not ready without the API server");
}

#[test]
fn retries_back_off_to_the_ceiling_and_an_expired_watch_relists_at_once() {
    require_root!();
    let sb = sandbox("api-backoff");
    let api = api_with_a_service();
    // Every list fails while the test watches the retries.
    api.set_faults(Faults { fail_lists: u32::MAX, ..Default::default() });
    let kubeconfig = sb.workdir().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("kubeconfig");
    let mut agent =
        sb.start_agent(&["--kubeconfig", kubeconfig.to_str().expect("utf8"), "--api-retry-max", "4s"]);
    thread::sleep(Duration::from_secs(16));
    for kind in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
        let times = api.list_times(kind);
        let gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        // 0.5-1 s, 1-2 s, then 2-4 s (a base of at most half the ceiling,
        // plus jitter): about 7 attempts in 16 s. Without real backoff
        // it was one every 0.5-1 s.
        assert!(times.len() >= 3, "{kind:?}: only {} attempts: {gaps:?}", times.len());
        assert!(times.len() <= 11, "{kind:?}: {} attempts in 16 s: {gaps:?}", times.len());
        assert!(gaps[2..].iter().all(|g| *g >= 1.9), "{kind:?}: the delay did not grow: {gaps:?}");
        assert!(gaps.iter().all(|g| *g <= 4.5 + 2.0), "{kind:?}: beyond --api-retry-max: {gaps:?}");
    }
    let log = agent.log_text();
    let warns = log.lines().filter(|l| l.contains("API request failed")).count();
    assert!(warns <= 3, "{warns} lines for one streak per watcher:\n{log}");
    assert!(log.contains("500") && log.contains("/apis/discovery.k8s.io/v1/endpointslices"), "{log}");

    // The server recovers: the agent syncs and says the streak ended.
    api.set_faults(Faults::default());
    agent.wait_ready(Duration::from_secs(60));
    assert!(agent.log_text().contains("the API server answers again"), "{}", agent.log_text());
    assert!(sb.connect(sa("10.96.3.1:80"), 5).iter().all(|a| a.ok));

    // 410 Gone: the history is compacted; each watcher relists without a
    // backoff step and without a failure warning.
    let lists_before = api.list_times(Kind::Service).len();
    let warns_before = agent.log_text().lines().filter(|l| l.contains("retrying with backoff")).count();
    api.compact();
    api.apply(objects::slice("access", "web-1", "web", &["10.244.0.1", "10.244.0.9"], 8080));
    wait_for_log(&agent, Duration::from_secs(60), |log| log.contains("relisting now"));
    let start = Instant::now();
    while api.list_times(Kind::Service).len() <= lists_before {
        assert!(start.elapsed() < Duration::from_secs(60), "no relist after 410");
        thread::sleep(Duration::from_millis(50));
    }
    let log = agent.log_text();
    let warns_after = log.lines().filter(|l| l.contains("retrying with backoff")).count();
    assert_eq!(warns_after, warns_before, "a 410 is not a failure streak:\n{log}");
}
