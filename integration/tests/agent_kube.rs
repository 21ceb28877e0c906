//! The real agent watching the test API server (real HTTP list/watch, with
//! resourceVersions, bookmarks and 410 Gone) through kube-rs, programming
//! the kernel maps of a sandbox.

use std::{
    collections::BTreeSet,
    thread,
    time::{Duration, Instant},
};

use socklb_integration::{
    Sandbox,
    apiserver::{FakeApiServer, Faults, Kind, StreamingLists, objects},
    probe::by_backend,
    require_root, sa,
};

const ENETUNREACH: i32 = 101;

fn sandbox() -> Sandbox {
    let sb = Sandbox::new("agent-kube").expect("sandbox");
    let addrs: Vec<String> = (1..=6).map(|i| format!("10.244.0.{i}/32")).collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    sb.add_addrs(&refs).expect("addresses");
    let servers: Vec<_> = (1..=6).map(|i| sa(&format!("10.244.0.{i}:8080"))).collect();
    sb.serve(&servers, &[], &[]).expect("servers");
    sb
}

fn set(n: &[u8]) -> BTreeSet<String> {
    n.iter().map(|i| format!("10.244.0.{i}:8080")).collect()
}

/// Backends answering `to` now (every connect must succeed).
fn answering(sb: &Sandbox, to: &str) -> Option<BTreeSet<String>> {
    let attempts = sb.connect(sa(to), 30);
    if attempts.iter().all(|a| a.ok) { Some(by_backend(&attempts).into_keys().collect()) } else { None }
}

