//! The model against kube-proxy's rules, one YAML fixture per rule.

use std::collections::BTreeMap;

use super::{
    build_service,
    problem::ProblemKind,
    service::{ServiceOutcome, parse_service},
    slices::parse_slice,
    *,
};
use crate::{
    decode::files::parse_objects,
    store::{service_key, slice_key},
};

fn ctx() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        zone: Some("zone-1".into()),
        nodeport_addresses: nodes::NodePortAddresses::All,
        host_addresses: vec!["192.168.0.10".parse().expect("ip"), "fd00:1::10".parse().expect("ip")],
        service_proxy_name: None,
    }
}

/// Runs the model over a YAML fixture: every Service with its slices.
fn model(yaml: &str, ctx: &NodeContext) -> (BTreeMap<ObjKey, ServiceModel>, Vec<Problem>) {
    let (objects, mut problems) = parse_objects(yaml).expect("fixture is valid YAML");
    let mut names = names::Names::default();
    let mut slices = Vec::new();
    for s in &objects.slices {
        let (parsed, ps) = parse_slice(s, &mut names);
        problems.extend(ps);
        if let (Some(p), Some(owner)) = (parsed, slices::slice_service(s)) {
            slices.push((slice_key(s).name, owner, p));
        }
    }
    let mut out = BTreeMap::new();
    for svc in &objects.services {
        let key = service_key(svc);
        let (outcome, ps) = parse_service(svc, ctx.service_proxy_name.as_deref(), &mut names);
        problems.extend(ps);
        if let ServiceOutcome::Proxied(svc) = outcome {
            let mine: Vec<build::NamedSlice<'_>> = slices
                .iter()
                .filter(|(_, owner, _)| *owner == key)
                .map(|(n, _, p)| (n.as_str(), p))
                .collect();
            let (m, ps) = build_service(&key, &svc, &mine, ctx, &names);
            problems.extend(ps);
            out.insert(key, m);
        }
    }
    (out, problems)
}

/// "addr/PROTO scope Kind -> set", and NodePorts as "*:port/PROTO family
/// NodePort -> set" (with "on node X -> set" for other nodes' sets).
fn frontends(m: &ServiceModel) -> Vec<String> {
    let mut v: Vec<String> = m
        .frontends
        .iter()
        .map(|f| {
            let scope = match f.scope {
                socklb_common::SCOPE_INTERNAL => "internal",
                _ => "external",
            };
            format!("{}/{} {scope} {} -> {}", f.addr, f.proto, f.kind, f.set)
        })
        .collect();
    for np in &m.node_ports {
        let policy = if np.external_local { " (external local)" } else { "" };
        v.push(format!("*:{}/{} {} NodePort{policy} -> {}", np.port, np.proto, np.family, np.set));
        for (node, set) in &np.node_sets {
            v.push(format!("*:{}/{} {} NodePort on {node} -> {set}", np.port, np.proto, np.family));
        }
    }
    v.sort();
    v
}

/// The backends of the set named `set` ("ns/name:port/PROTO family policy").
fn backends(m: &ServiceModel, set: &str) -> Vec<String> {
    let s = m.sets.iter().find(|s| s.id.to_string() == set).unwrap_or_else(|| {
        panic!("no set {set}; have {:?}", m.sets.iter().map(|s| s.id.to_string()).collect::<Vec<_>>())
    });
    s.backends.iter().map(ToString::to_string).collect()
}

