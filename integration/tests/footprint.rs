//! The maps cost what is programmed: a small cluster's maps stay small on
//! any number of CPUs, and a cluster that outgrows its maps gets bigger ones
//! (a new generation, filled, then switched to) without failing a connect.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::MapData;
use socklb_bpf::{loader, maps::map_memlock};
use socklb_integration::{Sandbox, require_root, sa};

/// `n` Services of `e` endpoints each (all on one server address, so the
/// sandbox needs one listener), ClusterIPs 10.96.x.y.
fn cluster(n: usize, e: usize) -> String {
    let mut out = String::from("apiVersion: v1\nkind: List\nitems:\n");
    let eps: Vec<String> = (0..e).map(|_| "{addresses: [10.244.0.1]}".to_string()).collect();
    for i in 0..n {
        let (hi, lo) = (1 + i / 250, 1 + i % 250);
        out.push_str(&format!(
            "- apiVersion: v1\n  kind: Service\n  metadata: {{name: s{i}, namespace: grow}}\n  spec: {{clusterIP: 10.96.{hi}.{lo}, ports: [{{port: 80, targetPort: 8080}}]}}\n\
             - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: s{i}-1, namespace: grow, labels: {{kubernetes.io/service-name: s{i}}}}}\n  addressType: IPv4\n  endpoints: [{}]\n  ports: [{{name: '', port: 8080}}]\n",
            eps.join(", ")
        ));
    }
    out
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

fn metric(agent: &socklb_integration::agent::AgentProc, series: &str) -> f64 {
    let text = agent.get("/metrics").map(|r| r.1).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The kernel memory of every map of the live generation, and what it would
/// be on a 128-CPU node: per-CPU arrays scale with the CPU count, and each
/// hash map keeps a few per-CPU counters and cached elements.
fn map_memory(bpffs: &Path) -> (u64, u64, Vec<(String, u64)>) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let possible = fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|t| t.trim().rsplit(['-', ',']).next().and_then(|l| l.parse::<u64>().ok()))
        .map_or(cpus, |last| last + 1);
    let (mut here, mut at_128) = (0u64, 0u64);
    let mut rows = Vec::new();
    for spec in loader::MAP_SPECS.iter() {
        let pin = loader::map_pin(bpffs, spec.name);
        let data = MapData::from_pin(&pin).expect("a pinned map");
        let info = data.info().expect("map info");
        let bytes = map_memlock(&data).expect("memlock");
        here += bytes;
        let per_cpu = match spec.map_type {
            aya::maps::MapType::PerCpuArray | aya::maps::MapType::PerCpuHash => {
                u64::from(info.max_entries()) * u64::from(info.value_size()).next_multiple_of(8)
            }
            // Lock counters (8 ints) and up to 4 cached elements per CPU.
            aya::maps::MapType::Hash => 32 + 4 * (64 + u64::from(info.key_size() + info.value_size())),
            // Socket storage: one bucket per CPU (rounded up to a power of two).
            aya::maps::MapType::SkStorage => 16,
            _ => 0,
        };
        at_128 += bytes + per_cpu * 128u64.saturating_sub(possible);
        rows.push((spec.name.to_string(), bytes));
    }
    (here, at_128, rows)
}

