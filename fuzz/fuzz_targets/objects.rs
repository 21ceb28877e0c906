//! Any text a file source (or a broken API server) could hand the agent:
//! ingest it, build the model and plan it into a fake datapath. Nothing may
//! panic; errors and problems are the expected outcome for most inputs.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use socklb::{
    datapath::fake::SharedFake,
    metrics::Metrics,
    model::NodeContext,
    reconcile::{Limits, Reconciler},
    source::yaml::ingest_text,
    store::SourceEvent,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok((ingested, _problems)) = ingest_text(text, None) else { return };
    let node = NodeContext {
        node_name: "node-a".into(),
        zone: Some("zone-1".into()),
        nodeport_addresses: vec!["192.168.0.10".parse().expect("ip"), "fd00:1::10".parse().expect("ip")],
        service_proxy_name: None,
    };
    let limits = Limits { max_services: 256, max_backends: 1024 };
    let dp = SharedFake::default();
    let Ok(mut r) = Reconciler::new(Box::new(dp), node, &limits, Arc::new(Metrics::new())) else { return };
    r.apply_event(SourceEvent::Replace { origin: 0, services: ingested.services, slices: ingested.slices });
    r.sync();
});
