//! Reliability under load: the agent killed and restarted (and once upgraded
//! to a new build of the programs) while clients connect; thousands of
//! service and endpoint changes from the API server while clients connect.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use socklb_bpf::maps::AyaMaps;
use socklb_integration::{
    Sandbox, UPGRADE_OBJECT,
    apiserver::{FakeApiServer, objects},
    probe::now_ns,
    require_root, sa, soak,
};
use socklb_lb::datapath::{Datapath, MapState};

/// Seconds of load in the restart test (the issue asks for 20; soak.sh
/// asks for more).
fn load_secs() -> u64 {
    soak::soak_duration().map_or(20, |d| d.as_secs().max(20))
}

fn cluster() -> String {
    let mut out = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for s in 1..=3 {
        let eps: Vec<String> = (1..=3).map(|b| format!("{{addresses: [10.244.{s}.{b}]}}")).collect();
        out.push_str(&format!(
            "- apiVersion: v1\n  kind: Service\n  metadata: {{name: s{s}, namespace: load}}\n  spec: {{clusterIP: 10.96.0.{s}, ports: [{{port: 80, targetPort: 8080}}]}}\n\
             - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: s{s}-1, namespace: load, labels: {{kubernetes.io/service-name: s{s}}}}}\n  addressType: IPv4\n  endpoints: [{}]\n  ports: [{{name: '', port: 8080}}]\n",
            eps.join(", ")
        ));
    }
    out
}

fn maps(sb: &Sandbox) -> MapState {
    AyaMaps::open(&sb.bpffs).expect("maps").read_state().expect("read")
}

/// Program id of each attached hook (it changes when a new build replaces
/// the program behind the link).
fn program_ids(sb: &Sandbox) -> BTreeMap<&'static str, Option<u32>> {
    socklb::inspect::status(&sb.cgroup, &sb.bpffs).hooks.iter().map(|h| (h.hook, h.program_id)).collect()
}