fn flags(m: &ServiceModel, set: &str) -> u16 {
    m.sets.iter().find(|s| s.id.to_string() == set).map(|s| s.flags).expect("set")
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- {addresses: [10.244.0.1], conditions: {ready: true}, nodeName: node-a}
- {addresses: [10.244.0.2], conditions: {ready: true}, nodeName: node-b}
- {addresses: [10.244.0.3], conditions: {ready: false}, nodeName: node-b}
ports: [{name: http, port: 8080, protocol: TCP}]
"#;

#[test]
fn a_cluster_ip_reaches_the_ready_endpoints_on_the_slice_port() {
    let (m, problems) = model(WEB, &ctx());
    assert!(problems.is_empty(), "{problems:?}");
    let web = &m[&ObjKey::new("default", "web")];
    assert_eq!(frontends(web), ["10.96.0.10:80/TCP internal ClusterIP -> default/web:80/TCP ipv4 cluster"]);
    assert_eq!(backends(web, "default/web:80/TCP ipv4 cluster"), ["10.244.0.1:8080", "10.244.0.2:8080"]);
}

// kube-proxy resolves a named targetPort per EndpointSlice: during a rolling
// update two slices may carry different numbers for the same port name.
#[test]
fn a_named_target_port_is_resolved_per_slice() {
    let yaml = format!(
        "{WEB}---\n{}",
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.9]}]
ports: [{name: http, port: 9090, protocol: TCP}, {name: metrics, port: 9100, protocol: TCP}]
"#
    );
    let (m, _) = model(&yaml, &ctx());
    let web = &m[&ObjKey::new("default", "web")];
    assert_eq!(
        backends(web, "default/web:80/TCP ipv4 cluster"),
        ["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.9:9090"],
        "the metrics port of the slice is not the service's port"
    );
}

#[test]
fn an_unnamed_port_matches_the_unnamed_slice_port() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: one, namespace: ns}
spec: {clusterIP: 10.96.1.1, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: one-x, namespace: ns, labels: {kubernetes.io/service-name: one}}
addressType: IPv4
endpoints: [{addresses: [10.244.5.5]}]
ports: [{name: "", port: 8080, protocol: TCP}]
"#;
    let (m, _) = model(yaml, &ctx());
    assert_eq!(backends(&m[&ObjKey::new("ns", "one")], "ns/one:80/TCP ipv4 cluster"), ["10.244.5.5:8080"]);
}

// kube-proxy ShouldSkipService: headless and ExternalName services are not
// proxied; the informers drop objects with the service-proxy-name label.
#[test]
fn headless_external_name_and_other_proxies_services_are_skipped() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: ns}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: ns}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: ns, labels: {service.kubernetes.io/service-proxy-name: someone-else}}
spec: {clusterIP: 10.96.1.2, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: mine, namespace: ns, labels: {service.kubernetes.io/service-proxy-name: socklb}}
spec: {clusterIP: 10.96.1.3, ports: [{port: 80}]}
"#;
    let (m, problems) = model(yaml, &ctx());
    assert!(m.is_empty(), "{:?}", m.keys().collect::<Vec<_>>());
    assert!(problems.is_empty(), "skips are not problems: {problems:?}");

    // With a proxy name of our own we serve exactly the services labelled with it.
    let mut ours = ctx();
    ours.service_proxy_name = Some("socklb".into());
    let (m, _) = model(yaml, &ours);
    assert_eq!(m.keys().cloned().collect::<Vec<_>>(), [ObjKey::new("ns", "mine")]);
}

const DUAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  clusterIP: 10.96.0.30
  clusterIPs: [10.96.0.30, "fd00:96::30"]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-4, namespace: default, labels: {kubernetes.io/service-name: dual}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.2]}]
ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-6, namespace: default, labels: {kubernetes.io/service-name: dual}}
addressType: IPv6
endpoints: [{addresses: ["fd00:244::2"]}]
ports: [{name: http, port: 8080}]
"#;

#[test]
fn a_dual_stack_service_has_one_cluster_ip_and_one_set_per_family() {
    let (m, problems) = model(DUAL, &ctx());
    assert!(problems.is_empty(), "{problems:?}");
    let dual = &m[&ObjKey::new("default", "dual")];
    assert_eq!(
        frontends(dual),
        [
            "10.96.0.30:80/TCP internal ClusterIP -> default/dual:80/TCP ipv4 cluster",
            "[fd00:96::30]:80/TCP internal ClusterIP -> default/dual:80/TCP ipv6 cluster",
        ]
    );
    assert_eq!(backends(dual, "default/dual:80/TCP ipv4 cluster"), ["10.244.1.2:8080"]);
    assert_eq!(backends(dual, "default/dual:80/TCP ipv6 cluster"), ["[fd00:244::2]:8080"]);
}

