//! The Kubernetes objects the agent knows, and which Services changed.
//!
//! Sources validate each object as soon as it is decoded ([`ingest_service`],
//! [`ingest_slice`]) and send only the validated form, so the raw objects
//! (large, mostly fields socklb never reads) are never kept: at 100k
//! services that is the difference between megabytes and gigabytes. The
//! reconciler takes the dirty Services and rebuilds only their models.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::SystemTime,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::model::{
    ObjKey, Problem,
    service::{ServiceOutcome, parse_service},
    slices::{LABEL_SERVICE_NAME, ParsedSlice, parse_slice},
};
use crate::{decode::node::IngestedNode, model::nodes::NodeInfo};

/// Which source an object came from: each `--from-file` is one origin, the
/// API server another. A relist replaces only its own origin's objects.
pub type Origin = u16;

/// A Service, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestedService {
    pub key: ObjKey,
    pub outcome: ServiceOutcome,
    pub problems: Vec<Problem>,
}

/// An EndpointSlice, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestedSlice {
    pub key: ObjKey,
    /// The Service it belongs to (its `kubernetes.io/service-name` label).
    pub service: Option<ObjKey>,
    pub parsed: Option<ParsedSlice>,
    pub problems: Vec<Problem>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`: when the change
    /// this version carries happened (for the network programming SLI).
    pub trigger_time: Option<SystemTime>,
}

/// The EndpointSlice controller's annotation: when the change that produced
/// this version of the slice happened (a pod became ready, say).
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The trigger time of a slice, if it carries a valid one.
pub fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let text = slice.metadata.annotations.as_ref()?.get(ANNOTATION_TRIGGER_TIME)?;
    let ts: k8s_openapi::jiff::Timestamp = text.trim().parse().ok()?;
    Some(SystemTime::from(ts))
}

fn obj_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjKey {
    ObjKey::new(
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

pub fn service_key(svc: &Service) -> ObjKey {
    obj_key(&svc.metadata)
}

pub fn slice_key(slice: &EndpointSlice) -> ObjKey {
    obj_key(&slice.metadata)
}

/// The Service a slice belongs to (by its `kubernetes.io/service-name` label).
pub fn slice_service(slice: &EndpointSlice) -> Option<ObjKey> {
    let name = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    Some(ObjKey::new(slice.metadata.namespace.clone().unwrap_or_else(|| "default".into()), name.clone()))
}

/// Validates a Service for this proxy (see `--service-proxy-name`).
pub fn ingest_service(svc: &Service, service_proxy_name: Option<&str>) -> IngestedService {
    let (outcome, problems) = parse_service(svc, service_proxy_name);
    IngestedService { key: service_key(svc), outcome, problems }
}

pub fn ingest_slice(slice: &EndpointSlice) -> IngestedSlice {
    let (parsed, problems) = parse_slice(slice);
    IngestedSlice {
        key: slice_key(slice),
        service: slice_service(slice),
        parsed,
        problems,
        trigger_time: trigger_time(slice),
    }
}

/// What a source reports.
#[derive(Clone, Debug)]
pub enum SourceEvent {
    /// Everything one origin has (a file reload). Replaces its earlier objects.
    Replace {
        origin: Origin,
        services: Vec<IngestedService>,
        slices: Vec<IngestedSlice>,
        nodes: Vec<IngestedNode>,
    },
    /// A relist of one kind from one origin.
    ReplaceServices {
        origin: Origin,
        services: Vec<IngestedService>,
    },
    ReplaceSlices {
        origin: Origin,
        slices: Vec<IngestedSlice>,
    },
    ServiceApplied {
        origin: Origin,
        service: Box<IngestedService>,
    },
    ServiceDeleted {
        key: ObjKey,
    },
    SliceApplied {
        origin: Origin,
        slice: Box<IngestedSlice>,
    },
    SliceDeleted {
        key: ObjKey,
    },
    /// A relist of the Nodes.
    ReplaceNodes {
        origin: Origin,
        nodes: Vec<IngestedNode>,
    },
    NodeApplied {
        origin: Origin,
        node: Box<IngestedNode>,
    },
    NodeDeleted {
        name: String,
    },
    /// This node's interface addresses (at start, and whenever they change).
    HostAddresses(Vec<IpAddr>),
    /// A part of a source has delivered its complete initial state.
    Synced(&'static str),
}

impl SourceEvent {
    /// A whole origin from raw objects (tests, small inputs).
    pub fn replace(
        origin: Origin,
        services: &[Service],
        slices: &[EndpointSlice],
        proxy: Option<&str>,
    ) -> Self {
        Self::Replace {
            origin,
            services: services.iter().map(|s| ingest_service(s, proxy)).collect(),
            slices: slices.iter().map(ingest_slice).collect(),
            nodes: Vec::new(),
        }
    }

    pub fn replace_services(origin: Origin, services: &[Service], proxy: Option<&str>) -> Self {
        Self::ReplaceServices {
            origin,
            services: services.iter().map(|s| ingest_service(s, proxy)).collect(),
        }
    }

    pub fn replace_slices(origin: Origin, slices: &[EndpointSlice]) -> Self {
        Self::ReplaceSlices { origin, slices: slices.iter().map(ingest_slice).collect() }
    }

    pub fn service(origin: Origin, service: &Service, proxy: Option<&str>) -> Self {
        Self::ServiceApplied { origin, service: Box::new(ingest_service(service, proxy)) }
    }

    pub fn slice(origin: Origin, slice: &EndpointSlice) -> Self {
        Self::SliceApplied { origin, slice: Box::new(ingest_slice(slice)) }
    }
}

#[derive(Debug, Default)]
pub struct Store {
    services: BTreeMap<ObjKey, (Origin, IngestedService)>,
    slices: BTreeMap<ObjKey, (Origin, IngestedSlice)>,
    slices_by_service: BTreeMap<ObjKey, BTreeSet<ObjKey>>,
    nodes: BTreeMap<String, (Origin, IngestedNode)>,
    /// The nodes as the model reads them (kept with `nodes`).
    node_infos: BTreeMap<String, NodeInfo>,
    dirty: BTreeSet<ObjKey>,
    all_dirty: bool,
    /// The Nodes or this node's addresses changed since the last sync.
    nodes_dirty: bool,
    host_addresses: Option<Vec<IpAddr>>,
    /// The earliest trigger time of the changes to each Service that no
    /// sync has applied yet.
    triggers: BTreeMap<ObjKey, SystemTime>,
}

impl Store {
    /// Every Node known, by name.
    pub fn nodes(&self) -> &BTreeMap<String, NodeInfo> {
        &self.node_infos
    }

    /// This node's interface addresses, once a source reported them.
    pub fn host_addresses(&self) -> Option<&[IpAddr]> {
        self.host_addresses.as_deref()
    }

    /// Whether the nodes or this node's addresses changed since the last call.
    pub fn take_nodes_dirty(&mut self) -> bool {
        std::mem::take(&mut self.nodes_dirty)
    }

    /// Rebuild every Service at the next sync (this node's zone changed).
    pub fn mark_all_dirty(&mut self) {
        self.all_dirty = true;
    }

    pub fn service(&self, key: &ObjKey) -> Option<&IngestedService> {
        self.services.get(key).map(|(_, s)| s)
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The slices of a Service.
    pub fn slices_of(&self, key: &ObjKey) -> impl Iterator<Item = &IngestedSlice> {
        self.slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k).map(|(_, s)| s))
    }

    /// Every problem of every object held.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.services
            .values()
            .flat_map(|(_, s)| s.problems.iter())
            .chain(self.slices.values().flat_map(|(_, s)| s.problems.iter()))
            .chain(self.nodes.values().flat_map(|(_, n)| n.problems.iter()))
    }

    /// Applies an event; returns the problems not seen before (to report).
    pub fn apply(&mut self, event: SourceEvent) -> Vec<Problem> {
        let mut fresh = Vec::new();
        match event {
            SourceEvent::Replace { origin, services, slices, nodes } => {
                self.replace_services(origin, services, &mut fresh);
                self.replace_slices(origin, slices, &mut fresh);
                self.replace_nodes(origin, nodes, &mut fresh);
            }
            SourceEvent::ReplaceNodes { origin, nodes } => self.replace_nodes(origin, nodes, &mut fresh),
            SourceEvent::NodeApplied { origin, node } => self.put_node(origin, *node, &mut fresh),
            SourceEvent::NodeDeleted { name } => self.delete_node(&name),
            SourceEvent::HostAddresses(mut addrs) => {
                addrs.sort();
                addrs.dedup();
                if self.host_addresses.as_ref() != Some(&addrs) {
                    self.host_addresses = Some(addrs);
                    self.nodes_dirty = true;
                }
            }
            SourceEvent::ReplaceServices { origin, services } => {
                self.replace_services(origin, services, &mut fresh)
            }
            SourceEvent::ReplaceSlices { origin, slices } => self.replace_slices(origin, slices, &mut fresh),
            SourceEvent::ServiceApplied { origin, service } => self.put_service(origin, *service, &mut fresh),
            SourceEvent::ServiceDeleted { key } => self.delete_service(&key),
            SourceEvent::SliceApplied { origin, slice } => self.put_slice(origin, *slice, &mut fresh),
            SourceEvent::SliceDeleted { key } => self.delete_slice(&key),
            SourceEvent::Synced(_) => {}
        }
        fresh
    }

    fn put_node(&mut self, origin: Origin, node: IngestedNode, fresh: &mut Vec<Problem>) {
        let old = self.nodes.get(&node.name).map(|(_, n)| n);
        if old == Some(&node) {
            return;
        }
        fresh.extend(node.problems.iter().filter(|p| old.is_none_or(|o| !o.problems.contains(p))).cloned());
        self.node_infos.insert(node.name.clone(), node.info.clone());
        self.nodes.insert(node.name.clone(), (origin, node));
        self.nodes_dirty = true;
    }

    fn delete_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.node_infos.remove(name);
            self.nodes_dirty = true;
        }
    }

    fn replace_nodes(&mut self, origin: Origin, nodes: Vec<IngestedNode>, fresh: &mut Vec<Problem>) {
        let incoming: BTreeSet<&String> = nodes.iter().map(|n| &n.name).collect();
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(k, (o, _))| *o == origin && !incoming.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        for name in gone {
            self.delete_node(&name);
        }
        for n in nodes {
            self.put_node(origin, n, fresh);
        }
    }

    fn put_service(&mut self, origin: Origin, svc: IngestedService, fresh: &mut Vec<Problem>) {
        let old = self.services.get(&svc.key).map(|(_, s)| s);
        if old == Some(&svc) {
            return;
        }
        fresh.extend(svc.problems.iter().filter(|p| old.is_none_or(|o| !o.problems.contains(p))).cloned());
        self.dirty.insert(svc.key.clone());
        self.services.insert(svc.key.clone(), (origin, svc));
    }

    fn delete_service(&mut self, key: &ObjKey) {
        if self.services.remove(key).is_some() {
            self.dirty.insert(key.clone());
        }
    }

    fn put_slice(&mut self, origin: Origin, slice: IngestedSlice, fresh: &mut Vec<Problem>) {
        let old = self.slices.get(&slice.key).map(|(_, s)| s);
        if old == Some(&slice) {
            return;
        }
        fresh.extend(slice.problems.iter().filter(|p| old.is_none_or(|o| !o.problems.contains(p))).cloned());
        self.delete_slice(&slice.key);
        if let (Some(svc), Some(t)) = (&slice.service, slice.trigger_time) {
            let earliest = self.triggers.entry(svc.clone()).or_insert(t);
            *earliest = (*earliest).min(t);
        }
        if let Some(svc) = &slice.service {
            self.slices_by_service.entry(svc.clone()).or_default().insert(slice.key.clone());
            self.dirty.insert(svc.clone());
        }
        self.slices.insert(slice.key.clone(), (origin, slice));
    }

    fn delete_slice(&mut self, key: &ObjKey) {
        let Some((_, old)) = self.slices.remove(key) else { return };
        if let Some(svc) = old.service {
            if let Some(set) = self.slices_by_service.get_mut(&svc) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_by_service.remove(&svc);
                }
            }
            self.dirty.insert(svc);
        }
    }

    fn replace_services(&mut self, origin: Origin, services: Vec<IngestedService>, fresh: &mut Vec<Problem>) {
        let incoming: BTreeSet<&ObjKey> = services.iter().map(|s| &s.key).collect();
        let gone: Vec<ObjKey> = self
            .services
            .iter()
            .filter(|(k, (o, _))| *o == origin && !incoming.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.delete_service(&k);
        }
        for s in services {
            self.put_service(origin, s, fresh);
        }
    }

    fn replace_slices(&mut self, origin: Origin, slices: Vec<IngestedSlice>, fresh: &mut Vec<Problem>) {
        let incoming: BTreeSet<&ObjKey> = slices.iter().map(|s| &s.key).collect();
        let gone: Vec<ObjKey> = self
            .slices
            .iter()
            .filter(|(k, (o, _))| *o == origin && !incoming.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.delete_slice(&k);
        }
        for s in slices {
            self.put_slice(origin, s, fresh);
        }
    }

    /// The trigger times of the changes since the last call, per Service.
    pub fn take_triggers(&mut self) -> BTreeMap<ObjKey, SystemTime> {
        std::mem::take(&mut self.triggers)
    }

    /// Gives back trigger times whose changes a sync did not apply.
    pub fn restore_triggers(&mut self, triggers: impl IntoIterator<Item = (ObjKey, SystemTime)>) {
        for (k, t) in triggers {
            let earliest = self.triggers.entry(k).or_insert(t);
            *earliest = (*earliest).min(t);
        }
    }

    /// The Services to rebuild since the last call; `None` means all.
    pub fn take_dirty(&mut self) -> Option<BTreeSet<ObjKey>> {
        let dirty = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.all_dirty) { None } else { Some(dirty) }
    }

    /// Every Service key known, plus those with slices but no Service.
    pub fn all_service_keys(&self) -> BTreeSet<ObjKey> {
        self.services.keys().chain(self.slices_by_service.keys()).cloned().collect()
    }
}
