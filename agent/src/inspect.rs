//! Reading the pinned maps back for people: `socklb list`, `explain`,
//! `status`, and the counters behind `/metrics`.
//!
//! The kernel keeps no names: which Service a set belongs to comes from the
//! agent (`/sets`), as [`SetNames`]; without an agent, sets show by id.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use serde::Serialize;
use socklb_common::{SCOPE_EXTERNAL, SetCounters, SetState, frontend_flags, ip_from_addr, set_flags};

use socklb_bpf::{features, loader, maps::AyaMaps};
use socklb_lb::datapath::{Datapath, DatapathError, MapState};

use crate::metrics::{CounterSource, ServiceLabels};

/// Set ids to their Services' names (`namespace/name:port/PROTO family
/// policy`), as the agent's `/sets` lists them.
pub type SetNames = BTreeMap<u32, String>;

/// Parses the agent's `/sets` answer.
pub fn parse_set_names(text: &str) -> SetNames {
    text.lines()
        .filter_map(|l| {
            let (id, name) = l.split_once('\t')?;
            Some((id.trim().parse().ok()?, name.trim().to_string()))
        })
        .collect()
}

fn set_name(names: &SetNames, id: u32) -> String {
    names.get(&id).cloned().unwrap_or_else(|| format!("set {id}"))
}

/// One frontend and what it reaches.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FrontendRow {
    pub service: String,
    pub frontend: String,
    pub protocol: String,
    pub kind: String,
    pub scope: String,
    pub set_id: u32,
    pub flags: Vec<String>,
    pub backends: Vec<String>,
    pub translations: u64,
    pub refusals: u64,
}

fn kind(flags: u16) -> &'static str {
    if flags & frontend_flags::NODE_PORT != 0 {
        "NodePort"
    } else if flags & frontend_flags::EXTERNAL_IP != 0 {
        "ExternalIP"
    } else if flags & frontend_flags::LOAD_BALANCER != 0 {
        "LoadBalancer"
    } else {
        "ClusterIP"
    }
}

fn scope_name(scope: u8) -> &'static str {
    match scope {
        SCOPE_EXTERNAL => "external",
        _ => "internal",
    }
}

fn proto(n: u8) -> String {
    match n {
        socklb_common::PROTO_TCP => "TCP".into(),
        socklb_common::PROTO_UDP => "UDP".into(),
        other => other.to_string(),
    }
}

/// The rows of `socklb list`, sorted by service then frontend: every
/// frontend, every NodePort (on every node's addresses) and every other
/// node's set for `externalTrafficPolicy: Local` NodePorts.
pub fn frontend_rows(
    state: &MapState,
    counters: &BTreeMap<u32, SetCounters>,
    names: &SetNames,
) -> Vec<FrontendRow> {
    let row = |set_id: u32, frontend: String, protocol: String, kind: String, scope: &str| {
        let set = state.sets.get(&set_id).map(|e| SetState::unpack(e.state));
        let (backends, mut flags) = describe_set(state, set_id);
        if set.is_some_and(|s| s.count == 0) {
            flags.push("no-endpoints:refused".into());
        }
        if set.is_none() {
            flags.push("set-missing".into());
        }
        let c = counters.get(&set_id).copied().unwrap_or_default();
        FrontendRow {
            service: set_name(names, set_id),
            frontend,
            protocol,
            kind,
            scope: scope.into(),
            set_id,
            flags,
            backends,
            translations: c.translations,
            refusals: c.refused,
        }
    };
    let mut rows: Vec<FrontendRow> = state
        .frontends
        .iter()
        .map(|(k, f)| {
            let frontend = SocketAddr::new(ip_from_addr(&k.addr), u16::from_be(k.port)).to_string();
            row(f.set_id, frontend, proto(k.proto), kind(f.flags).into(), scope_name(k.scope))
        })
        .collect();
    let addresses =
        |family: u8| state.node_addrs.keys().filter(|a| socklb_common::family_of(a) == family).count();
    for (k, np) in &state.node_ports {
        let any = if k.family == socklb_common::FAMILY_V4 { "*" } else { "[*]" };
        let frontend = format!("{any}:{}", u16::from_be(k.port));
        let kind = format!("NodePort ({} node addresses)", addresses(k.family));
        rows.push(row(np.set_id, frontend, proto(k.proto), kind, "internal"));
    }
    for (k, v) in &state.node_local {
        let port = state.node_ports.iter().find(|(_, np)| np.set_id == k.set_id);
        let Some((nk, _)) = port else { continue };
        let frontend = format!("node {}:{}", k.node_id, u16::from_be(nk.port));
        rows.push(row(v.set_id, frontend, proto(nk.proto), "NodePort (another node)".into(), "internal"));
    }
    rows.sort_by(|a, b| (&a.service, &a.frontend, &a.scope).cmp(&(&b.service, &b.frontend, &b.scope)));
    rows
}

