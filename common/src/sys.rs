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

const BPF_PROG_LOAD: libc::c_long = 5;

/// `BPF_PROG_TYPE_CGROUP_SOCK`.
pub const PROG_TYPE_CGROUP_SOCK: u32 = 9;
/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
pub const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

/// The head of `union bpf_attr` for BPF_PROG_LOAD, up to
/// `expected_attach_type` (the kernel treats the rest as zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// One `struct bpf_insn`, as its 8 bytes.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let regs = (dst & 0x0f) | ((src & 0x0f) << 4);
    let mut bytes = [0u8; 8];
    bytes[0] = code;
    bytes[1] = regs;
    bytes[2..4].copy_from_slice(&off.to_ne_bytes());
    bytes[4..8].copy_from_slice(&imm.to_ne_bytes());
    u64::from_ne_bytes(bytes)
}

const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// What a probe load found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Supported,
    /// The kernel does not know it; the text is the kernel's reason.
    Unsupported(String),
}

/// Loads a minimal program of `prog_type` for `attach_type` and returns
/// the verifier's verdict with its log.
fn probe_load(prog_type: u32, attach_type: u32, insns: &[u64]) -> (io::Result<OwnedFd>, String) {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type: attach_type,
        ..Default::default()
    };
    let result = bpf(BPF_PROG_LOAD, &mut attr).and_then(|fd| {
        let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
        // SAFETY: BPF_PROG_LOAD returned a new file descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    });
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    (result, String::from_utf8_lossy(&log[..end]).trim().to_string())
}

/// Whether this kernel accepts programs of `prog_type` for `attach_type`
/// (a hook the kernel does not know is refused with EINVAL).
pub fn probe_attach_type(prog_type: u32, attach_type: u32) -> Probe {
    let insns = [insn(MOV64_IMM, 0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)];
    match probe_load(prog_type, attach_type, &insns) {
        (Ok(_), _) => Probe::Supported,
        (Err(e), log) => Probe::Unsupported(if log.is_empty() { e.to_string() } else { log }),
    }
}

/// Whether programs of `prog_type` for `attach_type` may call helper
/// `helper` (as libbpf's probe: the call is made with zeroed arguments, so
/// an argument the verifier rejects still means the helper exists; only
/// "unknown func" / "invalid func" means it does not).
pub fn probe_helper(prog_type: u32, attach_type: u32, helper: u32) -> Probe {
    let mut insns: Vec<u64> = (1..=5).map(|r| insn(MOV64_IMM, r, 0, 0, 0)).collect();
    insns.push(insn(CALL, 0, 0, 0, helper as i32));
    insns.push(insn(MOV64_IMM, 0, 0, 0, 1));
    insns.push(insn(EXIT, 0, 0, 0, 0));
    match probe_load(prog_type, attach_type, &insns) {
        (Ok(_), _) => Probe::Supported,
        (Err(e), log) => {
            if log.contains("unknown func") || log.contains("invalid func") {
                Probe::Unsupported(log.lines().find(|l| l.contains("func")).unwrap_or(&log).to_string())
            } else if log.is_empty() {
                // No verifier log: the program type or attach type itself
                // was refused before any instruction was looked at.
                Probe::Unsupported(e.to_string())
            } else {
                Probe::Supported
            }
        }
    }
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const MAP_TYPE_ARRAY: u32 = 2;
const MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn map_create(attr: &mut MapCreateAttr) -> io::Result<OwnedFd> {
    let fd = bpf(BPF_MAP_CREATE, attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits for an RCU grace period: every BPF program that was running when
/// [`GracePeriod::wait`] was called has finished when it returns.
///
/// The kernel documents this for map-in-map updates ("wait for any running
/// non-sleepable BPF programs to complete so that userspace, when we return
/// to it, knows that all non-sleepable programs that could be running use
/// the new map value", `maybe_wait_bpf_programs`, Linux 4.20), so a tiny
/// array-of-maps that nothing else uses is updated to get one. The agent
/// reuses a freed slot or set id only after such a wait.
pub struct GracePeriod {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl GracePeriod {
    pub fn new() -> io::Result<Self> {
        let inner = map_create(&mut MapCreateAttr {
            map_type: MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..Default::default()
        })?;
        let outer = map_create(&mut MapCreateAttr {
            map_type: MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: fd_u32(&inner)?,
            ..Default::default()
        })?;
        Ok(Self { outer, inner })
    }

    /// Returns after a grace period (typically a few milliseconds).
    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = fd_u32(&self.inner)?;
        let mut attr = MapElemAttr {
            map_fd: fd_u32(&self.outer)?,
            key: std::ptr::from_ref(&key) as u64,
            value: std::ptr::from_ref(&value) as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}

/// A BPF array map created with `BPF_F_MMAPABLE`, mapped shared into the
/// agent: reads and writes are plain memory accesses, no syscall per entry.
///
/// Every access is volatile (the programs read and write the same memory
/// concurrently), and the words that must change in one piece (a set's
/// state, the counters) go through atomic 8-byte loads and stores.
pub struct MappedArray<T> {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    bytes: usize,
    _t: std::marker::PhantomData<T>,
}

// SAFETY: the mapping is shared memory that stays valid until drop; every
// access is volatile or atomic, so sharing it between threads is as safe as
// the kernel's own concurrent access.
unsafe impl<T: Send> Send for MappedArray<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for MappedArray<T> {}

impl<T: aya::Pod> MappedArray<T> {
    /// Maps the first `entries` elements of an mmapable array map.
    pub fn map(map: impl AsFd, entries: u32) -> io::Result<Self> {
        const {
            assert!(
                size_of::<T>().is_multiple_of(8),
                "the kernel strides array elements by 8-byte multiples"
            );
        }
        let len = entries as usize;
        let bytes = len.checked_mul(size_of::<T>()).ok_or_else(|| io::Error::other("array too large"))?;
        if bytes == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty array"));
        }
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks
        // that the range lies inside the map's value area.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len, bytes, _t: std::marker::PhantomData })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn elem(&self, index: usize) -> Option<*mut T> {
        // SAFETY: in bounds, and the mapping is aligned to a page, so every
        // element is aligned to 8 (size_of::<T>() is a multiple of 8).
        (index < self.len).then(|| unsafe { self.ptr.as_ptr().add(index * size_of::<T>()).cast::<T>() })
    }

    /// Reads element `index`.
    pub fn get(&self, index: usize) -> Option<T> {
        // SAFETY: a valid, aligned element of a live mapping; T is Pod.
        self.elem(index).map(|p| unsafe { p.read_volatile() })
    }

    /// Writes element `index`; false when out of bounds.
    pub fn set(&self, index: usize, value: T) -> bool {
        match self.elem(index) {
            // SAFETY: as in `get`.
            Some(p) => {
                unsafe { p.write_volatile(value) };
                true
            }
            None => false,
        }
    }

    fn word(&self, index: usize, offset: usize) -> Option<&std::sync::atomic::AtomicU64> {
        if !offset.is_multiple_of(8) || offset + 8 > size_of::<T>() {
            return None;
        }
        // SAFETY: an 8-byte aligned word inside a valid element of a live
        // mapping; AtomicU64 has the layout of u64, and the borrow ends
        // before the mapping does (it is tied to &self).
        self.elem(index)
            .map(|p| unsafe { &*p.cast::<u8>().add(offset).cast::<std::sync::atomic::AtomicU64>() })
    }

    /// Stores the 8-byte word at `offset` of element `index` in one piece,
    /// after every earlier write (release). False when out of range.
    pub fn store_word(&self, index: usize, offset: usize, word: u64) -> bool {
        self.word(index, offset).map(|w| w.store(word, std::sync::atomic::Ordering::Release)).is_some()
    }

    /// Loads the 8-byte word at `offset` of element `index` in one piece.
    pub fn load_word(&self, index: usize, offset: usize) -> Option<u64> {
        self.word(index, offset).map(|w| w.load(std::sync::atomic::Ordering::Acquire))
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Where a batched read of a map goes on (`BPF_MAP_LOOKUP_BATCH`'s token:
/// a bucket for hash maps, the last index for arrays).
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchCursor {
    token: [u8; 8],
    started: bool,
    done: bool,
}

impl BatchCursor {
    /// A cursor that reads an array from index `first` on.
    pub fn array_from(first: u32) -> Self {
        match first.checked_sub(1) {
            // The kernel goes on after the key in the cursor.
            Some(before) => {
                let mut token = [0u8; 8];
                token[..4].copy_from_slice(&before.to_ne_bytes());
                Self { token, started: true, done: false }
            }
            None => Self::default(),
        }
    }

    /// The whole map has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// Reads the next entries of a map into `keys` and `values` (as many as
/// fit) with one BPF_MAP_LOOKUP_BATCH (Linux 5.6). Returns how many were
/// read; `cursor.is_done()` once the map is exhausted.
pub fn map_lookup_batch<K: aya::Pod, V: aya::Pod>(
    map: impl AsFd,
    cursor: &mut BatchCursor,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<usize> {
    let n = keys.len().min(values.len());
    if n == 0 || cursor.done {
        return Ok(0);
    }
    let mut out = [0u8; 8];
    let mut attr = BatchAttr {
        in_batch: if cursor.started { cursor.token.as_ptr() as u64 } else { 0 },
        out_batch: out.as_mut_ptr() as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: n as u32,
        map_fd: fd_u32(&map)?,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(_) => {
            cursor.token = out;
            cursor.started = true;
            Ok(attr.count as usize)
        }
        // The end of the map: `count` holds what this last call read.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            cursor.done = true;
            Ok(attr.count as usize)
        }
        Err(e) => Err(e),
    }
}

/// Every entry of a map, read in batches of up to `chunk`.
pub fn map_dump<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: impl AsFd,
    chunk: usize,
) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut cursor = BatchCursor::default();
    let mut size = chunk.max(16);
    let mut keys = vec![K::default(); size];
    let mut values = vec![V::default(); size];
    while !cursor.is_done() {
        match map_lookup_batch(map.as_fd(), &mut cursor, &mut keys, &mut values) {
            Ok(n) => out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied())),
            // A hash bucket holds more than fits: a bigger buffer.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && size < 1 << 20 => {
                size *= 4;
                keys = vec![K::default(); size];
                values = vec![V::default(); size];
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Copies every entry of `from` into `to` (same key and value types), a
/// chunk at a time. Returns how many entries were copied.
pub fn map_copy<K: aya::Pod + Default, V: aya::Pod + Default>(
    from: impl AsFd,
    to: impl AsFd,
    chunk: usize,
) -> io::Result<u64> {
    let mut cursor = BatchCursor::default();
    let mut size = chunk.max(16);
    let mut keys = vec![K::default(); size];
    let mut values = vec![V::default(); size];
    let mut copied = 0;
    while !cursor.is_done() {
        let n = match map_lookup_batch(from.as_fd(), &mut cursor, &mut keys, &mut values) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && size < 1 << 20 => {
                size *= 4;
                keys = vec![K::default(); size];
                values = vec![V::default(); size];
                continue;
            }
            Err(e) => return Err(e),
        };
        let (written, result) = map_update_batch(to.as_fd(), &keys[..n], &values[..n]);
        result?;
        copied += written as u64;
    }
    Ok(copied)
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

/// One entry of a map (BPF_MAP_LOOKUP_ELEM).
pub fn map_lookup<K: aya::Pod, V: aya::Pod + Default>(map: impl AsFd, key: &K) -> io::Result<V> {
    let mut value = V::default();
    let mut attr = MapElemAttr {
        map_fd: fd_u32(&map)?,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}

/// Caps glibc's malloc arenas: every thread that allocates may otherwise
/// get an arena of its own, and memory freed by another thread stays with
/// the arena that gave it (the agent's decoding threads hand objects to the
/// event loop). A no-op on other C libraries.
pub fn limit_malloc_arenas(arenas: i32) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable of the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = arenas;
}

/// Gives memory malloc holds free back to the system (after a big sync,
/// whose temporary models are gone). A no-op on other C libraries.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
