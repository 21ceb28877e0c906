//! kube-proxy's `CategorizeEndpoints` (pkg/proxy/topology.go): which
//! endpoints a service port's Cluster and Local traffic policies use.
//!
//! * Ready endpoints; if none is ready, serving-and-terminating ones
//!   (KEP-1669), decided separately for the cluster and the local set.
//! * Topology, for the cluster set: `PreferSameNode` when every ready
//!   endpoint has a node hint and one names this node; otherwise
//!   `PreferSameZone` when every ready endpoint has a zone hint and one
//!   names this node's zone; otherwise all endpoints.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

/// One endpoint of one service port, merged over the service's slices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node.
    pub local: bool,
    /// The node it runs on (`nodeName`), if the slice says.
    pub node: Option<Arc<str>>,
    pub zone_hints: BTreeSet<Arc<str>>,
    pub node_hints: BTreeSet<Arc<str>>,
}

impl Endpoint {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    All,
    SameNode,
    SameZone,
}

/// The endpoints each policy uses. `None` when the policy is not used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    pub cluster: Option<Vec<SocketAddr>>,
    /// The cluster set fell back to serving, terminating endpoints.
    pub cluster_fallback: bool,
    pub local: Option<Vec<SocketAddr>>,
    pub local_fallback: bool,
}

pub fn topology_mode(endpoints: &[Endpoint], node: &str, zone: Option<&str>) -> Topology {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return Topology::All;
    }
    let all_node_hints = ready.iter().all(|e| !e.node_hints.is_empty());
    if all_node_hints && ready.iter().any(|e| e.node_hints.contains(node)) {
        return Topology::SameNode;
    }
    let all_zone_hints = ready.iter().all(|e| !e.zone_hints.is_empty());
    if let Some(zone) = zone
        && all_zone_hints
        && ready.iter().any(|e| e.zone_hints.contains(zone))
    {
        return Topology::SameZone;
    }
    Topology::All
}

fn available(e: &Endpoint, mode: Topology, node: &str, zone: Option<&str>) -> bool {
    match mode {
        Topology::All => true,
        Topology::SameNode => e.node_hints.contains(node),
        Topology::SameZone => zone.is_some_and(|z| e.zone_hints.contains(z)),
    }
}

fn addrs<'a>(it: impl Iterator<Item = &'a Endpoint>) -> Vec<SocketAddr> {
    it.map(|e| e.addr).collect()
}

pub fn categorize(
    endpoints: &[Endpoint],
    uses_cluster: bool,
    uses_local: bool,
    node: &str,
    zone: Option<&str>,
) -> Categorized {
    let mut out = Categorized::default();
    if uses_cluster {
        let mode = topology_mode(endpoints, node, zone);
        let mut set = addrs(endpoints.iter().filter(|e| e.ready && available(e, mode, node, zone)));
        if set.is_empty() {
            set = addrs(endpoints.iter().filter(|e| e.serving_terminating()));
            out.cluster_fallback = !set.is_empty();
        }
        out.cluster = Some(set);
    }
    if uses_local {
        let local_ready = endpoints.iter().any(|e| e.local && e.ready);
        let set = if local_ready {
            addrs(endpoints.iter().filter(|e| e.local && e.ready))
        } else {
            let set = addrs(endpoints.iter().filter(|e| e.local && e.serving_terminating()));
            out.local_fallback = !set.is_empty();
            set
        };
        out.local = Some(set);
    }
    out
}

