//! Which addresses of which nodes serve NodePorts.
//!
//! Without kube-proxy, a pod that connects to another node's
//! `address:NodePort` has nobody to translate it (nothing per-packet runs
//! on the remote node), so socklb translates NodePorts on every node's
//! addresses, from the Node objects' `InternalIP` and `ExternalIP`. This
//! node's own addresses come from its interfaces (followed live), or, with
//! `--nodeport-addresses primary`, from its Node object as kube-proxy's
//! newer default. `--nodeport-addresses` CIDRs filter both.

use std::{collections::BTreeMap, fmt, net::IpAddr, str::FromStr};

use super::NodeContext;
use crate::cidr::{self, Cidr, CidrError};

/// `--nodeport-addresses`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every address of every node (this node's interfaces, loopback
    /// included, as kube-proxy without the flag).
    #[default]
    All,
    /// Addresses inside these CIDRs. A single address (a /32 or /128) is
    /// taken as this node's even if no interface has it.
    Cidrs(Vec<Cidr>),
    /// The nodes' addresses from their Node objects only (kube-proxy's
    /// `primary`).
    Primary,
}

impl NodePortAddresses {
    /// Parses the flag's comma-separated items: `primary`, or CIDRs and
    /// addresses; nothing (an empty ConfigMap value) means [`Self::All`].
    pub fn parse(items: &[String]) -> Result<Self, CidrError> {
        let items: Vec<&str> = items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
        if items.is_empty() {
            return Ok(Self::All);
        }
        if items.iter().any(|s| s.eq_ignore_ascii_case("primary")) {
            if items.len() > 1 {
                return Err(CidrError {
                    text: items.join(","),
                    why: "primary cannot be combined with CIDRs",
                });
            }
            return Ok(Self::Primary);
        }
        items.iter().map(|s| Cidr::from_str(s)).collect::<Result<_, _>>().map(Self::Cidrs)
    }
}

impl fmt::Display for NodePortAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Primary => f.write_str("primary"),
            Self::Cidrs(c) => {
                let parts: Vec<String> = c.iter().map(|c| format!("{}/{}", c.addr, c.prefix)).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// What socklb keeps of a Node object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `status.addresses` of type InternalIP and ExternalIP.
    pub addresses: Vec<IpAddr>,
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
}

/// Whose NodePort address an address is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    pub node: String,
    pub this_node: bool,
    /// Only sockets in the host network namespace use it: a pod's loopback
    /// is its own.
    pub loopback: bool,
}

/// Every NodePort address of every node. An address both this node and
/// another claim (a VIP that moved) is this node's.
pub fn nodeport_addresses(
    ctx: &NodeContext,
    nodes: &BTreeMap<String, NodeInfo>,
) -> BTreeMap<IpAddr, NodeAddress> {
    let mut out = BTreeMap::new();
    let entry = |node: &str, this_node: bool, ip: IpAddr| {
        (ip, NodeAddress { node: node.to_string(), this_node, loopback: ip.is_loopback() })
    };
    for (name, info) in nodes.iter().filter(|(n, _)| **n != ctx.node_name) {
        let selected = info.addresses.iter().filter(|ip| match &ctx.nodeport_addresses {
            NodePortAddresses::All | NodePortAddresses::Primary => true,
            NodePortAddresses::Cidrs(cidrs) => cidrs.iter().any(|c| c.contains(ip)),
        });
        out.extend(selected.map(|ip| entry(name, false, *ip)));
    }
    let mine: Vec<IpAddr> = match &ctx.nodeport_addresses {
        NodePortAddresses::All => ctx.host_addresses.clone(),
        NodePortAddresses::Cidrs(cidrs) => cidr::nodeport_addresses(cidrs, &ctx.host_addresses),
        NodePortAddresses::Primary => {
            nodes.get(&ctx.node_name).map(|n| n.addresses.clone()).unwrap_or_default()
        }
    };
    out.extend(mine.into_iter().map(|ip| entry(&ctx.node_name, true, ip)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn nodes() -> BTreeMap<String, NodeInfo> {
        BTreeMap::from([
            ("node-a".into(), NodeInfo { addresses: vec![ip("192.168.1.1"), ip("203.0.113.1")], zone: None }),
            ("node-b".into(), NodeInfo { addresses: vec![ip("192.168.1.2"), ip("fd00::2")], zone: None }),
            // node-c claims an address that moved to this node.
            ("node-c".into(), NodeInfo { addresses: vec![ip("192.168.1.9")], zone: None }),
        ])
    }

    fn ctx(mode: NodePortAddresses) -> NodeContext {
        NodeContext {
            node_name: "node-a".into(),
            nodeport_addresses: mode,
            host_addresses: vec![ip("127.0.0.1"), ip("192.168.1.1"), ip("192.168.1.9"), ip("10.0.0.1")],
            ..Default::default()
        }
    }

    #[test]
    fn by_default_this_nodes_interfaces_and_every_other_nodes_addresses() {
        let got = nodeport_addresses(&ctx(NodePortAddresses::All), &nodes());
        let mine: Vec<&IpAddr> = got.iter().filter(|(_, a)| a.this_node).map(|(ip, _)| ip).collect();
        assert_eq!(mine, [&ip("10.0.0.1"), &ip("127.0.0.1"), &ip("192.168.1.1"), &ip("192.168.1.9")]);
        assert!(got[&ip("127.0.0.1")].loopback);
        assert_eq!(got[&ip("fd00::2")].node, "node-b");
        assert_eq!(got[&ip("192.168.1.9")].node, "node-a", "this node wins a shared address");
        // node-a's own Node addresses that no interface has are not served.
        assert!(!got.contains_key(&ip("203.0.113.1")));
    }

    #[test]
    fn primary_uses_the_node_objects_only() {
        let got = nodeport_addresses(&ctx(NodePortAddresses::Primary), &nodes());
        let mine: Vec<&IpAddr> = got.iter().filter(|(_, a)| a.this_node).map(|(ip, _)| ip).collect();
        assert_eq!(mine, [&ip("192.168.1.1"), &ip("203.0.113.1")]);
        assert!(got.contains_key(&ip("192.168.1.2")));
        assert!(!got.contains_key(&ip("127.0.0.1")));
    }

    #[test]
    fn cidrs_filter_every_node() {
        let mode = NodePortAddresses::parse(&["192.168.0.0/16".into(), "".into()]).expect("cidrs");
        let got = nodeport_addresses(&ctx(mode), &nodes());
        assert!(got.keys().all(|ip| ip.to_string().starts_with("192.168.")), "{got:?}");
        assert!(got.contains_key(&ip("192.168.1.2")));
    }

    #[test]
    fn the_flag_parses() {
        assert_eq!(NodePortAddresses::parse(&[]).expect("empty"), NodePortAddresses::All);
        assert_eq!(NodePortAddresses::parse(&[" primary ".into()]).expect("p"), NodePortAddresses::Primary);
        assert!(NodePortAddresses::parse(&["primary".into(), "10.0.0.0/8".into()]).is_err());
        assert!(NodePortAddresses::parse(&["nonsense".into()]).is_err());
    }
}
