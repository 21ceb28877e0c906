//! Reading the pinned maps back for people: `socklb list` and the
//! per-service counters behind `/metrics`.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, sync::Mutex};

use serde::Serialize;
use socklb_common::{SCOPE_EXTERNAL, ServiceCounters, frontend_flags, ip_from_addr, service_flags};

use crate::{
    datapath::{Datapath, DatapathError, MapState, aya_maps::AyaMaps},
    metrics::{CounterSource, ServiceLabels},
    model::SetName,
};

/// One frontend and what it reaches.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FrontendRow {
    pub service: String,
    pub frontend: String,
    pub protocol: String,
    pub kind: String,
    pub scope: String,
    pub service_id: u32,
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
        socklb_common::SCOPE_BIND_GUARD => "bind-guard",
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

/// The rows of `socklb list`, sorted by service then frontend.
pub fn frontend_rows(state: &MapState, counters: &BTreeMap<u32, ServiceCounters>) -> Vec<FrontendRow> {
    let mut rows: Vec<FrontendRow> = state
        .frontends
        .iter()
        .map(|(k, f)| {
            let svc = state.services.get(&f.service_id);
            let name = state.names.get(&f.service_id).map(|n| n.as_str().to_string()).unwrap_or_default();
            let mut flags = Vec::new();
            if let Some(s) = svc {
                if s.flags & service_flags::AFFINITY != 0 {
                    flags.push(format!("affinity={}s", s.affinity_timeout_secs));
                }
                if s.flags & service_flags::LOCAL_ONLY != 0 {
                    flags.push("local-only".into());
                }
                if s.flags & service_flags::TERMINATING_FALLBACK != 0 {
                    flags.push("terminating-fallback".into());
                }
                if s.count == 0 {
                    flags.push("no-endpoints:refused".into());
                }
            }
            let backends = state
                .active_backends(f.service_id)
                .unwrap_or_default()
                .iter()
                .filter_map(|id| state.backends.get(id))
                .map(|b| SocketAddr::new(ip_from_addr(&b.addr), u16::from_be(b.port)).to_string())
                .collect();
            let c = counters.get(&f.service_id).copied().unwrap_or_default();
            FrontendRow {
                service: name,
                frontend: SocketAddr::new(ip_from_addr(&k.addr), u16::from_be(k.port)).to_string(),
                protocol: proto(k.proto),
                kind: kind(f.flags).into(),
                scope: scope_name(k.scope).into(),
                service_id: f.service_id,
                flags,
                backends,
                translations: c.translations,
                refusals: c.refused,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.service, &a.frontend, &a.scope).cmp(&(&b.service, &b.frontend, &b.scope)));
    rows
}

/// A plain-text table.
pub fn render_table(rows: &[FrontendRow]) -> String {
    let headers =
        ["SERVICE", "FRONTEND", "PROTO", "KIND", "SCOPE", "FLAGS", "BACKENDS", "TRANSLATIONS", "REFUSED"];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.service.clone(),
                r.frontend.clone(),
                r.protocol.clone(),
                r.kind.clone(),
                r.scope.clone(),
                if r.flags.is_empty() { "-".into() } else { r.flags.join(",") },
                if r.backends.is_empty() { "(none)".into() } else { r.backends.join(",") },
                r.translations.to_string(),
                r.refusals.to_string(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cols: &[&str]| {
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i + 1 == cols.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push('\n');
    };
    line(&mut out, &headers);
    for row in &cells {
        let cols: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &cols);
    }
    out
}

/// Reads the per-service counters of the pinned maps at scrape time.
#[derive(Debug)]
pub struct PinnedCounters {
    bpffs: std::path::PathBuf,
    maps: Mutex<Option<AyaMapsDebug>>,
}

struct AyaMapsDebug(AyaMaps);

impl std::fmt::Debug for AyaMapsDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AyaMaps")
    }
}

impl PinnedCounters {
    pub fn new(bpffs: &Path) -> Self {
        Self { bpffs: bpffs.to_owned(), maps: Mutex::new(None) }
    }

    fn rows(&self) -> Result<Vec<(ServiceLabels, u64, u64)>, DatapathError> {
        let mut guard = self.maps.lock().map_err(|_| DatapathError::Read {
            map: socklb_common::map_names::COUNTERS,
            source: std::io::Error::other("lock poisoned"),
        })?;
        if guard.is_none() {
            *guard = Some(AyaMapsDebug(AyaMaps::open(&self.bpffs)?));
        }
        let Some(maps) = guard.as_ref() else {
            return Ok(Vec::new());
        };
        let names = maps.0.read_names()?;
        let counters = maps.0.read_counters()?;
        let mut sums: BTreeMap<ServiceLabels, (u64, u64)> = BTreeMap::new();
        for (id, name) in &names {
            let Some(parts) = SetName::parse(name.as_str()) else {
                continue;
            };
            let labels = ServiceLabels {
                namespace: parts.namespace.into(),
                name: parts.name.into(),
                port: parts.port.into(),
            };
            let c = counters.get(id).copied().unwrap_or_default();
            let e = sums.entry(labels).or_default();
            e.0 += c.translations;
            e.1 += c.refused;
        }
        Ok(sums.into_iter().map(|(l, (t, r))| (l, t, r)).collect())
    }
}

impl CounterSource for PinnedCounters {
    fn read(&self) -> Vec<(ServiceLabels, u64, u64)> {
        self.rows().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading datapath counters");
            Vec::new()
        })
    }
}

/// Every map entry the agent writes, one sorted line each: the golden-file
/// format, and what `socklb list --raw` would show.
pub fn dump_maps(state: &MapState) -> String {
    let addr =
        |a: &socklb_common::Addr, port: u16| SocketAddr::new(ip_from_addr(a), u16::from_be(port)).to_string();
    let mut lines = Vec::new();
    for (k, f) in &state.frontends {
        let scope = scope_name(k.scope);
        lines.push(format!(
            "frontend {}/{} {scope} -> service {} ({})",
            addr(&k.addr, k.port),
            proto(k.proto),
            f.service_id,
            kind(f.flags)
        ));
    }
    for (id, s) in &state.services {
        let name = state.names.get(id).map(|n| n.as_str().to_string()).unwrap_or_default();
        lines.push(format!(
            "service {id} {name:?} count={} generation={} flags={:#x} affinity={}s",
            s.count, s.generation, s.flags, s.affinity_timeout_secs
        ));
    }
    for (k, b) in &state.slots {
        lines.push(format!(
            "slot service={} generation={} index={} -> backend {b}",
            k.service_id, k.generation, k.index
        ));
    }
    for (id, b) in &state.backends {
        lines.push(format!("backend {id} {}/{} flags={:#x}", addr(&b.addr, b.port), proto(b.proto), b.flags));
    }
    for m in &state.members {
        lines.push(format!("member service={} backend={}", m.service_id, m.backend_id));
    }
    lines.join("\n") + "\n"
}
