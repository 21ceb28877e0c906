//! The TCP datapath against the real kernel: connect4/6 translation,
//! getpeername, selection spread, the transactional switch, pins that outlive
//! the loader, and uninstall.

use std::{collections::BTreeSet, net::SocketAddr, thread, time::Duration};

use socklb_integration::{
    Programmer, Sandbox, Svc, attached_programs,
    probe::{by_backend, now_ns},
    require_root, sa,
};

const ENETUNREACH: i32 = 101;

/// A sandbox with three IPv4 and three IPv6 backends listening on :8080,
/// the datapath installed, and a programmer for its maps.
fn setup(tag: &str) -> (Sandbox, Programmer) {
    let sb = Sandbox::new(tag).expect("sandbox");
    sb.add_addrs(&[
        "10.244.0.1/32",
        "10.244.0.2/32",
        "10.244.0.3/32",
        "10.244.0.4/32",
        "10.244.0.5/32",
        "10.244.0.6/32",
        "fd00:244::1/128",
        "fd00:244::2/128",
        "fd00:244::3/128",
    ])
    .expect("addresses");
    let tcp: Vec<SocketAddr> = [
        "10.244.0.1:8080",
        "10.244.0.2:8080",
        "10.244.0.3:8080",
        "10.244.0.4:8080",
        "10.244.0.5:8080",
        "10.244.0.6:8080",
        "[fd00:244::1]:8080",
        "[fd00:244::2]:8080",
        "[fd00:244::3]:8080",
    ]
    .iter()
    .map(|s| sa(s))
    .collect();
    sb.serve(&tcp, &[], &[]).expect("servers");
    sb.install().expect("install");
    let p = Programmer::open(&sb.bpffs).expect("maps");
    (sb, p)
}

const V4_BACKENDS: [&str; 3] = ["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080"];
const V6_BACKENDS: [&str; 3] = ["[fd00:244::1]:8080", "[fd00:244::2]:8080", "[fd00:244::3]:8080"];

fn assert_translated(attempts: &[socklb_integration::probe::Attempt], vip: &str, backends: &[&str]) {
    assert!(!attempts.is_empty());
    for a in attempts {
        assert!(a.ok, "connect to {vip} failed: {a:?}");
        let backend = a.backend.as_deref().expect("backend");
        assert!(backends.contains(&backend), "{backend} is not a backend of {vip}");
        assert_eq!(a.peer.as_deref(), Some(vip), "getpeername must return the VIP");
        let local: SocketAddr = a.local.as_deref().expect("local").parse().expect("local addr");
        let vip_ip = sa(vip).ip();
        assert_ne!(local.ip(), vip_ip, "getsockname must not be the VIP");
    }
}

#[test]
fn tcp_connect_to_a_vip_reaches_a_backend_in_ipv4_ipv6_and_v4_mapped() {
    require_root!();
    let (sb, mut p) = setup("tcp-fam");
    p.set(&[Svc::tcp(1, "10.96.0.10:80", &V4_BACKENDS), Svc::tcp(2, "[fd00:96::10]:80", &V6_BACKENDS)])
        .expect("program");

    assert_translated(&sb.connect(sa("10.96.0.10:80"), 10), "10.96.0.10:80", &V4_BACKENDS);
    assert_translated(&sb.connect(sa("[fd00:96::10]:80"), 10), "[fd00:96::10]:80", &V6_BACKENDS);

    // An IPv6 socket to ::ffff:10.96.0.10 goes through the IPv4 table; the
    // server sees a plain IPv4 peer and the client gets the mapped VIP back.
    let mapped = sb.connect(sa("[::ffff:10.96.0.10]:80"), 10);
    assert_translated(&mapped, "[::ffff:10.96.0.10]:80", &V4_BACKENDS);
    for a in &mapped {
        assert!(a.local.as_deref().expect("local").starts_with("[::ffff:10."), "{a:?}");
    }
}

#[test]
fn connects_are_spread_over_the_backends() {
    require_root!();
    let (sb, mut p) = setup("tcp-spread");
    p.set(&[Svc::tcp(1, "10.96.0.10:80", &V4_BACKENDS)]).expect("program");
    let attempts = sb.connect(sa("10.96.0.10:80"), 300);
    assert_eq!(attempts.len(), 300);
    assert!(attempts.iter().all(|a| a.ok), "every connect succeeds");
    let counts = by_backend(&attempts);
    assert_eq!(counts.len(), 3, "all three backends answer: {counts:?}");
    for (backend, n) in &counts {
        let share = *n as f64 / 300.0;
        assert!((0.15..=0.55).contains(&share), "{backend} got {share:.2} of connects: {counts:?}");
    }
}

