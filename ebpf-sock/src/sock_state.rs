//! Per-socket reverse translations in `SOCK_STATE` (socket-local storage).
//!
//! A connected socket keeps one entry (index 0). An unconnected UDP socket
//! keeps up to `SOCK_REV_ENTRIES`, one per service it sends to, replacing
//! them round-robin. The storage dies with the socket and cannot be evicted
//! by other sockets' traffic.

use core::ptr;

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE, helpers::generated::bpf_sk_storage_get, programs::SockAddrContext,
};
use socklb_common::{Addr, RevNat, SOCK_REV_ENTRIES, SockState};

use crate::maps::SOCK_STATE;

/// The socket's state, created when `create` is set.
#[inline(always)]
pub fn get(ctx: &SockAddrContext, create: bool) -> Option<*mut SockState> {
    // SAFETY: ctx->sk is a valid socket pointer in every sock_addr hook.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let flags = if create { u64::from(BPF_SK_STORAGE_GET_F_CREATE) } else { 0 };
    let map = ptr::from_ref(&SOCK_STATE).cast_mut().cast();
    // SAFETY: helper call with the map and the socket from the context.
    let state = unsafe { bpf_sk_storage_get(map, sk.cast(), ptr::null_mut(), flags) };
    if state.is_null() { None } else { Some(state.cast()) }
}

/// Records the translation of a connect: the socket now has exactly one peer.
#[inline(always)]
pub fn record_connected(state: *mut SockState, rev: &RevNat) {
    // SAFETY: `state` came from bpf_sk_storage_get and is this socket's.
    unsafe {
        (*state).entries[0] = *rev;
        for i in 1..SOCK_REV_ENTRIES {
            (*state).entries[i].valid = 0;
        }
        (*state).next = 1;
    }
}

/// Records the translation of an unconnected send, reusing the entry for the
/// same VIP or replacing the oldest.
#[inline(always)]
pub fn record_sent(state: *mut SockState, rev: &RevNat) {
    // SAFETY: as above.
    unsafe {
        let slot = match find_by_vip(state, &rev.vip, rev.vip_port, rev.proto) {
            Some(i) => i,
            None => {
                let i = ((*state).next as usize) % SOCK_REV_ENTRIES;
                (*state).next = ((i + 1) % SOCK_REV_ENTRIES) as u32;
                i
            }
        };
        if slot < SOCK_REV_ENTRIES {
            (*state).entries[slot] = *rev;
        }
    }
}

/// The socket's entry for a VIP, if any.
#[inline(always)]
pub fn find_by_vip(state: *mut SockState, vip: &Addr, port: u16, proto: u8) -> Option<usize> {
    for i in 0..SOCK_REV_ENTRIES {
        // SAFETY: as above.
        let e = unsafe { &(*state).entries[i] };
        if e.valid != 0 && e.vip_port == port && e.proto == proto && e.vip == *vip {
            return Some(i);
        }
    }
    None
}

/// The entry whose backend is `addr:port`: the VIP to show instead of it.
#[inline(always)]
pub fn find_by_backend(state: *mut SockState, addr: &Addr, port: u16) -> Option<RevNat> {
    for i in 0..SOCK_REV_ENTRIES {
        // SAFETY: as above.
        let e = unsafe { &(*state).entries[i] };
        if e.valid != 0 && e.backend_port == port && e.backend == *addr {
            return Some(*e);
        }
    }
    None
}

/// Forgets every translation: the socket connected somewhere else, so an
/// old entry must not turn its new peer back into a VIP.
#[inline(always)]
pub fn forget(state: *mut SockState) {
    for i in 0..SOCK_REV_ENTRIES {
        // SAFETY: as above.
        unsafe { (*state).entries[i].valid = 0 };
    }
}
