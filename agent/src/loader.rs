//! Loads the embedded eBPF object, pins its maps and links under the bpffs
//! directory and attaches the programs to a cgroup v2 directory with
//! bpf_link, so that the datapath outlives the agent.
//!
//! Pin layout under `--bpffs`:
//! ```text
//! <bpffs>/SOCKLB_FRONTENDS, SOCKLB_SERVICES, ...   maps (socklb_common::map_names)
//! <bpffs>/links/connect4, connect6, ...           one bpf_link per hook
//! ```
//! Starting again adopts what is pinned: maps keep their contents, a link
//! whose program is unchanged is left alone, and a link whose program differs
//! (a new build) has its program swapped in place with BPF_LINK_UPDATE, so a
//! hook is never without a program and never runs two.

use std::{
    fs, io,
    os::{fd::AsFd, unix::fs::DirBuilderExt},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapType},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, links::FdLink},
};
use socklb_common::{
    AffinityKey, AffinityValue, BackendValue, Config, FrontendKey, FrontendValue, MemberKey, MemberValue,
    RevNat, ServiceCounters, ServiceName, ServiceValue, SlotKey, SlotValue, SockState, capacity, map_names,
    sys,
};

use crate::fs_checks::{self, FsCheckError};

/// The eBPF object built from `ebpf-sock` by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socklb-sock"));

/// One cgroup hook and the program that serves it.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// Also the link's pin name under `<bpffs>/links/`.
    pub name: &'static str,
    pub program: &'static str,
    /// The kernel that brought the hook and every helper its program uses
    /// (bpf_set_retval: 5.18).
    pub min_kernel: &'static str,
}

/// Every hook socklb attaches.
pub const HOOKS: [Hook; 11] = [
    Hook { name: "connect4", program: "sl_connect4", min_kernel: "5.18" },
    Hook { name: "connect6", program: "sl_connect6", min_kernel: "5.18" },
    Hook { name: "sendmsg4", program: "sl_sendmsg4", min_kernel: "5.18" },
    Hook { name: "sendmsg6", program: "sl_sendmsg6", min_kernel: "5.18" },
    Hook { name: "recvmsg4", program: "sl_recvmsg4", min_kernel: "5.2" },
    Hook { name: "recvmsg6", program: "sl_recvmsg6", min_kernel: "5.2" },
    Hook { name: "getpeername4", program: "sl_getpeer4", min_kernel: "5.8" },
    Hook { name: "getpeername6", program: "sl_getpeer6", min_kernel: "5.8" },
    Hook { name: "post_bind4", program: "sl_postbind4", min_kernel: "5.18" },
    Hook { name: "post_bind6", program: "sl_postbind6", min_kernel: "5.18" },
    Hook { name: "sock_release", program: "sl_release", min_kernel: "5.11" },
];

/// A hook's program, of either cgroup program type.
enum HookProgram<'a> {
    Addr(&'a mut CgroupSockAddr),
    Sock(&'a mut CgroupSock),
}

fn link_conversion(e: impl std::fmt::Display) -> ProgramError {
    ProgramError::IOError(io::Error::other(e.to_string()))
}

impl HookProgram<'_> {
    fn load(&mut self) -> Result<(), ProgramError> {
        match self {
            Self::Addr(p) => p.load(),
            Self::Sock(p) => p.load(),
        }
    }

    fn tag(&self) -> Result<u64, ProgramError> {
        match self {
            Self::Addr(p) => p.info().map(|i| i.tag()),
            Self::Sock(p) => p.info().map(|i| i.tag()),
        }
    }

    /// Swaps the program of a pinned link for this one (BPF_LINK_UPDATE).
    fn update_link(&self, link: std::os::fd::BorrowedFd<'_>) -> Result<(), ProgramError> {
        let fd = match self {
            Self::Addr(p) => p.fd()?,
            Self::Sock(p) => p.fd()?,
        };
        sys::link_update(link, fd.as_fd()).map_err(ProgramError::IOError)
    }

    /// Attaches with a bpf_link and returns the link, ready to pin.
    fn attach(&mut self, cgroup: &fs::File) -> Result<FdLink, ProgramError> {
        match self {
            Self::Addr(p) => {
                let id = p.attach(cgroup, CgroupAttachMode::Single)?;
                p.take_link(id)?.try_into().map_err(link_conversion)
            }
            Self::Sock(p) => {
                let id = p.attach(cgroup, CgroupAttachMode::Single)?;
                p.take_link(id)?.try_into().map_err(link_conversion)
            }
        }
    }
}

