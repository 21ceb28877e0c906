//! Services and EndpointSlices, decoded compactly: only the fields socklb
//! reads are kept; everything else (managedFields, most annotations and
//! labels, selectors, status conditions...) is skipped while parsing and
//! never allocated. The field names follow the API (and k8s-openapi), so
//! validation reads them as it would the full objects.
//!
//! The same types serve the watch (they implement `kube::Resource`) and the
//! files.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};

use crate::{
    model::{
        service::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME},
        slices::LABEL_SERVICE_NAME,
    },
    store::ANNOTATION_TRIGGER_TIME,
};

/// The labels and annotations socklb reads; any other is dropped.
const KEPT: [&str; 4] =
    [LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, LABEL_HEADLESS, ANNOTATION_TRIGGER_TIME];

/// A string map of which only the keys socklb reads are kept.
struct Kept(Option<BTreeMap<String, String>>);

impl<'de> Deserialize<'de> for Kept {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Kept;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_unit<E>(self) -> Result<Kept, E> {
                Ok(Kept(None))
            }
            fn visit_none<E>(self) -> Result<Kept, E> {
                Ok(Kept(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kept, D::Error> {
                d.deserialize_map(self)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kept, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if KEPT.contains(&key.as_ref()) {
                        let value: Option<String> = map.next_value()?;
                        out.insert(key.into_owned(), value.unwrap_or_default());
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Kept((!out.is_empty()).then_some(out)))
            }
        }
        d.deserialize_option(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    labels: Option<Kept>,
    #[serde(default)]
    annotations: Option<Kept>,
}

/// Object metadata with only name, namespace, resourceVersion and the
/// labels and annotations socklb reads.
fn compact_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let raw = Option::<RawMeta>::deserialize(d)?.unwrap_or_default();
    Ok(ObjectMeta {
        name: raw.name,
        namespace: raw.namespace,
        resource_version: raw.resource_version,
        labels: raw.labels.and_then(|l| l.0),
        annotations: raw.annotations.and_then(|a| a.0),
        ..ObjectMeta::default()
    })
}

macro_rules! resource {
    ($ty:ty, $kind:literal, $group:literal, $version:literal, $plural:literal) => {
        impl kube_core::Resource for $ty {
            type DynamicType = ();
            type Scope = kube_core::NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                $group.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A `v1 Service`, as much as socklb reads of it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Service {
    #[serde(default, deserialize_with = "compact_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<ServiceSpec>,
    #[serde(default)]
    pub status: Option<ServiceStatus>,
}

resource!(Service, "Service", "", "v1", "services");

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ServiceSpec {
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    #[serde(rename = "clusterIP", default)]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs", default)]
    pub cluster_ips: Option<Vec<String>>,
    #[serde(rename = "ipFamilies", default)]
    pub ip_families: Option<Vec<String>>,
    #[serde(default)]
    pub ports: Option<Vec<ServicePort>>,
    #[serde(rename = "externalIPs", default)]
    pub external_ips: Option<Vec<String>>,
    #[serde(rename = "internalTrafficPolicy", default)]
    pub internal_traffic_policy: Option<String>,
    #[serde(rename = "externalTrafficPolicy", default)]
    pub external_traffic_policy: Option<String>,
    #[serde(rename = "sessionAffinity", default)]
    pub session_affinity: Option<String>,
    #[serde(rename = "sessionAffinityConfig", default)]
    pub session_affinity_config: Option<SessionAffinityConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    /// Required by the API; a missing one is 0 here, which validation
    /// reports.
    #[serde(default)]
    pub port: i32,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(rename = "nodePort", default)]
    pub node_port: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP", default)]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ClientIpConfig {
    #[serde(rename = "timeoutSeconds", default)]
    pub timeout_seconds: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ServiceStatus {
    #[serde(rename = "loadBalancer", default)]
    pub load_balancer: Option<LoadBalancerStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct LoadBalancerStatus {
    #[serde(default)]
    pub ingress: Option<Vec<LoadBalancerIngress>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct LoadBalancerIngress {
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(rename = "ipMode", default)]
    pub ip_mode: Option<String>,
}

/// A `discovery.k8s.io/v1 EndpointSlice`, as much as socklb reads of it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct EndpointSlice {
    #[serde(default, deserialize_with = "compact_meta")]
    pub metadata: ObjectMeta,
    /// Required by the API; a missing one is "" here, which validation
    /// reports.
    #[serde(rename = "addressType", default)]
    pub address_type: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Option<Vec<EndpointPort>>,
}

resource!(EndpointSlice, "EndpointSlice", "discovery.k8s.io", "v1", "endpointslices");

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Endpoint {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
    #[serde(rename = "nodeName", default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub hints: Option<EndpointHints>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct EndpointConditions {
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub serving: Option<bool>,
    #[serde(default)]
    pub terminating: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct EndpointHints {
    #[serde(rename = "forZones", default)]
    pub for_zones: Option<Vec<ForName>>,
    #[serde(rename = "forNodes", default)]
    pub for_nodes: Option<Vec<ForName>>,
}

/// `forZones[]` and `forNodes[]` items.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ForName {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct EndpointPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: Option<i32>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fields_socklb_reads_are_kept() {
        let json = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"prod",
            "resourceVersion":"7","uid":"u","labels":{"app":"web","service.kubernetes.io/headless":""},
            "annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{...}"},
            "managedFields":[{"manager":"kubectl","fieldsV1":{"f:spec":{}}}]},
            "spec":{"type":"NodePort","clusterIP":"10.96.0.1","clusterIPs":["10.96.0.1"],
            "selector":{"app":"web"},"ports":[{"name":"http","port":80,"targetPort":8080,"nodePort":30080}],
            "sessionAffinity":"None"},"status":{"loadBalancer":{}}}"#;
        let s: Service = serde_json::from_str(json).expect("service");
        assert_eq!(s.metadata.name.as_deref(), Some("web"));
        assert_eq!(s.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(s.metadata.labels.as_ref().map(|l| l.len()), Some(1), "only the headless label");
        assert_eq!(s.metadata.annotations, None);
        assert!(s.metadata.managed_fields.is_none() && s.metadata.uid.is_none());
        let spec = s.spec.expect("spec");
        assert_eq!(spec.ports.as_ref().map(|p| p[0].node_port), Some(Some(30080)));

        let json = r#"{"metadata":{"name":"web-1","labels":{"kubernetes.io/service-name":"web",
            "endpointslice.kubernetes.io/managed-by":"x"},"annotations":{
            "endpoints.kubernetes.io/last-change-trigger-time":"2024-01-01T00:00:00Z"}},
            "addressType":"IPv4","endpoints":[{"addresses":["10.0.0.1"],"conditions":{"ready":true},
            "nodeName":"n1","targetRef":{"kind":"Pod","name":"p"},"zone":"z1","hints":{"forZones":[{"name":"z1"}]}}],
            "ports":[{"name":"http","port":8080,"protocol":"TCP"}]}"#;
        let e: EndpointSlice = serde_json::from_str(json).expect("slice");
        assert_eq!(e.metadata.labels.as_ref().map(|l| l.len()), Some(1));
        assert_eq!(e.metadata.annotations.as_ref().map(|l| l.len()), Some(1));
        assert_eq!(e.endpoints[0].node_name.as_deref(), Some("n1"));
        assert_eq!(e.endpoints[0].hints.as_ref().and_then(|h| h.for_zones.as_ref()).map(Vec::len), Some(1));
    }

    #[test]
    fn nulls_where_lists_go_are_empty_lists() {
        let e: EndpointSlice =
            serde_json::from_str(r#"{"metadata":null,"addressType":"IPv4","endpoints":null}"#)
                .expect("slice");
        assert!(e.endpoints.is_empty());
    }
}
