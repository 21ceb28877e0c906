//! Reverse translation of unconnected UDP, for any number of (socket,
//! backend) pairs: `UDP_REV[{cookie, backend, port}] = {VIP, port}`, the
//! VIP of the latest datagram sent to that backend. A reply from the
//! backend to the socket shows that VIP (`recvmsg`).
//!
//! Each new pair also gets a `UDP_REV_IDX[{cookie, seq}]` entry naming it,
//! so that `sock_release` can find and delete a closing socket's pairs (a
//! hash cannot be searched by cookie). Sequence numbers are claimed with
//! BPF_NOEXIST, which the kernel makes atomic: two CPUs sending on one
//! socket cannot claim the same one.
//!
//! A send whose pair cannot be recorded (a full table) is refused: a
//! datagram is never translated without a way back.

use aya_ebpf::bindings::{BPF_EXIST, BPF_NOEXIST};
use socklb_common::{Addr, UDP_REV_WALK, UdpIndexKey, UdpIndexValue, UdpRevKey, UdpRevValue, UdpSockState};

use crate::maps::{UDP_REV, UDP_REV_INDEX};

/// How many sequence numbers a send tries when another CPU took one.
const CLAIM_TRIES: u32 = 4;

/// Records that the socket's datagrams to `backend:port` were sent to
/// `vip:vip_port`. `Err` when the tables are full.
#[inline(always)]
pub fn record(
    state: *mut UdpSockState,
    cookie: u64,
    backend: &Addr,
    port: u16,
    vip: &Addr,
    vip_port: u16,
) -> Result<(), ()> {
    let key = UdpRevKey { cookie, backend: *backend, backend_port: port, _pad: [0; 6] };
    if let Some(e) = UDP_REV.get_ptr_mut(key) {
        // A known pair: the latest VIP wins.
        // SAFETY: a pointer from a successful lookup.
        unsafe {
            (*e).vip = *vip;
            (*e).vip_port = vip_port;
        }
        return Ok(());
    }
    // A new pair: claim a sequence number for the index first.
    // SAFETY: `state` is this socket's storage.
    let mut seq = unsafe { (*state).next_seq };
    let index = UdpIndexValue { backend: *backend, backend_port: port, _pad: [0; 6] };
    let mut claimed = false;
    for _ in 0..CLAIM_TRIES {
        let ikey = UdpIndexKey { cookie, seq, _pad: 0 };
        if UDP_REV_INDEX.insert(ikey, index, u64::from(BPF_NOEXIST)).is_ok() {
            claimed = true;
            break;
        }
        seq = seq.wrapping_add(1);
    }
    if !claimed {
        return Err(());
    }
    // SAFETY: as above.
    unsafe { (*state).next_seq = seq.wrapping_add(1) };
    let value = UdpRevValue { vip: *vip, vip_port, _pad: 0, seq };
    if UDP_REV.insert(key, value, u64::from(BPF_NOEXIST)).is_ok() {
        return Ok(());
    }
    // Another CPU recorded the same pair meanwhile (its index entry names
    // it): give ours back and update theirs; or the table is full.
    let _ = UDP_REV_INDEX.remove(UdpIndexKey { cookie, seq, _pad: 0 });
    let mut theirs = value;
    if let Some(e) = UDP_REV.get_ptr_mut(key) {
        // SAFETY: a pointer from a successful lookup.
        theirs.seq = unsafe { (*e).seq };
        if UDP_REV.insert(key, theirs, u64::from(BPF_EXIST)).is_ok() {
            return Ok(());
        }
    }
    Err(())
}

/// The VIP a reply from `backend:port` to socket `cookie` shows.
#[inline(always)]
pub fn lookup(cookie: u64, backend: &Addr, port: u16) -> Option<(Addr, u16)> {
    let key = UdpRevKey { cookie, backend: *backend, backend_port: port, _pad: [0; 6] };
    // SAFETY: the value is copied out at once.
    unsafe { UDP_REV.get(key) }.map(|v| (v.vip, v.vip_port))
}

/// Deletes a closing socket's pairs, by sequence number. (A claim that lost
/// a race may have used a number up to `CLAIM_TRIES` past `next_seq`.)
///
/// The loop runs a constant number of times and tests the socket's own
/// bound inside: the verifier proves a loop ends only by a constant bound,
/// and the volatile read keeps the compiler from folding the two together.
#[inline(always)]
pub fn release(cookie: u64, next_seq: u32) {
    let end = next_seq.saturating_add(CLAIM_TRIES);
    for seq in 0..UDP_REV_WALK {
        // SAFETY: reading a local.
        if seq >= unsafe { core::ptr::read_volatile(&end) } {
            continue;
        }
        let ikey = UdpIndexKey { cookie, seq, _pad: 0 };
        // SAFETY: the value is copied out at once.
        if let Some(i) = unsafe { UDP_REV_INDEX.get(ikey) }.copied() {
            let key = UdpRevKey { cookie, backend: i.backend, backend_port: i.backend_port, _pad: [0; 6] };
            let _ = UDP_REV.remove(key);
            let _ = UDP_REV_INDEX.remove(ikey);
        }
    }
}