#[test]
fn a_small_cluster_costs_kilobytes_of_maps_not_what_a_big_one_would() {
    require_root!();
    let sb = Sandbox::new("mem-small").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32"]).expect("addresses");
    sb.serve(&[sa("10.244.0.1:8080")], &[], &[]).expect("server");
    let file = sb.workdir().join("cluster.yaml");
    write(&file, &cluster(10, 3));
    let mut agent = sb.start_agent(&["--from-file", file.to_str().expect("utf8")]);
    agent.wait_ready(Duration::from_secs(30));
    assert!(sb.connect(sa("10.96.1.1:80"), 5).iter().all(|a| a.ok));

    let (here, at_128, rows) = map_memory(&sb.bpffs);
    eprintln!("map memory: {here} bytes here, {at_128} bytes on 128 CPUs: {rows:?}");
    const LIMIT: u64 = 16 << 20;
    assert!(here <= LIMIT, "{here} bytes of maps for 10 services: {rows:?}");
    assert!(at_128 <= LIMIT, "{at_128} bytes of maps for 10 services on 128 CPUs: {rows:?}");
    // Nothing the agent writes is sized for a capacity: those maps hold
    // kilobytes (the tables the programs fill are sized by flags).
    let ours: u64 = rows
        .iter()
        .filter(|(n, _)| {
            [
                socklb_common::map_names::FRONTENDS,
                socklb_common::map_names::SETS,
                socklb_common::map_names::BACKENDS,
                socklb_common::map_names::COUNTERS,
                socklb_common::map_names::MEMBERS,
                socklb_common::map_names::NODE_ADDRS,
                socklb_common::map_names::NODEPORTS,
                socklb_common::map_names::NODE_LOCAL,
            ]
            .contains(&n.as_str())
        })
        .map(|(_, b)| b)
        .sum();
    assert!(ours <= 1 << 20, "{ours} bytes in the agent's own maps for 10 services: {rows:?}");
}

#[test]
fn maps_grow_online_under_load_without_a_failed_connect() {
    require_root!();
    let sb = Sandbox::new("grow").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32"]).expect("addresses");
    sb.serve(&[sa("10.244.0.1:8080")], &[], &[]).expect("server");
    let file = sb.workdir().join("cluster.yaml");
    write(&file, &cluster(20, 2));
    let mut agent = sb.start_agent(&["--from-file", file.to_str().expect("utf8")]);
    agent.wait_ready(Duration::from_secs(30));
    let generation = loader::pins::active_generation(&sb.bpffs).expect("a generation").name();
    assert_eq!(metric(&agent, "socklb_map_growths_total"), 0.0);

    // Clients keep connecting to a Service that exists throughout, while the
    // cluster grows past every map's first size (256 sets, 2048 slots, 512
    // frontends).
    let load = sb.start_load(sb.client_cmd("connect", sa("10.96.1.1:80")));
    let loaded = Instant::now();
    while loaded.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(20));
    }
    write(&file, &cluster(1200, 3));
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&agent, "socklb_services") < 1200.0 {
        assert!(Instant::now() < deadline, "the grown cluster was not programmed in 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = Instant::now();
    while after.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let attempts = sb.finish(load);
    let failed: Vec<_> = attempts.iter().filter(|a| !a.ok).collect();
    assert!(attempts.len() > 20, "too few connects to say anything: {}", attempts.len());
    assert!(
        failed.is_empty(),
        "{} of {} connects failed while the maps grew: {:?}",
        failed.len(),
        attempts.len(),
        &failed[..failed.len().min(5)]
    );

    assert!(metric(&agent, "socklb_map_growths_total") >= 1.0, "the maps did not grow");
    let grown = loader::pins::active_generation(&sb.bpffs).expect("a generation").name();
    assert_ne!(grown, generation, "growth is a new generation");
    assert!(metric(&agent, "socklb_map_capacity{map=\"SOCKLB_SETS\"}") >= 1200.0);
    // Every Service, old and new, answers.
    for vip in ["10.96.1.1:80", "10.96.2.1:80", "10.96.5.200:80"] {
        let a = sb.connect(sa(vip), 3);
        assert!(a.iter().all(|a| a.ok), "{vip}: {a:?}");
    }
    // One generation is left: the old one was removed after the switch.
    let dirs = fs::read_dir(&sb.bpffs)
        .expect("bpffs")
        .flatten()
        .filter(|e| loader::pins::parse_dir_name(&e.file_name().to_string_lossy()).is_some())
        .count();
    assert_eq!(dirs, 1);
    assert!(agent.is_running());
}
