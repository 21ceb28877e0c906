//! The maps. Their layout and update order are documented in `socklb-common`.
//! Sizes here are the smallest; the agent sizes the maps at load time.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    btf_maps::{Array, HashMap, PerCpuArray, SkStorage},
    macros::btf_map,
};
use socklb_common::{
    Addr, AffinityKey, AffinityValue, BackendValue, Config, FrontendKey, FrontendValue, MemberKey,
    MemberValue, NodeAddrValue, NodeLocalKey, NodeLocalValue, NodePortKey, NodePortValue, RevNat,
    SetCounters, SetEntry, SockState, UdpIndexKey, UdpIndexValue, UdpRevKey, UdpRevValue, UdpSockState,
    capacity, stats,
};

// Hash maps are not preallocated: a node with 50 services should not pay
// for 100k. Lookups cost the same; only updates allocate.
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;
// The agent writes the arrays through a shared mapping.
const MMAPABLE: usize = BPF_F_MMAPABLE as usize;
const MIN_HASH: usize = capacity::MIN_HASH as usize;

#[btf_map(name = "SOCKLB_FRONTENDS")]
pub static FRONTENDS: HashMap<FrontendKey, FrontendValue, MIN_HASH, NO_PREALLOC> = HashMap::new();

#[btf_map(name = "SOCKLB_SETS")]
pub static SETS: Array<SetEntry, { capacity::MIN_SETS as usize }, MMAPABLE> = Array::new();

#[btf_map(name = "SOCKLB_BACKENDS")]
pub static BACKENDS: Array<BackendValue, { capacity::MIN_SLOTS as usize }, MMAPABLE> = Array::new();

#[btf_map(name = "SOCKLB_COUNTERS")]
pub static COUNTERS: Array<SetCounters, { capacity::MIN_SETS as usize }, MMAPABLE> = Array::new();

#[btf_map(name = "SOCKLB_MEMBERS")]
pub static MEMBERS: HashMap<MemberKey, MemberValue, MIN_HASH, NO_PREALLOC> = HashMap::new();

/// Not an LRU: a live client's entry is never evicted by other clients.
/// The agent removes expired entries; a full table leaves a new client
/// unpinned (counted in `STATS`).
#[btf_map(name = "SOCKLB_AFFINITY")]
pub static AFFINITY: HashMap<AffinityKey, AffinityValue, { capacity::AFFINITY as usize }, NO_PREALLOC> =
    HashMap::new();

#[btf_map(name = "SOCKLB_CONFIG")]
pub static CONFIG: Array<Config, 1> = Array::new();

/// The socket storage of layouts 1-3, read only (see `sock_storage`).
#[btf_map(name = "SOCKLB_SOCK_STATE")]
pub static SOCK_STATE: SkStorage<SockState> = SkStorage::new();

/// A connected socket's reverse translation.
#[btf_map(name = "SOCKLB_SOCK_TCP")]
pub static SOCK_TCP: SkStorage<RevNat> = SkStorage::new();

/// An unconnected UDP socket's backend per VIP.
#[btf_map(name = "SOCKLB_SOCK_UDP")]
pub static SOCK_UDP: SkStorage<UdpSockState> = SkStorage::new();

/// Unconnected UDP reverse translations and their index (see `udp_rev`).
#[btf_map(name = "SOCKLB_UDP_REV")]
pub static UDP_REV: HashMap<UdpRevKey, UdpRevValue, { capacity::UDP_REV as usize }, NO_PREALLOC> =
    HashMap::new();

#[btf_map(name = "SOCKLB_UDP_REV_IDX")]
pub static UDP_REV_INDEX: HashMap<UdpIndexKey, UdpIndexValue, { capacity::UDP_REV as usize }, NO_PREALLOC> =
    HashMap::new();

/// Datapath events (`socklb_common::stats`), per CPU.
#[btf_map(name = "SOCKLB_STATS")]
pub static STATS: PerCpuArray<u64, { stats::LEN as usize }> = PerCpuArray::new();

/// Connected UDP sockets that were translated, by socket cookie: sock_diag
/// does not report socket storage for UDP, so the agent finds the sockets
/// of a departed backend here. The entry is removed when the socket closes
/// (sock_release), so no live socket is ever evicted.
#[btf_map(name = "SOCKLB_UDP_CONNECTED")]
pub static UDP_CONNECTED: HashMap<u64, RevNat, { capacity::UDP_CONNECTED as usize }, NO_PREALLOC> =
    HashMap::new();

/// Every node's NodePort addresses (see `socklb-common`).
#[btf_map(name = "SOCKLB_NODE_ADDRS")]
pub static NODE_ADDRS: HashMap<Addr, NodeAddrValue, MIN_HASH, NO_PREALLOC> = HashMap::new();

#[btf_map(name = "SOCKLB_NODEPORTS")]
pub static NODEPORTS: HashMap<NodePortKey, NodePortValue, MIN_HASH, NO_PREALLOC> = HashMap::new();

#[btf_map(name = "SOCKLB_NODE_LOCAL")]
pub static NODE_LOCAL: HashMap<NodeLocalKey, NodeLocalValue, MIN_HASH, NO_PREALLOC> = HashMap::new();
