//! `discovery.k8s.io/v1 EndpointSlice`s, validated.
//!
//! As kube-proxy's EndpointSliceCache: only the first address of an endpoint
//! counts; `ready` and `serving` default to true and `terminating` to false
//! when unset; FQDN slices are ignored.

use std::{net::IpAddr, sync::Arc};

use crate::decode::objects::EndpointSlice;

use super::{
    Family, ObjKey, Proto,
    names::Names,
    problem::{Problem, ProblemKind},
    service::LABEL_HEADLESS,
};

pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Arc<str>,
    pub port: u16,
    pub proto: Proto,
}

/// One endpoint, compactly (24 bytes: a million fit in 24 MB): the node is
/// a [`Names`] id; topology hints, which few clusters use, are kept by the
/// slice beside its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    addr: [u8; 16],
    /// The [`Names::node_id`] of `nodeName`; 0: none.
    pub node: u32,
    conditions: u8,
}

/// `hints.forZones` and `hints.forNodes` of an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub zones: Box<[Arc<str>]>,
    pub nodes: Box<[Arc<str>]>,
}

const READY: u8 = 1;
const SERVING: u8 = 2;
const TERMINATING: u8 = 4;
const V6: u8 = 8;

impl SliceEndpoint {
    pub fn new(addr: IpAddr, ready: bool, serving: bool, terminating: bool) -> Self {
        let (bytes, v6) = match addr {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (b, 0)
            }
            IpAddr::V6(a) => (a.octets(), V6),
        };
        let conditions = (if ready { READY } else { 0 })
            | (if serving { SERVING } else { 0 })
            | (if terminating { TERMINATING } else { 0 })
            | v6;
        Self { addr: bytes, node: 0, conditions }
    }

    pub fn addr(&self) -> IpAddr {
        if self.conditions & V6 != 0 {
            IpAddr::from(self.addr)
        } else {
            IpAddr::from([self.addr[0], self.addr[1], self.addr[2], self.addr[3]])
        }
    }

    pub fn ready(&self) -> bool {
        self.conditions & READY != 0
    }

    pub fn serving(&self) -> bool {
        self.conditions & SERVING != 0
    }

    pub fn terminating(&self) -> bool {
        self.conditions & TERMINATING != 0
    }
}

/// An EndpointSlice, validated. Its name and its Service's are kept by the
/// store, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedSlice {
    pub family: Family,
    pub ports: Box<[SlicePort]>,
    pub endpoints: Box<[SliceEndpoint]>,
    /// The hints of each endpoint, when any endpoint has some.
    pub hints: Option<Box<[Hints]>>,
}

impl ParsedSlice {
    /// The hints of endpoint `i`.
    pub fn hints_of(&self, i: usize) -> Option<&Hints> {
        self.hints.as_ref()?.get(i)
    }
}

const _: () = assert!(size_of::<SliceEndpoint>() == 24);

/// Validates an EndpointSlice. `None` when the slice is not for this proxy
/// or unusable; every skipped part is reported. Names go through `names`,
/// so that a node's name is one allocation however many endpoints it has.
pub fn parse_slice(slice: &EndpointSlice, names: &mut Names) -> (Option<ParsedSlice>, Vec<Problem>) {
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
        let name = names.intern(p.name.as_deref().unwrap_or_default());
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
    let mut hints: Vec<Hints> = Vec::with_capacity(slice.endpoints.len());
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
        let mut e = SliceEndpoint::new(addr, ready, serving, terminating);
        e.node = ep.node_name.as_deref().map_or(0, |n| names.node_id(n));
        let mut list = |v: Option<&Vec<crate::decode::objects::ForName>>| -> Box<[Arc<str>]> {
            v.into_iter().flatten().map(|z| names.intern(&z.name)).collect()
        };
        let h = ep.hints.as_ref();
        let hint = Hints {
            zones: list(h.and_then(|h| h.for_zones.as_ref())),
            nodes: list(h.and_then(|h| h.for_nodes.as_ref())),
        };
        endpoints.push(e);
        hints.push(hint);
    }

    let _ = service;
    let any_hints = hints.iter().any(|h| !h.zones.is_empty() || !h.nodes.is_empty());
    let hints = any_hints.then(|| hints.into_boxed_slice());
    (Some(ParsedSlice { family, ports: ports.into(), endpoints: endpoints.into(), hints }), problems)
}

/// The Service a slice belongs to (its `kubernetes.io/service-name` label).
pub fn slice_service(slice: &EndpointSlice) -> Option<ObjKey> {
    let name = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    (!name.is_empty()).then(|| {
        ObjKey::new(slice.metadata.namespace.clone().unwrap_or_else(|| "default".into()), name.clone())
    })
}
