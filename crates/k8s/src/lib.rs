//! Kubernetes objects to what socklb programs, with kube-proxy's semantics.
//!
//! Pure: no I/O, no clock, no kernel. The sources of the `socklb` binary
//! hand it decoded objects; it hands the load-balancing crate models.
//!
//! * [`decode`]: objects from files, and the compact Node form the watch
//!   decodes.
//! * [`store`]: the validated objects of every origin and which Services
//!   changed.
//! * [`model`]: one Service and its EndpointSlices to frontends and backend
//!   sets.
#![forbid(unsafe_code)]

pub mod cidr;
pub mod decode;
pub mod model;
pub mod paged;
pub mod store;
