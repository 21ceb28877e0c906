//! The cgroup sock_addr hooks.
//!
//! * `connect4/6`: translate a VIP destination to a backend and remember the
//!   pair in the socket's storage (TCP, and connected UDP).
//! * `sendmsg4/6`: the same per unconnected UDP datagram; a socket keeps its
//!   backend per VIP while that backend stays in the service and the socket
//!   is not idle toward it for longer than `udp_idle_ns`; every (socket,
//!   backend) pair gets a reverse entry (`udp_rev`).
//!
//! Failing closed: a connect or datagram that cannot record its way back
//! (no socket storage, a full reverse table), or whose set vanished under
//! the program, is refused with an error the application
//! retries (ENOBUFS, EAGAIN), never sent to the VIP untranslated.
//! * `getpeername4/6`, `recvmsg4/6`: show the VIP instead of the backend,
//!   but only while the peer is still the backend that was recorded.
//!
//! A destination that is not a frontend costs one hash lookup. Sockets that
//! were translated before also get their stale entries cleared, so that a
//! later getpeername can never return an old VIP.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use socklb_common::{
    Addr, BackendValue, FrontendKey, NodeLocalKey, NodePortKey, PROTO_TCP, PROTO_UDP, RevNat, SCOPE_INTERNAL,
    UDP_STICKY_ENTRIES, UdpSticky, config_flags, family_of, is_v4_mapped, node_flags, nodeport_flags, stats,
    v4_mapped,
};

use crate::{
    maps::{CONFIG, FRONTENDS, NODE_ADDRS, NODE_LOCAL, NODEPORTS, UDP_CONNECTED},
    select::{Selection, count, event, select, still_member},
    sock_storage, udp_rev,
};

/// Return value that lets the syscall go on.
const ALLOW: i32 = 1;
/// kube-proxy rejects connects to a service without endpoints; callers of
/// connect() and sendmsg() know how to handle this error.
const ECONNREFUSED: i32 = 111;
/// Failing closed, with errors applications retry: no memory for the way
/// back (socket storage, the UDP reverse table) ...
const ENOBUFS: i32 = 105;
/// ... and a set that vanished under the program.
const EAGAIN: i32 = 11;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// How a refusal reaches the application.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `bpf_set_retval` (Linux 5.18): ECONNREFUSED, as kube-proxy's REJECT.
    Retval,
    /// Older kernels: the hook's plain "deny", which the syscall reports as
    /// EPERM. The `_compat` programs are loaded where `bpf_set_retval` is
    /// missing; they are otherwise identical.
    Deny,
}

#[cgroup_sock_addr(connect4)]
pub fn sl_connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Family::V4, Refusal::Retval)
}

#[cgroup_sock_addr(connect6)]
pub fn sl_connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Family::V6, Refusal::Retval)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sl_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx, Family::V4, Refusal::Retval)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sl_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx, Family::V6, Refusal::Retval)
}

#[cgroup_sock_addr(connect4)]
pub fn sl_connect4_compat(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Family::V4, Refusal::Deny)
}

