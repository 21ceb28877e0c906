//! Backend selection for one backend set: uniform random over its slots,
//! with ClientIP session affinity per client network namespace.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use socklb_common::{
    AffinityKey, AffinityValue, BackendValue, MemberKey, SetCounters, SetState, set_flags, stats,
};

use crate::maps::{AFFINITY, BACKENDS, COUNTERS, MEMBERS, SETS, STATS};

pub enum Selection {
    Backend {
        /// The slot it was picked from (informational).
        slot: u32,
        backend: BackendValue,
    },
    /// The set exists and has no usable endpoint: refuse.
    NoBackends,
    /// The set is gone (removed under us) or its slots are out of range.
    Gone,
}

/// The state word of a set, loaded in one piece (the agent stores it in
/// one piece: see `socklb-common`).
#[inline(always)]
fn set_state(set_id: u32) -> Option<(SetState, u32)> {
    let entry = SETS.get_ptr(set_id)?;
    // SAFETY: a pointer from a successful lookup into the array; `state` is
    // the entry's first, 8-byte aligned word.
    let (word, timeout) = unsafe {
        (core::ptr::read_volatile(core::ptr::addr_of!((*entry).state)), (*entry).affinity_timeout_secs)
    };
    let state = SetState::unpack(word);
    state.is_present().then_some((state, timeout))
}

/// Picks a backend of set `set_id`. `netns_cookie` identifies the client for
/// session affinity.
///
/// The slots the state word names stay this set's until every program that
/// may have read the word has finished (the agent waits for an RCU grace
/// period before it reuses them), so one read of the word is enough.
#[inline(always)]
pub fn select(set_id: u32, netns_cookie: u64) -> Selection {
    let Some((state, timeout_secs)) = set_state(set_id) else {
        return Selection::Gone;
    };
    if state.count == 0 {
        return Selection::NoBackends;
    }
    let affinity = state.flags & set_flags::AFFINITY != 0;
    if affinity && let Some(backend) = affine_backend(set_id, netns_cookie, timeout_secs) {
        return Selection::Backend { slot: u32::MAX, backend };
    }
    // SAFETY: a helper without side effects.
    let slot = state.base.wrapping_add(unsafe { bpf_get_prandom_u32() } % u32::from(state.count));
    let Some(backend) = BACKENDS.get(slot).copied() else {
        return Selection::Gone;
    };
    if affinity {
        remember_affinity(set_id, netns_cookie, &backend);
    }
    Selection::Backend { slot, backend }
}

/// Whether `backend` is still in set `set_id`'s active backends.
#[inline(always)]
pub fn still_member(set_id: u32, backend: &BackendValue) -> bool {
    let member = MemberKey::of(set_id, backend);
    // SAFETY: presence is all that is read.
    unsafe { MEMBERS.get(member) }.is_some()
}

#[inline(always)]
fn affine_backend(set_id: u32, netns_cookie: u64, timeout_secs: u32) -> Option<BackendValue> {
    let key = AffinityKey { netns_cookie, set_id, _pad: 0 };
    let entry = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: a helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: pointer from a successful lookup; a torn read (another CPU
    // refreshing the same client) only costs a fresh pick.
    let (last_used, backend) = unsafe { ((*entry).last_used_ns, (*entry).backend) };
    let timeout_ns = u64::from(timeout_secs) * 1_000_000_000;
    if now.saturating_sub(last_used) > timeout_ns {
        return None;
    }
    // A backend that left the set is never chosen from a stale entry.
    if !still_member(set_id, &backend) {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*entry).last_used_ns = now };
    Some(backend)
}

#[inline(always)]
fn remember_affinity(set_id: u32, netns_cookie: u64, backend: &BackendValue) {
    let key = AffinityKey { netns_cookie, set_id, _pad: 0 };
    // SAFETY: a helper without side effects.
    let value = AffinityValue { last_used_ns: unsafe { bpf_ktime_get_ns() }, backend: *backend };
    // A full table leaves this client unpinned (live entries are never
    // evicted); the agent expires old ones.
    if AFFINITY.insert(key, value, 0).is_err() {
        event(stats::AFFINITY_FULL);
    }
}

/// Counts one datapath event (`socklb_common::stats`).
#[inline(always)]
pub fn event(index: u32) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate.
        unsafe { *c += 1 };
    }
}

/// Counts one translation or refusal for the set: an atomic add on the one
/// shared array (no per-CPU copies, so the map costs 16 bytes per set on
/// any number of CPUs).
#[inline(always)]
pub fn count(set_id: u32, refused: bool) {
    if let Some(c) = COUNTERS.get_ptr_mut(set_id) {
        let c: *mut SetCounters = c;
        // SAFETY: an 8-byte aligned u64 inside the array element; the agent
        // only reads it (atomically) or resets it while the set id is unused.
        let word = unsafe {
            if refused {
                core::ptr::addr_of_mut!((*c).refused)
            } else {
                core::ptr::addr_of_mut!((*c).translations)
            }
        };
        // The result is unused, so this is the plain atomic add every BPF
        // kernel has (BPF_XADD, no BPF_FETCH).
        // SAFETY: as above.
        let _ = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(word, 1) };
    }
}