/// What a pinned map must look like for this build to adopt it.
#[derive(Clone, Copy, Debug)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
}

const fn spec<K, V>(name: &'static str, map_type: MapType) -> MapSpec {
    MapSpec { name, map_type, key_size: size_of::<K>() as u32, value_size: size_of::<V>() as u32 }
}

pub const MAP_SPECS: [MapSpec; 11] = [
    spec::<FrontendKey, FrontendValue>(map_names::FRONTENDS, MapType::Hash),
    spec::<u32, ServiceValue>(map_names::SERVICES, MapType::Hash),
    spec::<SlotKey, SlotValue>(map_names::SLOTS, MapType::Hash),
    spec::<u32, BackendValue>(map_names::BACKENDS, MapType::Hash),
    spec::<MemberKey, MemberValue>(map_names::MEMBERS, MapType::Hash),
    spec::<AffinityKey, AffinityValue>(map_names::AFFINITY, MapType::LruHash),
    spec::<u32, ServiceCounters>(map_names::COUNTERS, MapType::PerCpuArray),
    spec::<u32, Config>(map_names::CONFIG, MapType::Array),
    spec::<i32, SockState>(map_names::SOCK_STATE, MapType::SkStorage),
    spec::<u32, ServiceName>(map_names::SVC_NAMES, MapType::Hash),
    spec::<u64, RevNat>(map_names::UDP_CONNECTED, MapType::Hash),
];

/// Map sizes. Only used when a map is created; a pinned map keeps its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    pub services: u32,
    pub frontends: u32,
    pub backends: u32,
    pub slots: u32,
    pub members: u32,
    pub affinity: u32,
    pub udp_connected: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            services: capacity::SERVICES,
            frontends: capacity::FRONTENDS,
            backends: capacity::BACKENDS,
            slots: capacity::SLOTS,
            members: capacity::MEMBERS,
            affinity: capacity::AFFINITY,
            udp_connected: capacity::UDP_CONNECTED,
        }
    }
}

impl Capacities {
    /// Sizes from the two operator-facing numbers.
    pub fn sized(max_services: u32, max_backends: u32) -> Self {
        let services = max_services.max(2);
        let backends = max_backends.max(1);
        Self {
            services,
            frontends: services.saturating_mul(2),
            backends,
            slots: backends.saturating_mul(2),
            members: backends.saturating_mul(2),
            ..Self::default()
        }
    }

