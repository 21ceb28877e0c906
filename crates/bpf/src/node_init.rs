//! `socklb node-init`: prepares a node's mounts for the DaemonSet, from an
//! init container (privileged, with the host's PID namespace).
//!
//! Two things real nodes lack, each of which needed a hand workaround:
//! * **A cgroup2 mount.** On hybrid hosts (cgroup v1 and v2), the
//!   `/sys/fs/cgroup` hostPath is the v1 tmpfs and the agent has nothing to
//!   attach to. socklb mounts cgroup2 (the same unified hierarchy, whatever
//!   else is mounted) at `/run/socklb/cgroupv2` in the host's mount
//!   namespace, as Cilium does, and the agent attaches there.
//! * **A shared bpffs.** The pins must live on the host's bpffs to outlive
//!   the pod, and a container sees mounts made on the host only through
//!   mount propagation, which kubelet allows only from a shared (or slave)
//!   mount; hosts without systemd mount /sys/fs/bpf private, or not at all.
//!   socklb mounts it if needed and makes it shared.
//!
//! Both happen in the host's mount namespace (entered through
//! `/proc/1/ns/mnt`), so they outlive the init container. Running it again
//! changes nothing.

use std::{
    fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, setns},
    sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs},
};

#[derive(Clone, Debug)]
pub struct NodeInit {
    /// The mount namespace to work in (the host's: `/proc/1/ns/mnt`).
    pub mount_ns: PathBuf,
    pub bpffs: PathBuf,
    pub cgroup2: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeInitError {
    #[error("entering the mount namespace {path}: {source} (node-init needs privileges and hostPID)")]
    EnterNamespace { path: PathBuf, source: std::io::Error },
    #[error("{what} {path}: {source}")]
    Mount { what: &'static str, path: PathBuf, source: nix::Error },
    #[error("creating {path}: {source}")]
    Mkdir { path: PathBuf, source: std::io::Error },
}

/// What node-init did, for its log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInitReport {
    pub bpffs_mounted: bool,
    pub bpffs_made_shared: bool,
    pub cgroup2_mounted: bool,
}

fn fs_magic(path: &Path) -> Option<nix::sys::statfs::FsType> {
    statfs(path).ok().map(|s| s.filesystem_type())
}

fn mkdir(path: &Path) -> Result<(), NodeInitError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|source| NodeInitError::Mkdir { path: path.to_owned(), source })
}

/// Whether `path` is a mount point whose propagation is shared, from
/// /proc/self/mountinfo (the optional field `shared:N`).
fn is_shared_mount(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.to_string_lossy();
    info.lines().rev().any(|line| {
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4);
        mount_point == Some(want.as_ref())
            && line.split(" - ").next().is_some_and(|head| head.split(' ').any(|f| f.starts_with("shared:")))
    })
}

/// Prepares the mounts. Must run before the process starts threads: a
/// multithreaded process cannot enter another mount namespace.
pub fn run(opts: &NodeInit) -> Result<NodeInitReport, NodeInitError> {
    let enter = |source| NodeInitError::EnterNamespace { path: opts.mount_ns.clone(), source };
    let ns = fs::File::open(&opts.mount_ns).map_err(enter)?;
    setns(ns, CloneFlags::CLONE_NEWNS).map_err(|e| enter(e.into()))?;
    let mut report = NodeInitReport::default();

    mkdir(&opts.bpffs)?;
    if fs_magic(&opts.bpffs) != Some(BPF_FS_MAGIC) {
        mount(Some("bpf"), &opts.bpffs, Some("bpf"), MsFlags::empty(), None::<&str>).map_err(|source| {
            NodeInitError::Mount { what: "mounting bpffs at", path: opts.bpffs.clone(), source }
        })?;
        report.bpffs_mounted = true;
    }
    if !is_shared_mount(&opts.bpffs) {
        mount(None::<&str>, &opts.bpffs, None::<&str>, MsFlags::MS_SHARED, None::<&str>).map_err(
            |source| NodeInitError::Mount { what: "making shared", path: opts.bpffs.clone(), source },
        )?;
        report.bpffs_made_shared = true;
    }

    mkdir(&opts.cgroup2)?;
    if fs_magic(&opts.cgroup2) != Some(CGROUP2_SUPER_MAGIC) {
        mount(Some("cgroup2"), &opts.cgroup2, Some("cgroup2"), MsFlags::empty(), None::<&str>).map_err(
            |source| NodeInitError::Mount { what: "mounting cgroup2 at", path: opts.cgroup2.clone(), source },
        )?;
        report.cgroup2_mounted = true;
    }
    Ok(report)
}
