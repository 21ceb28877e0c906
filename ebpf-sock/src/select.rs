//! Backend selection for one service: uniform random over the active set,
//! with ClientIP session affinity per client network namespace.

use aya_ebpf::helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use socklb_common::{
    AffinityKey, AffinityValue, BackendValue, MemberKey, SELECT_RETRIES, ServiceCounters, ServiceValue,
    SlotKey, service_flags, stats,
};

use crate::maps::{AFFINITY, BACKENDS, COUNTERS, MEMBERS, SERVICES, SLOTS, STATS};

pub enum Selection {
    Backend {
        id: u32,
        backend: BackendValue,
    },
    /// The service exists and has no usable endpoint: refuse.
    NoBackends,
    /// The service entry vanished (deleted under us): leave the socket alone.
    Gone,
}

/// Picks a backend of `service_id`. `netns_cookie` identifies the client for
/// session affinity.
#[inline(always)]
pub fn select(service_id: u32, netns_cookie: u64) -> Selection {
    // Retry when the agent switched the service to a new generation between
    // our read of the service entry and our read of the slot or backend.
    for _ in 0..SELECT_RETRIES {
        // SAFETY: values are copied out at once; the kernel keeps them
        // valid for the duration of the program (RCU).
        let Some(svc) = (unsafe { SERVICES.get(service_id) }).copied() else {
            return Selection::Gone;
        };
        if svc.count == 0 {
            return Selection::NoBackends;
        }
        let affinity = svc.flags & service_flags::AFFINITY != 0;
        if affinity && let Some((id, backend)) = affine_backend(service_id, netns_cookie, &svc) {
            return Selection::Backend { id, backend };
        }
        let index = (unsafe { bpf_get_prandom_u32() } % u32::from(svc.count)) as u16;
        let slot = SlotKey { service_id, generation: svc.generation, index };
        let Some(id) = (unsafe { SLOTS.get(slot) }).map(|s| s.backend_id) else {
            continue;
        };
        let Some(backend) = (unsafe { BACKENDS.get(id) }).copied() else {
            continue;
        };
        if affinity {
            remember_affinity(service_id, netns_cookie, id);
        }
        return Selection::Backend { id, backend };
    }
    Selection::Gone
}

/// Whether `backend_id` is still in `service_id`'s active set and still has
/// the address the caller remembered.
#[inline(always)]
pub fn still_member(service_id: u32, backend_id: u32) -> Option<BackendValue> {
    let member = MemberKey { service_id, backend_id };
    unsafe { MEMBERS.get(member) }?;
    unsafe { BACKENDS.get(backend_id) }.copied()
}

#[inline(always)]
fn affine_backend(service_id: u32, netns_cookie: u64, svc: &ServiceValue) -> Option<(u32, BackendValue)> {
    let key = AffinityKey { netns_cookie, service_id, _pad: 0 };
    let entry = AFFINITY.get_ptr_mut(key)?;
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: pointer from a successful lookup; only this program's CPU
    // writes it at this moment, and a torn read only costs a fresh pick.
    let (last_used, backend_id) = unsafe { ((*entry).last_used_ns, (*entry).backend_id) };
    let timeout_ns = u64::from(svc.affinity_timeout_secs) * 1_000_000_000;
    if now.saturating_sub(last_used) > timeout_ns {
        return None;
    }
    // A backend that left the service is never chosen from a stale entry.
    let backend = still_member(service_id, backend_id)?;
    unsafe { (*entry).last_used_ns = now };
    Some((backend_id, backend))
}

#[inline(always)]
fn remember_affinity(service_id: u32, netns_cookie: u64, backend_id: u32) {
    let key = AffinityKey { netns_cookie, service_id, _pad: 0 };
    let value = AffinityValue { last_used_ns: unsafe { bpf_ktime_get_ns() }, backend_id, _pad: 0 };
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

/// Counts one translation or refusal for the service.
#[inline(always)]
pub fn count(service_id: u32, refused: bool) {
    if let Some(c) = COUNTERS.get_ptr_mut(service_id) {
        let c: *mut ServiceCounters = c;
        // SAFETY: per-CPU slot of this CPU; programs do not migrate.
        unsafe {
            if refused {
                (*c).refused += 1;
            } else {
                (*c).translations += 1;
            }
        }
    }
}