#[test]
fn other_destinations_are_untouched_and_unknown_vips_stay_unreachable() {
    require_root!();
    let (sb, mut p) = setup("tcp-untouched");
    p.set(&[Svc::tcp(1, "10.96.0.10:80", &V4_BACKENDS)]).expect("program");

    // A backend address itself is not a frontend: it connects as usual and
    // getpeername shows the real peer.
    let direct = sb.connect(sa("10.244.0.2:8080"), 3);
    for a in &direct {
        assert!(a.ok, "{a:?}");
        assert_eq!(a.backend.as_deref(), Some("10.244.0.2:8080"));
        assert_eq!(a.peer.as_deref(), Some("10.244.0.2:8080"));
    }
    // Another port on the VIP, and another VIP, are not services: without a
    // route in the test namespace the kernel refuses them.
    for to in ["10.96.0.10:81", "10.96.0.11:80", "[fd00:96::99]:80"] {
        let a = &sb.connect(sa(to), 1)[0];
        assert!(!a.ok);
        assert_eq!(a.errno, Some(ENETUNREACH), "{to}: {a:?}");
    }
}

#[test]
fn replacing_the_backend_set_under_load_never_fails_and_never_returns_a_removed_backend() {
    require_root!();
    let (sb, mut p) = setup("tcp-switch");
    let set_a = V4_BACKENDS;
    let set_b = ["10.244.0.4:8080", "10.244.0.5:8080", "10.244.0.6:8080"];
    p.set(&[Svc::tcp(1, "10.96.0.10:80", &set_a)]).expect("program");

    let client = sb.start_load(sb.client_cmd("connect", sa("10.96.0.10:80")));
    thread::sleep(Duration::from_millis(300));

    // (time the switch was complete, time the next switch began, set)
    let mut epochs: Vec<(u64, u64, BTreeSet<&str>)> = Vec::new();
    let mut current = &set_b;
    for _ in 0..10 {
        p.set(&[Svc::tcp(1, "10.96.0.10:80", current)]).expect("switch");
        let done = now_ns();
        thread::sleep(Duration::from_millis(250));
        epochs.push((done, now_ns(), current.iter().copied().collect()));
        current = if current == &set_a { &set_b } else { &set_a };
    }
    let attempts = sb.finish(client);

    let failed: Vec<_> = attempts.iter().filter(|a| !a.ok).collect();
    assert!(
        failed.is_empty(),
        "{} of {} connects failed: {:?}",
        failed.len(),
        attempts.len(),
        &failed[..failed.len().min(3)]
    );
    let mut checked = 0;
    for (done, next, set) in &epochs {
        for a in attempts.iter().filter(|a| a.t_start_ns > *done && a.t_end_ns < *next) {
            let backend = a.backend.as_deref().expect("backend");
            assert!(set.contains(backend), "connect after the switch reached removed backend {backend}");
            checked += 1;
        }
    }
    assert!(
        checked > 200,
        "too few connects fell inside switch epochs ({checked}); {} attempts from {:?} to {:?}; epochs {:?}",
        attempts.len(),
        attempts.first().map(|a| a.t_start_ns),
        attempts.last().map(|a| a.t_end_ns),
        epochs.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>()
    );
}

#[test]
fn the_datapath_outlives_its_loader_and_a_new_loader_adopts_the_pins() {
    require_root!();
    let sb = Sandbox::new("tcp-adopt").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32"]).expect("addresses");
    sb.serve(&[sa("10.244.0.1:8080")], &[], &[]).expect("servers");

    // A separate process loads, pins, attaches and exits.
    let status = std::process::Command::new(socklb_integration::sandbox::bin_path("socklb-probe"))
        .arg("install")
        .arg("--cgroup")
        .arg(&sb.cgroup)
        .arg("--bpffs")
        .arg(&sb.bpffs)
        .status()
        .expect("run installer");
    assert!(status.success());
    assert_eq!(attached_programs(&sb.cgroup), socklb_bpf::loader::HOOKS.len(), "one program per hook");

    {
        let mut p = Programmer::open(&sb.bpffs).expect("maps");
        p.set(&[Svc::tcp(1, "10.96.0.10:80", &["10.244.0.1:8080"])]).expect("program");
    } // every descriptor of this process to the maps is closed here

    assert!(sb.connect(sa("10.96.0.10:80"), 5).iter().all(|a| a.ok), "works with no loader alive");

    // A second load adopts: no second attachment, nothing lost.
    let report = sb.install().expect("second install");
    assert!(
        report.links.iter().all(|(_, action)| *action == socklb_bpf::loader::LinkAction::Adopted),
        "{report:?}"
    );
    assert!(report.maps_created.is_empty(), "{report:?}");
    assert_eq!(attached_programs(&sb.cgroup), socklb_bpf::loader::HOOKS.len(), "still one program per hook");
    let p = Programmer::open(&sb.bpffs).expect("maps");
    assert_eq!(p.state().frontends.len(), 1, "map contents survive");
    assert!(sb.connect(sa("10.96.0.10:80"), 5).iter().all(|a| a.ok));
}

