//! Node objects, decoded compactly: socklb watches every Node of the cluster
//! (NodePorts are served on every node's addresses), so it reads only their
//! name, `InternalIP` and `ExternalIP` addresses and zone label; every other
//! field (images, conditions, capacity...) is skipped while parsing and
//! never allocated.

use std::{borrow::Cow, fmt, net::IpAddr};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};

use crate::model::{Problem, nodes::NodeInfo, problem::ProblemKind};

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A Node, as much as socklb reads of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeObject {
    /// Name and resourceVersion only (what the watcher needs).
    pub metadata: ObjectMeta,
    /// `status.addresses` of type InternalIP or ExternalIP, as written.
    pub addresses: Vec<String>,
    pub zone: Option<String>,
}

impl kube_core::Resource for NodeObject {
    type DynamicType = ();
    type Scope = kube_core::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    name: Option<String>,
    resource_version: Option<String>,
    #[serde(default)]
    labels: Option<ZoneOnly>,
}

/// The labels map, of which only the zone is kept.
#[derive(Default)]
struct ZoneOnly(Option<String>);

impl<'de> Deserialize<'de> for ZoneOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ZoneOnly;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of labels")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ZoneOnly, A::Error> {
                let mut zone = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == ZONE_LABEL {
                        zone = map.next_value::<Option<String>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(ZoneOnly(zone))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize, Default)]
struct RawStatus {
    #[serde(default)]
    addresses: Option<Vec<RawAddress>>,
}

#[derive(Deserialize)]
struct RawAddress {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    address: Option<String>,
}

#[derive(Deserialize)]
struct RawNode {
    #[serde(default)]
    metadata: Option<RawMeta>,
    #[serde(default)]
    status: Option<RawStatus>,
}

impl<'de> Deserialize<'de> for NodeObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawNode::deserialize(d)?;
        let meta = raw.metadata.unwrap_or_default();
        let addresses = raw
            .status
            .and_then(|s| s.addresses)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| matches!(a.kind.as_deref(), Some("InternalIP" | "ExternalIP")))
            .filter_map(|a| a.address)
            .collect();
        Ok(Self {
            metadata: ObjectMeta {
                name: meta.name,
                resource_version: meta.resource_version,
                ..Default::default()
            },
            addresses,
            zone: meta.labels.and_then(|l| l.0),
        })
    }
}

/// A Node, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestedNode {
    pub name: String,
    pub info: NodeInfo,
    pub problems: Vec<Problem>,
}

/// Validates a Node: addresses that are not IPs are skipped and reported.
pub fn ingest_node(node: &NodeObject) -> Option<IngestedNode> {
    let name = node.metadata.name.clone().filter(|n| !n.is_empty())?;
    let mut problems = Vec::new();
    let mut addresses = Vec::new();
    for (i, text) in node.addresses.iter().enumerate() {
        match text.trim().parse::<IpAddr>() {
            Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
            Ok(_) => {}
            Err(_) => problems.push(Problem::new(
                ProblemKind::InvalidIp,
                format!("Node {name}"),
                format!("status.addresses[{i}].address"),
                format!("{text:?} is not an IP address"),
            )),
        }
    }
    Some(IngestedNode { name, info: NodeInfo { addresses, zone: node.zone.clone() }, problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fields_socklb_uses_are_kept() {
        let json = r#"{"apiVersion":"v1","kind":"Node",
            "metadata":{"name":"node-b","resourceVersion":"42","uid":"u","labels":{"kubernetes.io/os":"linux",
                "topology.kubernetes.io/zone":"zone-2"},"annotations":{"a":"b"},"managedFields":[{"x":1}]},
            "spec":{"podCIDR":"10.244.1.0/24","taints":[{"key":"k","effect":"NoSchedule"}]},
            "status":{"addresses":[{"type":"InternalIP","address":"192.168.1.2"},{"type":"Hostname","address":"node-b"},
                {"type":"ExternalIP","address":"203.0.113.2"},{"type":"InternalIP","address":"fd00::2"}],
                "images":[{"names":["a"],"sizeBytes":1}],"conditions":[{"type":"Ready","status":"True"}]}}"#;
        let n: NodeObject = serde_json::from_str(json).expect("node");
        assert_eq!(n.metadata.name.as_deref(), Some("node-b"));
        assert_eq!(n.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(n.metadata.labels, None, "labels are not kept");
        assert_eq!(n.zone.as_deref(), Some("zone-2"));
        assert_eq!(n.addresses, ["192.168.1.2", "203.0.113.2", "fd00::2"]);
        let i = ingest_node(&n).expect("named");
        assert_eq!(i.info.addresses.len(), 3);
        assert!(i.problems.is_empty());
    }

    #[test]
    fn a_bad_address_is_reported_by_field_and_the_rest_kept() {
        let json = r#"{"metadata":{"name":"n","labels":null},"status":{"addresses":[
            {"type":"InternalIP","address":"not-an-ip"},{"type":"InternalIP","address":"10.0.0.9"}]}}"#;
        let n: NodeObject = serde_json::from_str(json).expect("node");
        let i = ingest_node(&n).expect("named");
        assert_eq!(i.info.addresses, ["10.0.0.9".parse::<IpAddr>().expect("ip")]);
        assert_eq!(i.problems[0].field, "status.addresses[0].address");
        assert!(ingest_node(&NodeObject::default()).is_none(), "a node without a name is skipped");
    }
}