/// The endpoints another node's proxy would use for traffic that arrives
/// there with `externalTrafficPolicy: Local`: that node's ready endpoints,
/// else its serving-and-terminating ones. `None` when it has none (it would
/// drop the traffic; socklb refuses it). Topology hints play no part.
pub fn node_local(endpoints: &[Endpoint], node: &str) -> Option<(Vec<SocketAddr>, bool)> {
    let on_node: Vec<&Endpoint> = endpoints.iter().filter(|e| e.node.as_deref() == Some(node)).collect();
    let ready = addrs(on_node.iter().copied().filter(|e| e.ready));
    if !ready.is_empty() {
        return Some((ready, false));
    }
    let fallback = addrs(on_node.iter().copied().filter(|e| e.serving_terminating()));
    (!fallback.is_empty()).then_some((fallback, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(n: u8) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([10, 0, 0, n], 80)),
            ready: true,
            serving: true,
            terminating: false,
            local: false,
            node: None,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        }
    }

    fn terminating(mut e: Endpoint) -> Endpoint {
        e.ready = false;
        e.terminating = true;
        e
    }

    fn ids(v: &Option<Vec<SocketAddr>>) -> Vec<u8> {
        v.iter()
            .flatten()
            .map(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => v4.octets()[3],
                std::net::IpAddr::V6(_) => 0,
            })
            .collect()
    }

    #[test]
    fn ready_endpoints_are_used_and_not_ready_ones_are_not() {
        let mut unready = ep(2);
        unready.ready = false;
        let c = categorize(&[ep(1), unready], true, false, "n1", None);
        assert_eq!(ids(&c.cluster), [1]);
        assert_eq!(c.local, None, "local policy unused");
    }

    // kube-proxy TestCategorizeEndpoints "only terminating endpoints": with
    // no ready endpoint, serving+terminating ones are used.
    #[test]
    fn without_ready_endpoints_serving_terminating_ones_are_used() {
        let mut not_serving = terminating(ep(3));
        not_serving.serving = false;
        let c = categorize(&[terminating(ep(1)), terminating(ep(2)), not_serving], true, false, "n1", None);
        assert_eq!(ids(&c.cluster), [1, 2]);
        assert!(c.cluster_fallback);
    }

    // The fallback is decided separately for the local set: remote ready
    // endpoints do not stop a local terminating one from being used.
    #[test]
    fn local_fallback_is_independent_of_the_cluster_set() {
        let mut local_term = terminating(ep(2));
        local_term.local = true;
        let c = categorize(&[ep(1), local_term], true, true, "n1", None);
        assert_eq!(ids(&c.cluster), [1]);
        assert!(!c.cluster_fallback);
        assert_eq!(ids(&c.local), [2]);
        assert!(c.local_fallback);
    }

    #[test]
    fn local_policy_without_local_endpoints_is_an_empty_set() {
        let c = categorize(&[ep(1), ep(2)], false, true, "n1", None);
        assert_eq!(c.cluster, None);
        assert_eq!(c.local, Some(vec![]));
    }

    fn zoned(n: u8, zone: &str) -> Endpoint {
        let mut e = ep(n);
        e.zone_hints.insert(zone.into());
        e
    }

    // kube-proxy "hints enabled, hints annotation == auto": zone hints apply
    // when all ready endpoints have them and one matches our zone.
    #[test]
    fn zone_hints_select_the_zone_when_every_endpoint_has_one() {
        let eps = [zoned(1, "a"), zoned(2, "b"), zoned(3, "a")];
        let c = categorize(&eps, true, false, "n1", Some("a"));
        assert_eq!(ids(&c.cluster), [1, 3]);
    }

    #[test]
    fn zone_hints_are_ignored_if_one_endpoint_lacks_them() {
        let eps = [zoned(1, "a"), zoned(2, "b"), ep(3)];
        let c = categorize(&eps, true, false, "n1", Some("a"));
        assert_eq!(ids(&c.cluster), [1, 2, 3]);
    }

    #[test]
    fn zone_hints_are_ignored_if_none_matches_or_the_node_has_no_zone() {
        let eps = [zoned(1, "b"), zoned(2, "c")];
        assert_eq!(ids(&categorize(&eps, true, false, "n1", Some("a")).cluster), [1, 2]);
        assert_eq!(ids(&categorize(&eps, true, false, "n1", None).cluster), [1, 2]);
    }

    #[test]
    fn node_hints_take_precedence_over_zone_hints() {
        let mut a = zoned(1, "a");
        a.node_hints.insert("n1".into());
        let mut b = zoned(2, "a");
        b.node_hints.insert("n2".into());
        let c = categorize(&[a, b], true, false, "n1", Some("a"));
        assert_eq!(ids(&c.cluster), [1]);
    }

    #[test]
    fn node_hints_fall_back_to_zone_hints_when_none_names_this_node() {
        let mut a = zoned(1, "a");
        a.node_hints.insert("n2".into());
        let mut b = zoned(2, "b");
        b.node_hints.insert("n3".into());
        let c = categorize(&[a, b], true, false, "n1", Some("a"));
        assert_eq!(ids(&c.cluster), [1]);
    }

    #[test]
    fn not_ready_endpoints_do_not_count_for_hints() {
        // The unready endpoint lacks hints, but only ready ones are checked.
        let mut unready = ep(3);
        unready.ready = false;
        let c = categorize(&[zoned(1, "a"), zoned(2, "b"), unready], true, false, "n1", Some("a"));
        assert_eq!(ids(&c.cluster), [1]);
    }

    #[test]
    fn another_nodes_set_is_its_ready_endpoints_else_its_terminating_ones() {
        let on = |n: u8, node: &str| {
            let mut e = ep(n);
            e.node = Some(node.into());
            e
        };
        let eps = [on(1, "b"), terminating(on(2, "b")), on(3, "c"), terminating(on(4, "d"))];
        assert_eq!(node_local(&eps, "b"), Some((vec![eps[0].addr], false)));
        assert_eq!(node_local(&eps, "c"), Some((vec![eps[2].addr], false)));
        assert_eq!(node_local(&eps, "d"), Some((vec![eps[3].addr], true)));
        assert_eq!(node_local(&eps, "e"), None);
    }
}
