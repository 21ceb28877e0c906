//! socklb's kernel side, from user space: the eBPF object and its
//! [`loader`] (pinned maps in generations, links, programs), the pinned
//! [`maps`] as a `socklb_lb::datapath::Datapath`, [`sockdiag`] and the
//! sweeps over sockets ([`stale`]) and affinity entries ([`affinity`]),
//! kernel feature probes ([`features`]), file-system checks and node setup.
#![forbid(unsafe_code)]

pub mod affinity;
pub mod features;
pub mod fs_checks;
pub mod loader;
pub mod maps;
pub mod node_init;
pub mod sockdiag;
pub mod stale;
