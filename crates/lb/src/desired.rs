//! A Service's model as the maps will hold it: its backend sets with their
//! backends in slot order and the hashes the kernel keeps, its frontends,
//! NodePorts and other nodes' sets.

use std::net::SocketAddr;

use socklb_common::{
    BackendValue, FAMILY_V4, FAMILY_V6, FrontendKey, MAX_BACKENDS_PER_SET, NodePortKey, addr_from_ip,
    nodeport_flags, set_flags,
};
use socklb_k8s::model::{Family, ObjKey, Policy, Proto, ServiceModel, SetId};

use crate::{
    hashing::{Fnv, content_hash},
    ids::NodeIds,
};

/// A set's policy, with other nodes by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKey {
    Cluster,
    Local,
    Node(u32),
}

/// A set's identity within its Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetKey {
    pub port: u16,
    pub proto: Proto,
    pub family: Family,
    pub policy: PolicyKey,
}

impl SetKey {
    pub fn of(id: &SetId, nodes: &mut NodeIds) -> Self {
        let policy = match &id.policy {
            Policy::Cluster => PolicyKey::Cluster,
            Policy::Local => PolicyKey::Local,
            Policy::Node(name) => PolicyKey::Node(nodes.id(name)),
        };
        Self { port: id.port, proto: id.proto, family: id.family, policy }
    }
}

/// The hash of a set's identity that the kernel keeps (`SetEntry::key_hash`).
pub fn key_hash(service: &ObjKey, id: &SetId) -> u64 {
    Fnv::default()
        .str(&service.namespace)
        .str(&service.name)
        .u32(u32::from(id.port))
        .u32(u32::from(id.proto.number()))
        .str(&id.family.to_string())
        .str(&id.policy.to_string())
        .finish()
}

/// One backend set as it should be programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredSet {
    pub key: SetKey,
    pub key_hash: u64,
    /// `set_flags` (without `PRESENT`).
    pub flags: u16,
    pub affinity_timeout_secs: u32,
    /// In slot order.
    pub backends: Vec<BackendValue>,
    pub content_hash: u64,
    /// Endpoints the slices list that are not in the set (not ready): a
    /// backend leaves (and its sockets are closed) only when it is not
    /// listed at all.
    pub extra_known: Box<[SocketAddr]>,
}

impl DesiredSet {
    pub fn membership(&self) -> bool {
        self.flags & set_flags::MEMBERSHIP != 0
    }
}

/// A frontend of the Service, by the key of the set it reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    pub key: FrontendKey,
    pub set: SetKey,
    pub flags: u16,
}

/// A NodePort of the Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredNodePort {
    pub key: NodePortKey,
    pub set: SetKey,
    pub flags: u16,
    /// For `externalTrafficPolicy: Local`: each other node's set.
    pub node_sets: Vec<(u32, SetKey)>,
}

/// Everything one Service wants programmed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredService {
    pub sets: Vec<DesiredSet>,
    pub frontends: Vec<DesiredFrontend>,
    pub node_ports: Vec<DesiredNodePort>,
}

impl DesiredService {
    pub fn from_model(service: &ObjKey, model: &ServiceModel, nodes: &mut NodeIds) -> Self {
        let mut out = Self::default();
        for set in &model.sets {
            let proto = set.id.proto.number();
            let backends: Vec<BackendValue> = set
                .backends
                .iter()
                .take(MAX_BACKENDS_PER_SET)
                .map(|a| BackendValue::new(addr_from_ip(a.ip()), a.port().to_be(), proto))
                .collect();
            let extra_known: Box<[SocketAddr]> =
                set.known.iter().filter(|a| set.backends.binary_search(a).is_err()).copied().collect();
            out.sets.push(DesiredSet {
                key: SetKey::of(&set.id, nodes),
                key_hash: key_hash(service, &set.id),
                flags: set.flags,
                affinity_timeout_secs: set.affinity_timeout_secs,
                content_hash: content_hash(&backends),
                backends,
                extra_known,
            });
        }
        for fe in &model.frontends {
            out.frontends.push(DesiredFrontend {
                key: FrontendKey {
                    addr: addr_from_ip(fe.addr.ip()),
                    port: fe.addr.port().to_be(),
                    proto: fe.proto.number(),
                    scope: fe.scope,
                },
                set: SetKey::of(&fe.set, nodes),
                flags: fe.kind.flag(),
            });
        }
        for np in &model.node_ports {
            let family = match np.family {
                Family::V4 => FAMILY_V4,
                Family::V6 => FAMILY_V6,
            };
            out.node_ports.push(DesiredNodePort {
                key: NodePortKey { port: np.port.to_be(), proto: np.proto.number(), family },
                set: SetKey::of(&np.set, nodes),
                flags: if np.external_local { nodeport_flags::EXTERNAL_LOCAL } else { 0 },
                node_sets: np
                    .node_sets
                    .iter()
                    .map(|(n, set)| (nodes.id(n), SetKey::of(set, nodes)))
                    .collect(),
            });
        }
        out
    }

    /// Slots all of its sets take.
    pub fn slots(&self) -> u64 {
        self.sets.iter().map(|s| s.backends.len() as u64).sum()
    }

    pub fn members(&self) -> u64 {
        self.sets.iter().filter(|s| s.membership()).map(|s| s.backends.len() as u64).sum()
    }
}
