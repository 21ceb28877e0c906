//! `/metrics`, `/healthz` and `/readyz`: names and values after a known sync.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
};

use socklb::{
    http,
    metrics::Metrics,
    reconcile::{Limits, Reconciler},
};
use socklb_k8s::{decode::files::parse_objects, model::NodeContext, store::SourceEvent};
use socklb_lb::datapath::fake::SharedFake;

fn example_sync(metrics: Arc<Metrics>) -> Reconciler {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster.yaml"))
        .expect("example");
    let (o, _) = parse_objects(&text).expect("parses");
    let node = NodeContext {
        node_name: "node-a".into(),
        zone: None,
        nodeport_addresses: Default::default(),
        host_addresses: vec!["192.168.50.10".parse().expect("ip"), "127.0.0.1".parse().expect("ip")],
        service_proxy_name: None,
    };
    let limits = Limits { max_services: 1000, max_backends: 1000 };
    let mut r = Reconciler::new(Box::new(SharedFake::default()), node, &limits, metrics).expect("reconciler");
    r.apply_event(SourceEvent::replace(0, &o.services, &o.slices));
    assert!(r.sync().complete);
    r
}

/// The value of one sample line `name{labels} value`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn metrics_after_a_known_sync() {
    let metrics = Arc::new(Metrics::new());
    let _r = example_sync(metrics.clone());
    let text = metrics.encode();
    assert_eq!(sample(&text, "socklb_services"), 7.0);
    assert_eq!(sample(&text, "socklb_frontends{kind=\"ClusterIP\"}"), 9.0);
    // One NodePort entry (port, protocol, family), served on every node address.
    assert_eq!(sample(&text, "socklb_frontends{kind=\"NodePort\"}"), 1.0);
    assert_eq!(sample(&text, "socklb_map_entries{map=\"SOCKLB_NODE_ADDRS\"}"), 2.0);
    assert_eq!(sample(&text, "socklb_frontends{kind=\"ExternalIP\"}"), 1.0);
    assert_eq!(sample(&text, "socklb_frontends{kind=\"LoadBalancer\"}"), 0.0);
    // Slots: a backend in two sets (cluster and local, say) counts twice.
    assert_eq!(sample(&text, "socklb_backends"), 18.0);
    assert_eq!(sample(&text, "socklb_map_entries{map=\"SOCKLB_BACKENDS\"}"), 18.0);
    assert!(sample(&text, "socklb_map_capacity{map=\"SOCKLB_BACKENDS\"}") >= 18.0);
    assert_eq!(sample(&text, "socklb_syncs_total"), 1.0);
    assert_eq!(sample(&text, "socklb_sync_duration_seconds_count"), 1.0);
    assert_eq!(sample(&text, "socklb_map_write_seconds_count"), 1.0);
    assert_eq!(sample(&text, "socklb_reconcile_errors_total"), 0.0);
    assert_eq!(sample(&text, "socklb_resync_drift_repaired_total"), 0.0);
    // (Families without a sample yet, such as errors by map, appear once
    // they have one; the agent sets map capacities at start.)
    for name in ["socklb_event_to_datapath_seconds", "socklb_stale_sockets_destroyed", "socklb_map_growths"] {
        assert!(text.contains(&format!("# TYPE {name}")), "{name} is not exposed");
    }
    // Prometheus naming: counters end in _total, durations in _seconds.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().expect("name"), parts.next().expect("kind"));
        assert!(name.starts_with("socklb_"), "{name}");
        if kind == "histogram" {
            assert!(name.ends_with("_seconds"), "{name}");
        }
    }
}

