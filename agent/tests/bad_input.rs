//! Arbitrary objects through the whole pipeline (text → ingest → model →
//! plan → datapath): no panic, every problem names an object and a field,
//! and a good service next to them is served exactly as it is alone.
//!
//! The objects are shaped like Services and EndpointSlices, with every field
//! sometimes absent, sometimes of the wrong type, and values drawn from both
//! the valid range and its edges (ports 0, 65535, 70000, negative; IPs of
//! either family, v4-mapped, malformed).

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};
use socklb::{
    inspect::frontend_rows,
    metrics::Metrics,
    reconcile::{Limits, Reconciler},
};
use socklb_k8s::{
    decode::files::read_all,
    model::NodeContext,
    store::{Kinds, SourceEvent},
};
use socklb_lb::datapath::fake::SharedFake;

fn node() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        zone: Some("zone-1".into()),
        nodeport_addresses: Default::default(),
        host_addresses: vec!["192.168.50.10".parse().expect("ip"), "fd00:50::10".parse().expect("ip")],
        service_proxy_name: None,
    }
}

/// The good service: never named, addressed or claimed by a generated object.
fn good() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "good"},
               "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-1", "namespace": "good", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.244.0.1"]}, {"addresses": ["10.244.0.2"]}],
               "ports": [{"name": "http", "port": 8080}]}),
    ]
}

/// A value of the wrong type, or an odd one of the right type.
fn junk() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ]
}

/// Values at the edges of what a field allows, of the right type.
fn edge() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(65535)),
        Just(json!(65536)),
        Just(json!(70000)),
        Just(json!(-1)),
        Just(json!("")),
        Just(json!("None")),
        Just(json!("10.97.999.1")),
        Just(json!("::ffff:10.97.0.9")),
        Just(json!("fe80::1%eth0")),
        Just(json!("fd00:97::1")),
        Just(json!("10.97.0.1")),
        Just(json!("SCTP")),
        Just(json!("Local")),
        Just(json!("FQDN")),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Fam {
    V4,
    V6,
    Dual,
}

fn addr(v6: bool, i: u16) -> String {
    if v6 { format!("fd00:97::{:x}", i + 1) } else { format!("10.97.{}.{}", i / 250, i % 250 + 1) }
}

