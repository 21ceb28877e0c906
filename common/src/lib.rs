//! Map keys and values shared by socklb's eBPF programs and its agent.
//!
//! Every type here is `#[repr(C)]` with explicit padding so that the kernel
//! and the agent agree on the bytes; the size asserts at the bottom fail the
//! build if a field is added without thinking about the layout.
//!
//! # Byte order
//! * Addresses are [`Addr`]: four `u32` words holding the address bytes in
//!   network order, exactly as `bpf_sock_addr.user_ip6` holds them. IPv4
//!   addresses are stored v4-mapped (`::ffff:a.b.c.d`), so `connect4` and a
//!   v4-mapped `connect6` look up the same frontend.
//! * Ports are `u16` holding the port in network order (`port.to_be()`).
//!
//! # Maps
//! ```text
//! FRONTENDS   hash        FrontendKey{addr,port,proto,scope} -> FrontendValue{set_id,flags}
//! SETS        array, mmap set_id                            -> SetEntry{state,affinity,key_hash,content_hash}
//! BACKENDS    array, mmap slot                              -> BackendValue{addr,port,proto,flags}
//! COUNTERS    array, mmap set_id                            -> SetCounters{translations,refused} (atomic adds)
//! MEMBERS     hash        MemberKey{set_id,backend}         -> MemberValue (affinity and UDP sets only)
//! AFFINITY    hash        AffinityKey{netns_cookie,set_id}  -> AffinityValue{last_used,backend} (agent expires)
//! CONFIG      array[1]                                      -> Config{flags,udp_idle_ns}
//! SOCK_TCP    sk_storage, per connected socket              -> RevNat (the one reverse translation)
//! SOCK_UDP    sk_storage, per unconnected UDP socket        -> UdpSockState{sticky backends per VIP}
//! UDP_REV     hash        UdpRevKey{cookie,backend,port}    -> UdpRevValue{vip,port,seq} (unconnected UDP replies)
//! UDP_REV_IDX hash        UdpIndexKey{cookie,seq}           -> UdpIndexValue{backend,port} (to clean up on close)
//! STATS       percpu array[8], index stats::*               -> u64 (datapath events)
//! SOCK_STATE  sk_storage, per socket                        -> SockState (layouts 1-3; read only)
//! UDP_CONNECTED hash      socket cookie u64                 -> RevNat (translated connected UDP sockets)
//! NODE_ADDRS  hash        Addr (a node's address)           -> NodeAddrValue{node_id,flags}
//! NODEPORTS   hash        NodePortKey{port,proto,family}    -> NodePortValue{set_id,flags}
//! NODE_LOCAL  hash        NodeLocalKey{set_id,node_id}      -> NodeLocalValue{set_id}
//! ```
//! A *backend set* is what a frontend selects from: one Kubernetes service
//! port, for one address family and one endpoint policy. Several frontends
//! (the ClusterIP, NodePorts, external IPs) can point at the same set.
//!
//! Set ids and backend slots are dense indices into arrays, so the maps cost
//! what is programmed, not a capacity: `SETS` holds 32 bytes per set and
//! `BACKENDS` 24 bytes per slot. A set's backends are the contiguous slots
//! `BACKENDS[base .. base + count]`. The agent writes the arrays through a
//! shared mapping (`BPF_F_MMAPABLE`), with no syscall per entry. Nothing in
//! the kernel names a Service: `SetEntry::key_hash` is a 64-bit hash of the
//! set's identity, which is how a restarted agent finds its sets again. The
//! hash maps are sized by the agent from what it programs, and grown by
//! building a bigger generation of maps and switching the programs to it.
//!
//! NodePorts are not expanded per address: a destination that is no
//! frontend is looked up in `NODE_ADDRS` (every node's NodePort addresses),
//! then its port in `NODEPORTS`. Entries grow with nodes plus NodePorts,
//! never with their product. A NodePort with `externalTrafficPolicy: Local`
//! reached on another node's address uses that node's endpoints, as that
//! node's proxy would: `NODE_LOCAL[{cluster set, node}]`, or a refusal when
//! the node has none. On this node's own addresses (and from this node's
//! sockets, which kube-proxy short-circuits) it uses the cluster set.
//!
//! # Transactional update order (the `socklb-lb` executor follows it)
//! The datapath must never mix the old and new backend sets of a set, nor
//! follow a slot that was given to another set. A set's whole state is one
//! aligned 8-byte word, `SetEntry::state` = `base | count << 32 | flags << 48`,
//! so a single store switches readers from the old slots to the new:
//! 1. `MEMBERS`: insert the backends that join the set, delete those that
//!    leave it (before the switch, so that a stale affinity or UDP socket
//!    entry can never pick a leaving backend afterwards);
//! 2. write the new backends into free slots (never the ones in use);
//! 3. store `SETS[id].state` <- the switch (a new set's other fields are
//!    written first);
//! 4. upsert or delete frontends (a frontend only ever points at a set whose
//!    entry and slots are complete), then NodePorts;
//! 5. a removed set: its frontends are gone (4), then `state = 0`, then its
//!    members;
//! 6. the old slots, and the ids of removed sets, are reused only after an
//!    RCU grace period: the programs run under `rcu_read_lock`, so once one
//!    has passed no program still holds the old state word.
#![cfg_attr(not(any(test, feature = "user")), no_std)]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The version of the map layouts (keys, values, which maps exist and what
/// their entries mean). Bump it with any such change: a new agent then
/// builds its maps beside the old ones and switches the programs to them
/// only once they are filled, instead of misreading the old maps. The
/// agent pins each generation under `<bpffs>/v<LAYOUT_VERSION>-<seq>/`.
#[cfg(not(feature = "layout-next"))]
pub const LAYOUT_VERSION: u32 = 5;
/// A test build with a different layout (see the `layout-next` feature).
#[cfg(feature = "layout-next")]
pub const LAYOUT_VERSION: u32 = 1005;

