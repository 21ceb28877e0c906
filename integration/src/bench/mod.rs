//! The benchmark harness behind `scripts/bench.sh` (binary `socklb-bench`).

pub mod env;
pub mod footprint;
pub mod kubeproxy;
pub mod report;
pub mod stats;
pub mod workload;
