//! The load balancer's state and how it reaches the maps.
//!
//! [`render`] turns the Services' models into the desired map contents
//! (with [`ids`] for sets and backends), [`plan`] orders the writes that take
//! the maps there, transactionally per service, and executes them through
//! a [`datapath::Datapath`]: the kernel's maps (in `socklb-bpf`), or the
//! [`datapath::fake`] and [`datapath::faulty`] ones the tests use.
#![forbid(unsafe_code)]

pub mod datapath;
pub mod ids;
pub mod plan;
pub mod render;
