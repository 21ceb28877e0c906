//! socklb's benchmark harness: the physical floor, socklb, and kube-proxy's
//! iptables and nftables layouts, side by side in one run on one machine.
//! `scripts/bench.sh` runs it; see docs/benchmarks.md for the results.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use socklb_integration::bench::{
    env::{Env, Peer, map_memory, peak_rss},
    footprint::{self, Source},
    kubeproxy,
    report::{self, ControlPlane, DatapathRow, Results},
    stats::{Run, summarize},
    workload::{self, Workload},
};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo servers on 0.0.0.0: TCP 8080 answers one byte and resets (no
    /// TIME_WAIT), UDP 5353 echoes.
    Server {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        cpu: usize,
    },
    /// Connect + 1-byte request/reply + close, `count` times (or UDP round
    /// trips on one socket); prints the latencies as JSON.
    Client {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        cpu: usize,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        udp: bool,
    },
    /// Connects to `to` until it answers; prints when (CLOCK_MONOTONIC ns).
    Poll {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Runs the benchmark and writes the report.
    Run {
        /// A short run (under 5 minutes on 2 cores).
        #[arg(long)]
        quick: bool,
        /// The socklb binary (a release build).
        #[arg(long)]
        socklb: PathBuf,
        /// Where the Markdown report goes.
        #[arg(long)]
        out: PathBuf,
        /// Where the plots go (SVG).
        #[arg(long)]
        plots: PathBuf,
        /// Longest a rule load may take before that size is skipped.
        #[arg(long, default_value_t = 180)]
        load_bound_secs: u64,
        /// Override the service counts (comma-separated).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        /// Override the endpoints per service (comma-separated).
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<usize>,
        /// Skip the kube-proxy peers (a socklb-only run, for development).
        #[arg(long)]
        socklb_only: bool,
        /// Skip the agent footprint runs (100k x 10 and 1M x 1 from a file
        /// and from the API server).
        #[arg(long)]
        no_footprint: bool,
        /// Names this run's namespaces and cgroups (for `cleanup`).
        #[arg(long, default_value_t = std::process::id().to_string())]
        run_id: String,
    },
    /// The agent's footprint at one size (first sync, memory, scrape, event
    /// latency alone and during a resync); prints JSON.
    Footprint {
        #[arg(long)]
        socklb: PathBuf,
        #[arg(long)]
        services: usize,
        #[arg(long)]
        endpoints: usize,
        #[arg(long, value_enum, default_value = "file")]
        source: Source,
        #[arg(long, default_value_t = 30)]
        trials: usize,
        #[arg(long, default_value_t = 0)]
        resync_trials: usize,
        #[arg(long, default_value_t = std::process::id().to_string())]
        run_id: String,
    },
    /// Removes what a killed run left behind.
    Cleanup {
        #[arg(long)]
        run_id: String,
    },
}

fn join(netns: &str, cgroup: Option<&PathBuf>, cpu: Option<usize>) -> Result<()> {
    if let Some(cg) = cgroup {
        fs::write(cg.join("cgroup.procs"), std::process::id().to_string())?;
    }
    let ns = fs::File::open(format!("/run/netns/{netns}"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    if let Some(cpu) = cpu {
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu).is_ok() {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        }
    }
    Ok(())
}

fn server(netns: &str, cpu: usize) -> Result<()> {
    join(netns, None, Some(cpu))?;
    // Bound to the endpoint address, so replies come from it (a socket on
    // 0.0.0.0 would answer from the veth address).
    let udp = UdpSocket::bind(SocketAddr::from((workload::UDP_ENDPOINT, workload::UDP_TARGET)))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        loop {
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        }
    });
    let listener = TcpListener::bind("0.0.0.0:8080")?;
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        let mut b = [0u8; 1];
        if c.read_exact(&mut b).is_ok() {
            let _ = c.write_all(&b);
        }
        // Reset instead of FIN: no TIME_WAIT, no port reuse stalls.
        let _ = nix::sys::socket::setsockopt(
            &c,
            nix::sys::socket::sockopt::Linger,
            &libc::linger { l_onoff: 1, l_linger: 0 },
        );
    }
    Ok(())
}

fn tcp_once(to: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(to)?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(())
}

