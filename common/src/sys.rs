//! The few bpf(2) commands the agent needs and aya does not expose:
//! opening a pinned link, reading which cgroup and program a link holds,
//! swapping a link's program in place, and forcing a link to detach.
//!
//! The agent is `#![forbid(unsafe_code)]`; the raw syscall lives here.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `BPF_LINK_TYPE_CGROUP`.
pub const LINK_TYPE_CGROUP: u32 = 3;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// `struct bpf_link_info`, with room for every union member.
#[repr(C, align(8))]
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    union: [u64; 32],
}

/// What the kernel reports about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// For cgroup links: the cgroup id (the inode number of its directory).
    pub cgroup_id: u64,
    /// For cgroup links: the `bpf_attach_type`.
    pub attach_type: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` points to a live, fully initialised repr(C) struct of the
    // layout the kernel expects for `cmd`; its size is passed along, and the
    // kernel treats missing tail fields as zero.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// Opens a pinned object (a link, here).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut attr = ObjGetAttr { pathname: c_path.as_ptr() as u64, ..Default::default() };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads a link's type, program and (for cgroup links) cgroup.
pub fn link_info(link: impl AsFd) -> io::Result<LinkInfo> {
    let mut info = RawLinkInfo { link_type: 0, id: 0, prog_id: 0, _pad: 0, union: [0; 32] };
    let mut attr = InfoByFdAttr {
        bpf_fd: fd_u32(&link)?,
        info_len: size_of::<RawLinkInfo>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        link_type: info.link_type,
        id: info.id,
        prog_id: info.prog_id,
        cgroup_id: info.union[0],
        attach_type: info.union[1] as u32,
    })
}

/// Atomically replaces the program of a link (no moment without a program).
pub fn link_update(link: impl AsFd, new_prog: impl AsFd) -> io::Result<()> {
    let mut attr =
        LinkUpdateAttr { link_fd: fd_u32(&link)?, new_prog_fd: fd_u32(&new_prog)?, ..Default::default() };
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Detaches a link from its hook now, even if other descriptors hold it.
pub fn link_detach(link: impl AsFd) -> io::Result<()> {
    let mut attr = LinkDetachAttr { link_fd: fd_u32(&link)? };
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

fn fd_u32(fd: &impl AsFd) -> io::Result<u32> {
    u32::try_from(fd.as_fd().as_raw_fd()).map_err(|_| io::Error::other("negative fd"))
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys[i] -> values[i]` in one syscall (BPF_MAP_UPDATE_BATCH,
/// Linux 5.6). Returns how many were written, and the error that stopped
/// the batch, if any.
pub fn map_update_batch<K: aya::Pod, V: aya::Pod>(
    map: impl AsFd,
    keys: &[K],
    values: &[V],
) -> (usize, io::Result<()>) {
    let n = keys.len().min(values.len());
    if n == 0 {
        return (0, Ok(()));
    }
    let Ok(map_fd) = fd_u32(&map) else { return (0, Err(io::Error::other("negative fd"))) };
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: n as u32,
        map_fd,
        ..Default::default()
    };
    let result = bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map(|_| ());
    (attr.count as usize, result)
}

/// Deletes `keys` in one syscall (BPF_MAP_DELETE_BATCH). Returns how many
/// were deleted, and the error that stopped the batch (ENOENT for a key
/// that was not there).
pub fn map_delete_batch<K: aya::Pod>(map: impl AsFd, keys: &[K]) -> (usize, io::Result<()>) {
    if keys.is_empty() {
        return (0, Ok(()));
    }
    let Ok(map_fd) = fd_u32(&map) else { return (0, Err(io::Error::other("negative fd"))) };
    let mut attr =
        BatchAttr { keys: keys.as_ptr() as u64, count: keys.len() as u32, map_fd, ..Default::default() };
    let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr).map(|_| ());
    (attr.count as usize, result)
}