/// Names of the maps in the object file; also the file names of their pins.
pub mod map_names {
    pub const FRONTENDS: &str = "SOCKLB_FRONTENDS";
    pub const SETS: &str = "SOCKLB_SETS";
    pub const BACKENDS: &str = "SOCKLB_BACKENDS";
    pub const MEMBERS: &str = "SOCKLB_MEMBERS";
    pub const AFFINITY: &str = "SOCKLB_AFFINITY";
    pub const COUNTERS: &str = "SOCKLB_COUNTERS";
    pub const CONFIG: &str = "SOCKLB_CONFIG";
    pub const SOCK_STATE: &str = "SOCKLB_SOCK_STATE";
    pub const UDP_CONNECTED: &str = "SOCKLB_UDP_CONNECTED";
    pub const NODE_ADDRS: &str = "SOCKLB_NODE_ADDRS";
    pub const NODEPORTS: &str = "SOCKLB_NODEPORTS";
    pub const NODE_LOCAL: &str = "SOCKLB_NODE_LOCAL";
    pub const SOCK_TCP: &str = "SOCKLB_SOCK_TCP";
    pub const SOCK_UDP: &str = "SOCKLB_SOCK_UDP";
    pub const UDP_REV: &str = "SOCKLB_UDP_REV";
    pub const UDP_REV_INDEX: &str = "SOCKLB_UDP_REV_IDX";
    pub const STATS: &str = "SOCKLB_STATS";

    /// Every map, in the order `socklb list` and `status` show them.
    pub const ALL: [&str; 17] = [
        FRONTENDS,
        SETS,
        BACKENDS,
        MEMBERS,
        AFFINITY,
        COUNTERS,
        CONFIG,
        SOCK_STATE,
        UDP_CONNECTED,
        NODE_ADDRS,
        NODEPORTS,
        NODE_LOCAL,
        SOCK_TCP,
        SOCK_UDP,
        UDP_REV,
        UDP_REV_INDEX,
        STATS,
    ];
}

