//! The pinned kernel maps, opened from `--bpffs`.

use std::{
    collections::BTreeMap,
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray};
use socklb_common::sys;
use socklb_common::{
    Addr, BackendValue, Config, FrontendKey, FrontendValue, MemberKey, MemberValue, NodeAddrValue,
    NodeLocalKey, NodeLocalValue, NodePortKey, NodePortValue, ServiceCounters, ServiceName, ServiceValue,
    SlotKey, SlotValue, map_names,
};

use crate::loader::pins::active_dir;
use socklb_lb::datapath::{Datapath, DatapathError, MapOp, MapState};

pub struct AyaMaps {
    frontends: HashMap<MapData, FrontendKey, FrontendValue>,
    services: HashMap<MapData, u32, ServiceValue>,
    slots: HashMap<MapData, SlotKey, SlotValue>,
    backends: HashMap<MapData, u32, BackendValue>,
    members: HashMap<MapData, MemberKey, MemberValue>,
    counters: PerCpuArray<MapData, ServiceCounters>,
    config: Array<MapData, Config>,
    names: HashMap<MapData, u32, ServiceName>,
    node_addrs: HashMap<MapData, Addr, NodeAddrValue>,
    node_ports: HashMap<MapData, NodePortKey, NodePortValue>,
    node_local: HashMap<MapData, NodeLocalKey, NodeLocalValue>,
    stats: PerCpuArray<MapData, u64>,
}

fn map_io(e: MapError) -> io::Error {
    match e {
        MapError::SyscallError(s) => s.io_error,
        MapError::IoError(e) => e,
        MapError::KeyNotFound | MapError::ElementNotFound => io::Error::from_raw_os_error(2),
        other => io::Error::other(other.to_string()),
    }
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

impl AyaMaps {
    /// Opens the maps of the active generation pinned under `bpffs` (the
    /// one the programs use; see `loader::pins`).
    pub fn open(bpffs: &Path) -> Result<Self, DatapathError> {
        Self::open_dir(&active_dir(bpffs))
    }

    /// Opens the maps pinned in one generation's directory.
    pub fn open_dir(dir: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            frontends: open(dir, map_names::FRONTENDS)?,
            services: open(dir, map_names::SERVICES)?,
            slots: open(dir, map_names::SLOTS)?,
            backends: open(dir, map_names::BACKENDS)?,
            members: open(dir, map_names::MEMBERS)?,
            counters: open(dir, map_names::COUNTERS)?,
            config: open(dir, map_names::CONFIG)?,
            names: open(dir, map_names::SVC_NAMES)?,
            node_addrs: open(dir, map_names::NODE_ADDRS)?,
            node_ports: open(dir, map_names::NODEPORTS)?,
            node_local: open(dir, map_names::NODE_LOCAL)?,
            stats: open(dir, map_names::STATS)?,
        })
    }

    /// The max_entries of each map the agent writes.
    pub fn capacities(&self) -> Result<Vec<(&'static str, u32)>, DatapathError> {
        let info = |name: &'static str, m: &MapData| {
            m.info()
                .map(|i| (name, i.max_entries()))
                .map_err(|e| DatapathError::Read { map: name, source: map_io(e) })
        };
        Ok(vec![
            info(map_names::FRONTENDS, self.frontends.map())?,
            info(map_names::SERVICES, self.services.map())?,
            info(map_names::SLOTS, self.slots.map())?,
            info(map_names::BACKENDS, self.backends.map())?,
            info(map_names::MEMBERS, self.members.map())?,
            info(map_names::SVC_NAMES, self.names.map())?,
            info(map_names::NODE_ADDRS, self.node_addrs.map())?,
            info(map_names::NODEPORTS, self.node_ports.map())?,
            info(map_names::NODE_LOCAL, self.node_local.map())?,
        ])
    }

    /// Service ids index the per-CPU counter array, so they stay below its size.
    pub fn service_id_limit(&self) -> Result<u32, DatapathError> {
        Ok(self.counters.len())
    }

    /// The names map alone (cheaper than a full read for counters).
    pub fn read_names(&self) -> Result<BTreeMap<u32, ServiceName>, DatapathError> {
        self.names
            .iter()
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(|e| DatapathError::Read { map: map_names::SVC_NAMES, source: map_io(e) })
    }

    /// The datapath's event counters (`socklb_common::stats`), summed over
    /// CPUs, with their labels.
    pub fn read_stats(&self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        let err = |e| DatapathError::Read { map: map_names::STATS, source: map_io(e) };
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

    pub fn read_config(&self) -> Result<Config, DatapathError> {
        self.config.get(&0, 0).map_err(|e| DatapathError::Read { map: map_names::CONFIG, source: map_io(e) })
    }

    pub fn write_config(&mut self, config: Config) -> Result<(), DatapathError> {
        self.config.set(0, config, 0).map_err(|e| DatapathError::Write {
            map: map_names::CONFIG,
            op: format!("set {config:?}"),
            source: map_io(e),
        })
    }
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

fn single(maps: &mut AyaMaps, op: &MapOp) -> (usize, Option<DatapathError>) {
    match maps.apply(op) {
        Ok(()) => (1, None),
        Err(e) => (0, Some(e)),
    }
}

/// Applies a batch of updates; returns how many took effect.
fn update_batch<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
    ops: &[&MapOp],
) -> (usize, Option<DatapathError>) {
    let (n, result) = sys::map_update_batch(map.fd().as_fd(), keys, values);
    match result {
        Ok(()) => (n, None),
        Err(source) => (
            n,
            Some(DatapathError::Write {
                map: ops[n.min(ops.len() - 1)].map_name(),
                op: format!("{:?}", ops[n.min(ops.len() - 1)]),
                source,
            }),
        ),
    }
}

