//! A `v1 Service`, validated into what the datapath needs.
//!
//! Follows kube-proxy: ExternalName and headless services are not proxied
//! (`ShouldSkipService`); each ClusterIP of `clusterIPs` is served for its
//! own family; SCTP ports are ignored; load-balancer ingress IPs count only
//! when `ipMode` is `VIP` or unset.

use std::{net::IpAddr, sync::Arc};

use crate::decode::objects::Service;

use super::{
    Family, ObjKey, Proto,
    names::Names,
    problem::{Problem, ProblemKind},
};

pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// kube-proxy's default and maximum `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT_SECS: u32 = 86_400;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortSpec {
    /// Its index in `spec.ports`, for problems that name the field.
    pub index: u16,
    pub name: Arc<str>,
    pub port: u16,
    pub proto: Proto,
    /// Only for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
}

/// A Service, validated; its name is kept by the store, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedService {
    /// One ClusterIP per family, in family order.
    pub cluster_ips: Box<[(Family, IpAddr)]>,
    pub ports: Box<[ServicePortSpec]>,
    pub external_ips: Box<[IpAddr]>,
    pub load_balancer_ips: Box<[IpAddr]>,
    pub internal_local: bool,
    pub external_local: bool,
    /// `Some(timeout)` for `sessionAffinity: ClientIP`.
    pub affinity_timeout_secs: Option<u32>,
}

impl ParsedService {
    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        self.cluster_ips.iter().map(|(f, _)| *f)
    }

    /// kube-proxy's `ExternallyAccessible`.
    pub fn externally_accessible(&self, port: &ServicePortSpec) -> bool {
        port.node_port.is_some() || !self.external_ips.is_empty() || !self.load_balancer_ips.is_empty()
    }
}

/// What to do with a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceOutcome {
    Proxied(ParsedService),
    /// Not for this proxy (headless, ExternalName, another proxy's label), or
    /// nothing usable was left after validation.
    NotProxied(&'static str),
}

fn object(key: &ObjKey) -> String {
    format!("Service {key}")
}

fn port_u16(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}

/// An external or load-balancer address, if it parses and the Service has
/// a ClusterIP of its family; otherwise a problem naming `field`.
fn served_ip(
    text: &str,
    families: &[Family],
    obj: &str,
    field: String,
    problems: &mut Vec<Problem>,
) -> Option<IpAddr> {
    match parse_ip(text) {
        Some(ip) if families.contains(&Family::of(&ip)) => Some(ip),
        Some(ip) => {
            problems.push(Problem::new(
                ProblemKind::FamilyMismatch,
                obj,
                field,
                format!("{ip} has no ClusterIP of its family"),
            ));
            None
        }
        None => {
            problems.push(Problem::new(
                ProblemKind::InvalidIp,
                obj,
                field,
                format!("{text:?} is not an IP address"),
            ));
            None
        }
    }
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.trim().parse().ok()
}