/// Polls until `to` is answered by exactly `want`.
fn converges(sb: &Sandbox, to: &str, want: &BTreeSet<String>, within: Duration) {
    let start = Instant::now();
    loop {
        let got = answering(sb, to);
        if got.as_ref() == Some(want) {
            return;
        }
        assert!(start.elapsed() < within, "{to}: still {got:?}, want {want:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn services_from_the_api_server_reach_the_kernel_and_follow_updates_outages_and_gone_watches() {
    require_root!();
    let sb = sandbox();
    let mut api = FakeApiServer::start();
    api.apply(objects::node("node-a", "zone-1"));
    api.apply(objects::service("default", "web", "10.96.0.10", 80));
    api.apply(objects::slice("default", "web-1", "web", &["10.244.0.1", "10.244.0.2"], 8080));
    // Not for us: another proxy's service.
    let mut other = objects::service("default", "other", "10.96.0.11", 80);
    other["metadata"]["labels"] =
        serde_json::json!({"service.kubernetes.io/service-proxy-name": "elsewhere"});
    api.apply(other);
    // Watches are cut every few seconds, so kube-rs re-watches from its
    // resourceVersion during the test.
    api.set_faults(Faults { watch_lifetime: Some(Duration::from_secs(3)), ..Default::default() });

    let kubeconfig = sb.workdir().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("kubeconfig");
    let mut agent = sb.start_agent(&[
        "--kubeconfig",
        kubeconfig.to_str().expect("utf8"),
        "--nodeport-addresses",
        "192.168.99.1",
    ]);
    agent.wait_ready(Duration::from_secs(30));
    let wait = Duration::from_secs(10);

    converges(&sb, "10.96.0.10:80", &set(&[1, 2]), wait);
    assert_eq!(
        sb.connect(sa("10.96.0.11:80"), 1)[0].errno,
        Some(ENETUNREACH),
        "other proxy's service is skipped"
    );

    // Updates: endpoints change, a service appears, a service goes away.
    api.apply(objects::slice("default", "web-1", "web", &["10.244.0.2", "10.244.0.3"], 8080));
    converges(&sb, "10.96.0.10:80", &set(&[2, 3]), wait);
    api.apply(objects::service("shop", "cart", "10.96.0.20", 80));
    api.apply(objects::slice("shop", "cart-1", "cart", &["10.244.0.4"], 8080));
    converges(&sb, "10.96.0.20:80", &set(&[4]), wait);
    api.delete(Kind::Service, "shop", "cart");
    let start = Instant::now();
    while sb.connect(sa("10.96.0.20:80"), 1)[0].errno != Some(ENETUNREACH) {
        assert!(start.elapsed() < wait, "deleted service still translated");
        thread::sleep(Duration::from_millis(100));
    }

    // Watch expiry: the history is compacted; kube-rs gets 410 Gone, relists
    // and keeps following.
    api.compact();
    api.apply(objects::slice("default", "web-1", "web", &["10.244.0.3", "10.244.0.4"], 8080));
    converges(&sb, "10.96.0.10:80", &set(&[3, 4]), wait);

    // The API server goes away: the datapath keeps its state untouched.
    api.stop();
    thread::sleep(Duration::from_secs(2));
    assert_eq!(answering(&sb, "10.96.0.10:80"), Some(set(&[3, 4])));
    assert!(matches!(agent.get("/healthz"), Some((200, _))), "the agent stays alive");

    // It comes back with a changed state (and a compacted history, as after
    // an etcd restore): the agent converges, and the relist deletes what the
    // server no longer has.
    api.apply(objects::slice("default", "web-1", "web", &["10.244.0.5", "10.244.0.6"], 8080));
    api.apply(objects::service("shop", "cart", "10.96.0.21", 80));
    api.apply(objects::slice("shop", "cart-2", "cart", &["10.244.0.1"], 8080));
    // cart-1 goes away while the agent cannot see it: only the relist tells.
    api.delete(Kind::EndpointSlice, "shop", "cart-1");
    api.compact();
    // 500s on the first relists after the return (streaming lists are
    // watches; a paginated list would be a list).
    api.set_faults(Faults {
        fail_lists: 3,
        fail_watches: 3,
        watch_lifetime: Some(Duration::from_secs(3)),
        ..Default::default()
    });
    api.restart();
    converges(&sb, "10.96.0.10:80", &set(&[5, 6]), Duration::from_secs(30));
    converges(&sb, "10.96.0.21:80", &set(&[1]), wait);
    assert!(agent.is_running(), "no crash:\n{}", agent.log_text());
    assert!(!agent.log_text().contains("panicked"), "{}", agent.log_text());
    assert_eq!(api.faults().fail_watches, 0, "the agent retried through the injected 500s");
}

/// Streaming lists where the server has them; a list where it refuses
/// them (422) or ignores them (no end-of-list bookmark).
#[test]
fn an_api_server_without_streaming_lists_is_listed_instead() {
    require_root!();
    for mode in [StreamingLists::Supported, StreamingLists::Refused, StreamingLists::Ignored] {
        let sb = sandbox();
        let api = FakeApiServer::start();
        api.set_faults(Faults { streaming_lists: mode, ..Default::default() });
        api.apply(objects::service("default", "web", "10.96.0.10", 80));
        api.apply(objects::slice("default", "web-1", "web", &["10.244.0.1"], 8080));
        let kubeconfig = sb.workdir().join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig()).expect("kubeconfig");
        let mut agent = sb.start_agent(&["--kubeconfig", kubeconfig.to_str().expect("utf8")]);
        // An ignored parameter costs the quiet period (10 s) before the list.
        agent.wait_ready(Duration::from_secs(60));
        converges(&sb, "10.96.0.10:80", &set(&[1]), Duration::from_secs(10));
        let log = agent.log_text();
        let streamed = log.contains("streaming=true");
        assert_eq!(streamed, mode == StreamingLists::Supported, "{mode:?}:\n{log}");
        if mode != StreamingLists::Supported {
            assert!(log.contains("listing instead"), "{mode:?}:\n{log}");
        }
        // Changes after the initial state arrive through the watch either way.
        api.apply(objects::slice("default", "web-1", "web", &["10.244.0.2"], 8080));
        converges(&sb, "10.96.0.10:80", &set(&[2]), Duration::from_secs(10));
    }
}
