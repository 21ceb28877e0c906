//! The load balancer's state and how it reaches the maps.
//!
//! [`desired`] turns a Service's model into what the maps should hold for
//! it; the [`balancer`] keeps what they do hold (compactly: per backend set
//! its entry and two hashes, never its backends), and writes the
//! difference, transactionally per set, through a [`datapath::Datapath`]:
//! the kernel's maps (in `socklb-bpf`), or the [`datapath::fake`] and
//! [`datapath::faulty`] ones the tests use. [`slots`] and [`ids`] hand out
//! array positions that programs cannot still be reading; [`capacity`]
//! sizes the maps from what is programmed.
#![forbid(unsafe_code)]

pub mod balancer;
pub mod capacity;
pub mod datapath;
pub mod desired;
pub mod hashing;
pub mod ids;
pub mod slots;

pub use balancer::{ApplyReport, Balancer, Departed, ServiceNames, ServiceRef};
