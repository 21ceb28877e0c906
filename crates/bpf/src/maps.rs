//! The pinned kernel maps, opened from `--bpffs`, as a `Datapath`.
//!
//! `SETS` and `COUNTERS` are mapped into the agent (`BPF_F_MMAPABLE`): a
//! set's switch is one atomic 8-byte store, with no syscall. Slots go in
//! with one `BPF_MAP_UPDATE_BATCH` per set; hash maps take runs of
//! operations as one batch; reads of hash maps are batched too.

use std::{
    collections::BTreeMap,
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use aya::maps::{Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray};
use socklb_common::{
    Addr, BackendValue, Config, FrontendKey, FrontendValue, MemberKey, MemberValue, NodeAddrValue,
    NodeLocalKey, NodeLocalValue, NodePortKey, NodePortValue, SetCounters, SetEntry, SetState,
    map_names as names,
    sys::{self, MappedArray},
};
use socklb_lb::{
    capacity::Capacities,
    datapath::{Datapath, DatapathError, MapOp, MapState},
    slots::Run,
};

use crate::loader::{self, InstallOptions, pins::active_dir};

/// Entries per batched read or copy.
const CHUNK: usize = 8_192;

pub struct AyaMaps {
    dir: PathBuf,
    frontends: HashMap<MapData, FrontendKey, FrontendValue>,
    sets_map: MapData,
    sets: MappedArray<SetEntry>,
    backends: MapData,
    counters_map: MapData,
    counters: MappedArray<SetCounters>,
    members: HashMap<MapData, MemberKey, MemberValue>,
    config: Array<MapData, Config>,
    node_addrs: HashMap<MapData, Addr, NodeAddrValue>,
    node_ports: HashMap<MapData, NodePortKey, NodePortValue>,
    node_local: HashMap<MapData, NodeLocalKey, NodeLocalValue>,
    stats: PerCpuArray<MapData, u64>,
    capacities: Capacities,
    /// How to build a bigger generation (the agent's install options);
    /// tools that only read have none.
    growth: Option<InstallOptions>,
    grace: Grace,
}

fn map_io(e: MapError) -> io::Error {
    match e {
        MapError::SyscallError(s) => s.io_error,
        MapError::IoError(e) => e,
        MapError::KeyNotFound | MapError::ElementNotFound => io::Error::from_raw_os_error(2),
        other => io::Error::other(other.to_string()),
    }
}

fn open_data(dir: &Path, name: &'static str) -> Result<MapData, DatapathError> {
    let path: PathBuf = dir.join(name);
    MapData::from_pin(&path).map_err(|e| DatapathError::Open { path, source: map_io(e) })
}

fn open<T>(dir: &Path, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path: PathBuf = dir.join(name);
    let err = |e: MapError| DatapathError::Open { path: path.clone(), source: map_io(e) };
    let data = MapData::from_pin(&path).map_err(err)?;
    let map = Map::from_map_data(data).map_err(err)?;
    T::try_from(map).map_err(err)
}

fn max_entries(m: &MapData, name: &'static str) -> Result<u32, DatapathError> {
    m.info().map(|i| i.max_entries()).map_err(|e| DatapathError::Read { map: name, source: map_io(e) })
}

fn mapped<T: aya::Pod>(dir: &Path, m: &MapData, name: &'static str) -> Result<MappedArray<T>, DatapathError> {
    let n = max_entries(m, name)?;
    MappedArray::map(m.fd().as_fd(), n).map_err(|source| DatapathError::Open { path: dir.join(name), source })
}

impl AyaMaps {
    /// Opens the maps of the active generation pinned under `bpffs` (the
    /// one the programs use; see `loader::pins`).
    pub fn open(bpffs: &Path) -> Result<Self, DatapathError> {
        Self::open_dir(&active_dir(bpffs))
    }

    /// Opens the maps pinned in one generation's directory.
    pub fn open_dir(dir: &Path) -> Result<Self, DatapathError> {
        let sets_map = open_data(dir, names::SETS)?;
        let backends = open_data(dir, names::BACKENDS)?;
        let counters_map = open_data(dir, names::COUNTERS)?;
        let frontends: HashMap<MapData, FrontendKey, FrontendValue> = open(dir, names::FRONTENDS)?;
        let members: HashMap<MapData, MemberKey, MemberValue> = open(dir, names::MEMBERS)?;
        let node_addrs: HashMap<MapData, Addr, NodeAddrValue> = open(dir, names::NODE_ADDRS)?;
        let node_ports: HashMap<MapData, NodePortKey, NodePortValue> = open(dir, names::NODEPORTS)?;
        let node_local: HashMap<MapData, NodeLocalKey, NodeLocalValue> = open(dir, names::NODE_LOCAL)?;
        let capacities = Capacities {
            sets: max_entries(&sets_map, names::SETS)?,
            slots: max_entries(&backends, names::BACKENDS)?,
            frontends: max_entries(frontends.map(), names::FRONTENDS)?,
            members: max_entries(members.map(), names::MEMBERS)?,
            node_addrs: max_entries(node_addrs.map(), names::NODE_ADDRS)?,
            node_ports: max_entries(node_ports.map(), names::NODEPORTS)?,
            node_local: max_entries(node_local.map(), names::NODE_LOCAL)?,
            affinity: max_entries(&open_data(dir, names::AFFINITY)?, names::AFFINITY)?,
            udp_reverse: max_entries(&open_data(dir, names::UDP_REV)?, names::UDP_REV)?,
            udp_connected: max_entries(&open_data(dir, names::UDP_CONNECTED)?, names::UDP_CONNECTED)?,
        };
        Ok(Self {
            dir: dir.to_owned(),
            sets: mapped(dir, &sets_map, names::SETS)?,
            counters: mapped(dir, &counters_map, names::COUNTERS)?,
            sets_map,
            backends,
            counters_map,
            frontends,
            members,
            config: open(dir, names::CONFIG)?,
            node_addrs,
            node_ports,
            node_local,
            stats: open(dir, names::STATS)?,
            capacities,
            growth: None,
            grace: Grace::default(),
        })
    }

    /// Lets the maps grow: a bigger generation is built with these install
    /// options (the agent's own).
    pub fn with_growth(mut self, opts: InstallOptions) -> Self {
        self.growth = Some(opts);
        self
    }

    /// The generation directory these maps are pinned in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The datapath's event counters (`socklb_common::stats`), summed over
    /// CPUs, with their labels.
    pub fn read_stats(&self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        let err = |e| DatapathError::Read { map: names::STATS, source: map_io(e) };
        let mut out = Vec::new();
        for (index, label) in socklb_common::stats::ALL {
            let per_cpu = self.stats.get(&index, 0).map_err(err)?;
            out.push((label, per_cpu.iter().sum()));
        }
        Ok(out)
    }

    /// One frontend entry, if the maps hold it.
    pub fn frontend(&self, key: &FrontendKey) -> Option<FrontendValue> {
        self.frontends.get(key, 0).ok()
    }

    /// One set's entry, if present.
    pub fn set(&self, id: u32) -> Option<SetEntry> {
        let e = self.sets.get(id as usize)?;
        SetState::unpack(e.state).is_present().then_some(e)
    }

    pub fn read_config(&self) -> Result<Config, DatapathError> {
        self.config.get(&0, 0).map_err(|e| DatapathError::Read { map: names::CONFIG, source: map_io(e) })
    }

    pub fn write_config(&mut self, config: Config) -> Result<(), DatapathError> {
        self.config.set(0, config, 0).map_err(|e| DatapathError::Write {
            map: names::CONFIG,
            op: format!("set {config:?}"),
            source: map_io(e),
        })
    }

    /// The kernel's accounting of each map's memory (`memlock` in the
    /// map's fdinfo), in bytes, for the maps of this generation.
    pub fn memory(&self) -> Vec<(&'static str, u64)> {
        names::ALL
            .iter()
            .filter_map(|name| {
                let m = open_data(&self.dir, name).ok()?;
                Some((*name, map_memlock(&m)?))
            })
            .collect()
    }

    /// Everything but the state word first; then the switch, in one
    /// store. (Each field is its own aligned word; see `SetEntry`.)
    fn write_set(&self, id: u32, entry: &SetEntry) -> bool {
        let i = id as usize;
        let timeout = u64::from(entry.affinity_timeout_secs) | u64::from(entry._pad) << 32;
        self.sets.store_word(i, 8, timeout)
            && self.sets.store_word(i, 16, entry.key_hash)
            && self.sets.store_word(i, 24, entry.content_hash)
            && self.sets.store_word(i, 0, entry.state)
    }

    fn write_err(op: &MapOp, source: io::Error) -> DatapathError {
        DatapathError::Write { map: op.map_name(), op: format!("{op:?}"), source }
    }

    /// Copies every map the agent writes from `old` (the generation being
    /// replaced) into these maps.
    fn copy_from(&mut self, old: &Self) -> Result<(), DatapathError> {
        let read = |map: &'static str| move |source| DatapathError::Read { map, source };
        sys::map_copy::<u32, SetEntry>(old.sets_map.fd().as_fd(), self.sets_map.fd().as_fd(), CHUNK)
            .map_err(read(names::SETS))?;
        sys::map_copy::<u32, BackendValue>(old.backends.fd().as_fd(), self.backends.fd().as_fd(), CHUNK)
            .map_err(read(names::BACKENDS))?;
        sys::map_copy::<u32, SetCounters>(
            old.counters_map.fd().as_fd(),
            self.counters_map.fd().as_fd(),
            CHUNK,
        )
        .map_err(read(names::COUNTERS))?;
        sys::map_copy::<FrontendKey, FrontendValue>(
            old.frontends.map().fd().as_fd(),
            self.frontends.map().fd().as_fd(),
            CHUNK,
        )
        .map_err(read(names::FRONTENDS))?;
        sys::map_copy::<MemberKey, MemberValue>(
            old.members.map().fd().as_fd(),
            self.members.map().fd().as_fd(),
            CHUNK,
        )
        .map_err(read(names::MEMBERS))?;
        sys::map_copy::<Addr, NodeAddrValue>(
            old.node_addrs.map().fd().as_fd(),
            self.node_addrs.map().fd().as_fd(),
            CHUNK,
        )
        .map_err(read(names::NODE_ADDRS))?;
        sys::map_copy::<NodePortKey, NodePortValue>(
            old.node_ports.map().fd().as_fd(),
            self.node_ports.map().fd().as_fd(),
            CHUNK,
        )
        .map_err(read(names::NODEPORTS))?;
        sys::map_copy::<NodeLocalKey, NodeLocalValue>(
            old.node_local.map().fd().as_fd(),
            self.node_local.map().fd().as_fd(),
            CHUNK,
        )
        .map_err(read(names::NODE_LOCAL))?;
        let config = old.read_config()?;
        self.write_config(config)
    }
}

/// A map's memory as the kernel accounts it (`memlock:` in its fdinfo).
pub fn map_memlock(m: &MapData) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", m.fd().as_fd().as_raw_fd())).ok()?;
    text.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok())
}