/// Deletes a batch; keys already gone count as deleted.
fn delete_batch<K: aya::Pod>(map: &MapData, keys: &[K], ops: &[&MapOp]) -> (usize, Option<DatapathError>) {
    let mut done = 0;
    while done < keys.len() {
        let (n, result) = sys::map_delete_batch(map.fd().as_fd(), &keys[done..]);
        done += n;
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(2) => done += 1, // absent: deleted already
            Err(source) => {
                return (
                    done,
                    Some(DatapathError::Write {
                        map: ops[done].map_name(),
                        op: format!("{:?}", ops[done]),
                        source,
                    }),
                );
            }
        }
    }
    (done, None)
}

impl AyaMaps {
    /// One batch syscall for a run of operations of one kind.
    fn batch_run(&mut self, run: &[&MapOp]) -> (usize, Option<DatapathError>) {
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
        match run[0] {
            MapOp::PutBackend { .. } => {
                let (k, v): (Vec<u32>, Vec<BackendValue>) =
                    collect!(MapOp::PutBackend { id, value } => (*id, *value)).into_iter().unzip();
                update_batch(self.backends.map(), &k, &v, run)
            }
            MapOp::DeleteBackend { .. } => {
                delete_batch(self.backends.map(), &collect!(MapOp::DeleteBackend { id } => *id), run)
            }
            MapOp::PutMember(_) => {
                let k = collect!(MapOp::PutMember(k) => *k);
                update_batch(self.members.map(), &k, &vec![MemberValue { present: 1 }; k.len()], run)
            }
            MapOp::DeleteMember(_) => {
                delete_batch(self.members.map(), &collect!(MapOp::DeleteMember(k) => *k), run)
            }
            MapOp::PutSlot { .. } => {
                let (k, v): (Vec<SlotKey>, Vec<SlotValue>) =
                    collect!(MapOp::PutSlot { key, backend_id } => (*key, SlotValue { backend_id: *backend_id })).into_iter().unzip();
                update_batch(self.slots.map(), &k, &v, run)
            }
            MapOp::DeleteSlot(_) => {
                delete_batch(self.slots.map(), &collect!(MapOp::DeleteSlot(k) => *k), run)
            }
            MapOp::PutService { .. } => {
                let (k, v): (Vec<u32>, Vec<ServiceValue>) =
                    collect!(MapOp::PutService { id, value } => (*id, *value)).into_iter().unzip();
                update_batch(self.services.map(), &k, &v, run)
            }
            MapOp::DeleteService { .. } => {
                delete_batch(self.services.map(), &collect!(MapOp::DeleteService { id } => *id), run)
            }
            MapOp::PutFrontend { .. } => {
                let (k, v): (Vec<FrontendKey>, Vec<FrontendValue>) =
                    collect!(MapOp::PutFrontend { key, value } => (*key, *value)).into_iter().unzip();
                update_batch(self.frontends.map(), &k, &v, run)
            }
            MapOp::DeleteFrontend(_) => {
                delete_batch(self.frontends.map(), &collect!(MapOp::DeleteFrontend(k) => *k), run)
            }
            MapOp::PutName { .. } => {
                let (k, v): (Vec<u32>, Vec<ServiceName>) =
                    collect!(MapOp::PutName { id, name } => (*id, **name)).into_iter().unzip();
                update_batch(self.names.map(), &k, &v, run)
            }
            MapOp::DeleteName { .. } => {
                delete_batch(self.names.map(), &collect!(MapOp::DeleteName { id } => *id), run)
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
        }
    }
}

impl Datapath for AyaMaps {
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        let result = match *op {
            MapOp::PutBackend { id, value } => self.backends.insert(id, value, 0),
            MapOp::DeleteBackend { id } => deleted(self.backends.remove(&id)),
            MapOp::PutMember(k) => self.members.insert(k, MemberValue { present: 1 }, 0),
            MapOp::DeleteMember(k) => deleted(self.members.remove(&k)),
            MapOp::PutSlot { key, backend_id } => self.slots.insert(key, SlotValue { backend_id }, 0),
            MapOp::DeleteSlot(k) => deleted(self.slots.remove(&k)),
            MapOp::PutService { id, value } => self.services.insert(id, value, 0),
            MapOp::DeleteService { id } => deleted(self.services.remove(&id)),
            MapOp::PutFrontend { key, value } => self.frontends.insert(key, value, 0),
            MapOp::DeleteFrontend(k) => deleted(self.frontends.remove(&k)),
            MapOp::PutName { id, ref name } => self.names.insert(id, **name, 0),
            MapOp::DeleteName { id } => deleted(self.names.remove(&id)),
            MapOp::PutNodeAddr { addr, value } => self.node_addrs.insert(addr, value, 0),
            MapOp::DeleteNodeAddr(addr) => deleted(self.node_addrs.remove(&addr)),
            MapOp::PutNodePort { key, value } => self.node_ports.insert(key, value, 0),
            MapOp::DeleteNodePort(key) => deleted(self.node_ports.remove(&key)),
            MapOp::PutNodeLocal { key, value } => self.node_local.insert(key, value, 0),
            MapOp::DeleteNodeLocal(key) => deleted(self.node_local.remove(&key)),
        };
        result.map_err(|e| DatapathError::Write {
            map: op.map_name(),
            op: format!("{op:?}"),
            source: map_io(e),
        })
    }

