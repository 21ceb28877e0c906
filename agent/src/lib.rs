//! socklb: Kubernetes Service load balancing at the socket.
//!
//! Data flow: source (Kubernetes watch or file) -> model (objects to
//! frontends and backends) -> plan (desired vs applied to ordered map
//! operations) -> datapath (the pinned BPF maps).
#![forbid(unsafe_code)]

pub mod datapath;
pub mod fs_checks;
pub mod loader;
pub mod plan;