/// Map sizes. The maps the agent programs are sized from what it programs
/// (see `socklb-lb`'s `capacity`): these are only their smallest sizes, so
/// that a small cluster does not grow its maps at every new service. The
/// tables the programs fill (affinity, UDP reverse translations) are sized
/// by flags, with these defaults.
pub mod capacity {
    /// Backend sets.
    pub const MIN_SETS: u32 = 256;
    /// Backend slots.
    pub const MIN_SLOTS: u32 = 2_048;
    /// Entries of each hash map the agent writes.
    pub const MIN_HASH: u32 = 512;
    /// Session-affinity entries (client network namespace × set). Not an
    /// LRU: a live entry is never evicted; the agent removes expired ones,
    /// and a full table leaves new clients unpinned (counted).
    pub const AFFINITY: u32 = 65_536;
    /// Reverse translations of unconnected UDP (socket × backend), and
    /// their index.
    pub const UDP_REV: u32 = 65_536;
    /// Connected UDP sockets that were translated (removed when they close).
    pub const UDP_CONNECTED: u32 = 65_536;
}

/// The largest backend set (its count is 16 bits of the state word).
pub const MAX_BACKENDS_PER_SET: usize = u16::MAX as usize;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// The scope of a frontend entry.
///
/// Sockets on this node are translated through the internal scope. kube-proxy
/// routes traffic that originates on the node to a service's external
/// addresses with the cluster-wide endpoints ("short-circuit"), so for
/// NodePorts, external IPs and load-balancer IPs the internal entry carries the
/// cluster set and the external entry carries what `externalTrafficPolicy`
/// allows for traffic that arrives from outside.
pub const SCOPE_EXTERNAL: u8 = 0;
pub const SCOPE_INTERNAL: u8 = 1;

/// An address as four network-order words; IPv4 is stored v4-mapped.
pub type Addr = [u32; 4];

/// The v4-mapped form of an IPv4 address given in network order.
#[inline(always)]
pub const fn v4_mapped(ip4_be: u32) -> Addr {
    [0, 0, 0xffff_u32.to_be(), ip4_be]
}

/// Whether `addr` is a v4-mapped address.
#[inline(always)]
pub const fn is_v4_mapped(addr: &Addr) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == 0xffff_u32.to_be()
}

