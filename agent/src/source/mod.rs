//! Where Services and EndpointSlices come from.

pub mod backoff;
pub mod file;
pub mod kube;
pub mod netlink;