#[test]
fn sigkill_restarts_and_an_upgrade_under_load_fail_no_connect_and_keep_the_maps() {
    require_root!();
    let sb = Sandbox::new("rel-restart").expect("sandbox");
    let mut addrs = Vec::new();
    for s in 1..=3 {
        for b in 1..=3 {
            addrs.push(format!("10.244.{s}.{b}"));
        }
    }
    let cidrs: Vec<String> = addrs.iter().map(|a| format!("{a}/32")).collect();
    sb.add_addrs(&cidrs.iter().map(String::as_str).collect::<Vec<_>>()).expect("addresses");
    let servers: Vec<SocketAddr> = addrs.iter().map(|a| sa(&format!("{a}:8080"))).collect();
    sb.serve(&servers, &[], &[]).expect("servers");
    let file = sb.workdir().join("cluster.yaml");
    std::fs::write(&file, cluster()).expect("write");
    let args = ["--from-file", file.to_str().expect("utf8")];
    let mut agent = sb.start_agent(&args);
    agent.wait_ready(Duration::from_secs(20));
    let before = maps(&sb);
    let programs_before = program_ids(&sb);
    let load_secs = load_secs();
    // Six restarts in 20 s; under soak, one every ~3.5 s throughout.
    let restarts = if soak::soak_duration().is_some() { (load_secs * 10 / 35).max(6) as usize } else { 6 };
    let mut rss_kib = vec![agent.rss_kib().unwrap_or(0)];
    let mut ready_ms = Vec::new();

    // One client per VIP, each connecting as fast as it can, until the
    // restarts are done and at least `load_secs` have passed: however slow
    // the machine, every restart happens under load.
    let clients: Vec<_> =
        (1..=3).map(|s| sb.start_load(sb.client_cmd("connect", sa(&format!("10.96.0.{s}:80"))))).collect();
    let started = Instant::now();
    let gap = Duration::from_millis(load_secs * 1000 * 8 / 10 / restarts as u64).min(Duration::from_secs(2));
    // (killed, ready again) of each restart, to check that load overlapped it.
    let mut windows: Vec<(u64, u64)> = Vec::new();
    for round in 0..restarts {
        thread::sleep(gap);
        agent.kill();
        let killed = now_ns();
        thread::sleep(Duration::from_millis(300));
        // The last start is a new build of the programs.
        let upgrade = round == restarts - 1;
        let envs: &[(&str, &str)] = if upgrade { &[("SOCKLB_BPF_OBJECT", UPGRADE_OBJECT)] } else { &[] };
        let t = Instant::now();
        agent = sb.start_agent_env(&args, envs);
        agent.wait_ready(Duration::from_secs(60));
        windows.push((killed, now_ns()));
        ready_ms.push(t.elapsed().as_millis() as u64);
        rss_kib.push(agent.rss_kib().unwrap_or(0));
        assert_eq!(maps(&sb), before, "restart {round}: the maps changed although the desired state did not");
        let log = agent.log_text();
        if upgrade {
            assert!(log.contains("Replaced"), "the new build replaces the programs in place:\n{log}");
            // The new build differs only in the connect programs: those
            // links now run new programs, every other link kept its own.
            let now = program_ids(&sb);
            for (hook, id) in &now {
                assert!(id.is_some(), "{hook} is not attached after the upgrade");
                let changed = *id != programs_before[hook];
                assert_eq!(
                    changed,
                    hook.starts_with("connect"),
                    "{hook}: {:?} -> {id:?}",
                    programs_before[hook]
                );
            }
        } else {
            assert!(log.contains("Adopted") && !log.contains("Attached"), "restart {round} adopts:\n{log}");
            assert_eq!(program_ids(&sb), programs_before, "restart {round} kept the programs");
        }
    }
    if let Some(rest) = Duration::from_secs(load_secs).checked_sub(started.elapsed()) {
        thread::sleep(rest);
    }
    let loaded_for = started.elapsed();
    let mut total = 0;
    let mut during = vec![0usize; windows.len()];
    for c in clients {
        let attempts = sb.finish(c);
        for (i, (from, to)) in windows.iter().enumerate() {
            during[i] += attempts.iter().filter(|a| a.t_start_ns >= *from && a.t_start_ns <= *to).count();
        }
        let failed: Vec<_> = attempts.iter().filter(|a| !a.ok).collect();
        assert!(
            failed.is_empty(),
            "{} of {} connects failed: {:?}",
            failed.len(),
            attempts.len(),
            failed.first()
        );
        total += attempts.len();
    }
    // Every restart, however long it took, happened under load.
    assert!(during.iter().all(|n| *n > 0), "connects while each agent was down: {during:?}");
    let load_secs = loaded_for.as_secs_f64();
    let rate = total as f64 / load_secs;
    soak::report(
        "restarts",
        serde_json::json!({"seconds": load_secs.round(), "connects": total, "failed": 0, "connects_per_sec": rate.round(),
            "restarts": restarts, "connects_while_down": during, "upgrades": 1, "maps_unchanged_after": restarts,
            "restart_to_ready_ms": ready_ms, "agent_rss_kib_after_each_start": rss_kib}),
    );
}

/// How long after the API server has a change a connect may still reach a
/// backend the change removed: the event-to-datapath latency, with ample
/// room for a busy 2-core machine running a debug build. Measured figures
/// are in docs/reliability.md; this bound only catches a stuck or wrong agent.
const STALE_BOUND: Duration = Duration::from_secs(3);

/// The sets that were in force at some time in `[t - STALE_BOUND, t]`, where
/// `k` is the one in force at `t`.
fn recent_sets(h: &History, k: usize, t: u64) -> impl Iterator<Item = &BTreeSet<String>> {
    let since = t.saturating_sub(STALE_BOUND.as_nanos() as u64);
    // Set j was in force until h[j + 1].0.
    (0..=k).filter(move |&j| j == k || h[j + 1].0 >= since).map(move |j| &h[j].1)
}

const ECONNABORTED: i32 = 103;

/// One service's history: (time the API server took the change, backend set).
type History = Vec<(u64, BTreeSet<String>)>;