/// Converts an IP address to the map form.
pub fn addr_from_ip(ip: IpAddr) -> Addr {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let word = |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// Converts the map form back; v4-mapped addresses become IPv4.
pub fn ip_from_addr(addr: &Addr) -> IpAddr {
    let mut bytes = [0u8; 16];
    for (i, w) in addr.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// An IPv4 address in the network-order `u32` form of `bpf_sock_addr.user_ip4`.
pub fn ip4_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Frontend flags: what kind of address this is.
pub mod frontend_flags {
    pub const CLUSTER_IP: u16 = 1 << 0;
    pub const NODE_PORT: u16 = 1 << 1;
    pub const EXTERNAL_IP: u16 = 1 << 2;
    pub const LOAD_BALANCER: u16 = 1 << 3;
}

/// Backend set flags (the top 16 bits of [`SetEntry::state`]).
pub mod set_flags {
    /// `sessionAffinity: ClientIP`; see `SetEntry::affinity_timeout_secs`.
    pub const AFFINITY: u16 = 1 << 0;
    /// The set holds only this node's endpoints (a `Local` traffic policy).
    pub const LOCAL_ONLY: u16 = 1 << 1;
    /// No endpoint was ready; the set holds serving, terminating ones.
    pub const TERMINATING_FALLBACK: u16 = 1 << 2;
    /// The agent keeps `MEMBERS` entries for this set: it uses affinity or
    /// is UDP (per-socket stickiness). Plain TCP sets need none.
    pub const MEMBERSHIP: u16 = 1 << 3;
    /// The entry is in use. A state word of 0 is a set that does not exist.
    pub const PRESENT: u16 = 1 << 15;
}

/// Datapath-wide settings.
pub mod config_flags {
    /// Translate only sockets in the host network namespace.
    pub const HOSTNS_ONLY: u32 = 1 << 0;
    /// Tests only: behave as if socket storage could not be allocated, to
    /// exercise failing closed.
    pub const TEST_FAIL_STORAGE: u32 = 1 << 31;
}

/// Indices of `STATS`: datapath events the agent exports as counters.
pub mod stats {
    /// Socket storage could not be allocated: the connect or send was
    /// refused (ENOBUFS), never translated without a way back.
    pub const STORAGE_FAILED: u32 = 0;
    /// The set vanished under the program (removed between the frontend
    /// lookup and its own), or its slot was out of range: refused (EAGAIN)
    /// rather than letting the VIP go out untranslated.
    pub const SELECT_GONE: u32 = 1;
    /// The unconnected-UDP reverse table was full: the send was refused
    /// (ENOBUFS).
    pub const UDP_REVERSE_FULL: u32 = 2;
    /// The affinity table was full: a client went unpinned.
    pub const AFFINITY_FULL: u32 = 3;
    /// An unconnected UDP socket idle past `udp_idle_ns` toward a VIP was
    /// load-balanced afresh.
    pub const UDP_IDLE_REPICK: u32 = 4;
    /// Every index, with its metric label.
    pub const ALL: [(u32, &str); 5] = [
        (STORAGE_FAILED, "storage_failed"),
        (SELECT_GONE, "select_gone"),
        (UDP_REVERSE_FULL, "udp_reverse_full"),
        (AFFINITY_FULL, "affinity_full"),
        (UDP_IDLE_REPICK, "udp_idle_repick"),
    ];
    /// The size of the array.
    pub const LEN: u32 = 8;
}

/// Flags of a node address (`NODE_ADDRS`).
pub mod node_flags {
    /// An address of this node.
    pub const THIS_NODE: u32 = 1 << 0;
    /// Loopback: a pod's loopback is its own, so only sockets in the host
    /// network namespace reach NodePorts there (kube-proxy never touches a
    /// pod's loopback).
    pub const HOST_NETNS_ONLY: u32 = 1 << 1;
}

/// Value of `NODE_ADDRS` (the key is the address, an [`Addr`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeAddrValue {
    /// The agent's id for the node (see `NODE_LOCAL`).
    pub node_id: u32,
    pub flags: u32,
}

/// The family of a NodePort entry.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// The family of an address in map form.
#[inline(always)]
pub const fn family_of(addr: &Addr) -> u8 {
    if is_v4_mapped(addr) { FAMILY_V4 } else { FAMILY_V6 }
}

/// Key of `NODEPORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodePortKey {
    /// Network order.
    pub port: u16,
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// NodePort flags.
pub mod nodeport_flags {
    /// `externalTrafficPolicy: Local`: on another node's address, only that
    /// node's endpoints (`NODE_LOCAL`).
    pub const EXTERNAL_LOCAL: u16 = 1 << 0;
}

/// Value of `NODEPORTS`: the service (cluster set) that serves the NodePort.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodePortValue {
    pub set_id: u32,
    pub flags: u16,
    pub _pad: u16,
}

/// Key of `NODE_LOCAL`: a NodePort's cluster set and another node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeLocalKey {
    pub set_id: u32,
    pub node_id: u32,
}

/// Value of `NODE_LOCAL`: the set of that node's endpoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeLocalValue {
    pub set_id: u32,
}

/// Key of `FRONTENDS`: a destination a socket may connect or send to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub addr: Addr,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

/// Value of `FRONTENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendValue {
    pub set_id: u32,
    pub flags: u16,
    pub _pad: u16,
}

/// Value of `SETS` (the index is the set id).
///
/// `state` is the switch: the agent stores it as one aligned 8-byte word
/// and the programs load it once (see [`SetState`]). A present set with
/// `count == 0` has no usable endpoint: connects are refused with
/// `ECONNREFUSED`, as kube-proxy's REJECT rule does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetEntry {
    pub state: u64,
    pub affinity_timeout_secs: u32,
    pub _pad: u32,
    /// A hash of the set's identity (Service, port, family, policy): the
    /// kernel holds no names; a restarted agent matches its sets by this.
    pub key_hash: u64,
    /// A hash of the backends in the set's slots, as written: a restarted
    /// agent adopts a set whose hash matches without reading its slots.
    pub content_hash: u64,
}

/// [`SetEntry::state`] unpacked: `base | count << 32 | flags << 48`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetState {
    /// The first of the set's slots in `BACKENDS`.
    pub base: u32,
    pub count: u16,
    /// [`set_flags`].
    pub flags: u16,
}

