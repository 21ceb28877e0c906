//! Per-socket state in socket-local storage: freed with the socket, never
//! evicted by other sockets' traffic (unlike an LRU map).
//!
//! * `SOCK_TCP`: the one reverse translation of a connected socket (TCP,
//!   and connected UDP): 48 bytes, all that a TCP socket pays.
//! * `SOCK_UDP`: an unconnected UDP socket's backend per VIP (stickiness).
//!   Its replies are translated back through `UDP_REV` (see `udp_rev`).
//! * `SOCK_STATE`: the storage of layouts 1-3, read (and cleared) only, so
//!   that sockets established before an upgrade keep their VIP.

use core::ptr;

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE, helpers::generated::bpf_sk_storage_get, programs::SockAddrContext,
};
use socklb_common::{
    Addr, RevNat, SOCK_REV_ENTRIES, SockState, UDP_STICKY_ENTRIES, UdpSockState, config_flags,
};

use crate::maps::{CONFIG, SOCK_STATE, SOCK_TCP, SOCK_UDP};

/// The socket's storage in `map`, created when `create` is set.
#[inline(always)]
fn get<T>(ctx: &SockAddrContext, map: *mut core::ffi::c_void, create: bool) -> Option<*mut T> {
    // Tests only: storage that cannot be allocated (see TEST_FAIL_STORAGE).
    if create && CONFIG.get(0).is_some_and(|c| c.flags & config_flags::TEST_FAIL_STORAGE != 0) {
        return None;
    }
    // SAFETY: ctx->sk is a valid socket pointer in every sock_addr hook.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let flags = if create { u64::from(BPF_SK_STORAGE_GET_F_CREATE) } else { 0 };
    // SAFETY: helper call with the map and the socket from the context.
    let state = unsafe { bpf_sk_storage_get(map, sk.cast(), ptr::null_mut(), flags) };
    if state.is_null() { None } else { Some(state.cast()) }
}

#[inline(always)]
pub fn tcp(ctx: &SockAddrContext, create: bool) -> Option<*mut RevNat> {
    get(ctx, ptr::from_ref(&SOCK_TCP).cast_mut().cast(), create)
}

#[inline(always)]
pub fn udp(ctx: &SockAddrContext, create: bool) -> Option<*mut UdpSockState> {
    get(ctx, ptr::from_ref(&SOCK_UDP).cast_mut().cast(), create)
}

#[inline(always)]
fn legacy(ctx: &SockAddrContext) -> Option<*mut SockState> {
    get(ctx, ptr::from_ref(&SOCK_STATE).cast_mut().cast(), false)
}

/// The VIP to show for peer `addr:port` of a connected socket, if it is the
/// backend the socket was translated to.
#[inline(always)]
pub fn connected_vip(ctx: &SockAddrContext, addr: &Addr, port: u16) -> Option<RevNat> {
    if let Some(e) = tcp(ctx, false) {
        // SAFETY: `e` is this socket's storage.
        let e = unsafe { *e };
        if e.valid != 0 && e.backend_port == port && e.backend == *addr {
            return Some(e);
        }
    }
    let old = legacy(ctx)?;
    for i in 0..SOCK_REV_ENTRIES {
        // SAFETY: `old` is this socket's storage; `i` is in bounds.
        let e = unsafe { &(*old).entries[i] };
        if e.valid != 0 && e.backend_port == port && e.backend == *addr {
            return Some(*e);
        }
    }
    None
}

/// The socket connected somewhere that is not a service: no old entry may
/// turn its new peer back into a VIP.
#[inline(always)]
pub fn forget(ctx: &SockAddrContext) -> bool {
    let mut had = false;
    if let Some(e) = tcp(ctx, false) {
        // SAFETY: `e` is this socket's storage.
        unsafe { (*e).valid = 0 };
        had = true;
    }
    if let Some(old) = legacy(ctx) {
        for i in 0..SOCK_REV_ENTRIES {
            // SAFETY: as above.
            unsafe { (*old).entries[i].valid = 0 };
        }
        had = true;
    }
    had
}

/// The index of the sticky entry for a VIP, if any.
#[inline(always)]
pub fn sticky_for(state: *mut UdpSockState, vip: &Addr, port: u16) -> Option<usize> {
    for i in 0..UDP_STICKY_ENTRIES {
        // SAFETY: `state` is this socket's storage; `i` is in bounds.
        let e = unsafe { &(*state).sticky[i] };
        if e.valid != 0 && e.vip_port == port && e.vip == *vip {
            return Some(i);
        }
    }
    None
}

/// The entry to (re)use for a VIP: its own, else a free one, else the one
/// used longest ago.
#[inline(always)]
pub fn sticky_slot(state: *mut UdpSockState, vip: &Addr, port: u16) -> usize {
    if let Some(i) = sticky_for(state, vip, port) {
        return i;
    }
    let mut oldest = 0;
    let mut oldest_ns = u64::MAX;
    for i in 0..UDP_STICKY_ENTRIES {
        // SAFETY: as above.
        let e = unsafe { &(*state).sticky[i] };
        if e.valid == 0 {
            return i;
        }
        if e.last_used_ns < oldest_ns {
            oldest_ns = e.last_used_ns;
            oldest = i;
        }
    }
    oldest
}