/// Treats "no such entry" on delete as done: deletes are idempotent.
fn deleted(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(e) => {
            let io = map_io(e);
            if io.raw_os_error() == Some(2) { Ok(()) } else { Err(MapError::IoError(io)) }
        }
        ok => ok,
    }
}

/// Applies a batch of updates; returns how many took effect.
fn update_batch<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
    ops: &[MapOp],
) -> (usize, Option<DatapathError>) {
    let (n, result) = sys::map_update_batch(map.fd().as_fd(), keys, values);
    match result {
        Ok(()) => (n, None),
        Err(source) => {
            let at = n.min(ops.len() - 1);
            (n, Some(AyaMaps::write_err(&ops[at], source)))
        }
    }
}

/// Deletes a batch; keys already gone count as deleted.
fn delete_batch<K: aya::Pod>(map: &MapData, keys: &[K], ops: &[MapOp]) -> (usize, Option<DatapathError>) {
    let mut done = 0;
    while done < keys.len() {
        let (n, result) = sys::map_delete_batch(map.fd().as_fd(), &keys[done..]);
        done += n;
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(2) => done += 1, // absent: deleted already
            Err(source) => return (done, Some(AyaMaps::write_err(&ops[done], source))),
        }
    }
    (done, None)
}

impl AyaMaps {
    /// Everything the agent writes; the sets and slots only `with_sets`.
    fn read_map_state(&self, with_sets: bool) -> Result<MapState, DatapathError> {
        fn dump<K: aya::Pod + Default + Ord, V: aya::Pod + Default>(
            map: &MapData,
            name: &'static str,
        ) -> Result<BTreeMap<K, V>, DatapathError> {
            sys::map_dump::<K, V>(map.fd().as_fd(), CHUNK)
                .map(|v| v.into_iter().collect())
                .map_err(|source| DatapathError::Read { map: name, source })
        }
        let sets: BTreeMap<u32, SetEntry> =
            if with_sets { self.read_sets()?.into_iter().collect() } else { BTreeMap::new() };
        let mut slots = BTreeMap::new();
        for e in sets.values() {
            let st = SetState::unpack(e.state);
            let run = Run { base: st.base, len: u32::from(st.count) };
            for (i, b) in self.read_slots(run)?.into_iter().enumerate() {
                slots.insert(run.base + i as u32, b);
            }
        }
        Ok(MapState {
            frontends: dump(self.frontends.map(), names::FRONTENDS)?,
            sets,
            slots,
            members: dump::<MemberKey, MemberValue>(self.members.map(), names::MEMBERS)?
                .into_keys()
                .collect(),
            node_addrs: dump(self.node_addrs.map(), names::NODE_ADDRS)?,
            node_ports: dump(self.node_ports.map(), names::NODEPORTS)?,
            node_local: dump(self.node_local.map(), names::NODE_LOCAL)?,
        })
    }