impl SetState {
    #[inline(always)]
    pub const fn pack(self) -> u64 {
        self.base as u64 | (self.count as u64) << 32 | (self.flags as u64) << 48
    }

    #[inline(always)]
    pub const fn unpack(word: u64) -> Self {
        Self { base: word as u32, count: (word >> 32) as u16, flags: (word >> 48) as u16 }
    }

    #[inline(always)]
    pub const fn is_present(&self) -> bool {
        self.flags & set_flags::PRESENT != 0
    }
}

/// Value of `BACKENDS` (the index is a slot): one backend of one set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendValue {
    pub addr: Addr,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
    pub _pad: u32,
    /// The `layout-next` test build's layout change: a longer value.
    #[cfg(feature = "layout-next")]
    pub _next: u64,
}

impl BackendValue {
    /// A backend at `addr:port` (network order) for `proto`.
    pub const fn new(addr: Addr, port_be: u16, proto: u8) -> Self {
        Self {
            addr,
            port: port_be,
            proto,
            flags: 0,
            _pad: 0,
            #[cfg(feature = "layout-next")]
            _next: 0,
        }
    }
}

/// Key of `MEMBERS`: `backend` is in set `set_id`'s active backends.
/// Affinity and per-socket UDP stickiness check it so that a backend that
/// left is never chosen again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    pub set_id: u32,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub addr: Addr,
}

impl MemberKey {
    #[inline(always)]
    pub const fn of(set_id: u32, backend: &BackendValue) -> Self {
        Self { set_id, port: backend.port, proto: backend.proto, _pad: 0, addr: backend.addr }
    }
}

/// Value of `MEMBERS` (presence is what matters).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemberValue {
    pub present: u32,
}

/// Key of `AFFINITY`: one client network namespace and one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub set_id: u32,
    pub _pad: u32,
}

/// Value of `AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// `bpf_ktime_get_coarse_ns` / `bpf_ktime_get_ns` of the last use.
    pub last_used_ns: u64,
    /// The backend (checked against `MEMBERS` before it is used again).
    pub backend: BackendValue,
}

/// Value of `COUNTERS` (the index is the set id). The programs add with
/// atomic instructions: one array for all CPUs, never CPUs × sets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetCounters {
    /// Connects and datagrams translated to a backend.
    pub translations: u64,
    /// Connects and datagrams refused because the service had no backend.
    pub refused: u64,
}

/// Value of `CONFIG[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    pub flags: u32,
    pub _pad: u32,
    /// An unconnected UDP socket idle this long toward a VIP picks its
    /// backend afresh (kube-proxy's UDP conntrack entries expire after 30 s
    /// idle). 0: never.
    pub udp_idle_ns: u64,
}

/// One reverse translation remembered by a socket: replies from (or the peer)
/// `backend:backend_port` are shown to the application as `vip:vip_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNat {
    pub vip: Addr,
    pub backend: Addr,
    /// Network order.
    pub vip_port: u16,
    /// Network order.
    pub backend_port: u16,
    pub set_id: u32,
    /// The slot the backend was picked from (for inspection only).
    pub slot: u32,
    pub proto: u8,
    /// Non-zero when the entry is in use.
    pub valid: u8,
    pub _pad: u16,
}

/// Entries of the layout 1-3 socket storage ([`SockState`]).
pub const SOCK_REV_ENTRIES: usize = 4;

/// Value of `SOCK_STATE`, the socket storage of layouts 1-3: a ring of four
/// reverse translations per socket. No longer written; the reverse hooks
/// still read it, so that sockets established before an upgrade keep their
/// VIP (`getpeername`, `recvmsg`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockState {
    pub entries: [RevNat; SOCK_REV_ENTRIES],
    pub next: u32,
    pub _pad: u32,
}

/// How many VIPs an unconnected UDP socket remembers its backend for
/// (stickiness; replies are translated back through `UDP_REV` whatever the
/// number of VIPs).
pub const UDP_STICKY_ENTRIES: usize = 8;

