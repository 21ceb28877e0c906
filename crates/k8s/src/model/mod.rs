//! Kubernetes objects to frontends and backend sets, with kube-proxy's
//! semantics. Everything here is pure: no I/O, no clock, no kernel.
//!
//! * [`service`] validates a `v1 Service` into the parts that matter.
//! * [`slices`] validates `discovery.k8s.io/v1 EndpointSlice`s.
//! * [`categorize`] is kube-proxy's `CategorizeEndpoints`.
//! * [`build`] combines them into one [`ServiceModel`] per Service.

pub mod build;
pub mod categorize;
pub mod names;
pub mod nodes;
pub mod problem;
pub mod service;
pub mod slices;

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
};

pub use build::build_service;
pub use problem::Problem;

/// An object's namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => socklb_common::PROTO_TCP,
            Self::Udp => socklb_common::PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            socklb_common::PROTO_TCP => Some(Self::Tcp),
            socklb_common::PROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// Which traffic policy selected a backend set's endpoints.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    Cluster,
    Local,
    /// The endpoints of another node, for a NodePort with
    /// `externalTrafficPolicy: Local` reached on that node's address.
    Node(String),
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cluster => f.write_str("cluster"),
            Self::Local => f.write_str("local"),
            Self::Node(name) => write!(f, "node:{name}"),
        }
    }
}

/// The identity of a backend set: one service port, one family, one policy.
/// Its text form is stored in the `SVC_NAMES` map, which is how a restarted
/// agent finds the ids it used before.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetId {
    pub service: ObjKey,
    pub port: u16,
    pub proto: Proto,
    pub family: Family,
    pub policy: Policy,
}

impl fmt::Display for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{} {} {}", self.service, self.port, self.proto, self.family, self.policy)
    }
}

/// One backend set: what a connect to any of its frontends may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSet {
    pub id: SetId,
    /// The service port's name (for display and metrics labels).
    pub port_name: String,
    /// Sorted, without duplicates.
    pub backends: Vec<SocketAddr>,
    /// The subset of `backends` on this node.
    pub local: BTreeSet<SocketAddr>,
    /// Every endpoint the EndpointSlices list for this port and family,
    /// ready or not. A backend leaves the service (and its sockets are
    /// destroyed) only when it is no longer here.
    /// Sorted, without duplicates (a Vec: it is as large as the slices).
    pub known: Vec<SocketAddr>,
    /// `socklb_common::set_flags`.
    pub flags: u16,
    pub affinity_timeout_secs: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    pub fn flag(self) -> u16 {
        use socklb_common::frontend_flags as f;
        match self {
            Self::ClusterIp => f::CLUSTER_IP,
            Self::NodePort => f::NODE_PORT,
            Self::ExternalIp => f::EXTERNAL_IP,
            Self::LoadBalancer => f::LOAD_BALANCER,
        }
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::ExternalIp => "ExternalIP",
            Self::LoadBalancer => "LoadBalancer",
        })
    }
}

/// An address a socket may connect or send to, and the set it reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub addr: SocketAddr,
    pub proto: Proto,
    /// `socklb_common::SCOPE_INTERNAL` or `SCOPE_EXTERNAL`.
    pub scope: u8,
    pub kind: FrontendKind,
    pub set: SetId,
}

/// A NodePort of one family: served on every node's NodePort addresses
/// (see `nodes`), not expanded per address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePortFrontend {
    pub port: u16,
    pub proto: Proto,
    pub family: Family,
    /// What this node's sockets get on any node's address with
    /// `externalTrafficPolicy: Cluster`, and on this node's own addresses
    /// always (kube-proxy's short-circuit of local traffic).
    pub set: SetId,
    /// `externalTrafficPolicy: Local`: on another node's address, only that
    /// node's endpoints; a node without endpoints refuses.
    pub external_local: bool,
    /// For `external_local`: the set of each other node that has endpoints.
    pub node_sets: Vec<(String, SetId)>,
}

/// Everything one Service contributes to the datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceModel {
    pub sets: Vec<BackendSet>,
    pub frontends: Vec<Frontend>,
    pub node_ports: Vec<NodePortFrontend>,
}

/// What the model needs to know about this node and this proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    pub node_name: String,
    /// The `topology.kubernetes.io/zone` label of this node's Node object.
    pub zone: Option<String>,
    /// `--nodeport-addresses`: which addresses of the nodes serve NodePorts.
    pub nodeport_addresses: nodes::NodePortAddresses,
    /// This node's addresses (its interfaces), followed live.
    pub host_addresses: Vec<IpAddr>,
    /// kube-proxy skips services labelled `service.kubernetes.io/service-proxy-name`.
    /// With a name set here, socklb serves exactly the services labelled with
    /// that name instead (a gradual migration next to kube-proxy).
    pub service_proxy_name: Option<String>,
}

/// The parts of a set's identity text (as stored in `SVC_NAMES`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetName<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// "80/TCP".
    pub port: &'a str,
    pub family: &'a str,
    pub policy: &'a str,
}

impl<'a> SetName<'a> {
    /// Parses `"namespace/name:port/PROTO family policy"`.
    pub fn parse(text: &'a str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let (service, port) = words.next()?.rsplit_once(':')?;
        let (namespace, name) = service.split_once('/')?;
        Some(Self { namespace, name, port, family: words.next()?, policy: words.next()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_ids_print_and_parse_back() {
        let id = SetId {
            service: ObjKey::new("prod", "web"),
            port: 443,
            proto: Proto::Tcp,
            family: Family::V6,
            policy: Policy::Local,
        };
        let text = id.to_string();
        assert_eq!(text, "prod/web:443/TCP ipv6 local");
        let parsed = SetName::parse(&text).expect("parses");
        assert_eq!(
            parsed,
            SetName { namespace: "prod", name: "web", port: "443/TCP", family: "ipv6", policy: "local" }
        );
    }
}

#[cfg(test)]
mod fixture_tests;