/// One backend set (a service port, family and policy) with its counters
/// once, and every frontend that reaches it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SetRow {
    pub service: String,
    pub set_id: u32,
    pub flags: Vec<String>,
    pub backends: Vec<String>,
    pub translations: u64,
    pub refusals: u64,
    pub frontends: Vec<FrontendEntry>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FrontendEntry {
    pub frontend: String,
    pub protocol: String,
    pub kind: String,
    pub scope: String,
}

/// The rows of `socklb list`: frontends grouped by the set they reach.
pub fn set_rows(frontends: &[FrontendRow]) -> Vec<SetRow> {
    let mut out: Vec<SetRow> = Vec::new();
    let mut index: BTreeMap<u32, usize> = BTreeMap::new();
    for f in frontends {
        let i = *index.entry(f.set_id).or_insert_with(|| {
            out.push(SetRow {
                service: f.service.clone(),
                set_id: f.set_id,
                flags: f.flags.clone(),
                backends: f.backends.clone(),
                translations: f.translations,
                refusals: f.refusals,
                frontends: Vec::new(),
            });
            out.len() - 1
        });
        out[i].frontends.push(FrontendEntry {
            frontend: f.frontend.clone(),
            protocol: f.protocol.clone(),
            kind: f.kind.clone(),
            scope: f.scope.clone(),
        });
    }
    out
}

