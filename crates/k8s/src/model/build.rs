//! One Service and its EndpointSlices to frontends and backend sets.
//!
//! Per family and per service port:
//! * endpoints are merged over the family's slices by port name and
//!   protocol (the slice carries the resolved `targetPort`), duplicates
//!   removed (a node-local duplicate wins, as in kube-proxy);
//! * the cluster set is used when `internalTrafficPolicy` is Cluster or the
//!   port is externally reachable, the local set when a policy is Local;
//! * the ClusterIP uses the set its `internalTrafficPolicy` names;
//! * external IPs and load-balancer IPs are reached from this node's
//!   sockets with the cluster set: kube-proxy routes locally originated
//!   traffic to external destinations through the cluster chain ("route
//!   LOCAL traffic ... external destinations"), whatever
//!   `externalTrafficPolicy` says. With `externalTrafficPolicy: Local` they
//!   also get an external-scope entry with the local set, which is what a
//!   packet arriving from outside the node would get;
//! * a NodePort is one entry per family, served on every node's addresses:
//!   the cluster set on this node's addresses (the same short-circuit), and
//!   with `externalTrafficPolicy: Local` on another node's address that
//!   node's own endpoints, which is what its proxy would pick.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use socklb_common::{MAX_BACKENDS_PER_SET, SCOPE_EXTERNAL, SCOPE_INTERNAL, set_flags};

use super::{
    BackendSet, Family, Frontend, FrontendKind, NodeContext, NodePortFrontend, ObjKey, Policy, ServiceModel,
    SetId,
    categorize::{Endpoint, categorize, node_local},
    names::Names,
    problem::{Problem, ProblemKind},
    service::{ParsedService, ServicePortSpec},
    slices::ParsedSlice,
};

/// A slice of the Service, with its name (the order slices are merged in).
pub type NamedSlice<'a> = (&'a str, &'a ParsedSlice);