    fn max_entries(&self, map: &str) -> Option<u32> {
        Some(match map {
            map_names::FRONTENDS => self.frontends,
            map_names::SERVICES | map_names::COUNTERS | map_names::SVC_NAMES => self.services,
            map_names::BACKENDS => self.backends,
            map_names::SLOTS => self.slots,
            map_names::MEMBERS => self.members,
            map_names::AFFINITY => self.affinity,
            map_names::UDP_CONNECTED => self.udp_connected,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct InstallOptions {
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
    pub capacities: Capacities,
}

/// What happened to a hook's link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkAction {
    /// Newly attached and pinned.
    Attached,
    /// A pinned link with the same program was kept.
    Adopted,
    /// A pinned link got this build's program (BPF_LINK_UPDATE).
    Replaced,
}

#[derive(Clone, Debug, Default)]
pub struct InstallReport {
    pub links: Vec<(&'static str, LinkAction)>,
    pub maps_created: Vec<&'static str>,
    pub maps_adopted: Vec<&'static str>,
    /// Pinned maps whose size differs from the one asked for: (map, pinned,
    /// asked). A pinned map keeps its size until `socklb uninstall`.
    pub size_mismatches: Vec<(&'static str, u32, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(transparent)]
    Fs(#[from] FsCheckError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "pinned map {path} does not match this build ({found}; expected {expected}); \
         run `socklb uninstall` to remove the old datapath first"
    )]
    IncompatibleMap { path: PathBuf, found: String, expected: String },
    #[error("pinned map {path}: {source}")]
    PinnedMap { path: PathBuf, source: aya::maps::MapError },
    #[error("loading the eBPF object: {0}")]
    Object(#[source] Box<aya::EbpfError>),
    #[error("program {program} for hook cgroup/{hook} is missing from the object")]
    MissingProgram { program: &'static str, hook: &'static str },
    #[error(
        "the kernel refused the program for hook cgroup/{hook} (needs Linux >= {min_kernel} \
         with CONFIG_CGROUP_BPF): {source}"
    )]
    ProgramLoad { hook: &'static str, min_kernel: &'static str, source: Box<ProgramError> },
    #[error("attaching cgroup/{hook} to {cgroup}: {source}")]
    Attach { hook: &'static str, cgroup: PathBuf, source: Box<ProgramError> },
    #[error("pinned link {path}: {source}")]
    Link { path: PathBuf, source: io::Error },
    #[error(
        "pinned link {path} is attached to another cgroup (id {found}, --cgroup has id {expected}); \
         run `socklb uninstall` with that cgroup, or use another --bpffs"
    )]
    LinkElsewhere { path: PathBuf, found: u64, expected: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LoaderError + '_ {
    move |source| LoaderError::Io { path: path.to_owned(), source }
}

pub fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

pub fn map_pin(bpffs: &Path, name: &str) -> PathBuf {
    bpffs.join(name)
}

/// Loads, pins and attaches, adopting whatever is already pinned.
pub fn install(opts: &InstallOptions) -> Result<InstallReport, LoaderError> {
    let cgroup_id = fs_checks::check_cgroup2(&opts.cgroup)?;
    fs_checks::prepare_bpffs_dir(&opts.bpffs)?;
    let links = links_dir(&opts.bpffs);
    if !links.exists() {
        fs::DirBuilder::new().mode(0o700).create(&links).map_err(io_err(&links))?;
    }

    let mut report = InstallReport::default();
    let mut loader = EbpfLoader::new();
    for spec in &MAP_SPECS {
        let pin = map_pin(&opts.bpffs, spec.name);
        if pin.exists() {
            let pinned = check_pinned_map(&pin, spec)?;
            if let Some(asked) = opts.capacities.max_entries(spec.name).filter(|n| *n != pinned) {
                report.size_mismatches.push((spec.name, pinned, asked));
            }
            report.maps_adopted.push(spec.name);
        } else {
            report.maps_created.push(spec.name);
        }
        loader.map_pin_path(spec.name, pin);
        if let Some(n) = opts.capacities.max_entries(spec.name) {
            loader.map_max_entries(spec.name, n);
        }
    }
    // SOCKLB_BPF_OBJECT loads another build of the programs (the upgrade
    // tests use it); normally the object embedded at build time is used.
    let replacement = match std::env::var_os("SOCKLB_BPF_OBJECT") {
        Some(path) => Some(fs::read(&path).map_err(io_err(Path::new(&path)))?),
        None => None,
    };
    let object: &[u8] = replacement.as_deref().unwrap_or(OBJECT);
    let mut ebpf = loader.load(object).map_err(|e| LoaderError::Object(Box::new(e)))?;

    // Load every program before touching any hook, so that a kernel missing
    // one hook leaves the node exactly as it was.
    for hook in &HOOKS {
        program(&mut ebpf, hook)?.load().map_err(|e| LoaderError::ProgramLoad {
            hook: hook.name,
            min_kernel: hook.min_kernel,
            source: Box::new(e),
        })?;
    }

    let mut attached_now: Vec<PathBuf> = Vec::new();
    for hook in &HOOKS {
        match link_hook(&mut ebpf, hook, opts, cgroup_id, &links) {
            Ok(action) => {
                if action == LinkAction::Attached {
                    attached_now.push(links.join(hook.name));
                }
                report.links.push((hook.name, action));
            }
            Err(e) => {
                // Roll back what this run attached; adopted links stay.
                for pin in attached_now {
                    let _ = detach_pinned_link(&pin);
                }
                return Err(e);
            }
        }
    }
    Ok(report)
}

fn program<'a>(ebpf: &'a mut Ebpf, hook: &Hook) -> Result<HookProgram<'a>, LoaderError> {
    let missing = || LoaderError::MissingProgram { program: hook.program, hook: hook.name };
    match ebpf.program_mut(hook.program).ok_or_else(missing)? {
        aya::programs::Program::CgroupSockAddr(p) => Ok(HookProgram::Addr(p)),
        aya::programs::Program::CgroupSock(p) => Ok(HookProgram::Sock(p)),
        _ => Err(missing()),
    }
}

fn link_hook(
    ebpf: &mut Ebpf,
    hook: &Hook,
    opts: &InstallOptions,
    cgroup_id: u64,
    links: &Path,
) -> Result<LinkAction, LoaderError> {
    let pin = links.join(hook.name);
    let mut prog = program(ebpf, hook)?;
    if pin.exists() {
        let link_err = |source| LoaderError::Link { path: pin.clone(), source };
        let link = sys::obj_get(&pin).map_err(link_err)?;
        let info = sys::link_info(link.as_fd()).map_err(link_err)?;
        if info.link_type != sys::LINK_TYPE_CGROUP || info.cgroup_id != cgroup_id {
            return Err(LoaderError::LinkElsewhere {
                path: pin.clone(),
                found: info.cgroup_id,
                expected: cgroup_id,
            });
        }
        let prog_err = |e: ProgramError| LoaderError::Link {
            path: pin.clone(),
            source: io::Error::other(e.to_string()),
        };
        let pinned_tag = program_tag(info.prog_id).map_err(prog_err)?;
        if pinned_tag == prog.tag().map_err(prog_err)? {
            return Ok(LinkAction::Adopted);
        }
        prog.update_link(link.as_fd()).map_err(prog_err)?;
        return Ok(LinkAction::Replaced);
    }

    let cgroup = fs::File::open(&opts.cgroup).map_err(io_err(&opts.cgroup))?;
    let link = prog.attach(&cgroup).map_err(|e| LoaderError::Attach {
        hook: hook.name,
        cgroup: opts.cgroup.clone(),
        source: Box::new(e),
    })?;
    link.pin(&pin)
        .map_err(|e| LoaderError::Link { path: pin.clone(), source: io::Error::other(e.to_string()) })?;
    Ok(LinkAction::Attached)
}

/// The tag (a hash of the instructions) of a loaded program, by id.
fn program_tag(id: u32) -> Result<u64, ProgramError> {
    for info in aya::programs::loaded_programs() {
        let info = info?;
        if info.id() == id {
            return Ok(info.tag());
        }
    }
    Err(ProgramError::IOError(io::Error::from_raw_os_error(2)))
}

/// Checks a pinned map's layout; returns its max_entries.
fn check_pinned_map(pin: &Path, spec: &MapSpec) -> Result<u32, LoaderError> {
    let pinned_err = |source| LoaderError::PinnedMap { path: pin.to_owned(), source };
    let map = MapData::from_pin(pin).map_err(pinned_err)?;
    let info = map.info().map_err(pinned_err)?;
    let map_type = info.map_type().map_err(pinned_err)?;
    if map_type != spec.map_type || info.key_size() != spec.key_size || info.value_size() != spec.value_size {
        return Err(LoaderError::IncompatibleMap {
            path: pin.to_owned(),
            found: format!(
                "{:?}, key {} bytes, value {} bytes",
                map_type,
                info.key_size(),
                info.value_size()
            ),
            expected: format!(
                "{:?}, key {} bytes, value {} bytes",
                spec.map_type, spec.key_size, spec.value_size
            ),
        });
    }
    Ok(info.max_entries())
}

/// Whether every hook's pinned link is still attached to `cgroup` (for
/// `/healthz`): `Err` names the first that is not.
pub fn check_attached(cgroup: &Path, bpffs: &Path) -> Result<(), String> {
    let cgroup_id = fs_checks::check_cgroup2(cgroup).map_err(|e| e.to_string())?;
    let links = links_dir(bpffs);
    for hook in &HOOKS {
        let pin = links.join(hook.name);
        let link = sys::obj_get(&pin).map_err(|e| format!("link {}: {e}", pin.display()))?;
        let info = sys::link_info(link.as_fd()).map_err(|e| format!("link {}: {e}", pin.display()))?;
        if info.cgroup_id != cgroup_id {
            return Err(format!("link {} is not attached to {}", hook.name, cgroup.display()));
        }
    }
    Ok(())
}

fn detach_pinned_link(pin: &Path) -> Result<(), LoaderError> {
    let link_err = |source| LoaderError::Link { path: pin.to_owned(), source };
    let link = sys::obj_get(pin).map_err(link_err)?;
    sys::link_detach(link.as_fd()).map_err(link_err)?;
    fs::remove_file(pin).map_err(link_err)
}

/// What `uninstall` removed.
#[derive(Clone, Debug, Default)]
pub struct UninstallReport {
    pub links_detached: Vec<&'static str>,
    pub maps_removed: Vec<&'static str>,
}

/// Detaches every pinned link and removes all pins and the directory.
/// Safe to run twice; what is already gone is skipped.
pub fn uninstall(cgroup: &Path, bpffs: &Path) -> Result<UninstallReport, LoaderError> {
    let mut report = UninstallReport::default();
    if !bpffs.exists() {
        return Ok(report);
    }
    // The cgroup must still be a cgroup2 directory if it exists; a removed
    // cgroup has already dropped its programs, but its links stay pinned.
    if cgroup.exists() {
        fs_checks::check_cgroup2(cgroup)?;
    }
    fs_checks::check_bpffs(bpffs, bpffs)?;
    let links = links_dir(bpffs);
    for hook in &HOOKS {
        let pin = links.join(hook.name);
        if pin.exists() {
            detach_pinned_link(&pin)?;
            report.links_detached.push(hook.name);
        }
    }
    if links.exists() {
        fs::remove_dir(&links).map_err(io_err(&links))?;
    }
    for spec in &MAP_SPECS {
        let pin = map_pin(bpffs, spec.name);
        if pin.exists() {
            fs::remove_file(&pin).map_err(io_err(&pin))?;
            report.maps_removed.push(spec.name);
        }
    }
    fs::remove_dir(bpffs).map_err(io_err(bpffs))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_of_the_object_has_a_spec_and_a_name() {
        let names: Vec<_> = MAP_SPECS.iter().map(|s| s.name).collect();
        assert_eq!(names, map_names::ALL.to_vec());
    }

    #[test]
    fn the_embedded_object_holds_every_program_and_map() {
        let obj = aya_obj_names(OBJECT);
        for hook in &HOOKS {
            assert!(obj.contains(&hook.program.to_string()), "missing program {}", hook.program);
        }
        for name in map_names::ALL {
            assert!(obj.contains(&name.to_string()), "missing map {name}");
        }
    }

    /// Symbol names of the ELF object (parsed without a kernel).
    fn aya_obj_names(bytes: &[u8]) -> Vec<String> {
        // Symbol names live in .strtab; scanning NUL-separated strings is
        // enough to see that the build embedded the right object.
        bytes.split(|b| *b == 0).filter_map(|s| std::str::from_utf8(s).ok()).map(str::to_string).collect()
    }

    #[test]
    fn capacities_cover_the_sized_maps() {
        let c = Capacities::default();
        assert_eq!(c.max_entries(map_names::COUNTERS), Some(c.services));
        assert_eq!(c.max_entries(map_names::CONFIG), None);
        assert_eq!(c.max_entries(map_names::SOCK_STATE), None);
    }
}