/// The backend an unconnected UDP socket uses for one VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpSticky {
    pub vip: Addr,
    pub backend: Addr,
    /// Network order.
    pub vip_port: u16,
    /// Network order.
    pub backend_port: u16,
    pub set_id: u32,
    /// The slot the backend was picked from (for inspection only).
    pub slot: u32,
    /// Non-zero when in use.
    pub valid: u32,
    /// `bpf_ktime_get_ns` of the last send.
    pub last_used_ns: u64,
}

/// Value of `SOCK_UDP`: only sockets that send unconnected datagrams to
/// VIPs have it (TCP sockets carry only the 48-byte [`RevNat`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpSockState {
    pub sticky: [UdpSticky; UDP_STICKY_ENTRIES],
    /// The next `UDP_REV_IDX` sequence number of this socket.
    pub next_seq: u32,
    pub _pad: u32,
}

/// Key of `UDP_REV`: a reply from `backend:port` to socket `cookie`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UdpRevKey {
    pub cookie: u64,
    pub backend: Addr,
    /// Network order.
    pub backend_port: u16,
    pub _pad: [u8; 6],
}

/// Value of `UDP_REV`: the VIP the latest datagram to that backend was
/// sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpRevValue {
    pub vip: Addr,
    /// Network order.
    pub vip_port: u16,
    pub _pad: u16,
    /// Its `UDP_REV_IDX` entry.
    pub seq: u32,
}

/// Key of `UDP_REV_IDX`: the `seq`-th reverse entry of socket `cookie`.
/// `sock_release` walks a closing socket's entries by sequence number and
/// deletes them (a hash cannot be searched by cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UdpIndexKey {
    pub cookie: u64,
    pub seq: u32,
    pub _pad: u32,
}

/// Value of `UDP_REV_IDX`: which `UDP_REV` entry that is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpIndexValue {
    pub backend: Addr,
    /// Network order.
    pub backend_port: u16,
    pub _pad: [u8; 6],
}

/// How far `sock_release` walks a socket's reverse entries: a socket that
/// talked to more backends than this over its life leaves the rest to the
/// agent's clean-up of closed sockets.
pub const UDP_REV_WALK: u32 = 1024;

// Layouts: a change here changes the pinned maps, which the agent checks
// against these sizes before it adopts them. Array values are multiples of 8
// bytes (the kernel's element stride), so the agent's mapping of an array
// is a plain array of the value type.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<FrontendKey>() == 20 && align_of::<FrontendKey>() == 4);
    assert!(size_of::<FrontendValue>() == 8);
    assert!(size_of::<SetEntry>() == 32 && align_of::<SetEntry>() == 8);
    #[cfg(not(feature = "layout-next"))]
    assert!(size_of::<BackendValue>() == 24);
    #[cfg(feature = "layout-next")]
    assert!(size_of::<BackendValue>() == 32);
    assert!(size_of::<BackendValue>().is_multiple_of(8));
    assert!(size_of::<MemberKey>() == 24);
    assert!(size_of::<MemberValue>() == 4);
    assert!(size_of::<AffinityKey>() == 16 && align_of::<AffinityKey>() == 8);
    assert!(size_of::<AffinityValue>() == 8 + size_of::<BackendValue>());
    assert!(size_of::<SetCounters>() == 16);
    assert!(size_of::<RevNat>() == 48);
    assert!(size_of::<SockState>() == 48 * SOCK_REV_ENTRIES + 8);
    assert!(size_of::<NodeAddrValue>() == 8);
    assert!(size_of::<NodePortKey>() == 4);
    assert!(size_of::<NodePortValue>() == 8);
    assert!(size_of::<NodeLocalKey>() == 8);
    assert!(size_of::<NodeLocalValue>() == 4);
    assert!(size_of::<UdpSticky>() == 56 && align_of::<UdpSticky>() == 8);
    assert!(size_of::<UdpSockState>() == 56 * UDP_STICKY_ENTRIES + 8);
    assert!(size_of::<UdpRevKey>() == 32);
    assert!(size_of::<UdpRevValue>() == 24);
    assert!(size_of::<UdpIndexKey>() == 16);
    assert!(size_of::<UdpIndexValue>() == 24);
    assert!(size_of::<Config>() == 16);
};

#[cfg(feature = "user")]
pub mod sys;