#[test]
fn udp_is_proxied_and_sctp_is_ignored_without_a_problem() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.53
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: sctp, port: 99, protocol: SCTP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.53]}]
ports: [{name: dns, port: 5353, protocol: UDP}, {name: sctp, port: 99, protocol: SCTP}]
"#;
    let (m, problems) = model(yaml, &ctx());
    assert!(problems.is_empty(), "{problems:?}");
    let dns = &m[&ObjKey::new("kube-system", "dns")];
    assert_eq!(
        frontends(dns),
        ["10.96.0.53:53/UDP internal ClusterIP -> kube-system/dns:53/UDP ipv4 cluster"]
    );
}

// KEP-1669: with no ready endpoint, serving-and-terminating ones are used;
// terminating ones that no longer serve are not.
#[test]
fn without_ready_endpoints_serving_terminating_ones_are_used() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: drain, namespace: ns}
spec: {clusterIP: 10.96.2.1, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: drain-1, namespace: ns, labels: {kubernetes.io/service-name: drain}}
addressType: IPv4
endpoints:
- {addresses: [10.244.0.1], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.0.2], conditions: {ready: false, serving: false, terminating: true}}
- {addresses: [10.244.0.3], conditions: {ready: false, serving: false, terminating: false}}
ports: [{name: "", port: 8080}]
"#;
    let (m, _) = model(yaml, &ctx());
    let svc = &m[&ObjKey::new("ns", "drain")];
    assert_eq!(backends(svc, "ns/drain:80/TCP ipv4 cluster"), ["10.244.0.1:8080"]);
    assert_ne!(
        flags(svc, "ns/drain:80/TCP ipv4 cluster") & socklb_common::set_flags::TERMINATING_FALLBACK,
        0
    );
}

#[test]
fn slices_are_merged_and_duplicates_removed() {
    let yaml = format!(
        "{WEB}---\n{}",
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-0, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.1]}, {addresses: [10.244.0.7]}]
ports: [{name: http, port: 8080}]
"#
    );
    let (m, _) = model(&yaml, &ctx());
    assert_eq!(
        backends(&m[&ObjKey::new("default", "web")], "default/web:80/TCP ipv4 cluster"),
        ["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.7:8080"]
    );
}

fn with_spec(extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: pol, namespace: ns}}
spec:
  clusterIP: 10.96.3.1
  ports: [{{name: http, port: 80, nodePort: 30080}}]
{extra}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: pol-1, namespace: ns, labels: {{kubernetes.io/service-name: pol}}}}
addressType: IPv4
endpoints:
- {{addresses: [10.244.0.1], nodeName: node-a}}
- {{addresses: [10.244.0.2], nodeName: node-b}}
ports: [{{name: http, port: 8080}}]
"#
    )
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    let (m, _) = model(&with_spec("  internalTrafficPolicy: Local"), &ctx());
    let svc = &m[&ObjKey::new("ns", "pol")];
    assert_eq!(frontends(svc), ["10.96.3.1:80/TCP internal ClusterIP -> ns/pol:80/TCP ipv4 local"]);
    assert_eq!(backends(svc, "ns/pol:80/TCP ipv4 local"), ["10.244.0.1:8080"]);

    // On a node without a local endpoint the set is empty: connects are refused.
    let mut elsewhere = ctx();
    elsewhere.node_name = "node-z".into();
    let (m, _) = model(&with_spec("  internalTrafficPolicy: Local"), &elsewhere);
    assert!(backends(&m[&ObjKey::new("ns", "pol")], "ns/pol:80/TCP ipv4 local").is_empty());
}

// A NodePort is one entry per family of the service (served on every
// node's addresses), and only for type NodePort or LoadBalancer.
#[test]
fn node_ports_are_one_entry_per_family() {
    let (m, _) = model(&with_spec("  type: NodePort"), &ctx());
    assert_eq!(
        frontends(&m[&ObjKey::new("ns", "pol")]),
        [
            "*:30080/TCP ipv4 NodePort -> ns/pol:80/TCP ipv4 cluster",
            "10.96.3.1:80/TCP internal ClusterIP -> ns/pol:80/TCP ipv4 cluster",
        ]
    );
    let (m, _) = model(&with_spec("  type: ClusterIP"), &ctx());
    assert_eq!(frontends(&m[&ObjKey::new("ns", "pol")]).len(), 1, "no NodePort for a ClusterIP service");
}