/// A plausible Service (in namespace "fuzz", never the good VIP) with
/// slices for it.
fn realistic_service() -> impl Strategy<Value = Vec<Value>> {
    let ports = proptest::collection::vec((1u16..65535, any::<bool>(), 8000u16..8100), 1..4);
    (
        prop_oneof![Just("a"), Just("b"), Just("c")],
        prop_oneof![5 => Just("ClusterIP"), 2 => Just("NodePort"), 1 => Just("LoadBalancer"), 1 => Just("ExternalName")],
        prop_oneof![4 => Just(Fam::V4), 1 => Just(Fam::V6), 1 => Just(Fam::Dual)],
        0u16..500,
        ports,
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        proptest::collection::vec(
            (
                any::<bool>(),
                proptest::collection::vec((0u16..40, 0u8..10, any::<bool>(), any::<bool>()), 0..5),
            ),
            0..3,
        ),
    )
        .prop_map(|(name, kind, fam, ip, ports, (affinity, itp_local, etp_local, external), slices)| {
            let families: Vec<bool> = match fam {
                Fam::V4 => vec![false],
                Fam::V6 => vec![true],
                Fam::Dual => vec![false, true],
            };
            let ips: Vec<String> = families.iter().map(|v6| addr(*v6, ip)).collect();
            let named = ports.len() > 1;
            let svc_ports: Vec<Value> = ports
                .iter()
                .enumerate()
                .map(|(i, (port, udp, _))| {
                    let mut p = json!({"port": port, "protocol": if *udp { "UDP" } else { "TCP" }, "targetPort": "web"});
                    if named {
                        p["name"] = json!(format!("p{i}"));
                    }
                    if kind == "NodePort" || kind == "LoadBalancer" {
                        p["nodePort"] = json!(30000 + i);
                    }
                    p
                })
                .collect();
            let mut spec = json!({"type": kind, "clusterIP": ips[0], "clusterIPs": ips, "ports": svc_ports});
            if affinity {
                spec["sessionAffinity"] = json!("ClientIP");
                spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
            }
            if itp_local {
                spec["internalTrafficPolicy"] = json!("Local");
            }
            if etp_local && kind != "ClusterIP" {
                spec["externalTrafficPolicy"] = json!("Local");
            }
            if external {
                spec["externalIPs"] = json!([addr(false, ip + 1000)]);
            }
            let mut out = vec![json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "fuzz"}, "spec": spec})];
            for (n, (v6, endpoints)) in slices.into_iter().enumerate() {
                let eps: Vec<Value> = endpoints
                    .iter()
                    .map(|(i, node, ready, terminating)| {
                        json!({"addresses": [format!("{}", if v6 { format!("fd00:244::{:x}", i + 1) } else { format!("10.244.1.{}", i + 1) })],
                               "conditions": {"ready": *ready || *node > 2, "serving": true, "terminating": *terminating && !*ready},
                               "nodeName": if *node < 5 { "node-a" } else { "node-b" }})
                    })
                    .collect();
                let slice_ports: Vec<Value> = ports
                    .iter()
                    .enumerate()
                    .map(|(i, (_, udp, target))| {
                        let mut p = json!({"port": target, "protocol": if *udp { "UDP" } else { "TCP" }});
                        if named {
                            p["name"] = json!(format!("p{i}"));
                        }
                        p
                    })
                    .collect();
                out.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{name}-{n}"), "namespace": "fuzz",
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": if v6 { "IPv6" } else { "IPv4" },
                    "endpoints": eps, "ports": slice_ports}));
            }
            out
        })
}

/// Every path to a value inside `v` (object keys and array indices).
fn paths(v: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(PathStep::Key(k.clone()));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(PathStep::Index(i));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    Index(usize),
}

#[derive(Clone, Debug)]
enum Mutation {
    Remove,
    Set(Value),
}

/// Applies `m` at the path chosen by `at` (among all paths of `v`).
fn mutate(v: &mut Value, at: prop::sample::Index, m: &Mutation) {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return;
    }
    let path = &all[at.index(all.len())];
    let Some((last, parents)) = path.split_last() else { return };
    let mut node = &mut *v;
    for step in parents {
        node = match step {
            PathStep::Key(k) => &mut node[k.as_str()],
            PathStep::Index(i) => &mut node[*i],
        };
    }
    match (last, m, node) {
        (PathStep::Key(k), Mutation::Remove, Value::Object(map)) => {
            map.remove(k);
        }
        (PathStep::Index(i), Mutation::Remove, Value::Array(a)) => {
            a.remove(*i);
        }
        (PathStep::Key(k), Mutation::Set(x), node) => node[k.as_str()] = x.clone(),
        (PathStep::Index(i), Mutation::Set(x), node) => node[*i] = x.clone(),
        _ => {}
    }
}

fn mutation() -> impl Strategy<Value = (prop::sample::Index, Mutation)> {
    (
        any::<prop::sample::Index>(),
        prop_oneof![
            2 => Just(Mutation::Remove),
            3 => edge().prop_map(Mutation::Set),
            1 => junk().prop_map(Mutation::Set),
        ],
    )
}

/// Realistic objects, each broken in up to three places (or not at all),
/// plus the odd value that is not an object at all.
fn objects() -> impl Strategy<Value = Vec<Value>> {
    let broken = realistic_service().prop_flat_map(|objs| {
        let n = objs.len();
        (Just(objs), proptest::collection::vec(proptest::collection::vec(mutation(), 0..4), n))
    });
    proptest::collection::vec(
        prop_oneof![
            8 => broken.prop_map(|(mut objs, muts)| {
                for (o, ms) in objs.iter_mut().zip(muts) {
                    for (at, m) in ms {
                        mutate(o, at, &m);
                    }
                }
                objs
            }),
            1 => junk().prop_map(|j| vec![j]),
        ],
        0..5,
    )
    .prop_map(|groups| groups.into_iter().flatten().collect())
}

