//! socklb: Kubernetes Service load balancing at the socket.
//!
//! The pipeline, one crate per stage:
//! * `socklb-k8s`: objects decoded, validated and indexed; one Service and
//!   its EndpointSlices to frontends and backend sets (pure);
//! * `socklb-lb`: the desired map contents, the transactional plan and its
//!   execution against a datapath (pure; fake and faulty datapaths);
//! * `socklb-bpf`: the pinned maps, the programs and the sweeps (kernel);
//! * this crate, the `socklb` binary: the [`source`]s (Kubernetes watch,
//!   files, netlink), the [`reconcile`] loop that drives the stages, the
//!   [`agent`] with its signals and HTTP, and the CLI's [`inspect`]ion.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api_access;
pub mod health;
pub mod http;
pub mod inspect;
pub mod metrics;
pub mod reconcile;
pub mod source;