// kube-proxy routes node-originated traffic to this node's NodePorts
// through the cluster chain even with externalTrafficPolicy: Local ("route
// LOCAL traffic for ... external destinations"). On another node's address
// that node's proxy would use its own endpoints: a set per node that has
// some (node-a is this node, so only node-b gets one).
#[test]
fn external_traffic_policy_local_gives_each_other_node_its_own_endpoints() {
    let (m, _) = model(&with_spec("  type: NodePort\n  externalTrafficPolicy: Local"), &ctx());
    let svc = &m[&ObjKey::new("ns", "pol")];
    assert_eq!(
        frontends(svc),
        [
            "*:30080/TCP ipv4 NodePort (external local) -> ns/pol:80/TCP ipv4 cluster",
            "*:30080/TCP ipv4 NodePort on node-b -> ns/pol:80/TCP ipv4 node:node-b",
            "10.96.3.1:80/TCP internal ClusterIP -> ns/pol:80/TCP ipv4 cluster",
        ]
    );
    assert_eq!(backends(svc, "ns/pol:80/TCP ipv4 node:node-b"), ["10.244.0.2:8080"]);
    assert_eq!(backends(svc, "ns/pol:80/TCP ipv4 cluster"), ["10.244.0.1:8080", "10.244.0.2:8080"]);
    assert_ne!(flags(svc, "ns/pol:80/TCP ipv4 node:node-b") & socklb_common::set_flags::LOCAL_ONLY, 0);
}

// internalTrafficPolicy governs the ClusterIP; a NodePort of the same port
// still uses the cluster set (UsesClusterEndpoints: externally accessible).
#[test]
fn internal_local_with_a_node_port_gives_the_two_frontends_two_sets() {
    let (m, _) = model(&with_spec("  type: NodePort\n  internalTrafficPolicy: Local"), &ctx());
    let svc = &m[&ObjKey::new("ns", "pol")];
    assert_eq!(
        frontends(svc),
        [
            "*:30080/TCP ipv4 NodePort -> ns/pol:80/TCP ipv4 cluster",
            "10.96.3.1:80/TCP internal ClusterIP -> ns/pol:80/TCP ipv4 local",
        ]
    );
}

#[test]
fn external_ips_and_vip_mode_load_balancer_ips_are_frontends() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: 10.96.4.1
  externalIPs: [203.0.113.7]
  ports: [{port: 443, nodePort: 31443}]
status:
  loadBalancer:
    ingress:
    - {ip: 198.51.100.1}
    - {ip: 198.51.100.2, ipMode: VIP}
    - {ip: 198.51.100.3, ipMode: Proxy}
    - {hostname: lb.example.com}
"#;
    let (m, problems) = model(yaml, &ctx());
    assert!(problems.is_empty(), "{problems:?}");
    let kinds: Vec<String> = frontends(&m[&ObjKey::new("ns", "lb")]);
    assert_eq!(
        kinds,
        [
            "*:31443/TCP ipv4 NodePort -> ns/lb:443/TCP ipv4 cluster",
            "10.96.4.1:443/TCP internal ClusterIP -> ns/lb:443/TCP ipv4 cluster",
            "198.51.100.1:443/TCP internal LoadBalancer -> ns/lb:443/TCP ipv4 cluster",
            "198.51.100.2:443/TCP internal LoadBalancer -> ns/lb:443/TCP ipv4 cluster",
            "203.0.113.7:443/TCP internal ExternalIP -> ns/lb:443/TCP ipv4 cluster",
        ]
    );
}