#[test]
fn uninstall_detaches_and_removes_the_pins() {
    require_root!();
    let (sb, mut p) = setup("tcp-uninstall");
    p.set(&[Svc::tcp(1, "10.96.0.10:80", &V4_BACKENDS)]).expect("program");
    assert!(sb.connect(sa("10.96.0.10:80"), 3).iter().all(|a| a.ok));
    drop(p);

    let report = socklb_bpf::loader::uninstall(&sb.cgroup, &sb.bpffs).expect("uninstall");
    assert_eq!(report.links_detached.len(), socklb_bpf::loader::HOOKS.len());
    assert!(!sb.bpffs.exists(), "pin directory removed");
    assert_eq!(attached_programs(&sb.cgroup), 0);
    let a = &sb.connect(sa("10.96.0.10:80"), 1)[0];
    assert_eq!(a.errno, Some(ENETUNREACH), "the VIP is untranslated again: {a:?}");
    // Running it again is harmless.
    socklb_bpf::loader::uninstall(&sb.cgroup, &sb.bpffs).expect("second uninstall");
}

#[test]
fn a_path_that_is_not_cgroup_v2_is_refused_by_name() {
    require_root!();
    let sb = Sandbox::new("tcp-notcg").expect("sandbox");
    let mut opts = sb.install_options();
    opts.cgroup = std::env::temp_dir();
    let err = socklb_bpf::loader::install(&opts).err().expect("tmp is not a cgroup");
    let text = err.to_string();
    assert!(text.contains("is not a cgroup v2 directory"), "{text}");
    assert!(text.contains(&std::env::temp_dir().display().to_string()), "{text}");
    assert!(!sb.bpffs.exists(), "nothing pinned on failure");
}

#[test]
fn a_full_backends_array_leaves_the_previous_version_serving_on_the_real_maps() {
    require_root!();
    let sb = Sandbox::new("tcp-full").expect("sandbox");
    sb.add_addrs(&[
        "10.244.0.1/32",
        "10.244.0.2/32",
        "10.244.0.3/32",
        "10.244.0.4/32",
        "10.244.0.5/32",
        "10.244.0.6/32",
    ])
    .expect("addresses");
    let servers: Vec<SocketAddr> = (1..=6).map(|i| sa(&format!("10.244.0.{i}:8080"))).collect();
    sb.serve(&servers, &[], &[]).expect("servers");
    // Room for four slots: three live ones leave no room for a new set of three.
    let mut opts = sb.install_options();
    opts.capacities.slots = 4;
    socklb_bpf::loader::install(&opts).expect("install");
    let mut p = Programmer::open(&sb.bpffs).expect("maps");
    let old = ["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080"];
    p.set(&[Svc::tcp(1, "10.96.0.10:80", &old), Svc::tcp(2, "10.96.0.20:80", &[])]).expect("program");

    let err = p
        .set(&[
            Svc::tcp(1, "10.96.0.10:80", &["10.244.0.4:8080", "10.244.0.5:8080", "10.244.0.6:8080"]),
            Svc::tcp(2, "10.96.0.20:80", &["10.244.0.1:8080"]),
        ])
        .expect_err("the slots map is full");
    assert!(err.to_string().contains("free backend slots"), "{err}");
    let counts = by_backend(&sb.connect(sa("10.96.0.10:80"), 60));
    let got: BTreeSet<&str> = counts.keys().map(String::as_str).collect();
    assert!(got.iter().all(|b| old.contains(b)), "service 1 must keep its previous set: {got:?}");
    // Service 2 fitted (one slot): it serves its new set.
    let two = sb.connect(sa("10.96.0.20:80"), 5);
    assert!(two.iter().all(|a| a.ok && a.backend.as_deref() == Some("10.244.0.1:8080")), "{two:?}");
    // The maps hold no half-written generation.
    let state = socklb_lb::datapath::Datapath::read_state(&p.maps).expect("read");
    assert!(state.slots.len() <= 4);
    assert_eq!(state.backends_of(p.set_id(1)).map(|v| v.len()), Some(3));
}