/// A plain-text table: one row per set, its counters once, its further
/// frontends on the lines below.
pub fn render_table(rows: &[SetRow]) -> String {
    let headers = ["SERVICE", "FRONTEND", "KIND", "SCOPE", "FLAGS", "BACKENDS", "TRANSLATIONS", "REFUSED"];
    let mut cells: Vec<[String; 8]> = Vec::new();
    for r in rows {
        for (i, f) in r.frontends.iter().enumerate() {
            let frontend = format!("{}/{}", f.frontend, f.protocol);
            if i == 0 {
                cells.push([
                    r.service.clone(),
                    frontend,
                    f.kind.clone(),
                    f.scope.clone(),
                    if r.flags.is_empty() { "-".into() } else { r.flags.join(",") },
                    if r.backends.is_empty() { "(none)".into() } else { r.backends.join(",") },
                    r.translations.to_string(),
                    r.refusals.to_string(),
                ]);
            } else {
                cells.push([
                    String::new(),
                    frontend,
                    f.kind.clone(),
                    f.scope.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
        }
    }
    let mut widths = headers.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cols: &[&str]| {
        let mut text = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i + 1 == cols.len() {
                text.push_str(c);
            } else {
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, &headers);
    for row in &cells {
        let cols: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &cols);
    }
    out
}

/// Per-service labels of each set id, published by the agent with
/// `--per-service-metrics`.
pub type SetLabels = Arc<Mutex<BTreeMap<u32, ServiceLabels>>>;

/// Reads the counters of the pinned maps at scrape time.
#[derive(Debug)]
pub struct PinnedCounters {
    bpffs: std::path::PathBuf,
    maps: Mutex<Option<AyaMapsDebug>>,
    labels: Option<SetLabels>,
}

struct AyaMapsDebug(AyaMaps, std::path::PathBuf);

impl std::fmt::Debug for AyaMapsDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AyaMaps")
    }
}

impl PinnedCounters {
    pub fn new(bpffs: &Path, labels: Option<SetLabels>) -> Self {
        Self { bpffs: bpffs.to_owned(), maps: Mutex::new(None), labels }
    }

    /// Runs `read` on the maps of the active generation.
    fn with_maps<T: Default>(
        &self,
        read: impl FnOnce(&AyaMaps) -> Result<T, DatapathError>,
    ) -> Result<T, DatapathError> {
        let mut guard = self.maps.lock().map_err(|_| DatapathError::Read {
            map: socklb_common::map_names::COUNTERS,
            source: std::io::Error::other("lock poisoned"),
        })?;
        // Growth or a layout switch moves the maps to another generation:
        // follow it.
        let dir = loader::pins::active_dir(&self.bpffs);
        if guard.as_ref().is_none_or(|m| m.1 != dir) {
            *guard = Some(AyaMapsDebug(AyaMaps::open_dir(&dir)?, dir));
        }
        match guard.as_ref() {
            Some(maps) => read(&maps.0),
            None => Ok(T::default()),
        }
    }
}

impl CounterSource for PinnedCounters {
    fn totals(&self) -> (u64, u64) {
        self.with_maps(|m| m.read_counters())
            .map(|c| c.values().fold((0, 0), |(t, r), c| (t + c.translations, r + c.refused)))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "reading datapath counters");
                (0, 0)
            })
    }

    fn read(&self) -> Vec<(ServiceLabels, u64, u64)> {
        let Some(labels) = &self.labels else { return Vec::new() };
        let counters = match self.with_maps(|m| m.read_counters()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading datapath counters");
                return Vec::new();
            }
        };
        let Ok(labels) = labels.lock() else { return Vec::new() };
        let mut sums: BTreeMap<&ServiceLabels, (u64, u64)> = BTreeMap::new();
        for (id, l) in labels.iter() {
            let c = counters.get(id).copied().unwrap_or_default();
            let e = sums.entry(l).or_default();
            e.0 += c.translations;
            e.1 += c.refused;
        }
        sums.into_iter().map(|(l, (t, r))| (l.clone(), t, r)).collect()
    }

    fn events(&self) -> Vec<(&'static str, u64)> {
        self.with_maps(|m| m.read_stats()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading datapath events");
            Vec::new()
        })
    }
}

/// Every map entry the agent writes, one sorted line each, slots shown as
/// the backends of their set (their positions are the allocator's
/// business): the golden-file format.
pub fn dump_maps(state: &MapState, names: &SetNames) -> String {
    let addr =
        |a: &socklb_common::Addr, port: u16| SocketAddr::new(ip_from_addr(a), u16::from_be(port)).to_string();
    let mut lines = Vec::new();
    for (k, f) in &state.frontends {
        let scope = scope_name(k.scope);
        lines.push(format!(
            "frontend {}/{} {scope} -> set {} ({})",
            addr(&k.addr, k.port),
            proto(k.proto),
            f.set_id,
            kind(f.flags)
        ));
    }
    for (id, e) in &state.sets {
        let st = SetState::unpack(e.state);
        let backends: Vec<String> = state
            .backends_of(*id)
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{}/{}", addr(&b.addr, b.port), proto(b.proto)))
            .collect();
        lines.push(format!(
            "set {id} {:?} count={} flags={:#x} affinity={}s backends=[{}]",
            set_name(names, *id),
            st.count,
            st.flags,
            e.affinity_timeout_secs,
            backends.join(",")
        ));
    }
    for m in &state.members {
        lines.push(format!("member set={} backend={}/{}", m.set_id, addr(&m.addr, m.port), proto(m.proto)));
    }
    for (a, n) in &state.node_addrs {
        lines.push(format!("node-address {} -> node {} flags={:#x}", ip_from_addr(a), n.node_id, n.flags));
    }
    for (k, n) in &state.node_ports {
        lines.push(format!(
            "nodeport {}/{} ipv{} -> set {} flags={:#x}",
            u16::from_be(k.port),
            proto(k.proto),
            k.family,
            n.set_id,
            n.flags
        ));
    }
    for (k, n) in &state.node_local {
        lines.push(format!("node-local set={} node={} -> set {}", k.set_id, k.node_id, n.set_id));
    }
    lines.join("\n") + "\n"
}