/// One sync of `items`, through text of the given format: every frontend
/// row (frontend, service, protocol, kind, scope, backends) and the number
/// of problems reported.
fn sync(items: Vec<Value>, yaml: bool) -> (Vec<Row>, usize) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let text = if yaml { serde_yaml_ng::to_string(&list).expect("yaml") } else { list.to_string() };
    let (ingested, problems) = read_all(&text).expect("well-formed text always ingests");
    for p in &problems {
        assert!(!p.object.is_empty() && !p.field.is_empty() && !p.reason.is_empty(), "{p:?}");
    }
    let dp = SharedFake::default();
    let limits = Limits { max_services: 4096, max_backends: 4096 };
    let mut r = Reconciler::new(Box::new(dp.clone()), node(), &limits, Arc::new(Metrics::new())).expect("r");
    r.apply_event(SourceEvent::Replace {
        origin: 0,
        kinds: Kinds::ALL,
        services: ingested.services,
        slices: ingested.slices,
        nodes: ingested.nodes,
    });
    let report = r.sync();
    assert!(report.complete, "a sync into an empty fake datapath completes");
    for p in r.problems() {
        assert!(!p.object.is_empty() && !p.field.is_empty(), "{p:?}");
    }
    let names = socklb::inspect::parse_set_names(&r.set_names());
    let rows = frontend_rows(&dp.state(), &Default::default(), &names)
        .into_iter()
        .map(|row| (row.frontend, row.service, row.protocol, row.kind, row.scope, row.backends))
        .collect();
    (rows, problems.len() + r.problems().count())
}

type Row = (String, String, String, String, String, Vec<String>);

fn good_rows(items: Vec<Value>, yaml: bool) -> Vec<Row> {
    sync(items, yaml).0.into_iter().filter(|row| row.0 == "10.96.0.1:80").collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_objects_never_panic_and_never_disturb_a_good_service(
        fuzz in objects(),
        at in any::<prop::sample::Index>(),
        yaml in any::<bool>(),
    ) {
        let alone = good_rows(good(), yaml);
        prop_assert_eq!(alone.len(), 1);
        let mut items = fuzz;
        let good = good();
        let i = at.index(items.len() + 1);
        items.splice(i..i, good);
        prop_assert_eq!(good_rows(items, yaml), alone);
    }
}

/// The generator must reach deep into the model: across a sample, generated
/// objects become frontends with backends, and others are reported.
#[test]
fn the_generated_objects_are_both_served_and_rejected() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut frontends, mut with_backends, mut problems) = (0, 0, 0);
    for _ in 0..200 {
        let items = objects().new_tree(&mut runner).expect("sample").current();
        let (rows, n) = sync(items, false);
        frontends += rows.len();
        with_backends += rows.iter().filter(|r| !r.5.is_empty()).count();
        problems += n;
    }
    eprintln!("200 samples: {frontends} frontends, {with_backends} with backends, {problems} problems");
    assert!(frontends > 300, "{frontends} frontends from 200 samples");
    assert!(with_backends > 30, "{with_backends} frontends with backends from 200 samples");
    assert!(problems > 200, "{problems} problems from 200 samples");
}

/// Text that is not even well-formed is an error with a message (the file
/// source keeps its last good state and reports it), never a panic.
#[test]
fn malformed_text_is_an_error_with_a_message() {
    for text in ["{", "[1, 2", "items: [\n  - {", "apiVersion: v1\nkind: [", "{\"items\": 5}", "a: b: c"] {
        match read_all(text) {
            Ok(_) => panic!("{text:?} was accepted"),
            Err(e) => assert!(!e.message.is_empty(), "{text:?}"),
        }
    }
}
