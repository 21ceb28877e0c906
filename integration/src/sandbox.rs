//! A test's private network namespace, cgroup and bpffs, removed on drop.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use socklb_bpf::loader::{InstallOptions, InstallReport};

use crate::probe::{Attempt, parse_attempts};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A client running in the background, its output drained by threads.
/// Dropped without [`Sandbox::collect`] (a failed test), it is killed.
pub struct RunningClient {
    child: Option<Child>,
    out: Option<thread::JoinHandle<Vec<u8>>>,
    err: Option<thread::JoinHandle<Vec<u8>>>,
    /// For a load started with [`Sandbox::start_load`]: the file that ends it.
    stop_file: Option<PathBuf>,
}

impl RunningClient {
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Ends a load started with [`Sandbox::start_load`] (a no-op for other
    /// clients, which end by themselves).
    pub fn stop(&self) {
        if let Some(f) = &self.stop_file {
            let _ = fs::write(f, b"stop");
        }
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

static NEXT_STOP: AtomicU32 = AtomicU32::new(0);

pub struct Sandbox {
    pub name: String,
    /// The child cgroup the programs attach to and clients run in.
    pub cgroup: PathBuf,
    /// A bpffs instance mounted for this test only.
    pub bpffs_mount: PathBuf,
    /// The pin directory inside it (what `--bpffs` points at).
    pub bpffs: PathBuf,
    workdir: PathBuf,
    children: Mutex<Vec<Child>>,
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The helper binary built next to the test executables.
pub fn bin_path(name: &str) -> PathBuf {
    let env = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // A binary next to this one (target/<profile>/), or, for a test in
    // target/<profile>/deps/, one directory up.
    let here = exe.parent().expect("exe dir");
    let sibling = here.join(name);
    if sibling.exists() {
        return sibling;
    }
    here.parent().unwrap_or(here).join(name)
}

impl Sandbox {
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("socklb-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let cg2 = socklb_bpf::fs_checks::cgroup2_mount()?;
        let workdir = std::env::temp_dir().join(&name);
        let bpffs_mount = workdir.join("bpffs");
        let mut sb = Self {
            cgroup: cg2.join(&name),
            bpffs: bpffs_mount.join("socklb"),
            bpffs_mount,
            workdir,
            name,
            children: Mutex::new(Vec::new()),
        };
        // From here on, Drop cleans up whatever was created.
        sb.create().inspect_err(|_| drop(std::mem::take(&mut sb.children)))?;
        Ok(sb)
    }

    fn create(&self) -> Result<()> {
        run(Command::new("ip").args(["netns", "add", &self.name]))?;
        run(Command::new("ip").args(["-n", &self.name, "link", "set", "lo", "up"]))?;
        fs::create_dir(&self.cgroup).with_context(|| format!("mkdir {}", self.cgroup.display()))?;
        fs::create_dir_all(&self.bpffs_mount)?;
        nix::mount::mount(
            Some("bpf"),
            &self.bpffs_mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting a bpffs for the test")?;
        Ok(())
    }

    /// A scratch directory removed with the sandbox.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Adds addresses (CIDR notation) to the namespace's loopback device.
    pub fn add_addrs(&self, cidrs: &[&str]) -> Result<()> {
        for cidr in cidrs {
            let mut cmd = Command::new("ip");
            cmd.args(["-n", &self.name, "addr", "add", cidr, "dev", "lo"]);
            if cidr.contains(':') {
                cmd.arg("nodad");
            }
            run(&mut cmd)?;
        }
        Ok(())
    }

    /// Removes addresses (CIDR notation) from the namespace's loopback.
    pub fn del_addrs(&self, cidrs: &[&str]) -> Result<()> {
        for cidr in cidrs {
            run(Command::new("ip").args(["-n", &self.name, "addr", "del", cidr, "dev", "lo"]))?;
        }
        Ok(())
    }

    pub fn install_options(&self) -> InstallOptions {
        InstallOptions::new(self.cgroup.clone(), self.bpffs.clone())
    }

    /// Loads and attaches the datapath to this sandbox's cgroup, in-process.
    pub fn install(&self) -> Result<InstallReport> {
        self.install_with(&self.install_options())
    }

    /// [`Sandbox::install`] with other options (the compat programs, say).
    pub fn install_with(&self, opts: &InstallOptions) -> Result<InstallReport> {
        let installed = socklb_bpf::loader::install(opts)?;
        anyhow::ensure!(installed.switch.is_none(), "a sandbox starts with no other layout serving");
        Ok(installed.report)
    }

    /// Starts backend servers in the namespace and waits until they listen.
    pub fn serve(&self, tcp: &[SocketAddr], udp: &[SocketAddr], tcp_hold: &[SocketAddr]) -> Result<()> {
        let mut cmd = Command::new(bin_path("socklb-probe"));
        cmd.args(["serve", "--netns", &self.name]);
        self.start_server(cmd, tcp, udp, tcp_hold)
    }

    /// Starts servers with extra arguments (`--dns`, or no `--netns` for
    /// loopback servers in the host namespace).
    pub fn start_server(
        &self,
        mut cmd: Command,
        tcp: &[SocketAddr],
        udp: &[SocketAddr],
        tcp_hold: &[SocketAddr],
    ) -> Result<()> {
        for a in tcp {
            cmd.arg("--tcp").arg(a.to_string());
        }
        for a in udp {
            cmd.arg("--udp").arg(a.to_string());
        }
        for a in tcp_hold {
            cmd.arg("--tcp-hold").arg(a.to_string());
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        self.children.lock().expect("lock").push(child);
        if line.trim() != "ready" {
            bail!("server did not start: {line:?}");
        }
        Ok(())
    }

    /// A probe client command that runs in this sandbox's cgroup and netns.
    pub fn client_cmd(&self, sub: &str, to: SocketAddr) -> Command {
        let mut cmd = Command::new(bin_path("socklb-probe"));
        cmd.arg(sub).arg("--cgroup").arg(&self.cgroup).args(["--netns", &self.name, "--to", &to.to_string()]);
        cmd
    }

    /// A probe command in this sandbox's cgroup, in its namespace or (with
    /// `in_netns: false`) in the host namespace.
    pub fn probe_cmd(&self, sub: &str, in_netns: bool) -> Command {
        let mut cmd = Command::new(bin_path("socklb-probe"));
        cmd.arg(sub).arg("--cgroup").arg(&self.cgroup);
        if in_netns {
            cmd.args(["--netns", &self.name]);
        }
        cmd
    }

    /// Runs `count` TCP connects to `to` from inside the sandbox.
    pub fn connect(&self, to: SocketAddr, count: u64) -> Vec<Attempt> {
        let mut cmd = self.client_cmd("connect", to);
        cmd.args(["--count", &count.to_string()]);
        self.run_client(cmd)
    }

    /// Runs a client command to completion and parses its attempts.
    pub fn run_client(&self, mut cmd: Command) -> Vec<Attempt> {
        let out: Output = cmd.output().expect("running socklb-probe");
        assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
        parse_attempts(&out.stdout)
    }

    /// Starts a client command in the background; collect it with
    /// [`Sandbox::collect`]. Its output is drained as it comes, so a long
    /// run never blocks on a full pipe.
    pub fn spawn_client(&self, mut cmd: Command) -> RunningClient {
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning socklb-probe");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let out = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
            buf
        });
        let err = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
            buf
        });
        RunningClient { child: Some(child), out: Some(out), err: Some(err), stop_file: None }
    }

    /// Starts a client that runs until [`RunningClient::stop`] (or
    /// [`Sandbox::finish`]): a load that lasts exactly as long as what the
    /// test does under it, however slow the machine is.
    pub fn start_load(&self, mut cmd: Command) -> RunningClient {
        let stop = self.workdir.join(format!("stop-{}", NEXT_STOP.fetch_add(1, Ordering::Relaxed)));
        let _ = fs::remove_file(&stop);
        cmd.arg("--stop-file").arg(&stop);
        let mut client = self.spawn_client(cmd);
        client.stop_file = Some(stop);
        client
    }

    /// Stops a load and collects its attempts.
    pub fn finish(&self, client: RunningClient) -> Vec<Attempt> {
        client.stop();
        self.collect(client)
    }

    pub fn collect(&self, mut client: RunningClient) -> Vec<Attempt> {
        let mut child = client.child.take().expect("a running client");
        let status = child.wait().expect("waiting for socklb-probe");
        let stdout = client.out.take().map(|t| t.join().expect("stdout reader")).unwrap_or_default();
        let stderr = client.err.take().map(|t| t.join().expect("stderr reader")).unwrap_or_default();
        assert!(status.success(), "client failed: {}", String::from_utf8_lossy(&stderr));
        parse_attempts(&stdout)
    }

    /// Keeps a child process under this sandbox's care (killed on drop).
    pub fn adopt(&self, child: Child) {
        self.children.lock().expect("lock").push(child);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // 1. Our processes, by PID (Child::kill), and wait for them.
        for mut child in self.children.get_mut().map(std::mem::take).unwrap_or_default() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // 2. Detach the programs and remove the pins.
        if self.bpffs.exists() {
            if let Err(e) = socklb_bpf::loader::uninstall(&self.cgroup, &self.bpffs) {
                eprintln!("cleanup: uninstall {}: {e}", self.bpffs.display());
            }
        }
        // 3. The bpffs instance and the work directory.
        let _ = nix::mount::umount2(&self.bpffs_mount, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&self.workdir);
        // 4. The cgroup: exiting processes can take a moment to leave it.
        for _ in 0..50 {
            match fs::remove_dir(&self.cgroup) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        if self.cgroup.exists() {
            eprintln!("cleanup: could not remove cgroup {}", self.cgroup.display());
        }
        // 5. The network namespace.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
