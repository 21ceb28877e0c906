//! socklb: Kubernetes Service load balancing at the socket.
//!
//! Data flow: [`source`] (Kubernetes watch or file) -> [`store`] ->
//! [`model`] (objects to frontends and backend sets, pure) -> [`render`]
//! (ids) -> [`plan`] (desired vs applied to ordered map operations, pure)
//! -> [`datapath`] (the pinned BPF maps). [`reconcile`] owns the state and
//! drives that flow; [`agent`] runs it with its sources, signals and HTTP.
#![forbid(unsafe_code)]

pub mod affinity;
pub mod agent;
pub mod api_access;
pub mod datapath;
pub mod features;
pub mod fs_checks;
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod ids;
pub mod inspect;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod netaddr;
pub mod node_init;
pub mod plan;
pub mod reconcile;
pub mod render;
pub mod sockdiag;
pub mod source;
pub mod stale;
pub mod store;