#[cgroup_sock_addr(connect6)]
pub fn sl_connect6_compat(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, Family::V6, Refusal::Deny)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sl_sendmsg4_compat(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx, Family::V4, Refusal::Deny)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sl_sendmsg6_compat(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx, Family::V6, Refusal::Deny)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sl_getpeer4(ctx: SockAddrContext) -> i32 {
    restore_vip(&ctx, Family::V4, false)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sl_getpeer6(ctx: SockAddrContext) -> i32 {
    restore_vip(&ctx, Family::V6, false)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sl_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_vip(&ctx, Family::V4, true)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sl_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_vip(&ctx, Family::V6, true)
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, family: Family, refusal: Refusal) -> i32 {
    #[cfg(feature = "upgrade-test")]
    if let Some(config) = CONFIG.get_ptr(0) {
        // SAFETY: a pointer from a successful lookup; the read is only there
        // to make this build's instructions differ.
        let _ = unsafe { core::ptr::read_volatile(config) };
    }
    let Some(key) = frontend_key(ctx, family) else {
        return ALLOW;
    };
    let set_id = match lookup(ctx, &key) {
        Lookup::Set(id) => id,
        Lookup::Refuse(id) => {
            count(id, true);
            return refuse(refusal, ECONNREFUSED);
        }
        Lookup::Miss => {
            if sock_storage::forget(ctx) && key.proto == PROTO_UDP {
                let _ = UDP_CONNECTED.remove(socket_cookie(ctx));
            }
            return ALLOW;
        }
    };
    // Fail closed: without room for the way back, no translation.
    let Some(state) = sock_storage::tcp(ctx, true) else {
        event(stats::STORAGE_FAILED);
        return refuse(refusal, ENOBUFS);
    };
    match select(set_id, netns_cookie(ctx)) {
        Selection::Backend { slot, backend } => {
            if !set_destination(ctx, family, &backend.addr, backend.port) {
                return ALLOW;
            }
            let rev = rev_nat(&key, set_id, slot, &backend.addr, backend.port);
            // SAFETY: `state` is this socket's storage.
            unsafe { *state = rev };
            if key.proto == PROTO_UDP {
                // Best effort: a full map only means this socket is not
                // destroyed if its backend leaves.
                let _ = UDP_CONNECTED.insert(socket_cookie(ctx), rev, 0);
            }
            count(set_id, false);
            ALLOW
        }
        Selection::NoBackends => {
            count(set_id, true);
            refuse(refusal, ECONNREFUSED)
        }
        Selection::Gone => {
            event(stats::SELECT_GONE);
            refuse(refusal, EAGAIN)
        }
    }
}

#[inline(always)]
fn on_sendmsg(ctx: &SockAddrContext, family: Family, refusal: Refusal) -> i32 {
    let Some(key) = frontend_key(ctx, family) else {
        return ALLOW;
    };
    let set_id = match lookup(ctx, &key) {
        Lookup::Set(id) => id,
        Lookup::Refuse(id) => {
            count(id, true);
            return refuse(refusal, ECONNREFUSED);
        }
        Lookup::Miss => return ALLOW,
    };
    let Some(state) = sock_storage::udp(ctx, true) else {
        event(stats::STORAGE_FAILED);
        return refuse(refusal, ENOBUFS);
    };
    // SAFETY: a helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let idle_ns = CONFIG.get(0).map_or(0, |c| c.udp_idle_ns);
    let slot = sock_storage::sticky_slot(state, &key.addr, key.port);
    if slot >= UDP_STICKY_ENTRIES {
        return ALLOW;
    }
    // Keep the socket's backend while it stays in the set, unless the
    // socket was idle toward this VIP for longer than kube-proxy's UDP
    // conntrack entries live: then it is load-balanced afresh.
    // SAFETY: `state` is this socket's storage; `slot` is in bounds.
    let e = unsafe { (*state).sticky[slot] };
    let mut chosen: Option<(u32, Addr, u16)> = None;
    if e.valid != 0 && e.vip == key.addr && e.vip_port == key.port && e.set_id == set_id {
        if idle_ns != 0 && now.saturating_sub(e.last_used_ns) > idle_ns {
            event(stats::UDP_IDLE_REPICK);
        } else if still_member(set_id, &BackendValue::new(e.backend, e.backend_port, key.proto)) {
            chosen = Some((e.slot, e.backend, e.backend_port));
        }
    }
    if chosen.is_none() {
        match select(set_id, netns_cookie(ctx)) {
            Selection::Backend { slot, backend } => chosen = Some((slot, backend.addr, backend.port)),
            Selection::NoBackends => {
                count(set_id, true);
                return refuse(refusal, ECONNREFUSED);
            }
            Selection::Gone => {
                event(stats::SELECT_GONE);
                return refuse(refusal, EAGAIN);
            }
        }
    }
    let Some((picked, addr, port)) = chosen else {
        return ALLOW;
    };
    // The way back first: a datagram is never translated without one.
    if udp_rev::record(state, socket_cookie(ctx), &addr, port, &key.addr, key.port).is_err() {
        event(stats::UDP_REVERSE_FULL);
        return refuse(refusal, ENOBUFS);
    }
    if !set_destination(ctx, family, &addr, port) {
        return ALLOW;
    }
    // SAFETY: as above.
    unsafe {
        (*state).sticky[slot] = UdpSticky {
            vip: key.addr,
            backend: addr,
            vip_port: key.port,
            backend_port: port,
            set_id,
            slot: picked,
            valid: 1,
            last_used_ns: now,
        };
    }
    count(set_id, false);
    ALLOW
}

/// What a destination is.
enum Lookup {
    /// A frontend of this backend set.
    Set(u32),
    /// A NodePort with `externalTrafficPolicy: Local` on a node without
    /// endpoints: refuse, counted against this set.
    Refuse(u32),
    /// Not a service here: leave the socket alone.
    Miss,
}

/// Frontends first (ClusterIPs, external and load-balancer IPs), then
/// NodePorts: a node address, then the port (see `socklb-common`).
#[inline(always)]
fn lookup(ctx: &SockAddrContext, key: &FrontendKey) -> Lookup {
    // SAFETY: the value is copied out at once.
    if let Some(frontend) = (unsafe { FRONTENDS.get(key) }).copied() {
        return if translates_here(ctx) { Lookup::Set(frontend.set_id) } else { Lookup::Miss };
    }
    // SAFETY: as above.
    let Some(node) = (unsafe { NODE_ADDRS.get(key.addr) }).copied() else {
        return Lookup::Miss;
    };
    let np_key = NodePortKey { port: key.port, proto: key.proto, family: family_of(&key.addr) };
    // SAFETY: as above.
    let Some(np) = (unsafe { NODEPORTS.get(np_key) }).copied() else {
        return Lookup::Miss;
    };
    if node.flags & node_flags::HOST_NETNS_ONLY != 0 && !in_host_netns(ctx) {
        return Lookup::Miss;
    }
    if !translates_here(ctx) {
        return Lookup::Miss;
    }
    // This node's sockets to this node's NodePorts: the cluster set, as
    // kube-proxy's short-circuit for locally originated traffic.
    if np.flags & nodeport_flags::EXTERNAL_LOCAL == 0 || node.flags & node_flags::THIS_NODE != 0 {
        return Lookup::Set(np.set_id);
    }
    let local = NodeLocalKey { set_id: np.set_id, node_id: node.node_id };
    // SAFETY: as above.
    match (unsafe { NODE_LOCAL.get(local) }).copied() {
        Some(set) => Lookup::Set(set.set_id),
        None => Lookup::Refuse(np.set_id),
    }
}

/// getpeername and recvmsg: the address in the context is the peer (or the
/// datagram's source). Show the VIP if it is the backend this socket was
/// translated to: the connected socket's entry, else (recvmsg on an
/// unconnected UDP socket) the reverse entry of that backend.
#[inline(always)]
fn restore_vip(ctx: &SockAddrContext, family: Family, datagram: bool) -> i32 {
    // SAFETY: reading the address fields of the context.
    let (peer, port) = unsafe { (destination(ctx, family), (*ctx.sock_addr).user_port as u16) };
    if let Some(rev) = sock_storage::connected_vip(ctx, &peer, port) {
        set_destination(ctx, family, &rev.vip, rev.vip_port);
        return ALLOW;
    }
    if datagram
        && sock_storage::udp(ctx, false).is_some()
        && let Some((vip, vip_port)) = udp_rev::lookup(socket_cookie(ctx), &peer, port)
    {
        set_destination(ctx, family, &vip, vip_port);
    }
    ALLOW
}

#[inline(always)]
fn frontend_key(ctx: &SockAddrContext, family: Family) -> Option<FrontendKey> {
    // SAFETY: reading fields of the context.
    let (proto, port) = unsafe { ((*ctx.sock_addr).protocol, (*ctx.sock_addr).user_port) };
    let proto = proto as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    Some(FrontendKey {
        addr: unsafe { destination(ctx, family) },
        port: port as u16,
        proto,
        scope: SCOPE_INTERNAL,
    })
}

/// # Safety
/// Reads the context's user address fields.
#[inline(always)]
unsafe fn destination(ctx: &SockAddrContext, family: Family) -> Addr {
    let sa = ctx.sock_addr;
    unsafe {
        match family {
            Family::V4 => v4_mapped((*sa).user_ip4),
            Family::V6 => [(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2], (*sa).user_ip6[3]],
        }
    }
}

/// Rewrites the context's address. An IPv4 socket can only be pointed at an
/// IPv4 (v4-mapped) address; the agent never pairs families otherwise.
#[inline(always)]
fn set_destination(ctx: &SockAddrContext, family: Family, addr: &Addr, port: u16) -> bool {
    let sa = ctx.sock_addr;
    // SAFETY: these context fields are writable in all the hooks above.
    unsafe {
        match family {
            Family::V4 => {
                if !is_v4_mapped(addr) {
                    return false;
                }
                (*sa).user_ip4 = addr[3];
            }
            Family::V6 => {
                (*sa).user_ip6[0] = addr[0];
                (*sa).user_ip6[1] = addr[1];
                (*sa).user_ip6[2] = addr[2];
                (*sa).user_ip6[3] = addr[3];
            }
        }
        (*sa).user_port = u32::from(port);
    }
    true
}

#[inline(always)]
fn rev_nat(key: &FrontendKey, set_id: u32, slot: u32, addr: &Addr, port: u16) -> RevNat {
    RevNat {
        vip: key.addr,
        backend: *addr,
        vip_port: key.port,
        backend_port: port,
        set_id,
        slot,
        proto: key.proto,
        valid: 1,
        _pad: 0,
    }
}

#[inline(always)]
fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: helper call with this program's context.
    unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) }
}

#[inline(always)]
fn netns_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: helper call with this program's context.
    unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) }
}

/// In host-namespace-only mode, sockets in other network namespaces (pods)
/// keep their VIP destination.
#[inline(always)]
fn translates_here(ctx: &SockAddrContext) -> bool {
    let hostns_only = CONFIG.get(0).is_some_and(|c| c.flags & config_flags::HOSTNS_ONLY != 0);
    !hostns_only || in_host_netns(ctx)
}

#[inline(always)]
fn in_host_netns(ctx: &SockAddrContext) -> bool {
    // SAFETY: a null context asks for the initial network namespace's cookie.
    let host = unsafe { bpf_get_netns_cookie(core::ptr::null_mut()) };
    netns_cookie(ctx) == host
}

/// Refuses the syscall with `errno` (EPERM for the compat programs).
#[inline(always)]
fn refuse(refusal: Refusal, errno: i32) -> i32 {
    if refusal == Refusal::Retval {
        // SAFETY: plain helper call. Returning 0 with the retval set makes
        // the syscall fail with `errno` instead of the default EPERM.
        unsafe { bpf_set_retval(-errno) };
    }
    0
}