fn client(to: SocketAddr, count: u64, udp: bool) -> Result<Run> {
    let mut run = Run { lat_ns: Vec::with_capacity(count as usize), ..Default::default() };
    let sock = if udp {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        Some(s)
    } else {
        None
    };
    for _ in 0..count {
        let t = Instant::now();
        let result = match &sock {
            Some(s) => s.send_to(b"x", to).and_then(|_| {
                let mut b = [0u8; 8];
                s.recv_from(&mut b).map(drop)
            }),
            None => tcp_once(to),
        };
        match result {
            Ok(()) => run.lat_ns.push(t.elapsed().as_nanos() as u64),
            Err(e) => {
                run.failures += 1;
                run.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    Ok(run)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Server { netns, cpu } => server(&netns, cpu),
        Cmd::Client { netns, cgroup, cpu, to, count, udp } => {
            join(&netns, cgroup.as_ref(), Some(cpu))?;
            let run = client(to, count, udp)?;
            println!("{}", serde_json::to_string(&run)?);
            Ok(())
        }
        Cmd::Poll { netns, cgroup, to, timeout_ms } => {
            join(&netns, cgroup.as_ref(), Some(0))?;
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            println!("ready");
            std::io::stdout().flush()?;
            while Instant::now() < deadline {
                if tcp_once(to).is_ok() {
                    println!("{}", socklb_integration::probe::now_ns());
                    return Ok(());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            bail!("{to} never answered")
        }
        Cmd::Footprint { socklb, services, endpoints, source, trials, resync_trials, run_id } => {
            let f = footprint::measure(&run_id, &socklb, services, endpoints, source, trials, resync_trials)?;
            println!("{}", serde_json::to_string_pretty(&f)?);
            Ok(())
        }
        Cmd::Cleanup { run_id } => {
            socklb_integration::bench::env::cleanup(&run_id);
            Ok(())
        }
        Cmd::Run {
            quick,
            socklb,
            out,
            plots,
            load_bound_secs,
            sizes,
            endpoints,
            socklb_only,
            no_footprint,
            run_id,
        } => {
            let bound = if socklb_only { Duration::ZERO } else { Duration::from_secs(load_bound_secs) };
            let results = run_all(&run_id, quick, &socklb, bound, &sizes, &endpoints, !no_footprint)?;
            fs::create_dir_all(&plots)?;
            report::write(&results, &out, &plots)?;
            println!("{}", report::summary_table(&results));
            Ok(())
        }
    }
}

fn self_bin() -> PathBuf {
    socklb_integration::sandbox::bin_path("socklb-bench")
}

/// Runs the client in a peer's namespace (and, for socklb, its cgroup).
fn measure(env: &Env, peer: Peer, to: SocketAddr, count: u64, udp: bool) -> Result<Run> {
    let mut cmd = Command::new(self_bin());
    cmd.args([
        "client",
        "--netns",
        &env.netns(peer),
        "--cpu",
        "0",
        "--to",
        &to.to_string(),
        "--count",
        &count.to_string(),
    ]);
    if peer == Peer::Socklb {
        cmd.arg("--cgroup").arg(&env.cgroup);
    }
    if udp {
        cmd.arg("--udp");
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("client in {}: {}", peer.label(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Runs a rule loader in a namespace with a time bound. `None` when it
/// did not finish in time.
fn timed_load(
    ns: &str,
    program: &str,
    args: &[&str],
    input: &Path,
    bound: Duration,
) -> Result<Option<Duration>> {
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::from(fs::File::open(input)?))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("{program} in {ns} failed: {err}");
            }
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The sum and count of a histogram on the agent's /metrics.
fn histogram(port: u16, name: &str) -> Option<(f64, f64)> {
    let (_, body) =
        socklb_integration::agent::http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/metrics")?;
    let find = |suffix: &str| -> Option<f64> {
        body.lines().find(|l| l.starts_with(&format!("{name}_{suffix} ")))?.rsplit(' ').next()?.parse().ok()
    };
    Some((find("sum")?, find("count")?))
}

/// Writes the workload file atomically.
fn write_file(path: &Path, w: &Workload) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, w.cluster_json())?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// Waits until the agent has applied one more sync; returns its map-write time.
fn wait_sync(port: u16, before: (f64, f64)) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(600) {
        if let Some((sum, count)) = histogram(port, "socklb_map_write_seconds")
            && count > before.1
        {
            return Ok(Duration::from_secs_f64(((sum - before.0) / (count - before.1)).max(0.0)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("the agent applied nothing")
}

/// Event-to-datapath through the test API server and the kube-rs watch path.
fn api_event_latency(run_id: &str, socklb: &Path, w: &Workload, trials: usize) -> Result<Vec<Duration>> {
    use socklb_integration::apiserver::FakeApiServer;
    let mut env = Env::create(run_id, &format!("api{}", w.n))?;
    env.start_servers()?;
    let api = FakeApiServer::start();
    let list: serde_json::Value = serde_json::from_str(&w.cluster_json())?;
    for item in list["items"].as_array().into_iter().flatten() {
        api.apply(item.clone());
    }
    let kubeconfig = env.workdir.join("kubeconfig");
    fs::write(&kubeconfig, api.kubeconfig())?;
    let port = socklb_integration::agent::free_port();
    env.start_agent_with(socklb, &["--kubeconfig", kubeconfig.to_str().context("utf8")?], port)?;
    let mut out = Vec::new();
    for k in 1..=trials {
        let extra = w.extra(k);
        let latency = footprint::trial(&env, &extra, || footprint::api_change(&api, &extra))?;
        out.push(latency);
    }
    Ok(out)
}

fn run_all(
    run_id: &str,
    quick: bool,
    socklb: &Path,
    bound: Duration,
    sizes_override: &[usize],
    eps_override: &[usize],
    footprint: bool,
) -> Result<Results> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark needs root (network namespaces, cgroups, BPF)");
    }
    let (mut sizes, mut endpoints, count, rounds): (&[usize], &[usize], u64, usize) = if quick {
        (&[1, 1000, 10_000], &[1], 500, 3)
    } else {
        (&[1, 1000, 10_000, 100_000], &[1, 10], 2000, 5)
    };
    if !sizes_override.is_empty() {
        sizes = sizes_override;
    }
    if !eps_override.is_empty() {
        endpoints = eps_override;
    }
    let mut results = Results::new(quick, bound);
    for &e in endpoints {
        for &n in sizes {
            eprintln!("[bench] N={n} E={e}");
            let mut w = Workload::new(n, e);
            let mut env = Env::create(run_id, &format!("{n}x{e}"))?;
            env.start_servers()?;

            // Control plane: program everything from nothing.
            let file = env.workdir.join("cluster.json");
            write_file(&file, &w)?;
            let port = socklb_integration::agent::free_port();
            let ready = env.start_agent(socklb, &file, port)?;
            let first_writes = histogram(port, "socklb_map_write_seconds").map(|(s, _)| s);
            let rss = env.agent_pid().and_then(peak_rss);
            let map_bytes = map_memory(&env.bpffs);
            let ipt_file = env.workdir.join("iptables.txt");
            fs::write(&ipt_file, kubeproxy::iptables_restore(&w))?;
            let ipt =
                timed_load(&env.netns(Peer::Iptables), "iptables-restore", &["--noflush"], &ipt_file, bound)?;
            let nft_file = env.workdir.join("nft.txt");
            fs::write(&nft_file, kubeproxy::nftables(&w))?;
            let nft = timed_load(&env.netns(Peer::Nftables), "nft", &["-f", "-"], &nft_file, bound)?;
            let loaded = |p: Peer| match p {
                Peer::Iptables => ipt.is_some(),
                Peer::Nftables => nft.is_some(),
                _ => true,
            };
            // Big rule loads leave the machine busy for a while.
            std::thread::sleep(Duration::from_secs(if n >= 10_000 { 5 } else { 1 }));

            // Datapath: interleaved rounds, per target.
            let targets = [("first", 0usize), ("last", n - 1), ("random", (n * 7919 + 13) % n)];
            for (label, i) in targets {
                let vip = SocketAddr::from((w.service(i).vip, workload::TCP_PORT));
                let direct = SocketAddr::from((w.service(i).endpoints[0], workload::TCP_TARGET));
                let mut runs: BTreeMap<Peer, Vec<Run>> = BTreeMap::new();
                for _ in 0..rounds {
                    for peer in Peer::ALL.into_iter().filter(|p| loaded(*p)) {
                        let to = if peer == Peer::Floor { direct } else { vip };
                        runs.entry(peer).or_default().push(measure(&env, peer, to, count, false)?);
                    }
                }
                for (peer, r) in runs {
                    results.datapath.push(DatapathRow {
                        n,
                        e,
                        target: label.into(),
                        peer,
                        summary: summarize(&r),
                    });
                }
            }
            // The tax on connections that are not to a service.
            let direct = SocketAddr::from((w.service(n / 2).endpoints[0], workload::TCP_TARGET));
            let mut runs: BTreeMap<Peer, Vec<Run>> = BTreeMap::new();
            for _ in 0..rounds {
                for peer in Peer::ALL.into_iter().filter(|p| loaded(*p)) {
                    runs.entry(peer).or_default().push(measure(&env, peer, direct, count, false)?);
                }
            }
            for (peer, r) in runs {
                results.datapath.push(DatapathRow {
                    n,
                    e,
                    target: "non-service".into(),
                    peer,
                    summary: summarize(&r),
                });
            }
            // UDP round trips.
            let mut runs: BTreeMap<Peer, Vec<Run>> = BTreeMap::new();
            for _ in 0..rounds {
                for peer in Peer::ALL.into_iter().filter(|p| loaded(*p)) {
                    let to = if peer == Peer::Floor {
                        SocketAddr::from((workload::UDP_ENDPOINT, workload::UDP_TARGET))
                    } else {
                        SocketAddr::from((workload::UDP_VIP, workload::UDP_PORT))
                    };
                    runs.entry(peer).or_default().push(measure(&env, peer, to, count, true)?);
                }
            }
            for (peer, r) in runs {
                results.datapath.push(DatapathRow {
                    n,
                    e,
                    target: "udp".into(),
                    peer,
                    summary: summarize(&r),
                });
            }

            // Control plane: one service changed, added, removed.
            let before = histogram(port, "socklb_map_write_seconds").unwrap_or_default();
            let mid = n / 2;
            w.service_mut(mid).endpoints[0] = std::net::Ipv4Addr::new(10, 200, 255, 1);
            write_file(&file, &w)?;
            let change = wait_sync(port, before)?;
            let before = histogram(port, "socklb_map_write_seconds").unwrap_or_default();
            w.push(w.extra(0));
            write_file(&file, &w)?;
            let add = wait_sync(port, before)?;
            let ipt_change = if ipt.is_some() {
                fs::write(&ipt_file, kubeproxy::iptables_restore(&w))?;
                timed_load(&env.netns(Peer::Iptables), "iptables-restore", &["--noflush"], &ipt_file, bound)?
            } else {
                None
            };
            let nft_change = if nft.is_some() {
                let delta = env.workdir.join("nft-delta.txt");
                fs::write(&delta, kubeproxy::service_chains(w.service(mid)))?;
                timed_load(&env.netns(Peer::Nftables), "nft", &["-f", "-"], &delta, bound)?
            } else {
                None
            };
            results.control.push(ControlPlane {
                n,
                e,
                socklb_ready: ready,
                socklb_first_map_writes: first_writes.map(Duration::from_secs_f64),
                socklb_change_map_writes: change,
                socklb_add_map_writes: add,
                iptables_load: ipt,
                nftables_load: nft,
                iptables_change: ipt_change,
                nftables_change: nft_change,
                agent_peak_rss: rss,
                map_bytes,
            });

            // Event to datapath: a new service in the file, until a client
            // (already polling) gets through to its VIP.
            if n <= 10_000 {
                let trials = if quick { 10 } else { 30 };
                for k in 1..=trials {
                    let extra = w.extra(k);
                    let latency = footprint::trial(&env, &extra, || {
                        w.push(extra.clone());
                        footprint::file_change(&file, &w)
                    })?;
                    results.event_latency.entry(n).or_default().push(latency);
                }
            }
            // Keep the agent's log next to the report.
            let _ = fs::copy(
                env.workdir.join("agent.log"),
                std::env::temp_dir().join(format!("socklb-bench-agent-{n}x{e}.log")),
            );
            drop(env);

            // The same through the API server: one watch event per change.
            if n <= 10_000 && e == endpoints[0] {
                let trials = if quick { 10 } else { 30 };
                let latencies = api_event_latency(run_id, socklb, &Workload::new(n, e), trials)?;
                results.api_event_latency.insert(n, latencies);
            }
        }
    }
    if footprint {
        let sizes: &[(usize, usize, Source, usize, usize)] = if quick {
            &[(10, 1, Source::File, 0, 0), (10_000, 1, Source::File, 10, 0), (10_000, 1, Source::Api, 10, 10)]
        } else {
            &[
                (10, 1, Source::File, 0, 0),
                (10_000, 10, Source::File, 30, 0),
                (10_000, 10, Source::Api, 30, 0),
                (100_000, 10, Source::File, 10, 30),
                (100_000, 10, Source::Api, 30, 30),
                (1_000_000, 1, Source::File, 0, 0),
            ]
        };
        for &(n, e, source, trials, resync_trials) in sizes {
            eprintln!("[bench] footprint N={n} E={e} source={source:?}");
            let f = footprint::measure(run_id, socklb, n, e, source, trials, resync_trials)?;
            results.footprint.push(f);
        }
    }
    Ok(results)
}