#[test]
fn invalid_objects_are_counted_by_reason() {
    let metrics = Arc::new(Metrics::new());
    let mut r = example_sync(metrics.clone());
    let (o, _) = parse_objects(
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: x}\nspec: {clusterIP: 10.96.9.9, ports: [{port: 70000}, {port: 80}]}\n",
    )
    .expect("yaml");
    r.apply_event(SourceEvent::replace(1, &o.services, &o.slices));
    r.sync();
    let text = metrics.encode();
    assert_eq!(sample(&text, "socklb_invalid_objects_total{reason=\"invalid_port\"}"), 1.0);
    assert_eq!(sample(&text, "socklb_services"), 8.0, "the valid part of the service is served");
}

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status");
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    (code, head.to_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_endpoints_answer() {
    let metrics = Arc::new(Metrics::new());
    let listener = http::bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(http::serve(listener, metrics.clone()));
    let m = metrics.clone();
    tokio::task::spawn_blocking(move || {
        assert_eq!(get(addr, http::HEALTHZ).0, 200);
        assert_eq!(get(addr, http::READYZ).0, 503, "not ready before the first full sync");
        let _r = example_sync(m.clone());
        m.set_ready();
        assert_eq!(get(addr, http::READYZ).0, 200);
        let (code, head, body) = get(addr, http::METRICS);
        assert_eq!(code, 200);
        assert!(head.contains("content-type: application/openmetrics-text"), "{head}");
        assert!(body.contains("socklb_services 7"), "{body}");
        assert_eq!(get(addr, "/nope").0, 404);
    })
    .await
    .expect("client");
}

#[test]
fn network_programming_duration_counts_from_the_slice_trigger_time() {
    let metrics = Arc::new(Metrics::new());
    let mut r = example_sync(metrics.clone());
    // A slice change triggered 1.5 s ago (after the agent started).
    std::thread::sleep(std::time::Duration::from_millis(1600));
    let triggered = std::time::SystemTime::now() - std::time::Duration::from_millis(1500);
    let ts = k8s_openapi::jiff::Timestamp::try_from(triggered).expect("timestamp");
    let (o, _) = parse_objects(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-extra, namespace: default, \
         labels: {{kubernetes.io/service-name: web}}, annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{ts}\"}}}}\n\
         addressType: IPv4\nendpoints: [{{addresses: [10.244.9.9]}}]\nports: [{{name: http, port: 8080}}]\n"
    ))
    .expect("yaml");
    r.apply_event(SourceEvent::slice(0, &o.slices[0]));
    assert!(r.sync().complete);
    let text = metrics.encode();
    assert_eq!(sample(&text, "socklb_network_programming_duration_seconds_count"), 1.0);
    let sum = sample(&text, "socklb_network_programming_duration_seconds_sum");
    assert!((1.5..10.0).contains(&sum), "{sum}");
    // The slices listed at start carried no trigger time after the start:
    // nothing else was measured, and a second sync measures nothing again.
    r.sync();
    assert_eq!(sample(&metrics.encode(), "socklb_network_programming_duration_seconds_count"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_fails_when_changes_wait_past_the_health_timeout() {
    use socklb::agent::{LoopConfig, drive};
    use socklb_lb::datapath::faulty::{FaultyDatapath, RandomFaults};
    let metrics = Arc::new(Metrics::new());
    metrics.health.set_timeout(std::time::Duration::from_millis(300));
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster.yaml"))
        .expect("example");
    let (o, _) = parse_objects(&text).expect("parses");
    // Every write fails: nothing is ever applied.
    let dp = FaultyDatapath::new(SharedFake::default(), RandomFaults::new(7, 1000));
    let node = NodeContext { node_name: "node-a".into(), ..Default::default() };
    let limits = Limits { max_services: 1000, max_backends: 1000 };
    let mut r = Reconciler::new(Box::new(dp), node, &limits, metrics.clone()).expect("reconciler");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let mut cfg = LoopConfig {
        expected: std::collections::HashMap::from([("file", 1)]),
        resync: std::time::Duration::from_secs(3600),
        on_doomed: None,
        before_ready: None,
        sets_queries: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let m = metrics.clone();
    let task = tokio::spawn(async move {
        drive(&mut r, &mut rx, &mut cfg, &m, async {
            let _ = stop_rx.await;
        })
        .await;
    });
    assert!(metrics.health.verdict(std::time::Instant::now()).is_ok(), "healthy while waiting for sources");
    tx.send(SourceEvent::replace(0, &o.services, &o.slices)).await.expect("send");
    tx.send(SourceEvent::Synced("file")).await.expect("send");
    let start = std::time::Instant::now();
    let why = loop {
        if let Err(why) = metrics.health.verdict(std::time::Instant::now()) {
            break why;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "never unhealthy");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(why.contains("without a successful sync"), "{why}");
    stop_tx.send(()).expect("stop");
    task.await.expect("loop");
}