    /// One batch syscall for a run of hash-map operations of one kind.
    fn batch_run(&mut self, run: &[MapOp]) -> (usize, Option<DatapathError>) {
        macro_rules! collect {
            ($pat:pat => $e:expr) => {
                run.iter()
                    .filter_map(|op| match op {
                        $pat => Some($e),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            };
        }
        match &run[0] {
            MapOp::PutMember(_) => {
                let k = collect!(MapOp::PutMember(k) => *k);
                update_batch(self.members.map(), &k, &vec![MemberValue { present: 1 }; k.len()], run)
            }
            MapOp::DeleteMember(_) => {
                delete_batch(self.members.map(), &collect!(MapOp::DeleteMember(k) => *k), run)
            }
            MapOp::PutFrontend { .. } => {
                let (k, v): (Vec<FrontendKey>, Vec<FrontendValue>) =
                    collect!(MapOp::PutFrontend { key, value } => (*key, *value)).into_iter().unzip();
                update_batch(self.frontends.map(), &k, &v, run)
            }
            MapOp::DeleteFrontend(_) => {
                delete_batch(self.frontends.map(), &collect!(MapOp::DeleteFrontend(k) => *k), run)
            }
            MapOp::PutNodeAddr { .. } => {
                let (k, v): (Vec<Addr>, Vec<NodeAddrValue>) =
                    collect!(MapOp::PutNodeAddr { addr, value } => (*addr, *value)).into_iter().unzip();
                update_batch(self.node_addrs.map(), &k, &v, run)
            }
            MapOp::DeleteNodeAddr(_) => {
                delete_batch(self.node_addrs.map(), &collect!(MapOp::DeleteNodeAddr(a) => *a), run)
            }
            MapOp::PutNodePort { .. } => {
                let (k, v): (Vec<NodePortKey>, Vec<NodePortValue>) =
                    collect!(MapOp::PutNodePort { key, value } => (*key, *value)).into_iter().unzip();
                update_batch(self.node_ports.map(), &k, &v, run)
            }
            MapOp::DeleteNodePort(_) => {
                delete_batch(self.node_ports.map(), &collect!(MapOp::DeleteNodePort(k) => *k), run)
            }
            MapOp::PutNodeLocal { .. } => {
                let (k, v): (Vec<NodeLocalKey>, Vec<NodeLocalValue>) =
                    collect!(MapOp::PutNodeLocal { key, value } => (*key, *value)).into_iter().unzip();
                update_batch(self.node_local.map(), &k, &v, run)
            }
            MapOp::DeleteNodeLocal(_) => {
                delete_batch(self.node_local.map(), &collect!(MapOp::DeleteNodeLocal(k) => *k), run)
            }
            op => match self.apply(op) {
                Ok(()) => (1, None),
                Err(e) => (0, Some(e)),
            },
        }
    }
}

fn batchable(op: &MapOp) -> bool {
    !matches!(
        op,
        MapOp::PutSlots { .. } | MapOp::PutSet { .. } | MapOp::DeleteSet { .. } | MapOp::ResetCounters { .. }
    )
}

impl Datapath for AyaMaps {
    fn capacities(&self) -> Capacities {
        self.capacities
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        let out_of_range = || io::Error::from_raw_os_error(7); // E2BIG, as the kernel
        let result = match *op {
            MapOp::PutSlots { base, ref backends } => {
                let end = u64::from(base) + backends.len() as u64;
                if end > u64::from(self.capacities.slots) {
                    return Err(Self::write_err(op, out_of_range()));
                }
                let keys: Vec<u32> = (base..base + backends.len() as u32).collect();
                let (_, r) = sys::map_update_batch(self.backends.fd().as_fd(), &keys, backends);
                return r.map_err(|e| Self::write_err(op, e));
            }
            MapOp::PutSet { id, ref entry } => {
                return if self.write_set(id, entry) {
                    Ok(())
                } else {
                    Err(Self::write_err(op, out_of_range()))
                };
            }
            MapOp::DeleteSet { id } => {
                return if self.sets.store_word(id as usize, 0, 0) {
                    Ok(())
                } else {
                    Err(Self::write_err(op, out_of_range()))
                };
            }
            MapOp::ResetCounters { id } => {
                let i = id as usize;
                let ok = self.counters.store_word(i, 0, 0) && self.counters.store_word(i, 8, 0);
                return if ok { Ok(()) } else { Err(Self::write_err(op, out_of_range())) };
            }
            MapOp::PutMember(k) => self.members.insert(k, MemberValue { present: 1 }, 0),
            MapOp::DeleteMember(k) => deleted(self.members.remove(&k)),
            MapOp::PutFrontend { key, value } => self.frontends.insert(key, value, 0),
            MapOp::DeleteFrontend(k) => deleted(self.frontends.remove(&k)),
            MapOp::PutNodeAddr { addr, value } => self.node_addrs.insert(addr, value, 0),
            MapOp::DeleteNodeAddr(addr) => deleted(self.node_addrs.remove(&addr)),
            MapOp::PutNodePort { key, value } => self.node_ports.insert(key, value, 0),
            MapOp::DeleteNodePort(key) => deleted(self.node_ports.remove(&key)),
            MapOp::PutNodeLocal { key, value } => self.node_local.insert(key, value, 0),
            MapOp::DeleteNodeLocal(key) => deleted(self.node_local.remove(&key)),
        };
        result.map_err(|e| Self::write_err(op, map_io(e)))
    }

    /// Runs of hash-map operations on the same map go to the kernel as one
    /// BPF_MAP_UPDATE_BATCH or BPF_MAP_DELETE_BATCH.
    fn apply_batch(&mut self, ops: &[MapOp]) -> (usize, Option<DatapathError>) {
        let mut done = 0;
        while done < ops.len() {
            let kind = std::mem::discriminant(&ops[done]);
            let end = if batchable(&ops[done]) {
                ops[done..]
                    .iter()
                    .position(|o| std::mem::discriminant(o) != kind)
                    .map_or(ops.len(), |p| done + p)
            } else {
                done + 1
            };
            let (n, err) = self.batch_run(&ops[done..end]);
            done += n;
            if let Some(e) = err {
                return (done, Some(e));
            }
        }
        (done, None)
    }

    fn read_sets(&self) -> Result<Vec<(u32, SetEntry)>, DatapathError> {
        Ok((0..self.sets.len())
            .filter_map(|i| {
                let e = self.sets.get(i)?;
                SetState::unpack(e.state).is_present().then_some((i as u32, e))
            })
            .collect())
    }

    fn read_slots(&self, run: Run) -> Result<Vec<BackendValue>, DatapathError> {
        let err = |source| DatapathError::Read { map: names::BACKENDS, source };
        if run.end() > self.capacities.slots {
            return Err(err(io::Error::from_raw_os_error(7)));
        }
        // One BPF_MAP_LOOKUP_BATCH for the run (an array reads in order).
        let len = run.len as usize;
        let mut keys = vec![0u32; len];
        let mut values = vec![BackendValue::default(); len];
        let mut cursor = sys::BatchCursor::array_from(run.base);
        let mut got = 0;
        while got < len && !cursor.is_done() {
            let n = sys::map_lookup_batch(
                self.backends.fd().as_fd(),
                &mut cursor,
                &mut keys[got..],
                &mut values[got..],
            )
            .map_err(err)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got < len || keys.first().is_some_and(|k| *k != run.base) {
            return Err(err(io::Error::from_raw_os_error(5 /* EIO */)));
        }
        Ok(values)
    }

    fn read_sets_in(&self, from: u32, to: u32) -> Result<Vec<(u32, SetEntry)>, DatapathError> {
        Ok((from..to.min(self.sets.len() as u32))
            .filter_map(|i| {
                let e = self.sets.get(i as usize)?;
                SetState::unpack(e.state).is_present().then_some((i, e))
            })
            .collect())
    }

    fn read_tables(&self) -> Result<MapState, DatapathError> {
        self.read_map_state(false)
    }

    fn read_state(&self) -> Result<MapState, DatapathError> {
        self.read_map_state(true)
    }

    fn read_counters(&self) -> Result<BTreeMap<u32, SetCounters>, DatapathError> {
        let mut out = BTreeMap::new();
        for (id, _) in self.read_sets()? {
            let i = id as usize;
            let translations = self.counters.load_word(i, 0).unwrap_or(0);
            let refused = self.counters.load_word(i, 8).unwrap_or(0);
            if translations != 0 || refused != 0 {
                out.insert(id, SetCounters { translations, refused });
            }
        }
        Ok(out)
    }

    fn grow(&mut self, to: &Capacities) -> Result<(), DatapathError> {
        let fail = |reason: String| DatapathError::Grow { to: to.to_string(), reason };
        let Some(mut opts) = self.growth.clone() else {
            return Err(fail("these maps were opened read-only".into()));
        };
        opts.capacities = Capacities {
            affinity: opts.capacities.affinity,
            udp_reverse: opts.capacities.udp_reverse,
            udp_connected: opts.capacities.udp_connected,
            ..*to
        };
        opts.fresh_generation = true;
        let installed = loader::install(&opts).map_err(|e| fail(e.to_string()))?;
        let Some(switch) = installed.switch else {
            return Err(fail("no live generation to replace".into()));
        };
        let mut next = Self::open_dir(&installed.maps_dir)?;
        next.copy_from(self)?;
        switch.commit().map_err(|e| fail(e.to_string()))?;
        next.growth = self.growth.take();
        next.grace = std::mem::take(&mut self.grace);
        *self = next;
        Ok(())
    }

    fn epoch(&self) -> u64 {
        self.grace.epoch
    }

    fn completed_epoch(&self) -> u64 {
        self.grace.completed.load(Ordering::Acquire)
    }

    fn end_epoch(&mut self) {
        self.grace.end_epoch();
    }

    fn wait_grace(&mut self) {
        self.grace.wait();
    }
}

/// RCU grace periods, run on a thread of their own so that the event loop
/// never waits for one: `end_epoch` hands the closed epoch to the thread,
/// which reports it completed once a grace period has passed.
struct Grace {
    epoch: u64,
    completed: Arc<AtomicU64>,
    tx: Option<mpsc::Sender<u64>>,
}

impl Default for Grace {
    fn default() -> Self {
        Self { epoch: 1, completed: Arc::new(AtomicU64::new(0)), tx: None }
    }
}

impl Grace {
    fn end_epoch(&mut self) {
        let closed = self.epoch;
        self.epoch += 1;
        if self.tx.is_none() {
            self.tx = self.spawn();
        }
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(closed).is_ok());
        if !sent {
            // No thread: wait here.
            self.wait();
        }
    }

    fn spawn(&self) -> Option<mpsc::Sender<u64>> {
        let barrier = sys::GracePeriod::new().ok()?;
        let (tx, rx) = mpsc::channel::<u64>();
        let completed = self.completed.clone();
        std::thread::Builder::new()
            .name("socklb-grace".into())
            .spawn(move || {
                while let Ok(mut e) = rx.recv() {
                    // Everything queued meanwhile is covered by one wait.
                    while let Ok(later) = rx.try_recv() {
                        e = later;
                    }
                    if barrier.wait().is_ok() {
                        completed.fetch_max(e, Ordering::AcqRel);
                    }
                }
            })
            .ok()?;
        Some(tx)
    }

    /// Waits for a grace period here and marks every closed epoch done.
    fn wait(&mut self) {
        let closed = self.epoch - 1;
        let waited = sys::GracePeriod::new().and_then(|b| b.wait()).is_ok();
        if !waited {
            // Without the barrier map: long enough that no program that
            // read the old state can still be running.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.completed.fetch_max(closed, Ordering::AcqRel);
    }
}
