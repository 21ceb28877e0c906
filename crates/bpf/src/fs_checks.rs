//! Where the datapath lives on the host: the cgroup v2 directory the
//! programs attach to, and the bpffs directory that holds the pins.

use std::{
    fs,
    io::{self, BufRead},
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs};

#[derive(Debug, thiserror::Error)]
pub enum FsCheckError {
    #[error("no cgroup2 filesystem is mounted (looked in /proc/mounts); pass --cgroup")]
    NoCgroup2Mount,
    #[error("--cgroup {path}: {source}")]
    CgroupUnreadable { path: PathBuf, source: io::Error },
    #[error(
        "--cgroup {path} is not a cgroup v2 directory (filesystem magic {magic:#x}); socklb attaches only to cgroup2"
    )]
    NotCgroup2 { path: PathBuf, magic: i64 },
    #[error("--bpffs {path}: {source}")]
    BpffsUnusable { path: PathBuf, source: io::Error },
    #[error(
        "--bpffs {path} is not on a BPF filesystem (filesystem magic {magic:#x}); mount one with `mount -t bpf bpf {mount_hint}`"
    )]
    NotBpffs { path: PathBuf, magic: i64, mount_hint: PathBuf },
}

/// The mount point of the first cgroup2 filesystem in `/proc/mounts`.
pub fn cgroup2_mount() -> Result<PathBuf, FsCheckError> {
    let file = fs::File::open("/proc/mounts")
        .map_err(|source| FsCheckError::CgroupUnreadable { path: "/proc/mounts".into(), source })?;
    cgroup2_mount_in(io::BufReader::new(file).lines().map_while(Result::ok))
        .ok_or(FsCheckError::NoCgroup2Mount)
}

fn cgroup2_mount_in(lines: impl Iterator<Item = String>) -> Option<PathBuf> {
    lines.into_iter().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, mount, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(mount)))
    })
}

/// /proc/mounts escapes spaces, tabs, newlines and backslashes as octal.
fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Checks that `path` is a cgroup v2 directory and returns its cgroup id
/// (the inode number, which is what the kernel reports for cgroup links).
pub fn check_cgroup2(path: &Path) -> Result<u64, FsCheckError> {
    let unreadable = |source| FsCheckError::CgroupUnreadable { path: path.to_owned(), source };
    let meta = fs::metadata(path).map_err(unreadable)?;
    if !meta.is_dir() {
        return Err(unreadable(io::Error::other("not a directory")));
    }
    let st = statfs(path).map_err(|e| unreadable(e.into()))?;
    if st.filesystem_type() != CGROUP2_SUPER_MAGIC {
        return Err(FsCheckError::NotCgroup2 { path: path.to_owned(), magic: st.filesystem_type().0 as i64 });
    }
    Ok(meta.ino())
}

/// Makes sure `dir` exists on a bpffs, creating it (mode 0700) if needed,
/// and tightens an existing directory to 0700.
pub fn prepare_bpffs_dir(dir: &Path) -> Result<(), FsCheckError> {
    let unusable = |source| FsCheckError::BpffsUnusable { path: dir.to_owned(), source };
    let probe = if dir.exists() { dir } else { dir.parent().unwrap_or(dir) };
    check_bpffs(probe, dir)?;
    if !dir.exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(unusable)?;
    }
    let mode = fs::metadata(dir).map_err(unusable)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(unusable)?;
    }
    Ok(())
}

/// Checks that `probe` (the pin directory or its parent) is on a bpffs.
pub fn check_bpffs(probe: &Path, dir: &Path) -> Result<(), FsCheckError> {
    let st =
        statfs(probe).map_err(|e| FsCheckError::BpffsUnusable { path: dir.to_owned(), source: e.into() })?;
    if st.filesystem_type() != BPF_FS_MAGIC {
        return Err(FsCheckError::NotBpffs {
            path: dir.to_owned(),
            magic: st.filesystem_type().0 as i64,
            mount_hint: probe.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_v1_mounts() {
        let mounts = [
            "tmpfs /sys/fs/cgroup tmpfs rw 0 0",
            "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0",
            "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0",
        ];
        let found = cgroup2_mount_in(mounts.iter().map(|s| s.to_string()));
        assert_eq!(found, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn no_cgroup2_mount_is_none() {
        let mounts = ["proc /proc proc rw 0 0"];
        assert_eq!(cgroup2_mount_in(mounts.iter().map(|s| s.to_string())), None);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        let mounts = ["cgroup2 /mnt/my\\040cgroup cgroup2 rw 0 0"];
        let found = cgroup2_mount_in(mounts.iter().map(|s| s.to_string()));
        assert_eq!(found, Some(PathBuf::from("/mnt/my cgroup")));
    }

    #[test]
    fn a_tmp_directory_is_not_cgroup2() {
        let dir = std::env::temp_dir();
        match check_cgroup2(&dir) {
            Err(FsCheckError::NotCgroup2 { path, .. }) => assert_eq!(path, dir),
            other => panic!("expected NotCgroup2, got {other:?}"),
        }
    }

    #[test]
    fn a_tmp_directory_is_not_bpffs_and_the_error_says_how_to_mount() {
        let dir = std::env::temp_dir().join("socklb-unit-not-bpffs");
        let err = prepare_bpffs_dir(&dir).expect_err("tmp is not bpffs");
        let text = err.to_string();
        assert!(text.contains("not on a BPF filesystem"), "{text}");
        assert!(text.contains("mount -t bpf bpf"), "{text}");
        assert!(!dir.exists(), "nothing may be created on a wrong filesystem");
    }
}
