//! Loads the embedded eBPF object, pins its maps and links under the bpffs
//! directory and attaches the programs to a cgroup v2 directory with
//! bpf_link, so that the datapath outlives the agent.
//!
//! * [`hooks`]: the hooks, their programs and what each needs from the
//!   kernel (probed at start; a compat variant where `bpf_set_retval` is
//!   missing).
//! * [`pins`]: the pin layout, and generations of maps for upgrades across
//!   a map layout change.
//!
//! Starting again adopts what is pinned: maps keep their contents, a link
//! whose program is unchanged is left alone, and a link whose program differs
//! (a new build) has its program swapped in place with BPF_LINK_UPDATE, so a
//! hook is never without a program and never runs two. A build whose map
//! layout differs from the live one builds its maps beside them and swaps
//! the programs only once they are filled ([`PendingSwitch`]).

pub mod hooks;
pub mod pins;

use std::{
    fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapType},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, links::FdLink},
};
pub use hooks::{HOOKS, Hook, Support};
pub use pins::Generation;
use socklb_common::{
    Addr, AffinityKey, AffinityValue, BackendValue, Config, FrontendKey, FrontendValue, LAYOUT_VERSION,
    MemberKey, MemberValue, NodeAddrValue, NodeLocalKey, NodeLocalValue, NodePortKey, NodePortValue, RevNat,
    SetCounters, SetEntry, SockState, UdpIndexKey, UdpIndexValue, UdpRevKey, UdpRevValue, UdpSockState,
    map_names, sys,
};
pub use socklb_lb::capacity::Capacities;

use crate::fs_checks::{self, FsCheckError};

/// The eBPF object built from `ebpf-sock` by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socklb-sock"));

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
    /// Per-socket state that a generation of another layout may keep using
    /// when this map's own layout is the same (see [`pins`]).
    pub shared_across_layouts: bool,
}

const fn spec<K, V>(name: &'static str, map_type: MapType) -> MapSpec {
    MapSpec {
        name,
        map_type,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        shared_across_layouts: false,
    }
}

const fn shared<K, V>(name: &'static str, map_type: MapType) -> MapSpec {
    MapSpec { shared_across_layouts: true, ..spec::<K, V>(name, map_type) }
}

pub const MAP_SPECS: [MapSpec; 17] = [
    spec::<FrontendKey, FrontendValue>(map_names::FRONTENDS, MapType::Hash),
    spec::<u32, SetEntry>(map_names::SETS, MapType::Array),
    spec::<u32, BackendValue>(map_names::BACKENDS, MapType::Array),
    spec::<MemberKey, MemberValue>(map_names::MEMBERS, MapType::Hash),
    // State the programs write: kept by a generation that replaces another
    // when its layout is the same (a layout change, or growth).
    shared::<AffinityKey, AffinityValue>(map_names::AFFINITY, MapType::Hash),
    spec::<u32, SetCounters>(map_names::COUNTERS, MapType::Array),
    spec::<u32, Config>(map_names::CONFIG, MapType::Array),
    // Reverse translations of live sockets: what getpeername and recvmsg
    // of established sockets read. Nothing could refill them. (SOCK_STATE
    // is layouts 1-3's, read only now.)
    shared::<i32, SockState>(map_names::SOCK_STATE, MapType::SkStorage),
    shared::<u64, RevNat>(map_names::UDP_CONNECTED, MapType::Hash),
    spec::<Addr, NodeAddrValue>(map_names::NODE_ADDRS, MapType::Hash),
    spec::<NodePortKey, NodePortValue>(map_names::NODEPORTS, MapType::Hash),
    spec::<NodeLocalKey, NodeLocalValue>(map_names::NODE_LOCAL, MapType::Hash),
    shared::<i32, RevNat>(map_names::SOCK_TCP, MapType::SkStorage),
    shared::<i32, UdpSockState>(map_names::SOCK_UDP, MapType::SkStorage),
    shared::<UdpRevKey, UdpRevValue>(map_names::UDP_REV, MapType::Hash),
    shared::<UdpIndexKey, UdpIndexValue>(map_names::UDP_REV_INDEX, MapType::Hash),
    shared::<u32, u64>(map_names::STATS, MapType::PerCpuArray),
];

