//! socklb's cgroup socket programs.
//!
//! The map layouts and the agent's update order are documented in
//! `socklb-common`; this crate only reads them (and the per-socket state).
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// The counters' atomic add (core's atomic types have no RMW for this target).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod bind_guard;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod select;
#[cfg(target_arch = "bpf")]
mod sock_storage;
#[cfg(target_arch = "bpf")]
mod udp_rev;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}

/// bpf_sk_storage_get, bpf_set_retval and the netns cookie need a
/// GPL-compatible licence.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