/// Endpoints of one service port in one family, merged over slices.
/// Slices with endpoints exist, yet none carries this port.
fn port_unresolved(port: &ServicePortSpec, slices: &[NamedSlice<'_>]) -> bool {
    slices.iter().any(|(_, s)| !s.endpoints.is_empty())
        && !slices.iter().any(|(_, s)| s.ports.iter().any(|p| p.name == port.name && p.proto == port.proto))
}

fn merged_endpoints(
    port: &ServicePortSpec,
    slices: &[NamedSlice<'_>],
    node: &str,
    names: &Names,
) -> Vec<Endpoint> {
    let mut sorted: Vec<&NamedSlice<'_>> = slices.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut by_addr: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    for (_, slice) in sorted {
        let Some(sp) = slice.ports.iter().find(|p| p.name == port.name && p.proto == port.proto) else {
            continue;
        };
        for (i, e) in slice.endpoints.iter().enumerate() {
            let hints = slice.hints_of(i);
            let addr = SocketAddr::new(e.addr(), sp.port);
            let node_name = names.node(e.node);
            let local = node_name.map(|n| &**n) == Some(node);
            if by_addr.get(&addr).is_some_and(|prev| !local || prev.local) {
                continue;
            }
            by_addr.insert(
                addr,
                Endpoint {
                    addr,
                    ready: e.ready(),
                    serving: e.serving(),
                    terminating: e.terminating(),
                    local,
                    node: node_name.cloned(),
                    zone_hints: hints.into_iter().flat_map(|h| h.zones.iter().cloned()).collect(),
                    node_hints: hints.into_iter().flat_map(|h| h.nodes.iter().cloned()).collect(),
                },
            );
        }
    }
    by_addr.into_values().collect()
}

/// One Service (`key`) and its slices to its model; `names` resolves the
/// endpoints' node names.
pub fn build_service(
    key: &ObjKey,
    svc: &ParsedService,
    slices: &[NamedSlice<'_>],
    ctx: &NodeContext,
    names: &Names,
) -> (ServiceModel, Vec<Problem>) {
    let mut model = ServiceModel::default();
    let mut problems = Vec::new();
    for &(family, cluster_ip) in svc.cluster_ips.iter() {
        let family_slices: Vec<NamedSlice<'_>> =
            slices.iter().copied().filter(|(_, s)| s.family == family).collect();
        let of_family = |ips: &[IpAddr]| -> Vec<IpAddr> {
            ips.iter().copied().filter(|ip| Family::of(ip) == family).collect()
        };
        let external_ips = of_family(&svc.external_ips);
        let lb_ips = of_family(&svc.load_balancer_ips);

        for port in &svc.ports {
            let endpoints = merged_endpoints(port, &family_slices, &ctx.node_name, names);
            if endpoints.is_empty() && port_unresolved(port, &family_slices) {
                problems.push(Problem::new(
                    ProblemKind::UnresolvedPort,
                    format!("Service {key}"),
                    format!("spec.ports[{}]", port.index),
                    format!(
                        "no {family} EndpointSlice of the service has a {} port named {:?} (a named \
                         targetPort no pod exposes?); the port has no endpoints",
                        port.proto, port.name
                    ),
                ));
            }
            let external = svc.externally_accessible(port);
            let uses_cluster = !svc.internal_local || external;
            let uses_local = svc.internal_local || (svc.external_local && external);
            let cat = categorize(&endpoints, uses_cluster, uses_local, &ctx.node_name, ctx.zone.as_deref());
            let set_id =
                |policy| SetId { service: key.clone(), port: port.port, proto: port.proto, family, policy };
            let mut make_set = |policy: Policy, addrs: Vec<SocketAddr>, fallback: bool| {
                let mut flags = 0;
                if policy != Policy::Cluster {
                    flags |= set_flags::LOCAL_ONLY;
                }
                if fallback {
                    flags |= set_flags::TERMINATING_FALLBACK;
                }
                if svc.affinity_timeout_secs.is_some() {
                    flags |= set_flags::AFFINITY | set_flags::MEMBERSHIP;
                }
                if port.proto == super::Proto::Udp {
                    flags |= set_flags::MEMBERSHIP;
                }
                let mut backends = addrs;
                backends.sort_unstable();
                backends.dedup();
                if backends.len() > MAX_BACKENDS_PER_SET {
                    problems.push(Problem::new(
                        ProblemKind::TooManyEndpoints,
                        format!("Service {key}"),
                        format!("port {}", port.port),
                        format!(
                            "{} endpoints; only the first {MAX_BACKENDS_PER_SET} are used",
                            backends.len()
                        ),
                    ));
                    backends.truncate(MAX_BACKENDS_PER_SET);
                }
                let local = endpoints
                    .iter()
                    .filter(|e| e.local)
                    .map(|e| e.addr)
                    .filter(|a| backends.binary_search(a).is_ok())
                    .collect();
                BackendSet {
                    id: set_id(policy),
                    port_name: port.name.to_string(),
                    backends,
                    local,
                    // merged_endpoints comes sorted by address, deduplicated.
                    known: endpoints.iter().map(|e| e.addr).collect(),
                    flags,
                    affinity_timeout_secs: svc.affinity_timeout_secs.unwrap_or(0),
                }
            };
            let cluster = cat.cluster.map(|a| make_set(Policy::Cluster, a, cat.cluster_fallback));
            let local = cat.local.map(|a| make_set(Policy::Local, a, cat.local_fallback));

            let mut frontends = Vec::new();
            let internal_policy = if svc.internal_local { Policy::Local } else { Policy::Cluster };
            frontends.push((
                SocketAddr::new(cluster_ip, port.port),
                SCOPE_INTERNAL,
                FrontendKind::ClusterIp,
                internal_policy,
            ));
            let externals = external_ips
                .iter()
                .map(|a| (SocketAddr::new(*a, port.port), FrontendKind::ExternalIp))
                .chain(lb_ips.iter().map(|a| (SocketAddr::new(*a, port.port), FrontendKind::LoadBalancer)));
            for (addr, kind) in externals {
                frontends.push((addr, SCOPE_INTERNAL, kind, Policy::Cluster));
                if svc.external_local {
                    frontends.push((addr, SCOPE_EXTERNAL, kind, Policy::Local));
                }
            }

            let mut used = BTreeSet::new();
            let mut seen = BTreeSet::new();
            for (addr, scope, kind, policy) in frontends {
                if !seen.insert((addr, scope)) {
                    continue; // e.g. an external IP listed twice
                }
                used.insert(policy.clone());
                model.frontends.push(Frontend { addr, proto: port.proto, scope, kind, set: set_id(policy) });
            }
            let mut node_sets = Vec::new();
            if let Some(np) = port.node_port {
                used.insert(Policy::Cluster);
                if svc.external_local {
                    let mut others: Vec<&str> = endpoints
                        .iter()
                        .filter_map(|e| e.node.as_deref())
                        .filter(|n| *n != ctx.node_name)
                        .collect();
                    others.sort_unstable();
                    others.dedup();
                    for node in others {
                        if let Some((addrs, fallback)) = node_local(&endpoints, node) {
                            let set = make_set(Policy::Node(node.to_string()), addrs, fallback);
                            node_sets.push((node.to_string(), set.id.clone()));
                            model.sets.push(set);
                        }
                    }
                }
                model.node_ports.push(NodePortFrontend {
                    port: np,
                    proto: port.proto,
                    family,
                    set: set_id(Policy::Cluster),
                    external_local: svc.external_local,
                    node_sets,
                });
            }
            for set in [cluster, local].into_iter().flatten() {
                if used.contains(&set.id.policy) {
                    model.sets.push(set);
                }
            }
        }
    }
    (model, problems)
}
