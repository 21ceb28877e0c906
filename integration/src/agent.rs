//! Runs the real `socklb agent` binary against a sandbox.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Sandbox, sandbox::bin_path};

pub struct AgentProc {
    pub child: Child,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    /// The network namespace the agent runs in (its metrics address is
    /// there), when not the host's.
    pub netns: Option<String>,
}

/// A free loopback port (bound and released; the race is harmless here).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A plain HTTP GET; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

impl Sandbox {
    /// Starts `socklb agent` on this sandbox's cgroup and bpffs with `args`
    /// (a source, node addresses...). It runs in the host network namespace
    /// like the DaemonSet does; it only programs maps.
    pub fn start_agent(&self, args: &[&str]) -> AgentProc {
        self.start_agent_env(args, &[])
    }

    /// As [`Sandbox::start_agent`], with extra environment variables.
    pub fn start_agent_env(&self, args: &[&str], envs: &[(&str, &str)]) -> AgentProc {
        self.start_agent_bin("socklb", args, envs)
    }

    /// As [`Sandbox::start_agent_env`], with another build of the agent
    /// (`socklb-layout-next`, say).
    pub fn start_agent_bin(&self, binary: &str, args: &[&str], envs: &[(&str, &str)]) -> AgentProc {
        self.spawn_agent(binary, args, envs, false)
    }

    /// Starts the agent inside this sandbox's network namespace (so that it
    /// sees the namespace's addresses as this node's), with `nsenter --net`,
    /// which leaves /sys (and the cgroup path) as it is.
    pub fn start_agent_in_netns(&self, args: &[&str]) -> AgentProc {
        self.spawn_agent("socklb", args, &[], true)
    }

    fn spawn_agent(&self, binary: &str, args: &[&str], envs: &[(&str, &str)], in_netns: bool) -> AgentProc {
        let bin = bin_path(binary);
        assert!(bin.exists(), "{} is missing: scripts/test.sh builds it", bin.display());
        let metrics: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = self.workdir().join(format!("agent-{}.log", metrics.port()));
        let out = fs::File::create(&log).expect("agent log");
        let err = out.try_clone().expect("agent log");
        let mut cmd = if in_netns {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{}", self.name)).arg("--").arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        let child = cmd
            .arg("agent")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .args(["--node-name", "node-a"])
            .args(args)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn socklb agent");
        AgentProc { child, metrics, log, netns: in_netns.then(|| self.name.clone()) }
    }
}

/// [`http_get`] from inside a network namespace (a thread of its own
/// enters it; setns changes only the calling thread).
pub fn http_get_in(netns: &str, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let (netns, path) = (netns.to_string(), path.to_string());
    thread::spawn(move || {
        let ns = fs::File::open(format!("/run/netns/{netns}")).ok()?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        http_get(addr, &path)
    })
    .join()
    .ok()
    .flatten()
}

impl AgentProc {
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        match &self.netns {
            Some(ns) => http_get_in(ns, self.metrics, path),
            None => http_get(self.metrics, path),
        }
    }

    /// Waits for `/readyz` to answer 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some((200, _)) = self.get("/readyz") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("agent exited with {status}:\n{}", self.log_text());
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("agent not ready after {timeout:?}:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, by PID, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().expect("wait for agent")
    }

    /// The agent's resident memory in KiB (VmRSS), if it is running.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}
