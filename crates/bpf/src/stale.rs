//! Stale-socket termination: when a backend leaves a service (deleted from
//! its EndpointSlices, not merely terminating or unready), established TCP
//! and connected UDP sockets that socklb translated to it are destroyed, so
//! their owners reconnect (through the datapath, to a live backend) instead
//! of hanging on a dead peer. This is the top complaint about socket-level
//! load balancing (Cilium #27300, #35773, #37577, #48096).
//!
//! A socket is "translated to it" when the datapath recorded the service and
//! the backend for it, and its peer is that backend: sockets a client opened
//! to the backend's address directly are never touched, nor are sockets to
//! backends that are still present. For TCP the record is the socket's
//! `SOCK_TCP` storage, which sock_diag returns with each socket; for UDP
//! (whose sock_diag replies carry no storage) it is `UDP_CONNECTED`, keyed by
//! the socket cookie and cleared when the socket closes.
//!
//! Mechanism: sock_diag (a dump that includes the socket storage, then
//! SOCK_DESTROY), in every network namespace that has a process in the
//! attached cgroup. The BPF iterator with the `bpf_sock_destroy` kfunc
//! (Linux 6.5) would avoid the dump, but aya 0.14 cannot relocate kfunc
//! calls, so sock_diag is the mechanism on every kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::SocketAddr,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData};
use socklb_common::{RevNat, ip_from_addr, map_names};

use crate::{loader::map_pin, sockdiag};

/// A backend that left a backend set (its sockets are stale).
pub use socklb_lb::Departed as Doomed;

/// Backends waiting out the grace period before their sockets are
/// destroyed.
///
/// The EndpointSlice controller moves an endpoint from one slice to another
/// in two writes; a watcher sees the removal first, and for a moment the
/// backend looks deleted. So a doomed backend waits `grace`; every sync in
/// between reports the backends that rejoined their service (revived), which
/// leave the queue. Only those still absent when their time comes are swept.
#[derive(Debug)]
pub struct StaleQueue {
    grace: std::time::Duration,
    pending: BTreeMap<Doomed, std::time::Instant>,
}

impl StaleQueue {
    pub fn new(grace: std::time::Duration) -> Self {
        Self { grace, pending: BTreeMap::new() }
    }

    /// Backends that left their services at `now` (a backend already
    /// waiting keeps its first deadline).
    pub fn doomed(&mut self, doomed: &[Doomed], now: std::time::Instant) {
        for d in doomed {
            self.pending.entry(*d).or_insert(now + self.grace);
        }
    }

    /// Backends that are members again: nothing to destroy.
    pub fn revived(&mut self, revived: &[Doomed]) {
        for r in revived {
            self.pending.remove(r);
        }
    }

    /// When the next backend is due.
    pub fn next_due(&self) -> Option<std::time::Instant> {
        self.pending.values().min().copied()
    }

    /// The backends whose grace is over at `now`.
    pub fn take_due(&mut self, now: std::time::Instant) -> Vec<Doomed> {
        let due: Vec<Doomed> = self.pending.iter().filter(|(_, t)| **t <= now).map(|(d, _)| *d).collect();
        for d in &due {
            self.pending.remove(d);
        }
        due
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct TerminateReport {
    pub namespaces: usize,
    pub destroyed: usize,
    pub errors: Vec<String>,
}

/// One path per network namespace that a process in `cgroup` (or below)
/// lives in.
pub fn namespaces_of(cgroup: &Path) -> Vec<PathBuf> {
    let mut pids = BTreeSet::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            dirs.extend(
                entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()),
            );
        }
    }
    let mut seen: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    for pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if let Ok(m) = fs::metadata(&path) {
            seen.entry((m.dev(), m.ino())).or_insert(path);
        }
    }
    seen.into_values().collect()
}

/// Where the translations of connected UDP sockets are (sock_diag reports
/// socket storage for TCP only).
type UdpConnected = HashMap<MapData, u64, RevNat>;

/// Whether a dumped socket was translated to one of the doomed backends.
fn is_doomed(s: &sockdiag::DiagSocket, doomed: &BTreeSet<Doomed>, udp: Option<&UdpConnected>) -> bool {
    let peer = s.peer();
    let matches = |e: &RevNat| {
        let backend = SocketAddr::new(ip_from_addr(&e.backend), u16::from_be(e.backend_port));
        e.valid != 0
            && backend == peer
            && doomed.contains(&Doomed { set_id: e.set_id, backend, proto: s.protocol })
    };
    match (s.storage.as_slice(), udp) {
        (entries, _) if !entries.is_empty() => entries.iter().any(matches),
        (_, Some(map)) if s.protocol == socklb_common::PROTO_UDP => {
            map.get(&s.cookie(), 0).is_ok_and(|e| matches(&e))
        }
        _ => false,
    }
}