/// One scope's entry for a destination, for `socklb explain`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ExplainEntry {
    pub scope: String,
    pub kind: String,
    pub service: String,
    pub set_id: u32,
    pub flags: Vec<String>,
    pub backends: Vec<String>,
    /// What a connect from this node gets.
    pub outcome: String,
}

/// What a destination maps to on this node.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Explanation {
    pub destination: String,
    pub protocol: String,
    pub is_service: bool,
    pub entries: Vec<ExplainEntry>,
}

/// The backends and flags of a set, as the programs see it.
fn describe_set(state: &MapState, set_id: u32) -> (Vec<String>, Vec<String>) {
    let backends: Vec<String> = state
        .backends_of(set_id)
        .unwrap_or_default()
        .iter()
        .map(|b| SocketAddr::new(ip_from_addr(&b.addr), u16::from_be(b.port)).to_string())
        .collect();
    let mut flags = Vec::new();
    if let Some(e) = state.sets.get(&set_id) {
        let st = SetState::unpack(e.state);
        if st.flags & set_flags::AFFINITY != 0 {
            flags.push(format!("affinity={}s", e.affinity_timeout_secs));
        }
        if st.flags & set_flags::LOCAL_ONLY != 0 {
            flags.push("local-only".into());
        }
        if st.flags & set_flags::TERMINATING_FALLBACK != 0 {
            flags.push("terminating-fallback".into());
        }
    }
    (backends, flags)
}

fn connect_outcome(backends: &[String]) -> String {
    if backends.is_empty() {
        "connect() is refused (no usable endpoint)".to_string()
    } else {
        format!("connect() goes to one of {} backend(s), chosen at random", backends.len())
    }
}

/// Explains `dest` from the map contents, following the programs' lookup:
/// frontends first, then NodePorts on node addresses.
pub fn explain(state: &MapState, dest: SocketAddr, proto_number: u8, names: &SetNames) -> Explanation {
    let addr = socklb_common::addr_from_ip(dest.ip());
    let mut entries = Vec::new();
    for scope in [socklb_common::SCOPE_INTERNAL, SCOPE_EXTERNAL] {
        let key = socklb_common::FrontendKey { addr, port: dest.port().to_be(), proto: proto_number, scope };
        let Some(f) = state.frontends.get(&key) else { continue };
        let (backends, flags) = describe_set(state, f.set_id);
        let outcome = match scope {
            SCOPE_EXTERNAL => "not used by sockets on this node (traffic from outside the node)".to_string(),
            _ => connect_outcome(&backends),
        };
        entries.push(ExplainEntry {
            scope: scope_name(scope).into(),
            kind: kind(f.flags).into(),
            service: set_name(names, f.set_id),
            set_id: f.set_id,
            flags,
            backends,
            outcome,
        });
    }
    let node_port = socklb_common::NodePortKey {
        port: dest.port().to_be(),
        proto: proto_number,
        family: socklb_common::family_of(&addr),
    };
    if entries.is_empty()
        && let (Some(node), Some(np)) = (state.node_addrs.get(&addr), state.node_ports.get(&node_port))
    {
        use socklb_common::{node_flags, nodeport_flags};
        let this_node = node.flags & node_flags::THIS_NODE != 0;
        let whose = if this_node { "this node".to_string() } else { format!("node id {}", node.node_id) };
        let local = np.flags & nodeport_flags::EXTERNAL_LOCAL != 0 && !this_node;
        let (set_id, refused) = if local {
            let key = socklb_common::NodeLocalKey { set_id: np.set_id, node_id: node.node_id };
            match state.node_local.get(&key) {
                Some(v) => (v.set_id, false),
                None => (np.set_id, true),
            }
        } else {
            (np.set_id, false)
        };
        let (backends, mut flags) = describe_set(state, set_id);
        if node.flags & node_flags::HOST_NETNS_ONLY != 0 {
            flags.push("host-netns-only".into());
        }
        if np.flags & nodeport_flags::EXTERNAL_LOCAL != 0 {
            flags.push("external-traffic-policy-local".into());
        }
        let outcome = if refused {
            format!("connect() is refused: {whose} has no endpoint (externalTrafficPolicy: Local)")
        } else if local {
            format!("{} of {whose}'s endpoints (externalTrafficPolicy: Local)", connect_outcome(&backends))
        } else {
            connect_outcome(&backends)
        };
        entries.push(ExplainEntry {
            scope: "internal".into(),
            kind: format!("NodePort on {whose}"),
            service: set_name(names, set_id),
            set_id,
            flags,
            backends: if refused { Vec::new() } else { backends },
            outcome,
        });
    }
    let is_service = entries.iter().any(|e| e.scope == "internal");
    Explanation { destination: dest.to_string(), protocol: proto(proto_number), is_service, entries }
}