#[derive(Clone, Debug)]
pub struct InstallOptions {
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
    pub capacities: Capacities,
    /// Behave as on a kernel without `bpf_set_retval` (tests only: the
    /// agent sets it from `SOCKLB_TEST_NO_SET_RETVAL`).
    pub without_set_retval: bool,
    /// Build a new generation of this layout beside the live one even if
    /// that one is of this layout too (growing the maps).
    pub fresh_generation: bool,
}

impl InstallOptions {
    pub fn new(cgroup: PathBuf, bpffs: PathBuf) -> Self {
        Self {
            cgroup,
            bpffs,
            capacities: Capacities::default(),
            without_set_retval: false,
            fresh_generation: false,
        }
    }
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
    /// Left serving the old generation until [`PendingSwitch::commit`].
    Pending,
}

#[derive(Clone, Debug, Default)]
pub struct InstallReport {
    pub links: Vec<(&'static str, LinkAction)>,
    pub maps_created: Vec<&'static str>,
    pub maps_adopted: Vec<&'static str>,
    /// Pinned maps whose size differs from the one asked for: (map, pinned,
    /// asked). A pinned map keeps its size until `socklb uninstall`.
    pub size_mismatches: Vec<(&'static str, u32, u32)>,
    /// The generation the agent writes.
    pub generation: String,
    /// The generation that serves until the switch, when it is another.
    pub replacing: Option<String>,
    /// State maps the new generation shares with the one it replaces.
    pub shared: Vec<&'static str>,
    /// Generations removed (left over from an interrupted switch).
    pub removed: Vec<String>,
    /// Which program each hook runs.
    pub support: Support,
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
    #[error("this kernel lacks what socklb needs; nothing was changed: {}", describe_missing(.0))]
    Unsupported(Vec<hooks::Missing>),
    #[error("the kernel refused the program {program} for hook cgroup/{hook}: {source}")]
    ProgramLoad { hook: &'static str, program: &'static str, source: Box<ProgramError> },
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

fn describe_missing(missing: &[hooks::Missing]) -> String {
    missing
        .iter()
        .map(|m| format!("cgroup/{} needs {} (Linux {}; {})", m.hook, m.what, m.since, m.kernel_says))
        .collect::<Vec<_>>()
        .join("; ")
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LoaderError + '_ {
    move |source| LoaderError::Io { path: path.to_owned(), source }
}

pub fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

/// Where a map of the active generation is pinned (for tools and the
/// agent's readers: `socklb list`, counters, stale-socket sweeps).
pub fn map_pin(bpffs: &Path, name: &str) -> PathBuf {
    pins::active_dir(bpffs).join(name)
}

/// The datapath after [`install`].
pub struct Installed {
    pub report: InstallReport,
    /// Where the agent's maps are (this build's generation).
    pub maps_dir: PathBuf,
    /// Set when another layout still serves: the agent fills `maps_dir`
    /// first, then commits the switch.
    pub switch: Option<PendingSwitch>,
}

/// Loads, pins and attaches, adopting whatever is already pinned.
pub fn install(opts: &InstallOptions) -> Result<Installed, LoaderError> {
    let cgroup_id = fs_checks::check_cgroup2(&opts.cgroup)?;
    fs_checks::prepare_bpffs_dir(&opts.bpffs)?;
    let links = links_dir(&opts.bpffs);
    if !links.exists() {
        std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
            .create(&links)
            .map_err(io_err(&links))?;
    }
    // Everything the programs need, probed before anything is touched.
    let support = hooks::probe(opts.without_set_retval);
    if !support.missing.is_empty() {
        return Err(LoaderError::Unsupported(support.missing));
    }

    let gens = pins::generations(&opts.bpffs).map_err(io_err(&opts.bpffs))?;
    let live = pins::live_generation(&links, &gens);
    let ours = |g: &&Generation| g.layout == LAYOUT_VERSION;
    let (target, replacing) = match &live {
        // Growth: a fresh generation of this layout, sized anew; a leftover
        // of an interrupted growth is removed first (it may be too small).
        Some(old) if opts.fresh_generation => {
            for g in gens.iter().filter(|g| g.dir != old.dir && g.layout == LAYOUT_VERSION) {
                pins::remove_generation(g).map_err(io_err(&g.dir))?;
            }
            let gens = pins::generations(&opts.bpffs).map_err(io_err(&opts.bpffs))?;
            (pins::create_generation(&opts.bpffs, &gens).map_err(io_err(&opts.bpffs))?, Some(old.clone()))
        }
        Some(g) if g.layout == LAYOUT_VERSION => (g.clone(), None),
        // Another layout serves: build ours beside it (reusing one left by
        // an interrupted attempt) and switch once it is filled.
        Some(old) => {
            let t = match gens.iter().filter(ours).find(|g| g.dir != old.dir) {
                Some(t) => t.clone(),
                None => pins::create_generation(&opts.bpffs, &gens).map_err(io_err(&opts.bpffs))?,
            };
            (t, Some(old.clone()))
        }
        // Nothing serves (a fresh node, or links whose maps are gone): the
        // newest generation of ours, or a new one, is attached at once.
        None => match gens.iter().rfind(ours) {
            Some(t) => (t.clone(), None),
            None => (pins::create_generation(&opts.bpffs, &gens).map_err(io_err(&opts.bpffs))?, None),
        },
    };

    let mut report = InstallReport {
        generation: target.name(),
        replacing: replacing.as_ref().map(Generation::name),
        support: support.clone(),
        ..Default::default()
    };
    if let Some(old) = &replacing {
        report.shared = pins::share_state_maps(old, &target, &MAP_SPECS);
    }
    let mut loader = EbpfLoader::new();
    for spec in &MAP_SPECS {
        let pin = target.map(spec.name);
        if pin.exists() {
            let pinned = check_pinned_map(&pin, spec)?;
            // The agent sizes its own maps from what it programs (growing
            // them by generations); only the tables the programs fill are
            // sized by flags, and those keep their pinned size.
            if spec.shared_across_layouts
                && let Some(asked) = opts.capacities.max_entries(spec.name).filter(|n| *n != pinned)
            {
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

    // Load every program before touching any hook, so that a kernel that
    // refuses one leaves the node exactly as it was.
    for hook in &HOOKS {
        let name = chosen(&support, hook);
        program(&mut ebpf, hook, name)?.load().map_err(|e| LoaderError::ProgramLoad {
            hook: hook.name,
            program: name,
            source: Box::new(e),
        })?;
    }

    let mut switch = PendingSwitch {
        ebpf,
        support,
        cgroup: opts.cgroup.clone(),
        cgroup_id,
        bpffs: opts.bpffs.clone(),
        target,
        old: replacing,
    };
    let maps_dir = switch.target.dir.clone();
    if switch.old.is_some() {
        report.links = HOOKS.iter().map(|h| (h.name, LinkAction::Pending)).collect();
        return Ok(Installed { report, maps_dir, switch: Some(switch) });
    }
    let done = switch.link_all()?;
    report.links = done.links;
    report.removed = done.removed;
    Ok(Installed { report, maps_dir, switch: None })
}

/// The program a hook gets on this kernel.
fn chosen(support: &Support, hook: &Hook) -> &'static str {
    support.program_for(hook.name).map_or(hook.program, |c| c.program)
}

fn program<'a>(ebpf: &'a mut Ebpf, hook: &Hook, name: &'static str) -> Result<HookProgram<'a>, LoaderError> {
    let missing = || LoaderError::MissingProgram { program: name, hook: hook.name };
    match ebpf.program_mut(name).ok_or_else(missing)? {
        aya::programs::Program::CgroupSockAddr(p) => Ok(HookProgram::Addr(p)),
        aya::programs::Program::CgroupSock(p) => Ok(HookProgram::Sock(p)),
        _ => Err(missing()),
    }
}

/// Programs loaded against a generation's maps, not yet attached. For a
/// layout change the agent fills the new maps, then commits: every hook's
/// program is swapped in place and the old generation removed.
pub struct PendingSwitch {
    ebpf: Ebpf,
    support: Support,
    cgroup: PathBuf,
    cgroup_id: u64,
    bpffs: PathBuf,
    target: Generation,
    /// The generation of another layout that serves until the switch.
    old: Option<Generation>,
}

/// What a switch did.
#[derive(Clone, Debug, Default)]
pub struct SwitchReport {
    pub links: Vec<(&'static str, LinkAction)>,
    /// Generations unpinned (the one replaced, and leftovers).
    pub removed: Vec<String>,
}

impl PendingSwitch {
    pub fn target(&self) -> &Generation {
        &self.target
    }

    pub fn replacing(&self) -> Option<&Generation> {
        self.old.as_ref()
    }

    /// Points every hook at this generation's programs, then unpins every
    /// other generation.
    pub fn commit(mut self) -> Result<SwitchReport, LoaderError> {
        self.link_all()
    }

    fn link_all(&mut self) -> Result<SwitchReport, LoaderError> {
        let links = links_dir(&self.bpffs);
        let mut report = SwitchReport::default();
        let mut attached_now: Vec<PathBuf> = Vec::new();
        for hook in &HOOKS {
            match self.link_hook(hook, &links) {
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
        let gens = pins::generations(&self.bpffs).map_err(io_err(&self.bpffs))?;
        for g in gens.iter().filter(|g| g.dir != self.target.dir) {
            pins::remove_generation(g).map_err(io_err(&g.dir))?;
            report.removed.push(g.name());
        }
        Ok(report)
    }

    fn link_hook(&mut self, hook: &Hook, links: &Path) -> Result<LinkAction, LoaderError> {
        let pin = links.join(hook.name);
        let name = chosen(&self.support, hook);
        let target_maps: Vec<u32> =
            MAP_SPECS.iter().filter_map(|m| pins::map_id(&self.target.map(m.name))).collect();
        let mut prog = program(&mut self.ebpf, hook, name)?;
        if pin.exists() {
            let link_err = |source| LoaderError::Link { path: pin.clone(), source };
            let link = sys::obj_get(&pin).map_err(link_err)?;
            let info = sys::link_info(link.as_fd()).map_err(link_err)?;
            if info.link_type != sys::LINK_TYPE_CGROUP || info.cgroup_id != self.cgroup_id {
                return Err(LoaderError::LinkElsewhere {
                    path: pin.clone(),
                    found: info.cgroup_id,
                    expected: self.cgroup_id,
                });
            }
            let prog_err = |e: ProgramError| LoaderError::Link {
                path: pin.clone(),
                source: io::Error::other(e.to_string()),
            };
            // The same instructions against the same maps: nothing to do.
            // (The kernel's tag ignores map fds, so the maps are checked
            // on their own.)
            let pinned_tag = program_tag(info.prog_id).map_err(prog_err)?;
            let uses_target = pins::program_map_ids(info.prog_id)
                .is_some_and(|ids| ids.iter().all(|id| target_maps.contains(id)));
            if pinned_tag == prog.tag().map_err(prog_err)? && uses_target {
                return Ok(LinkAction::Adopted);
            }
            prog.update_link(link.as_fd()).map_err(prog_err)?;
            return Ok(LinkAction::Replaced);
        }

        let cgroup = fs::File::open(&self.cgroup).map_err(io_err(&self.cgroup))?;
        let link = prog.attach(&cgroup).map_err(|e| LoaderError::Attach {
            hook: hook.name,
            cgroup: self.cgroup.clone(),
            source: Box::new(e),
        })?;
        link.pin(&pin)
            .map_err(|e| LoaderError::Link { path: pin.clone(), source: io::Error::other(e.to_string()) })?;
        Ok(LinkAction::Attached)
    }
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
    pub maps_removed: Vec<String>,
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
    for g in pins::generations(bpffs).map_err(io_err(bpffs))? {
        report.maps_removed.extend(pins::remove_generation(&g).map_err(io_err(&g.dir))?);
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
            for program in [Some(hook.program), hook.compat].into_iter().flatten() {
                assert!(obj.contains(&program.to_string()), "missing program {program}");
            }
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
        assert_eq!(c.max_entries(map_names::COUNTERS), Some(c.sets));
        assert_eq!(c.max_entries(map_names::CONFIG), None);
        assert_eq!(c.max_entries(map_names::SOCK_STATE), None);
        for spec in MAP_SPECS.iter().filter(|s| !s.shared_across_layouts) {
            let sized = c.max_entries(spec.name).is_some();
            assert!(sized || spec.name == map_names::CONFIG, "{} has no size", spec.name);
        }
    }
}
