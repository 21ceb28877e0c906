//! Golden map dumps: a fixture YAML goes through the whole pipeline (YAML,
//! model, ids, plan) into the fake datapath, whose sorted dump must equal
//! the checked-in `.golden` file. Regenerate with `UPDATE_GOLDEN=1 cargo test`.

use std::{path::Path, sync::Arc};

use socklb::{
    inspect::dump_maps,
    metrics::Metrics,
    reconcile::{Limits, Reconciler},
};
use socklb_k8s::{
    decode::files::parse_objects,
    decode::node::ingest_node,
    model::NodeContext,
    store::{Kinds, SourceEvent},
};
use socklb_lb::datapath::fake::SharedFake;

fn node() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        zone: None,
        nodeport_addresses: Default::default(),
        host_addresses: vec!["192.168.50.10".parse().expect("ip"), "127.0.0.1".parse().expect("ip")],
        service_proxy_name: None,
    }
}

fn check(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).expect("fixture");
    let (objects, problems) = parse_objects(&text).expect("fixture parses");
    assert!(problems.is_empty(), "{problems:?}");
    let mut zone_node = node();
    zone_node.zone = Some("zone-1".into());
    let dp = SharedFake::default();
    let limits = Limits { max_services: 1000, max_backends: 1000 };
    let mut r = Reconciler::new(Box::new(dp.clone()), zone_node, &limits, Arc::new(Metrics::new()))
        .expect("reconciler");
    r.apply_event(SourceEvent::Replace {
        origin: 0,
        kinds: Kinds::ALL,
        services: objects.services,
        slices: objects.slices,
        nodes: objects.nodes.iter().filter_map(ingest_node).collect(),
    });
    let report = r.sync();
    assert!(report.complete);
    let dump = dump_maps(&dp.state(), &socklb::inspect::parse_set_names(&r.set_names()));
    let golden = dir.join(format!("{name}.golden"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &dump).expect("write golden");
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_GOLDEN=1", golden.display()));
    assert_eq!(dump, want, "map dump of {name}.yaml differs from {}", golden.display());
}

#[test]
fn example_cluster() {
    check("example-cluster");
}

#[test]
fn policies() {
    check("policies");
}