#[cfg(feature = "user")]
pub mod counting_alloc;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], made only of integers and arrays of
    // integers, with all padding spelled out as fields; any bit pattern is valid.
    unsafe impl aya::Pod for FrontendKey {}
    unsafe impl aya::Pod for FrontendValue {}
    unsafe impl aya::Pod for SetEntry {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for MemberKey {}
    unsafe impl aya::Pod for MemberValue {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for SetCounters {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for RevNat {}
    unsafe impl aya::Pod for SockState {}
    unsafe impl aya::Pod for NodeAddrValue {}
    unsafe impl aya::Pod for NodePortKey {}
    unsafe impl aya::Pod for NodePortValue {}
    unsafe impl aya::Pod for NodeLocalKey {}
    unsafe impl aya::Pod for NodeLocalValue {}
    unsafe impl aya::Pod for UdpSticky {}
    unsafe impl aya::Pod for UdpSockState {}
    unsafe impl aya::Pod for UdpRevKey {}
    unsafe impl aya::Pod for UdpRevValue {}
    unsafe impl aya::Pod for UdpIndexKey {}
    unsafe impl aya::Pod for UdpIndexValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn ipv4_is_stored_v4_mapped_in_network_order() {
        let addr = addr_from_ip(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)));
        assert!(is_v4_mapped(&addr));
        assert_eq!(addr, v4_mapped(ip4_be(Ipv4Addr::new(10, 96, 0, 1))));
        // The last word's memory holds the bytes in wire order.
        assert_eq!(addr[3].to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(addr[2].to_ne_bytes(), [0, 0, 0xff, 0xff]);
        assert_eq!(ip_from_addr(&addr), IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)));
    }

    #[test]
    fn ipv6_round_trips_and_is_not_mapped() {
        let ip: Ipv6Addr = "fd00:96::a".parse().expect("literal");
        let addr = addr_from_ip(IpAddr::V6(ip));
        assert!(!is_v4_mapped(&addr));
        assert_eq!(addr[0].to_ne_bytes(), [0xfd, 0x00, 0x00, 0x96]);
        assert_eq!(addr[3].to_ne_bytes(), [0, 0, 0, 0x0a]);
        assert_eq!(ip_from_addr(&addr), IpAddr::V6(ip));
    }

    #[test]
    fn ports_are_network_order() {
        let key = FrontendKey { port: 8080u16.to_be(), ..Default::default() };
        assert_eq!(key.port.to_ne_bytes(), [0x1f, 0x90]);
    }

    #[test]
    fn field_offsets_match_the_documented_layout() {
        assert_eq!(offset_of!(FrontendKey, port), 16);
        assert_eq!(offset_of!(FrontendKey, proto), 18);
        assert_eq!(offset_of!(FrontendKey, scope), 19);
        assert_eq!(offset_of!(SetEntry, affinity_timeout_secs), 8);
        assert_eq!(offset_of!(SetEntry, key_hash), 16);
        assert_eq!(offset_of!(BackendValue, port), 16);
        assert_eq!(offset_of!(MemberKey, addr), 8);
        assert_eq!(offset_of!(AffinityKey, set_id), 8);
        assert_eq!(offset_of!(RevNat, vip_port), 32);
        assert_eq!(offset_of!(RevNat, set_id), 36);
        assert_eq!(offset_of!(RevNat, valid), 45);
        assert_eq!(offset_of!(SockState, next), 192);
    }

    #[test]
    fn a_set_state_is_one_word_and_zero_is_absent() {
        let st = SetState { base: 0xdead_beef, count: 513, flags: set_flags::PRESENT | set_flags::AFFINITY };
        assert_eq!(SetState::unpack(st.pack()), st);
        assert!(!SetState::unpack(0).is_present());
        assert!(
            SetState::unpack(SetState { flags: set_flags::PRESENT, ..Default::default() }.pack())
                .is_present()
        );
    }

    #[test]
    fn alignment_fits_bpf_hash_values() {
        // The kernel aligns hash values to 8 bytes; none may need more.
        assert!(core::mem::align_of::<SockState>() <= 8);
        assert!(core::mem::align_of::<AffinityValue>() <= 8);
    }
}