/// Destroys the doomed sockets of the calling thread's network namespace.
fn sweep_here(
    maps: &[&MapData],
    udp: Option<&UdpConnected>,
    doomed: &BTreeSet<Doomed>,
    report: &mut TerminateReport,
) {
    let fds: Vec<std::os::fd::BorrowedFd<'_>> = maps.iter().map(|m| m.fd().as_fd()).collect();
    for family in sockdiag::FAMILIES {
        for proto in [socklb_common::PROTO_TCP, socklb_common::PROTO_UDP] {
            // Sockets are destroyed after the dump: destroying during it
            // would disturb the kernel's walk.
            let mut stale = Vec::new();
            let dumped = sockdiag::dump(family, proto, &fds, |s| {
                if is_doomed(&s, doomed, udp) {
                    stale.push(s);
                }
            });
            if let Err(e) = dumped {
                report.errors.push(format!("sock_diag dump (family {family}, protocol {proto}): {e}"));
                continue;
            }
            for s in &stale {
                match sockdiag::destroy(s) {
                    Ok(()) => report.destroyed += 1,
                    // Gone already (closed meanwhile): nothing to do.
                    Err(e) if e.raw_os_error() == Some(2) => {}
                    Err(e) => report.errors.push(format!("SOCK_DESTROY {}: {e}", s.peer())),
                }
            }
        }
    }
}

/// How many namespaces are swept at once (threads), however many there are.
pub const SWEEP_WORKERS: usize = 4;

/// Destroys, in every network namespace of the cgroup's processes, the
/// sockets translated to a doomed backend. Blocking; run it off the loop.
/// At most [`SWEEP_WORKERS`] threads work through the namespaces.
pub fn terminate(cgroup: &Path, bpffs: &Path, doomed: &[Doomed]) -> TerminateReport {
    let mut report = TerminateReport::default();
    if doomed.is_empty() {
        return report;
    }
    let doomed: BTreeSet<Doomed> = doomed.iter().copied().collect();
    let tcp = match MapData::from_pin(map_pin(bpffs, map_names::SOCK_TCP)) {
        Ok(m) => m,
        Err(e) => {
            report.errors.push(format!("opening {}: {e}", map_names::SOCK_TCP));
            return report;
        }
    };
    // Sockets from layouts 1-3 carry their translation in SOCK_STATE.
    let legacy = MapData::from_pin(map_pin(bpffs, map_names::SOCK_STATE)).ok();
    let maps: Vec<&MapData> = std::iter::once(&tcp).chain(legacy.as_ref()).collect();
    let udp: Option<UdpConnected> = MapData::from_pin(map_pin(bpffs, map_names::UDP_CONNECTED))
        .and_then(|m| HashMap::try_from(Map::HashMap(m)))
        .inspect_err(|e| report.errors.push(format!("opening {}: {e}", map_names::UDP_CONNECTED)))
        .ok();
    let namespaces = namespaces_of(cgroup);
    report.namespaces = namespaces.len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = SWEEP_WORKERS.min(namespaces.len());
    let results: Vec<TerminateReport> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (maps, doomed, udp, next, namespaces) =
                    (&maps, &doomed, udp.as_ref(), &next, &namespaces);
                scope.spawn(move || {
                    let mut r = TerminateReport::default();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(ns) = namespaces.get(i) else { break };
                        // setns(CLONE_NEWNET) changes only this thread's
                        // namespace; the next one replaces it.
                        let entered = fs::File::open(ns).and_then(|f| {
                            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                                .map_err(io::Error::from)
                        });
                        match entered {
                            Ok(()) => sweep_here(maps, udp, doomed, &mut r),
                            // The process left meanwhile: its namespace may be gone.
                            Err(e) => r.errors.push(format!("entering {}: {e}", ns.display())),
                        }
                    }
                    r
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    for r in results {
        report.destroyed += r.destroyed;
        report.errors.extend(r.errors);
    }
    report
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn d(n: u8) -> Doomed {
        Doomed { set_id: 1, backend: SocketAddr::from(([10, 0, 0, n], 80)), proto: 6 }
    }

    #[test]
    fn a_backend_that_rejoins_within_the_grace_is_never_swept() {
        let t0 = Instant::now();
        let mut q = StaleQueue::new(Duration::from_secs(2));
        q.doomed(&[d(1), d(2)], t0);
        // The slice move's second write: backend 1 is back 300 ms later.
        q.revived(&[d(1)]);
        assert!(q.take_due(t0 + Duration::from_millis(1999)).is_empty());
        assert_eq!(q.take_due(t0 + Duration::from_secs(2)), [d(2)]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_repeated_doom_keeps_the_first_deadline() {
        let t0 = Instant::now();
        let mut q = StaleQueue::new(Duration::from_secs(2));
        q.doomed(&[d(1)], t0);
        q.doomed(&[d(1)], t0 + Duration::from_secs(1));
        assert_eq!(q.next_due(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(q.len(), 1);
    }
}