/// Validates a Service; every skipped part is reported as a [`Problem`].
pub fn parse_service(
    svc: &Service,
    service_proxy_name: Option<&str>,
    names: &mut Names,
) -> (ServiceOutcome, Vec<Problem>) {
    let mut problems = Vec::new();
    let meta = &svc.metadata;
    let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
        let ns = meta.namespace.clone().unwrap_or_default();
        problems.push(Problem::new(
            ProblemKind::MissingField,
            format!("Service in namespace {ns:?}"),
            "metadata.name",
            "missing",
        ));
        return (ServiceOutcome::NotProxied("no name"), problems);
    };
    let key = ObjKey::new(meta.namespace.clone().unwrap_or_else(|| "default".into()), name);
    let obj = object(&key);

    let labels = meta.labels.as_ref();
    let proxy_label = labels.and_then(|l| l.get(LABEL_SERVICE_PROXY_NAME));
    match (service_proxy_name, proxy_label) {
        (None, Some(_)) => {
            return (ServiceOutcome::NotProxied("service-proxy-name label"), problems);
        }
        (Some(ours), theirs) if theirs.map(String::as_str) != Some(ours) => {
            return (ServiceOutcome::NotProxied("not labelled for this proxy"), problems);
        }
        _ => {}
    }
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        return (ServiceOutcome::NotProxied("headless"), problems);
    }
    let Some(spec) = &svc.spec else {
        problems.push(Problem::new(ProblemKind::MissingField, &obj, "spec", "missing"));
        return (ServiceOutcome::NotProxied("no spec"), problems);
    };
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if svc_type == "ExternalName" {
        return (ServiceOutcome::NotProxied("ExternalName"), problems);
    }

    // ClusterIPs: `clusterIPs` when set, else `clusterIP`; "None" is headless.
    let listed: Vec<(String, &str)> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => {
            ips.iter().enumerate().map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str())).collect()
        }
        _ => {
            spec.cluster_ip.as_deref().map(|ip| vec![("spec.clusterIP".to_string(), ip)]).unwrap_or_default()
        }
    };
    if listed.is_empty() || listed.iter().any(|(_, ip)| ip.is_empty() || *ip == "None") {
        return (ServiceOutcome::NotProxied("headless"), problems);
    }
    let declared_families = spec.ip_families.clone().unwrap_or_default();
    let mut cluster_ips: Vec<(Family, IpAddr)> = Vec::new();
    for (i, (field, text)) in listed.iter().enumerate() {
        let Some(ip) = parse_ip(text) else {
            problems.push(Problem::new(
                ProblemKind::InvalidIp,
                &obj,
                field,
                format!("{text:?} is not an IP address"),
            ));
            continue;
        };
        let family = Family::of(&ip);
        if let Some(declared) = declared_families.get(i) {
            let expected = match declared.as_str() {
                "IPv4" => Some(Family::V4),
                "IPv6" => Some(Family::V6),
                _ => None,
            };
            if expected.is_some_and(|e| e != family) {
                problems.push(Problem::new(
                    ProblemKind::FamilyMismatch,
                    &obj,
                    format!("spec.ipFamilies[{i}]"),
                    format!("says {declared} but {field} is {ip}; using the address's family"),
                ));
            }
        }
        if cluster_ips.iter().any(|(f, _)| *f == family) {
            problems.push(Problem::new(
                ProblemKind::FamilyMismatch,
                &obj,
                field,
                format!("second {family} ClusterIP {ip} ignored"),
            ));
            continue;
        }
        cluster_ips.push((family, ip));
    }
    cluster_ips.sort_by_key(|(f, _)| *f);
    if cluster_ips.is_empty() {
        return (ServiceOutcome::NotProxied("no valid ClusterIP"), problems);
    }

    let node_ports_allowed = matches!(svc_type, "NodePort" | "LoadBalancer");
    let mut ports: Vec<ServicePortSpec> = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Proto::Tcp,
            "UDP" => Proto::Udp,
            "SCTP" => {
                tracing::debug!(service = %key, port = p.port, "ignoring SCTP port");
                continue;
            }
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
        let Some(port) = port_u16(p.port) else {
            problems.push(Problem::new(
                ProblemKind::InvalidPort,
                &obj,
                field("port"),
                format!("{} is not in 1-65535", p.port),
            ));
            continue;
        };
        let node_port = match p.node_port {
            Some(n) if node_ports_allowed && n != 0 => match port_u16(n) {
                Some(n) => Some(n),
                None => {
                    problems.push(Problem::new(
                        ProblemKind::InvalidPort,
                        &obj,
                        field("nodePort"),
                        format!("{n} is not in 1-65535"),
                    ));
                    None
                }
            },
            _ => None,
        };
        if let Some(first) = ports.iter().position(|q| q.port == port && q.proto == proto) {
            problems.push(Problem::new(
                ProblemKind::DuplicatePort,
                &obj,
                field("port"),
                format!("{port}/{proto} repeats spec.ports[{}]", ports[first].index),
            ));
            continue;
        }
        let name = names.intern(p.name.as_deref().unwrap_or_default());
        if !name.is_empty() && ports.iter().any(|q| q.name == name) {
            problems.push(Problem::new(
                ProblemKind::DuplicatePort,
                &obj,
                field("name"),
                format!("port name {name:?} is used twice"),
            ));
            continue;
        }
        let index = u16::try_from(i).unwrap_or(u16::MAX);
        ports.push(ServicePortSpec { index, name, port, proto, node_port });
    }
    if spec.ports.as_ref().is_none_or(Vec::is_empty) {
        problems.push(Problem::new(
            ProblemKind::MissingField,
            &obj,
            "spec.ports",
            "a proxied Service needs at least one port",
        ));
    }
    if ports.is_empty() {
        return (ServiceOutcome::NotProxied("no usable port"), problems);
    }

    let families: Vec<Family> = cluster_ips.iter().map(|(f, _)| *f).collect();
    let mut external_ips = Vec::new();
    for (i, text) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        external_ips.extend(served_ip(text, &families, &obj, field, &mut problems));
    }
    let mut load_balancer_ips = Vec::new();
    if svc_type == "LoadBalancer" {
        let ingress =
            svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            // ipMode Proxy: the load balancer delivers to the node, not the VIP.
            if ing.ip_mode.as_deref().is_some_and(|m| m != "VIP") {
                continue;
            }
            let Some(text) = ing.ip.as_deref() else {
                continue;
            };
            let field = format!("status.loadBalancer.ingress[{i}].ip");
            load_balancer_ips.extend(served_ip(text, &families, &obj, field, &mut problems));
        }
    }

    let affinity_timeout_secs = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match configured {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_SECS),
                Some(t) if t > 0 && (t as u32) <= MAX_AFFINITY_TIMEOUT_SECS => Some(t as u32),
                Some(t) => {
                    problems.push(Problem::new(
                        ProblemKind::InvalidValue,
                        &obj,
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{t} is not in 1-{MAX_AFFINITY_TIMEOUT_SECS}; using {DEFAULT_AFFINITY_TIMEOUT_SECS}"),
                    ));
                    Some(DEFAULT_AFFINITY_TIMEOUT_SECS)
                }
            }
        }
        _ => None,
    };

    let _ = key;
    let parsed = ParsedService {
        cluster_ips: cluster_ips.into(),
        ports: ports.into(),
        external_ips: external_ips.into(),
        load_balancer_ips: load_balancer_ips.into(),
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        external_local: matches!(spec.external_traffic_policy.as_deref(), Some("Local" | "OnlyLocal")),
        affinity_timeout_secs,
    };
    (ServiceOutcome::Proxied(parsed), problems)
}