#[test]
fn zone_hints_restrict_the_cluster_set_to_this_zone() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: z, namespace: ns}
spec: {clusterIP: 10.96.5.1, trafficDistribution: PreferClose, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: z-1, namespace: ns, labels: {kubernetes.io/service-name: z}}
addressType: IPv4
endpoints:
- {addresses: [10.244.0.1], zone: zone-1, hints: {forZones: [{name: zone-1}]}}
- {addresses: [10.244.0.2], zone: zone-2, hints: {forZones: [{name: zone-2}]}}
ports: [{name: "", port: 8080}]
"#;
    let (m, _) = model(yaml, &ctx());
    assert_eq!(backends(&m[&ObjKey::new("ns", "z")], "ns/z:80/TCP ipv4 cluster"), ["10.244.0.1:8080"]);
    let mut no_zone = ctx();
    no_zone.zone = None;
    let (m, _) = model(yaml, &no_zone);
    assert_eq!(backends(&m[&ObjKey::new("ns", "z")], "ns/z:80/TCP ipv4 cluster").len(), 2);
}

#[test]
fn node_hints_restrict_the_cluster_set_to_this_node() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: n, namespace: ns}
spec: {clusterIP: 10.96.5.2, trafficDistribution: PreferSameNode, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: n-1, namespace: ns, labels: {kubernetes.io/service-name: n}}
addressType: IPv4
endpoints:
- {addresses: [10.244.0.1], nodeName: node-a, hints: {forNodes: [{name: node-a}], forZones: [{name: zone-1}]}}
- {addresses: [10.244.0.2], nodeName: node-b, hints: {forNodes: [{name: node-b}], forZones: [{name: zone-1}]}}
ports: [{name: "", port: 8080}]
"#;
    let (m, _) = model(yaml, &ctx());
    assert_eq!(backends(&m[&ObjKey::new("ns", "n")], "ns/n:80/TCP ipv4 cluster"), ["10.244.0.1:8080"]);
}

#[test]
fn client_ip_affinity_is_carried_with_its_timeout() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: ns}
spec:
  clusterIP: 10.96.6.1
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: ns}
spec: {clusterIP: 10.96.6.2, sessionAffinity: ClientIP, ports: [{port: 80}]}
"#;
    let (m, _) = model(yaml, &ctx());
    let a = &m[&ObjKey::new("ns", "a")].sets[0];
    assert_ne!(a.flags & socklb_common::set_flags::AFFINITY, 0);
    assert_eq!(a.affinity_timeout_secs, 60);
    assert_eq!(m[&ObjKey::new("ns", "b")].sets[0].affinity_timeout_secs, 10_800, "kube-proxy's default");
}

// Bad input: each bad part is skipped with a problem naming the object and
// the field; everything else keeps working.
#[test]
fn invalid_fields_are_skipped_by_object_and_field_and_the_rest_works() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: bad-ip, namespace: ns}
spec: {clusterIP: 10.96.999.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ports, namespace: ns}
spec:
  clusterIP: 10.96.7.1
  ports:
  - {name: zero, port: 0}
  - {name: big, port: 70000}
  - {name: ok, port: 80}
  - {name: again, port: 80}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ports-1, namespace: ns, labels: {kubernetes.io/service-name: ports}}
addressType: IPv4
endpoints:
- {addresses: [10.244.0.1]}
- {addresses: ["fd00::1"]}
- {addresses: [not-an-ip]}
ports: [{name: ok, port: 8080}, {name: ghost}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: orphan, namespace: ns}
addressType: IPv4
endpoints: []
"#;
    let (m, problems) = model(yaml, &ctx());
    let found: Vec<(String, String, &str)> =
        problems.iter().map(|p| (p.object.clone(), p.field.clone(), p.kind.label())).collect();
    for expected in [
        ("Service ns/bad-ip", "spec.clusterIP", "invalid_ip"),
        ("Service ns/ports", "spec.ports[0].port", "invalid_port"),
        ("Service ns/ports", "spec.ports[1].port", "invalid_port"),
        ("Service ns/ports", "spec.ports[3].port", "duplicate_port"),
        ("EndpointSlice ns/ports-1", "endpoints[1].addresses[0]", "family_mismatch"),
        ("EndpointSlice ns/ports-1", "endpoints[2].addresses[0]", "invalid_ip"),
        ("EndpointSlice ns/ports-1", "ports[1].port", "missing_field"),
        ("EndpointSlice ns/orphan", "metadata.labels[kubernetes.io/service-name]", "missing_field"),
    ] {
        assert!(
            found.iter().any(|(o, f, k)| o == expected.0 && f == expected.1 && *k == expected.2),
            "missing {expected:?} in {found:#?}"
        );
    }
    assert!(!m.contains_key(&ObjKey::new("ns", "bad-ip")));
    let ports = &m[&ObjKey::new("ns", "ports")];
    assert_eq!(backends(ports, "ns/ports:80/TCP ipv4 cluster"), ["10.244.0.1:8080"]);
}

