//! The cgroup sock hooks.
//!
//! `post_bind4/6`: a process in the host network namespace may not bind a
//! NodePort (on one of this node's NodePort addresses, or on the wildcard
//! address), as in Cilium: it would otherwise steal the port from the
//! service. The bind fails with EADDRINUSE. Pods have their own network
//! namespaces and ports.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval, bpf_sk_storage_get},
    macros::cgroup_sock,
    programs::SockContext,
};
use socklb_common::{
    Addr, FAMILY_V4, FAMILY_V6, NodePortKey, PROTO_TCP, PROTO_UDP, UdpSockState, family_of, node_flags,
    v4_mapped,
};

use crate::{
    maps::{NODE_ADDRS, NODEPORTS, SOCK_TCP, SOCK_UDP, UDP_CONNECTED},
    udp_rev,
};

const AF_INET6: u32 = 10;

const ALLOW: i32 = 1;
const EADDRINUSE: i32 = 98;

#[cgroup_sock(post_bind4)]
pub fn sl_postbind4(ctx: SockContext) -> i32 {
    post_bind4(&ctx, true)
}

#[cgroup_sock(post_bind6)]
pub fn sl_postbind6(ctx: SockContext) -> i32 {
    post_bind6(&ctx, true)
}

/// Without `bpf_set_retval` (Linux < 5.18) the bind fails with EPERM.
#[cgroup_sock(post_bind4)]
pub fn sl_postbind4_compat(ctx: SockContext) -> i32 {
    post_bind4(&ctx, false)
}

#[cgroup_sock(post_bind6)]
pub fn sl_postbind6_compat(ctx: SockContext) -> i32 {
    post_bind6(&ctx, false)
}

#[inline(always)]
fn post_bind4(ctx: &SockContext, retval: bool) -> i32 {
    // SAFETY: reading fields of the context.
    let ip = unsafe { (*ctx.sock).src_ip4 };
    check(ctx, v4_mapped(ip), ip == 0, retval)
}

#[inline(always)]
fn post_bind6(ctx: &SockContext, retval: bool) -> i32 {
    // SAFETY: reading fields of the context.
    let ip = unsafe {
        let s = ctx.sock;
        [(*s).src_ip6[0], (*s).src_ip6[1], (*s).src_ip6[2], (*s).src_ip6[3]]
    };
    check(ctx, ip, ip == [0; 4], retval)
}

#[inline(always)]
fn check(ctx: &SockContext, addr: Addr, wildcard: bool, retval: bool) -> i32 {
    // SAFETY: reading fields of the context.
    let (proto, port, family) =
        unsafe { ((*ctx.sock).protocol as u8, (*ctx.sock).src_port as u16, (*ctx.sock).family) };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return ALLOW;
    }
    let port = port.to_be();
    let is_node_port = if wildcard {
        // A wildcard IPv6 socket may also take the IPv4 port (dual stack).
        let v4 = NodePortKey { port, proto, family: FAMILY_V4 };
        let v6 = NodePortKey { port, proto, family: FAMILY_V6 };
        // SAFETY: presence checks only.
        unsafe { NODEPORTS.get(v4).is_some() || (family == AF_INET6 && NODEPORTS.get(v6).is_some()) }
    } else {
        let key = NodePortKey { port, proto, family: family_of(&addr) };
        // SAFETY: values are copied out at once.
        let mine = unsafe { NODE_ADDRS.get(addr) }.is_some_and(|n| n.flags & node_flags::THIS_NODE != 0);
        mine && unsafe { NODEPORTS.get(key) }.is_some()
    };
    if !is_node_port {
        return ALLOW;
    }
    // SAFETY: a null context asks for the initial network namespace's cookie.
    let host = unsafe { bpf_get_netns_cookie(core::ptr::null_mut()) };
    let mine = unsafe { bpf_get_netns_cookie(ctx.sock.cast()) };
    if mine != host {
        return ALLOW;
    }
    if retval {
        // SAFETY: plain helper call; the bind is undone and fails with EADDRINUSE.
        unsafe { bpf_set_retval(-EADDRINUSE) };
    }
    0
}

/// `sock_release`: forget a closing UDP socket's `UDP_CONNECTED` entry and
/// its unconnected reverse entries. Sockets socklb never translated have no
/// storage and cost a pointer test or two.
#[cgroup_sock(sock_release)]
pub fn sl_release(ctx: SockContext) -> i32 {
    // SAFETY: reading a field of the context.
    if unsafe { (*ctx.sock).protocol } as u8 != PROTO_UDP {
        return ALLOW;
    }
    let sk = ctx.sock.cast();
    let tcp = core::ptr::from_ref(&SOCK_TCP).cast_mut().cast();
    // SAFETY: in cgroup sock programs the context is the socket.
    let connected = unsafe { bpf_sk_storage_get(tcp, sk, core::ptr::null_mut(), 0) };
    let udp = core::ptr::from_ref(&SOCK_UDP).cast_mut().cast();
    // SAFETY: as above.
    let unconnected = unsafe { bpf_sk_storage_get(udp, sk, core::ptr::null_mut(), 0) };
    if connected.is_null() && unconnected.is_null() {
        return ALLOW;
    }
    // SAFETY: plain helper call on this program's socket.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    if !connected.is_null() {
        let _ = UDP_CONNECTED.remove(cookie);
    }
    if !unconnected.is_null() {
        let state: *mut UdpSockState = unconnected.cast();
        // SAFETY: this socket's storage.
        let next_seq = unsafe { (*state).next_seq };
        udp_rev::release(cookie, next_seq);
    }
    ALLOW
}
