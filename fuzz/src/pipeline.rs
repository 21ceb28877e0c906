//! The whole pipeline on untrusted text, for the cargo-fuzz target in
//! `fuzz/` and for the suite's replay of its seeds (`agent/tests/fuzz_replay.rs`).
//! Both include this file by path, so it is no part of any production crate:
//! ingest (YAML or JSON), model, render, plan, and execute into a fake
//! datapath. Nothing here may panic; errors and problems are the expected
//! outcome for most inputs.

use std::sync::Arc;

use socklb::{
    metrics::Metrics,
    reconcile::{Limits, Reconciler},
};
use socklb_k8s::{
    decode::files::read_all,
    model::NodeContext,
    store::{Kinds, SourceEvent},
};
use socklb_lb::datapath::fake::SharedFake;

/// What one input led to, so that callers can check more than "no panic".
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The text was valid YAML or JSON.
    pub parsed: bool,
    pub services: usize,
    pub slices: usize,
    /// Objects skipped with a reason.
    pub problems: usize,
    /// Map operations the sync applied.
    pub ops_applied: usize,
}

/// Runs `data` through the pipeline with small map capacities.
pub fn run_objects(data: &[u8]) -> Outcome {
    let mut outcome = Outcome::default();
    let Ok(text) = std::str::from_utf8(data) else { return outcome };
    let Ok((ingested, problems)) = read_all(text) else { return outcome };
    outcome.parsed = true;
    outcome.services = ingested.services.len();
    outcome.slices = ingested.slices.len();
    outcome.problems = problems.len();
    let node = NodeContext {
        node_name: "node-a".into(),
        zone: Some("zone-1".into()),
        nodeport_addresses: Default::default(),
        host_addresses: vec![
            std::net::Ipv4Addr::new(192, 168, 0, 10).into(),
            std::net::Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x10).into(),
        ],
        service_proxy_name: None,
    };
    let limits = Limits { max_services: 256, max_backends: 1024 };
    let Ok(mut r) = Reconciler::new(Box::new(SharedFake::default()), node, &limits, Arc::new(Metrics::new()))
    else {
        return outcome;
    };
    r.apply_event(SourceEvent::Replace {
        origin: 0,
        kinds: Kinds::ALL,
        services: ingested.services,
        slices: ingested.slices,
        nodes: ingested.nodes,
    });
    outcome.ops_applied = r.sync().ops_applied;
    outcome
}