#[test]
fn a_mismatched_ip_family_declaration_uses_the_addresss_family() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: mm, namespace: ns}
spec: {clusterIP: 10.96.8.1, ipFamilies: [IPv6], ports: [{port: 80}]}
"#;
    let (m, problems) = model(yaml, &ctx());
    assert!(problems.iter().any(|p| p.field == "spec.ipFamilies[0]"), "{problems:?}");
    assert_eq!(frontends(&m[&ObjKey::new("ns", "mm")]).len(), 1);
}

#[test]
fn a_service_without_ports_is_skipped_with_a_problem() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: portless, namespace: ns}
spec: {clusterIP: 10.96.9.1}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: ns}
spec: {clusterIP: 10.96.9.2, ports: []}
"#;
    let (m, problems) = model(yaml, &ctx());
    assert!(m.is_empty());
    for name in ["portless", "empty"] {
        assert!(
            problems.iter().any(|p| p.object == format!("Service ns/{name}")
                && p.field == "spec.ports"
                && p.kind == ProblemKind::MissingField),
            "{name}: {problems:?}"
        );
    }
}

// The EndpointSlice controller leaves a port out of a slice when its pods do
// not expose the named targetPort. That port has no endpoints (kube-proxy
// rejects it); the problem says why, and the service's other ports work.
#[test]
fn a_named_target_port_no_slice_defines_is_reported_and_the_other_ports_work() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: app, namespace: ns}
spec:
  clusterIP: 10.96.9.3
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: metrics, port: 9100, targetPort: 9100}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: app-1, namespace: ns, labels: {kubernetes.io/service-name: app}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.1]}]
ports: [{name: metrics, port: 9100}]
---
apiVersion: v1
kind: Service
metadata: {name: no-slices-yet, namespace: ns}
spec: {clusterIP: 10.96.9.4, ports: [{name: http, port: 80, targetPort: web}]}
"#;
    let (m, problems) = model(yaml, &ctx());
    let unresolved: Vec<&Problem> =
        problems.iter().filter(|p| p.kind == ProblemKind::UnresolvedPort).collect();
    assert_eq!(unresolved.len(), 1, "only where slices have endpoints: {problems:?}");
    assert_eq!(
        (unresolved[0].object.as_str(), unresolved[0].field.as_str()),
        ("Service ns/app", "spec.ports[0]")
    );
    assert!(unresolved[0].reason.contains("\"http\""), "{}", unresolved[0].reason);
    let app = &m[&ObjKey::new("ns", "app")];
    assert_eq!(backends(app, "ns/app:80/TCP ipv4 cluster"), Vec::<String>::new(), "refuses, as kube-proxy");
    assert_eq!(backends(app, "ns/app:9100/TCP ipv4 cluster"), ["10.244.0.1:9100"]);
}

// The API caps a slice at 1000 endpoints, but the agent must not depend on
// it: a slice of 10k is used whole, quickly, and without a problem.
#[test]
fn ten_thousand_endpoints_in_one_slice_are_all_used() {
    let endpoints: Vec<String> = (0..10_000u32)
        .map(|i| format!("- {{addresses: [10.{}.{}.{}]}}", 100 + i / 65536, (i / 256) % 256, i % 256))
        .collect();
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: ns}}\nspec: {{clusterIP: 10.96.9.5, ports: [{{port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: big-1, namespace: ns, labels: {{kubernetes.io/service-name: big}}}}\n\
         addressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n{}\n",
        endpoints.join("\n")
    );
    let (m, problems) = model(&yaml, &ctx());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(backends(&m[&ObjKey::new("ns", "big")], "ns/big:80/TCP ipv4 cluster").len(), 10_000);
}
