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
use socklb::datapath::{Datapath, MapState, aya_maps::AyaMaps};
use socklb_integration::{
    Sandbox, UPGRADE_OBJECT,
    apiserver::{FakeApiServer, objects},
    probe::now_ns,
    require_root, sa,
};

/// Seconds of load in the restart test (the issue asks for 20).
const LOAD_SECS: u64 = 20;

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

    // One client per VIP, each connecting as fast as it can.
    let clients: Vec<_> = (1..=3)
        .map(|s| {
            let mut cmd = sb.client_cmd("connect", sa(&format!("10.96.0.{s}:80")));
            cmd.args(["--duration-ms", &(LOAD_SECS * 1000).to_string()]);
            sb.spawn_client(cmd)
        })
        .collect();
    let started = Instant::now();
    for round in 0..6 {
        thread::sleep(Duration::from_millis(2000));
        agent.kill();
        thread::sleep(Duration::from_millis(300));
        // The sixth start is a new build of the programs.
        let upgrade = round == 5;
        let envs: &[(&str, &str)] = if upgrade { &[("SOCKLB_BPF_OBJECT", UPGRADE_OBJECT)] } else { &[] };
        agent = sb.start_agent_env(&args, envs);
        agent.wait_ready(Duration::from_secs(20));
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
    assert!(started.elapsed() < Duration::from_secs(LOAD_SECS), "the restarts did not all happen under load");
    let mut total = 0;
    for c in clients {
        let attempts = sb.collect(c);
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
    let rate = total as f64 / LOAD_SECS as f64;
    assert!(rate >= 500.0, "{rate:.0} connects/s: not the load the test asks for");
}

/// How long after the API server has a change a connect may still reach a
/// backend the change removed: the event-to-datapath latency, with room for
/// a loaded 2-core machine running a debug build. Measured figures are in
/// docs/reliability.md; this bound only catches a stuck or wrong agent.
const STALE_BOUND: Duration = Duration::from_secs(1);

/// The sets that were in force at some time in `[t - STALE_BOUND, t]`, where
/// `k` is the one in force at `t`.
fn recent_sets(h: &History, k: usize, t: u64) -> impl Iterator<Item = &BTreeSet<String>> {
    let since = t.saturating_sub(STALE_BOUND.as_nanos() as u64);
    // Set j was in force until h[j + 1].0.
    (0..=k).filter(move |&j| j == k || h[j + 1].0 >= since).map(move |j| &h[j].1)
}

/// One service's history: (time the API server took the change, backend set).
type History = Vec<(u64, BTreeSet<String>)>;

#[test]
fn ten_thousand_changes_under_load_never_reach_a_wrong_backend() {
    require_root!();
    const SERVICES: usize = 40;
    const CHANGES: usize = 10_000;
    // A service changes every SERVICES changes; at 400 changes/s that is
    // every 100 ms per service, far above the agent's event latency.
    const RATE_PER_SEC: u64 = 400;
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

    let duration_ms = CHANGES as u64 * 1000 / RATE_PER_SEC + 2000;
    let client = {
        let vips: Vec<SocketAddr> = (0..SERVICES).map(|s| sa(&format!("10.96.1.{}:80", s + 1))).collect();
        let mut cmd = sb.client_cmd("connect", vips[0]);
        for v in &vips[1..] {
            cmd.arg("--to").arg(v.to_string());
        }
        cmd.args(["--duration-ms", &duration_ms.to_string()]);
        sb.spawn_client(cmd)
    };
    thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    for k in 0..CHANGES {
        let s = k % SERVICES;
        let set = random_set(&mut rng, s);
        let refs: Vec<&str> = set.iter().map(String::as_str).collect();
        // Recorded just before the API server has it: a connect that starts
        // after this may see the new set, or still the previous one.
        history[s].push((now_ns(), set.iter().map(|a| format!("{a}:8080")).collect()));
        api.apply(objects::slice("churn", &format!("s{s}-1"), &format!("s{s}"), &refs, 8080));
        let due = Duration::from_micros(k as u64 * 1_000_000 / RATE_PER_SEC);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    let attempts = sb.collect(client);
    assert!(agent.is_running(), "{}", agent.log_text());

    let vip_to_service: BTreeMap<String, usize> =
        (0..SERVICES).map(|s| (format!("10.96.1.{}:80", s + 1), s)).collect();
    let never: BTreeSet<String> = never.iter().map(|a| format!("{a}:8080")).collect();
    let (mut checked, mut failed_stable) = (0, 0);
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
            _ => failed_stable += 1,
        }
    }
    assert_eq!(failed_stable, 0, "connects to services that always had a backend failed");
    assert!(checked > 5000, "only {checked} connects checked");
    staleness_ns.sort_unstable();
    let stale: Vec<u64> = staleness_ns.iter().copied().filter(|s| *s > 0).collect();
    let ms = |q: f64| {
        stale
            .get(((stale.len() as f64 * q) as usize).min(stale.len().saturating_sub(1)))
            .map_or(0.0, |v| *v as f64 / 1e6)
    };
    eprintln!(
        "{checked} connects checked; {} reached a backend just removed: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         after the API server had the change",
        stale.len(),
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    assert!(!agent.log_text().contains("panicked"));
}
