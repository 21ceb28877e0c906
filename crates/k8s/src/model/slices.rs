//! `discovery.k8s.io/v1 EndpointSlice`s, validated.
//!
//! As kube-proxy's EndpointSliceCache: only the first address of an endpoint
//! counts; `ready` and `serving` default to true and `terminating` to false
//! when unset; FQDN slices are ignored.

use std::{collections::BTreeSet, net::IpAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{
    Family, ObjKey, Proto,
    problem::{Problem, ProblemKind},
    service::LABEL_HEADLESS,
};

pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addr: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    pub zone_hints: BTreeSet<String>,
    pub node_hints: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedSlice {
    pub key: ObjKey,
    /// The Service this slice belongs to.
    pub service: ObjKey,
    pub family: Family,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// Validates an EndpointSlice. `None` when the slice is not for this proxy
/// or unusable; every skipped part is reported.
pub fn parse_slice(slice: &EndpointSlice) -> (Option<ParsedSlice>, Vec<Problem>) {
    let mut problems = Vec::new();
    let meta = &slice.metadata;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
        problems.push(Problem::new(
            ProblemKind::MissingField,
            format!("EndpointSlice in namespace {namespace:?}"),
            "metadata.name",
            "missing",
        ));
        return (None, problems);
    };
    let key = ObjKey::new(namespace, name);
    let obj = format!("EndpointSlice {key}");
    let labels = meta.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        return (None, problems);
    }
    let Some(service) = labels.and_then(|l| l.get(LABEL_SERVICE_NAME)).filter(|s| !s.is_empty()) else {
        problems.push(Problem::new(
            ProblemKind::MissingField,
            &obj,
            format!("metadata.labels[{LABEL_SERVICE_NAME}]"),
            "missing: the slice belongs to no service",
        ));
        return (None, problems);
    };
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        "FQDN" => return (None, problems),
        other => {
            problems.push(Problem::new(
                ProblemKind::InvalidValue,
                &obj,
                "addressType",
                format!("{other:?} is not IPv4, IPv6 or FQDN"),
            ));
            return (None, problems);
        }
    };

    let mut ports: Vec<SlicePort> = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = |f: &str| format!("ports[{i}].{f}");
        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Proto::Tcp,
            "UDP" => Proto::Udp,
            "SCTP" => continue,
            other => {
                problems.push(Problem::new(
                    ProblemKind::UnsupportedProtocol,
                    &obj,
                    field("protocol"),
                    format!("{other:?} is not TCP, UDP or SCTP"),
                ));
                continue;
            }
        };
        let Some(number) = p.port else {
            problems.push(Problem::new(ProblemKind::MissingField, &obj, field("port"), "missing"));
            continue;
        };
        let Some(port) = u16::try_from(number).ok().filter(|p| *p != 0) else {
            problems.push(Problem::new(
                ProblemKind::InvalidPort,
                &obj,
                field("port"),
                format!("{number} is not in 1-65535"),
            ));
            continue;
        };
        let name = p.name.clone().unwrap_or_default();
        if ports.iter().any(|q| q.name == name && q.proto == proto) {
            problems.push(Problem::new(
                ProblemKind::DuplicatePort,
                &obj,
                field("name"),
                format!("port {name:?}/{proto} is listed twice"),
            ));
            continue;
        }
        ports.push(SlicePort { name, port, proto });
    }

    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let Some(text) = ep.addresses.first() else {
            continue;
        };
        let field = format!("endpoints[{i}].addresses[0]");
        let Some(addr) = text.trim().parse::<IpAddr>().ok() else {
            problems.push(Problem::new(
                ProblemKind::InvalidIp,
                &obj,
                field,
                format!("{text:?} is not an IP address"),
            ));
            continue;
        };
        if Family::of(&addr) != family {
            problems.push(Problem::new(
                ProblemKind::FamilyMismatch,
                &obj,
                field,
                format!("{addr} in a slice of addressType {}", slice.address_type),
            ));
            continue;
        }
        let cond = ep.conditions.as_ref();
        let ready = cond.and_then(|c| c.ready).unwrap_or(true);
        let serving = cond.and_then(|c| c.serving).unwrap_or(true);
        let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
        let hints = ep.hints.as_ref();
        let zone_hints =
            hints.and_then(|h| h.for_zones.as_ref()).into_iter().flatten().map(|z| z.name.clone()).collect();
        let node_hints =
            hints.and_then(|h| h.for_nodes.as_ref()).into_iter().flatten().map(|n| n.name.clone()).collect();
        endpoints.push(SliceEndpoint {
            addr,
            ready,
            serving,
            terminating,
            node_name: ep.node_name.clone(),
            zone_hints,
            node_hints,
        });
    }

    let service = ObjKey::new(key.namespace.clone(), service.clone());
    (Some(ParsedSlice { key, service, family, ports, endpoints }), problems)
}