    /// Runs of operations on the same map go to the kernel as one
    /// BPF_MAP_UPDATE_BATCH or BPF_MAP_DELETE_BATCH.
    fn apply_batch(&mut self, ops: &[&MapOp]) -> (usize, Option<DatapathError>) {
        let mut done = 0;
        while done < ops.len() {
            let kind = std::mem::discriminant(ops[done]);
            let end = ops[done..]
                .iter()
                .position(|o| std::mem::discriminant(*o) != kind)
                .map_or(ops.len(), |p| done + p);
            let run = &ops[done..end];
            let (n, err) = if run.len() == 1 { single(self, run[0]) } else { self.batch_run(run) };
            done += n;
            if let Some(e) = err {
                return (done, Some(e));
            }
        }
        (done, None)
    }

    fn read_state(&self) -> Result<MapState, DatapathError> {
        fn read<K: aya::Pod + Ord, V: aya::Pod>(
            map: &HashMap<MapData, K, V>,
            name: &'static str,
        ) -> Result<BTreeMap<K, V>, DatapathError> {
            map.iter()
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map_err(|e| DatapathError::Read { map: name, source: map_io(e) })
        }
        Ok(MapState {
            frontends: read(&self.frontends, map_names::FRONTENDS)?,
            services: read(&self.services, map_names::SERVICES)?,
            slots: read(&self.slots, map_names::SLOTS)?.into_iter().map(|(k, v)| (k, v.backend_id)).collect(),
            backends: read(&self.backends, map_names::BACKENDS)?,
            members: read(&self.members, map_names::MEMBERS)?.into_keys().collect(),
            names: read(&self.names, map_names::SVC_NAMES)?,
            node_addrs: read(&self.node_addrs, map_names::NODE_ADDRS)?,
            node_ports: read(&self.node_ports, map_names::NODEPORTS)?,
            node_local: read(&self.node_local, map_names::NODE_LOCAL)?,
        })
    }

    fn read_counters(&self) -> Result<BTreeMap<u32, ServiceCounters>, DatapathError> {
        let err = |e| DatapathError::Read { map: map_names::COUNTERS, source: map_io(e) };
        let services = self.services.keys().collect::<Result<Vec<u32>, _>>().map_err(err)?;
        let mut out = BTreeMap::new();
        for id in services {
            let per_cpu = self.counters.get(&id, 0).map_err(err)?;
            let sum = per_cpu.iter().fold(ServiceCounters::default(), |acc, c| ServiceCounters {
                translations: acc.translations + c.translations,
                refused: acc.refused + c.refused,
            });
            out.insert(id, sum);
        }
        Ok(out)
    }
}
