//! The benchmark's peers, each in its own pair of network namespaces made
//! here and removed on drop: the floor (no load balancer), socklb (the real
//! agent), kube-proxy's iptables layout and kube-proxy's nftables layout.
//!
//! Per peer, the client namespace (rules, cgroup) reaches the server
//! namespace over a veth pair, as a pod reaches a pod on another node; the
//! server namespace answers for every endpoint address. Every peer's
//! traffic takes the same path, so the floor is the cost of that path.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::sandbox::bin_path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Peer {
    Floor,
    Socklb,
    Iptables,
    Nftables,
}

impl Peer {
    pub const ALL: [Peer; 4] = [Peer::Floor, Peer::Socklb, Peer::Iptables, Peer::Nftables];

    pub fn label(self) -> &'static str {
        match self {
            Peer::Floor => "floor",
            Peer::Socklb => "socklb",
            Peer::Iptables => "iptables",
            Peer::Nftables => "nftables",
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

pub struct Env {
    pub tag: String,
    pub cgroup: PathBuf,
    pub bpffs_mount: PathBuf,
    pub bpffs: PathBuf,
    pub workdir: PathBuf,
    children: Vec<Child>,
    pub agent: Option<Child>,
}

impl Env {
    /// The client side (rules, cgroup).
    pub fn netns(&self, peer: Peer) -> String {
        format!("{}-{}", self.tag, peer.label())
    }

    /// The server side.
    pub fn server_netns(&self, peer: Peer) -> String {
        format!("{}-{}-s", self.tag, peer.label())
    }

    pub fn create(run_id: &str, tag: &str) -> Result<Self> {
        let tag = format!("socklb-bench-{run_id}-{tag}");
        let cg2 = socklb_bpf::fs_checks::cgroup2_mount()?;
        let workdir = std::env::temp_dir().join(&tag);
        let bpffs_mount = workdir.join("bpffs");
        let env = Self {
            cgroup: cg2.join(&tag),
            bpffs: bpffs_mount.join("socklb"),
            bpffs_mount,
            workdir,
            tag,
            children: Vec::new(),
            agent: None,
        };
        fs::create_dir_all(&env.bpffs_mount)?;
        nix::mount::mount(
            Some("bpf"),
            &env.bpffs_mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )?;
        fs::create_dir(&env.cgroup)?;
        for peer in Peer::ALL {
            let (ns, srv) = (env.netns(peer), env.server_netns(peer));
            for n in [&ns, &srv] {
                run(Command::new("ip").args(["netns", "add", n]))?;
                run(Command::new("ip").args(["-n", n, "link", "set", "lo", "up"]))?;
            }
            run(Command::new("ip").args([
                "-n", &ns, "link", "add", "c0", "type", "veth", "peer", "name", "s0", "netns", &srv,
            ]))?;
            run(Command::new("ip").args(["-n", &ns, "addr", "add", "10.0.0.1/30", "dev", "c0"]))?;
            run(Command::new("ip").args(["-n", &srv, "addr", "add", "10.0.0.2/30", "dev", "s0"]))?;
            run(Command::new("ip").args(["-n", &ns, "link", "set", "c0", "up"]))?;
            run(Command::new("ip").args(["-n", &srv, "link", "set", "s0", "up"]))?;
            // The server side answers for every endpoint address.
            for range in ["10.128.0.0/9", "10.127.0.0/16", "10.200.0.0/16"] {
                run(Command::new("ip").args(["-n", &srv, "route", "add", "local", range, "dev", "lo"]))?;
                run(Command::new("ip").args(["-n", &ns, "route", "add", range, "via", "10.0.0.2"]))?;
            }
            if matches!(peer, Peer::Iptables | Peer::Nftables) {
                // kube-proxy's nodes route ClusterIPs (to their default
                // gateway); the NAT rules rewrite them before they leave.
                // socklb's namespace has no such route: an untranslated
                // connect fails with ENETUNREACH.
                for range in ["10.96.0.0/12", "10.110.0.0/16"] {
                    run(Command::new("ip").args(["-n", &ns, "route", "add", range, "via", "10.0.0.2"]))?;
                }
            }
        }
        Ok(env)
    }

    /// Starts the echo servers, pinned to CPU 1, in every peer's namespace.
    pub fn start_servers(&mut self) -> Result<()> {
        for peer in Peer::ALL {
            let child = Command::new(bin_path("socklb-bench"))
                .args(["server", "--netns", &self.server_netns(peer), "--cpu", "1"])
                .stdout(Stdio::null())
                .spawn()?;
            self.children.push(child);
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Starts the agent on a file and returns the time until `/readyz`.
    pub fn start_agent(&mut self, socklb: &Path, file: &Path, metrics_port: u16) -> Result<Duration> {
        let file = file.to_str().context("path is not UTF-8")?;
        self.start_agent_with(socklb, &["--from-file", file], metrics_port)
    }

    /// Starts the agent with a source (`--from-file F` or `--kubeconfig K`).
    pub fn start_agent_with(
        &mut self,
        socklb: &Path,
        source: &[&str],
        metrics_port: u16,
    ) -> Result<Duration> {
        self.start_agent_logging(socklb, source, metrics_port, "warn")
    }

    /// As [`Self::start_agent_with`], with the log level (`RUST_LOG`).
    pub fn start_agent_logging(
        &mut self,
        socklb: &Path,
        source: &[&str],
        metrics_port: u16,
        rust_log: &str,
    ) -> Result<Duration> {
        let log = fs::File::create(self.workdir.join("agent.log"))?;
        let started = Instant::now();
        let child = Command::new(socklb)
            .arg("agent")
            .args(source)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}"), "--node-name", "bench"])
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()?;
        self.agent = Some(child);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
        loop {
            if let Some((200, _)) = crate::agent::http_get(addr, "/readyz") {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(900) {
                bail!("agent not ready after 15 min");
            }
            if let Some(a) = self.agent.as_mut()
                && let Ok(Some(status)) = a.try_wait()
            {
                bail!("agent exited: {status}: {}", fs::read_to_string(self.workdir.join("agent.log"))?);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.workdir.join("agent.log")).unwrap_or_default()
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Stops the agent (SIGKILL: the datapath stays, as after a crash).
    pub fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        for mut c in std::mem::take(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.bpffs.exists() {
            let _ = socklb_bpf::loader::uninstall(&self.cgroup, &self.bpffs);
        }
        let _ = nix::mount::umount2(&self.bpffs_mount, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&self.workdir);
        for _ in 0..50 {
            if fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for peer in Peer::ALL {
            let _ = Command::new("ip").args(["netns", "del", &self.netns(peer)]).status();
            let _ = Command::new("ip").args(["netns", "del", &self.server_netns(peer)]).status();
        }
    }
}

/// Peak resident memory of a process (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Kernel memory charged to the pinned maps (the `memlock` of each map's
/// fdinfo), in bytes.
pub fn map_memory(bpffs: &Path) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};
    let mut total = 0;
    for name in socklb_common::map_names::ALL {
        let Ok(map) = aya::maps::MapData::from_pin(socklb_bpf::loader::map_pin(bpffs, name)) else {
            continue;
        };
        let fd = map.fd().as_fd().as_raw_fd();
        if let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            && let Some(v) = info.lines().find_map(|l| l.strip_prefix("memlock:"))
        {
            total += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    total
}

/// Removes what a run left behind if it was killed (its guards never ran):
/// processes in its namespaces and cgroups (all started by the run), the
/// datapath, the bpffs mounts, the cgroups and the namespaces.
pub fn cleanup(run_id: &str) {
    let prefix = format!("socklb-bench-{run_id}-");
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string());
    let namespaces: Vec<String> = out
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    let kill = |pid: i32| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    };
    for ns in &namespaces {
        if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
            String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse().ok()).for_each(kill);
        }
    }
    // Agents of this run (they live in the host namespace, outside the
    // cgroup): recognised by this run's private bpffs path on their command line.
    let marker = std::env::temp_dir().join(&prefix).display().to_string();
    if let Ok(procs) = fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(" agent ") && cmdline.contains(&marker) {
                kill(pid);
            }
        }
    }
    let Ok(cg2) = socklb_bpf::fs_checks::cgroup2_mount() else { return };
    if let Ok(entries) = fs::read_dir(&cg2) {
        for e in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)) {
            let cgroup = e.path();
            if let Ok(procs) = fs::read_to_string(cgroup.join("cgroup.procs")) {
                procs.lines().filter_map(|l| l.trim().parse().ok()).for_each(kill);
            }
            let work = std::env::temp_dir().join(e.file_name());
            let _ = socklb_bpf::loader::uninstall(&cgroup, &work.join("bpffs/socklb"));
            let _ = nix::mount::umount2(&work.join("bpffs"), nix::mount::MntFlags::MNT_DETACH);
            let _ = fs::remove_dir_all(&work);
            // Agents outside the cgroup (they run in the host namespace).
            std::thread::sleep(Duration::from_millis(200));
            let _ = fs::remove_dir(&cgroup);
        }
    }
    for ns in namespaces {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
}