#[test]
fn ten_thousand_changes_under_load_never_reach_a_wrong_backend() {
    require_root!();
    const SERVICES: usize = 40;
    // A service changes every SERVICES changes; at 400 changes/s that is
    // every 100 ms per service, far above the agent's event latency.
    const RATE_PER_SEC: u64 = 400;
    let changes = soak::soak_duration().map_or(10_000, |d| (d.as_secs() * RATE_PER_SEC) as usize);
    let sb = Sandbox::new("rel-churn").expect("sandbox");
    let pool: Vec<String> = (1..=8).map(|i| format!("10.244.0.{i}")).collect();
    let never: Vec<String> = (9..=10).map(|i| format!("10.244.0.{i}")).collect();
    let cidrs: Vec<String> = pool.iter().chain(&never).map(|a| format!("{a}/32")).collect();
    sb.add_addrs(&cidrs.iter().map(String::as_str).collect::<Vec<_>>()).expect("addresses");
    let servers: Vec<SocketAddr> = pool.iter().chain(&never).map(|a| sa(&format!("{a}:8080"))).collect();
    sb.serve(&servers, &[], &[]).expect("servers");

    let mut rng = StdRng::seed_from_u64(0x50c1b);
    let api = FakeApiServer::start();
    // Services 0..29 always keep a backend; 30..39 may lose all of them.
    let may_be_empty = |s: usize| s >= 30;
    let mut history: Vec<History> = vec![Vec::new(); SERVICES];
    let random_set = |rng: &mut StdRng, s: usize| -> Vec<String> {
        let min = usize::from(!may_be_empty(s));
        let n = rng.random_range(min..=3);
        let mut set: Vec<String> = Vec::new();
        while set.len() < n {
            let a = pool[rng.random_range(0..pool.len())].clone();
            if !set.contains(&a) {
                set.push(a);
            }
        }
        set
    };
    for (s, h) in history.iter_mut().enumerate() {
        api.apply(objects::service("churn", &format!("s{s}"), &format!("10.96.1.{}", s + 1), 80));
        let set = random_set(&mut rng, s);
        let refs: Vec<&str> = set.iter().map(String::as_str).collect();
        api.apply(objects::slice("churn", &format!("s{s}-1"), &format!("s{s}"), &refs, 8080));
        h.push((0, set.into_iter().map(|a| format!("{a}:8080")).collect()));
    }
    let kubeconfig = sb.workdir().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("kubeconfig");
    let mut agent = sb.start_agent(&["--kubeconfig", kubeconfig.to_str().expect("utf8")]);
    agent.wait_ready(Duration::from_secs(30));

    // The load runs until every change is made, however long that takes.
    let client = {
        let vips: Vec<SocketAddr> = (0..SERVICES).map(|s| sa(&format!("10.96.1.{}:80", s + 1))).collect();
        let mut cmd = sb.client_cmd("connect", vips[0]);
        for v in &vips[1..] {
            cmd.arg("--to").arg(v.to_string());
        }
        sb.start_load(cmd)
    };
    thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let mut rss_kib = Vec::new();
    let (mut endpoint_changes, mut service_changes) = (0, 0);
    for k in 0..changes {
        let s = k % SERVICES;
        if k.is_multiple_of(RATE_PER_SEC as usize) {
            rss_kib.push(agent.rss_kib().unwrap_or(0));
        }
        // Every tenth change is to the Service itself: client-IP affinity
        // and a second port come and go, which rewrites the service entry
        // of port 80 without changing its backends.
        if (k / SERVICES) % 10 == 9 {
            let mut svc = objects::service("churn", &format!("s{s}"), &format!("10.96.1.{}", s + 1), 80);
            if (k / SERVICES / 10).is_multiple_of(2) {
                svc["spec"]["sessionAffinity"] = serde_json::json!("ClientIP");
                if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
                    ports.push(
                        serde_json::json!({"name": "alt", "port": 81, "protocol": "TCP", "targetPort": 8080}),
                    );
                }
            }
            api.apply(svc);
            service_changes += 1;
        } else {
            let set = random_set(&mut rng, s);
            let refs: Vec<&str> = set.iter().map(String::as_str).collect();
            // Recorded just before the API server has it: a connect that
            // starts after this may see the new set, or still the previous
            // one for as long as the agent takes to apply it.
            history[s].push((now_ns(), set.iter().map(|a| format!("{a}:8080")).collect()));
            api.apply(objects::slice("churn", &format!("s{s}-1"), &format!("s{s}"), &refs, 8080));
            endpoint_changes += 1;
        }
        let due = Duration::from_micros(k as u64 * 1_000_000 / RATE_PER_SEC);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    // A moment for the last change to reach the datapath under load.
    thread::sleep(Duration::from_secs(1));
    let attempts = sb.finish(client);
    assert!(agent.is_running(), "{}", agent.log_text());

    let vip_to_service: BTreeMap<String, usize> =
        (0..SERVICES).map(|s| (format!("10.96.1.{}:80", s + 1), s)).collect();
    let never: BTreeSet<String> = never.iter().map(|a| format!("{a}:8080")).collect();
    let (mut checked, mut aborted_by_sweep) = (0, 0);
    let mut failed_stable: Vec<&socklb_integration::probe::Attempt> = Vec::new();
    let mut staleness_ns: Vec<u64> = Vec::new();
    for a in &attempts {
        let s = vip_to_service[a.to.as_deref().expect("target")];
        let h = &history[s];
        // The set in force when the connect started.
        let k = h.iter().rposition(|(t, _)| *t <= a.t_start_ns).unwrap_or(0);
        match &a.backend {
            Some(b) if a.ok => {
                assert!(!never.contains(b), "a connect reached {b}, which was never a backend");
                // How long ago the backend stopped being one (0 if it is one).
                let stale = match h[..=k].iter().rposition(|(_, set)| set.contains(b)) {
                    Some(j) if j == k => 0,
                    Some(j) => a.t_start_ns.saturating_sub(h[j + 1].0),
                    None => panic!("service s{s}: a connect reached {b}, which never was its backend"),
                };
                assert!(
                    stale <= STALE_BOUND.as_nanos() as u64,
                    "service s{s}: {b} was removed {} ms before a connect reached it",
                    stale / 1_000_000
                );
                staleness_ns.push(stale);
                checked += 1;
            }
            // A service that may lose every backend may refuse while an
            // empty set is (or was just) in force.
            _ if may_be_empty(s) && recent_sets(h, k, a.t_start_ns).any(BTreeSet::is_empty) => {}
            // --destroy-stale-sockets (on by default) aborts the sockets of
            // a backend the moment it leaves its service, also one caught
            // between connect() and the reply: by design, and only
            // SOCK_DESTROY makes a local socket fail with ECONNABORTED.
            _ if a.errno == Some(ECONNABORTED) => aborted_by_sweep += 1,
            _ => failed_stable.push(a),
        }
    }
    assert!(
        failed_stable.is_empty(),
        "{} connects to services that always had a backend failed, e.g. {:?}",
        failed_stable.len(),
        failed_stable.first()
    );
    // A sweep only catches connects in flight to a backend being removed.
    assert!(
        aborted_by_sweep * 1000 <= attempts.len(),
        "{aborted_by_sweep} of {} connects aborted by stale-socket sweeps",
        attempts.len()
    );
    assert!(checked > 2000, "only {checked} connects checked");
    staleness_ns.sort_unstable();
    let stale: Vec<u64> = staleness_ns.iter().copied().filter(|s| *s > 0).collect();
    let ms = |q: f64| {
        stale
            .get(((stale.len() as f64 * q) as usize).min(stale.len().saturating_sub(1)))
            .map_or(0.0, |v| *v as f64 / 1e6)
    };
    // Churn must not grow the agent: its memory is bounded by the objects
    // it holds, not by how often they change (a queue of stale-socket
    // sweeps once grew it by ~1 KiB a change).
    let (first, last) = (rss_kib.get(1).copied().unwrap_or(0), rss_kib.last().copied().unwrap_or(0));
    assert!(
        last <= first + 8 * 1024,
        "agent RSS grew from {first} KiB to {last} KiB under churn: {rss_kib:?}"
    );
    soak::report(
        "churn",
        serde_json::json!({"changes": changes, "endpoint_changes": endpoint_changes, "service_changes": service_changes,
            "connects": attempts.len(), "connects_checked": checked, "failed_for_services_with_backends": failed_stable.len(),
            "aborted_in_flight_to_a_removed_backend": aborted_by_sweep,
            "to_never_backend": 0, "reached_just_removed": stale.len(),
            "removal_to_datapath_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": ms(1.0)},
            "agent_rss_kib_each_second": rss_kib}),
    );
    assert!(!agent.log_text().contains("panicked"));
}