pub fn render_explanation(e: &Explanation) -> String {
    let mut out = String::new();
    if !e.is_service {
        out.push_str(&format!(
            "{}/{} is not a service on this node: connects to it are not translated\n",
            e.destination, e.protocol
        ));
    }
    for x in &e.entries {
        out.push_str(&format!(
            "{}/{} [{} scope] {} of {} (set {})\n",
            e.destination, e.protocol, x.scope, x.kind, x.service, x.set_id
        ));
        if !x.flags.is_empty() {
            out.push_str(&format!("  flags: {}\n", x.flags.join(", ")));
        }
        if !x.backends.is_empty() {
            out.push_str(&format!("  backends: {}\n", x.backends.join(", ")));
        }
        out.push_str(&format!("  {}\n", x.outcome));
    }
    out
}

#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub hook: &'static str,
    pub attached: bool,
    pub program_id: Option<u32>,
    /// Whether the link is attached to the cgroup given.
    pub on_this_cgroup: Option<bool>,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct MapStatus {
    pub map: &'static str,
    pub pinned: bool,
    pub entries: Option<usize>,
    pub capacity: Option<u32>,
    /// The kernel's accounting of its memory (`memlock`), in bytes.
    pub memory: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub kernel: String,
    pub cgroup: String,
    pub bpffs: String,
    /// The generation of maps the programs use (see `loader::pins`).
    pub generation: Option<String>,
    /// Which program each hook gets on this kernel, and what is missing.
    pub programs: loader::Support,
    pub hooks: Vec<HookStatus>,
    pub maps: Vec<MapStatus>,
    /// The datapath's event counters (`socklb_common::stats`).
    pub events: Vec<(&'static str, u64)>,
    pub features: Vec<features::Feature>,
}

/// What is attached and pinned, and what the kernel offers.
pub fn status(cgroup: &Path, bpffs: &Path) -> Status {
    use std::os::{fd::AsFd, unix::fs::MetadataExt};
    let cgroup_id = std::fs::metadata(cgroup).ok().map(|m| m.ino());
    let links = loader::links_dir(bpffs);
    let hooks = loader::HOOKS
        .iter()
        .map(|h| {
            let pin = links.join(h.name);
            let info =
                socklb_common::sys::obj_get(&pin).and_then(|fd| socklb_common::sys::link_info(fd.as_fd()));
            match info {
                Ok(i) => HookStatus {
                    hook: h.name,
                    attached: true,
                    program_id: Some(i.prog_id),
                    on_this_cgroup: cgroup_id.map(|c| c == i.cgroup_id),
                    detail: format!("link {} (cgroup id {})", i.id, i.cgroup_id),
                },
                Err(e) => HookStatus {
                    hook: h.name,
                    attached: false,
                    program_id: None,
                    on_this_cgroup: None,
                    detail: format!("{}: {e}", pin.display()),
                },
            }
        })
        .collect();
    let opened = AyaMaps::open(bpffs).ok();
    let state = opened.as_ref().and_then(|m| m.read_state().ok());
    let events = opened.as_ref().and_then(|m| m.read_stats().ok()).unwrap_or_default();
    let maps = loader::MAP_SPECS
        .iter()
        .map(|spec| {
            let pin = loader::map_pin(bpffs, spec.name);
            let data = aya::maps::MapData::from_pin(&pin).ok();
            let capacity = data.as_ref().and_then(|d| d.info().ok()).map(|i| i.max_entries());
            let entries = state.as_ref().and_then(|st| match spec.name {
                socklb_common::map_names::FRONTENDS => Some(st.frontends.len()),
                socklb_common::map_names::SETS => Some(st.sets.len()),
                socklb_common::map_names::BACKENDS => Some(st.slots.len()),
                socklb_common::map_names::MEMBERS => Some(st.members.len()),
                socklb_common::map_names::NODE_ADDRS => Some(st.node_addrs.len()),
                socklb_common::map_names::NODEPORTS => Some(st.node_ports.len()),
                socklb_common::map_names::NODE_LOCAL => Some(st.node_local.len()),
                _ => None,
            });
            let memory = data.as_ref().and_then(socklb_bpf::maps::map_memlock);
            MapStatus { map: spec.name, pinned: data.is_some(), entries, capacity, memory }
        })
        .collect();
    Status {
        kernel: features::kernel_release(),
        cgroup: cgroup.display().to_string(),
        bpffs: bpffs.display().to_string(),
        generation: loader::pins::active_generation(bpffs).map(|g| g.name()),
        programs: loader::hooks::probe(false),
        hooks,
        maps,
        events,
        features: features::detect(),
    }
}

pub fn render_status(s: &Status) -> String {
    let mut out = format!(
        "kernel {}\ncgroup {}\nbpffs  {}\nmaps   {}\n\nHOOK           ATTACHED  PROGRAM  VARIANT  DETAIL\n",
        s.kernel,
        s.cgroup,
        s.bpffs,
        s.generation.as_deref().unwrap_or("(none pinned)")
    );
    for h in &s.hooks {
        let attached = match (h.attached, h.on_this_cgroup) {
            (true, Some(false)) => "elsewhere",
            (true, _) => "yes",
            (false, _) => "no",
        };
        let prog = h.program_id.map_or("-".into(), |p| p.to_string());
        let variant = match s.programs.program_for(h.hook) {
            Some(c) if c.compat => "compat",
            Some(_) => "full",
            None => "MISSING",
        };
        out.push_str(&format!("{:<14} {:<9} {:<8} {:<8} {}\n", h.hook, attached, prog, variant, h.detail));
    }
    if s.programs.refusals_are_eperm() {
        out.push_str("(compat: no bpf_set_retval on this kernel; refusals are EPERM)\n");
    }
    for m in &s.programs.missing {
        out.push_str(&format!(
            "MISSING: cgroup/{} needs {} (Linux {}): {}\n",
            m.hook, m.what, m.since, m.kernel_says
        ));
    }
    out.push_str("\nMAP                   ENTRIES   CAPACITY  FILL    MEMORY\n");
    for m in &s.maps {
        let entries = m.entries.map_or("-".into(), |e| e.to_string());
        let cap =
            m.capacity.map_or(if m.pinned { "-".into() } else { "not pinned".into() }, |c| c.to_string());
        let fill = match (m.entries, m.capacity) {
            (Some(e), Some(c)) if c > 0 => format!("{:.1}%", 100.0 * e as f64 / f64::from(c)),
            _ => "-".into(),
        };
        let memory = m.memory.map_or("-".into(), |b| format!("{:.1} KiB", b as f64 / 1024.0));
        out.push_str(&format!("{:<21} {:<9} {:<9} {:<7} {}\n", m.map, entries, cap, fill, memory));
    }
    if !s.events.is_empty() {
        out.push_str("\nDATAPATH EVENT        COUNT\n");
        for (event, n) in &s.events {
            out.push_str(&format!("{event:<21} {n}\n"));
        }
    }
    out.push_str("\nFEATURE                                   AVAILABLE  DETAIL\n");
    for f in &s.features {
        out.push_str(&format!(
            "{:<41} {:<10} {}\n",
            f.name,
            if f.available { "yes" } else { "NO" },
            f.detail
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use socklb_common::{BackendValue, FrontendKey, FrontendValue, SetEntry, addr_from_ip};

    use super::*;

    fn state() -> MapState {
        let mut s = MapState::default();
        let vip = FrontendKey {
            addr: addr_from_ip("10.96.0.10".parse().expect("ip")),
            port: 80u16.to_be(),
            proto: 6,
            scope: 1,
        };
        s.frontends.insert(
            vip,
            FrontendValue { set_id: 1, flags: socklb_common::frontend_flags::CLUSTER_IP, _pad: 0 },
        );
        let empty = FrontendKey { addr: addr_from_ip("10.96.0.11".parse().expect("ip")), ..vip };
        s.frontends.insert(
            empty,
            FrontendValue { set_id: 2, flags: socklb_common::frontend_flags::CLUSTER_IP, _pad: 0 },
        );
        let present = set_flags::PRESENT;
        s.sets.insert(
            1,
            SetEntry { state: SetState { base: 7, count: 1, flags: present }.pack(), ..Default::default() },
        );
        s.sets.insert(
            2,
            SetEntry { state: SetState { base: 0, count: 0, flags: present }.pack(), ..Default::default() },
        );
        s.slots.insert(
            7,
            BackendValue::new(addr_from_ip("10.244.0.1".parse().expect("ip")), 8080u16.to_be(), 6),
        );
        s
    }

    fn names() -> SetNames {
        parse_set_names("1\tdefault/web:80/TCP ipv4 cluster\n")
    }

    #[test]
    fn explain_names_the_service_and_its_backends() {
        let e = explain(&state(), "10.96.0.10:80".parse().expect("addr"), 6, &names());
        assert!(e.is_service);
        assert_eq!(e.entries.len(), 1);
        assert_eq!(e.entries[0].service, "default/web:80/TCP ipv4 cluster");
        assert_eq!(e.entries[0].backends, ["10.244.0.1:8080"]);
        let text = render_explanation(&e);
        assert!(text.contains("ClusterIP of default/web"), "{text}");
    }

    #[test]
    fn explain_says_when_a_service_refuses_and_when_it_is_not_a_service() {
        let e = explain(&state(), "10.96.0.11:80".parse().expect("addr"), 6, &names());
        assert!(e.entries[0].outcome.contains("refused"));
        assert_eq!(e.entries[0].service, "set 2", "no name from the agent: the set id");
        let e = explain(&state(), "10.96.0.10:80".parse().expect("addr"), 17, &names());
        assert!(!e.is_service, "UDP is another frontend");
        assert!(render_explanation(&e).contains("is not a service"));
    }

    #[test]
    fn list_shows_each_sets_counters_once_however_many_frontends_reach_it() {
        let mut st = state();
        let node_port = FrontendKey {
            addr: addr_from_ip("192.168.1.5".parse().expect("ip")),
            port: 30080u16.to_be(),
            proto: 6,
            scope: 1,
        };
        st.frontends.insert(
            node_port,
            FrontendValue { set_id: 1, flags: socklb_common::frontend_flags::NODE_PORT, _pad: 0 },
        );
        let counters = BTreeMap::from([(1, SetCounters { translations: 4242, refused: 7 })]);
        let rows = set_rows(&frontend_rows(&st, &counters, &names()));
        assert_eq!(rows.len(), 2);
        let web = rows.iter().find(|r| r.set_id == 1).expect("web");
        assert_eq!(web.frontends.len(), 2);
        let text = render_table(&rows);
        assert_eq!(text.matches("4242").count(), 1, "{text}");
        assert!(text.contains("192.168.1.5:30080/TCP"), "{text}");
    }
}
