//! The Kubernetes objects the agent knows, validated and compact, and which
//! Services changed.
//!
//! Sources send decoded objects (the compact forms of `decode`); the store
//! validates each as it arrives and keeps only the validated form, once:
//! a Service's name is held by its entry alone, its slices are filed under
//! it (by slice name), and the names endpoints repeat (nodes, zones, port
//! names) are shared. Each Service has a small index ([`ServiceId`]) that
//! the load balancer knows it by.
//!
//! A relist or a file reload streams through: `ReplaceStart`, the objects,
//! `ReplaceEnd`; what the origin did not send again is removed at the end.
//! No complete copy of the cluster is ever held next to the store.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    time::SystemTime,
};

use std::sync::Arc;

use hashbrown::HashTable;

use crate::{
    decode::{
        node::IngestedNode,
        objects::{EndpointSlice, Service},
    },
    model::{
        ObjKey, Problem,
        names::Names,
        nodes::NodeInfo,
        service::{ServiceOutcome, parse_service},
        slices::{ParsedSlice, parse_slice, slice_service},
    },
    paged::Paged,
};

/// Which source an object came from: each `--from-file` is one origin, the
/// API server another. A relist replaces only its own origin's objects.
pub type Origin = u16;

/// A Service's index in the store (stable while the Service is known, and
/// until the agent releases it after its removal was programmed).
pub type ServiceId = u32;

/// The kinds of objects a replace covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds {
    pub services: bool,
    pub slices: bool,
    pub nodes: bool,
}

impl Kinds {
    pub const ALL: Self = Self { services: true, slices: true, nodes: true };
    pub const SERVICES: Self = Self { services: true, slices: false, nodes: false };
    pub const SLICES: Self = Self { services: false, slices: true, nodes: false };
    pub const NODES: Self = Self { services: false, slices: false, nodes: true };
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

/// What a source reports.
#[derive(Clone, Debug)]
pub enum SourceEvent {
    /// An origin starts sending everything it has of `kinds` (a relist, a
    /// file reload); what it does not send before `ReplaceEnd` goes.
    ReplaceStart {
        origin: Origin,
        kinds: Kinds,
    },
    ReplaceEnd {
        origin: Origin,
        kinds: Kinds,
    },
    /// A replace that broke off (the text changed while it was read):
    /// nothing is removed; the origin starts again later.
    ReplaceAbort {
        origin: Origin,
        kinds: Kinds,
    },
    /// Everything of `kinds` an origin has, at once (tests, small inputs).
    Replace {
        origin: Origin,
        kinds: Kinds,
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
        nodes: Vec<IngestedNode>,
    },
    ServiceApplied {
        origin: Origin,
        service: Box<Service>,
    },
    ServiceDeleted {
        key: ObjKey,
    },
    SliceApplied {
        origin: Origin,
        slice: Box<EndpointSlice>,
    },
    SliceDeleted {
        key: ObjKey,
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
    /// Several events in order: a source that decodes many objects in a
    /// row (a list, a file) hands them over in batches, so that the agent
    /// is woken once per batch rather than once per object.
    Batch(Vec<SourceEvent>),
}

impl SourceEvent {
    /// A whole origin from objects (tests, small inputs).
    pub fn replace(origin: Origin, services: &[Service], slices: &[EndpointSlice]) -> Self {
        Self::Replace {
            origin,
            kinds: Kinds::ALL,
            services: services.to_vec(),
            slices: slices.to_vec(),
            nodes: Vec::new(),
        }
    }

    /// Every Service an origin has (a relist of Services).
    pub fn replace_services(origin: Origin, services: &[Service]) -> Self {
        Self::Replace {
            origin,
            kinds: Kinds::SERVICES,
            services: services.to_vec(),
            slices: Vec::new(),
            nodes: Vec::new(),
        }
    }

    /// Every EndpointSlice an origin has (a relist of slices).
    pub fn replace_slices(origin: Origin, slices: &[EndpointSlice]) -> Self {
        Self::Replace {
            origin,
            kinds: Kinds::SLICES,
            services: Vec::new(),
            slices: slices.to_vec(),
            nodes: Vec::new(),
        }
    }

    pub fn service(origin: Origin, service: &Service) -> Self {
        Self::ServiceApplied { origin, service: Box::new(service.clone()) }
    }

    pub fn slice(origin: Origin, slice: &EndpointSlice) -> Self {
        Self::SliceApplied { origin, slice: Box::new(slice.clone()) }
    }
}

/// A Service as the store keeps it.
#[derive(Debug)]
struct StoredService {
    origin: Origin,
    /// The replace round it was last sent in.
    seen: u32,
    outcome: ServiceOutcome,
    problems: Box<[Problem]>,
}

/// A slice, filed under its Service.
#[derive(Debug)]
struct StoredSlice {
    name: Box<str>,
    origin: Origin,
    seen: u32,
    parsed: Option<ParsedSlice>,
    problems: Box<[Problem]>,
}

/// One Service name: the Service (if it exists) and the slices labelled
/// with its name (which may come first).
#[derive(Debug)]
struct Entry {
    /// The namespace is shared by every entry of the namespace.
    namespace: Arc<str>,
    name: Box<str>,
    service: Option<StoredService>,
    slices: Vec<StoredSlice>,
    /// Removed from the store, but its id is not released yet.
    gone: bool,
}

#[derive(Debug)]
pub struct Store {
    service_proxy_name: Option<String>,
    names: Names,
    entries: Paged<Entry>,
    free: Vec<ServiceId>,
    next_id: ServiceId,
    /// Entries by Service key (the key is kept by the entry only).
    index: HashTable<ServiceId>,
    /// The entry each slice is filed under, by its key's hash.
    slice_owner: HashTable<(u64, ServiceId)>,
    hasher: RandomState,
    nodes: BTreeMap<String, (Origin, u32, IngestedNode)>,
    /// The nodes as the model reads them (kept with `nodes`).
    node_infos: BTreeMap<String, NodeInfo>,
    dirty: BTreeSet<ServiceId>,
    all_dirty: bool,
    /// The Nodes or this node's addresses changed since the last sync.
    nodes_dirty: bool,
    host_addresses: Option<Vec<IpAddr>>,
    /// The earliest trigger time of the changes to each Service that no
    /// sync has applied yet.
    triggers: BTreeMap<ServiceId, SystemTime>,
    /// The current replace round of each (origin, kind).
    rounds: BTreeMap<(Origin, u8), u32>,
    /// Replaces started and not yet ended, by (origin, kind).
    open: BTreeSet<(Origin, u8)>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(None)
    }
}

const KIND_SERVICES: u8 = 0;
const KIND_SLICES: u8 = 1;
const KIND_NODES: u8 = 2;

impl Store {
    /// `service_proxy_name`: see `--service-proxy-name`.
    pub fn new(service_proxy_name: Option<String>) -> Self {
        Self {
            service_proxy_name,
            names: Names::default(),
            entries: Paged::default(),
            free: Vec::new(),
            next_id: 0,
            index: HashTable::new(),
            slice_owner: HashTable::new(),
            hasher: RandomState::new(),
            nodes: BTreeMap::new(),
            node_infos: BTreeMap::new(),
            dirty: BTreeSet::new(),
            all_dirty: false,
            nodes_dirty: false,
            host_addresses: None,
            triggers: BTreeMap::new(),
            rounds: BTreeMap::new(),
            open: BTreeSet::new(),
        }
    }

    fn hash_key(&self, ns: &str, name: &str) -> u64 {
        self.hasher.hash_one((ns, name))
    }

    fn entry(&self, id: ServiceId) -> Option<&Entry> {
        self.entries.get(id as usize)
    }

    fn entry_mut(&mut self, id: ServiceId) -> Option<&mut Entry> {
        self.entries.get_mut(id as usize)
    }

    /// The id of a Service key, if the store knows it.
    pub fn id(&self, key: &ObjKey) -> Option<ServiceId> {
        let h = self.hash_key(&key.namespace, &key.name);
        let entries = &self.entries;
        self.index
            .find(h, |id| {
                entries
                    .get(*id as usize)
                    .is_some_and(|e| *e.namespace == *key.namespace && *e.name == *key.name)
            })
            .copied()
    }

    /// The key of a Service id.
    pub fn key(&self, id: ServiceId) -> Option<ObjKey> {
        self.entry(id).map(|e| ObjKey::new(e.namespace.to_string(), e.name.to_string()))
    }

    fn id_or_add(&mut self, key: ObjKey) -> ServiceId {
        if let Some(id) = self.id(&key) {
            if let Some(e) = self.entry_mut(id) {
                e.gone = false;
            }
            return id;
        }
        let h = self.hash_key(&key.namespace, &key.name);
        let namespace = self.names.intern(&key.namespace);
        let entry =
            Entry { namespace, name: key.name.into(), service: None, slices: Vec::new(), gone: false };
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.next_id += 1;
                self.next_id - 1
            }
        };
        self.entries.set(id as usize, entry);
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index.insert_unique(h, id, |id| {
            let e = entries.get(*id as usize).map(|e| (&*e.namespace, &*e.name));
            hasher.hash_one(e.unwrap_or(("", "")))
        });
        id
    }

    /// Lets an id go once nothing refers to it any more (the agent calls
    /// this after the Service's removal was programmed). A Service that
    /// came back meanwhile keeps it.
    pub fn release(&mut self, id: ServiceId) {
        let keep = self.entry(id).is_none_or(|e| !e.gone || e.service.is_some() || !e.slices.is_empty());
        if keep {
            return;
        }
        if let Some(e) = self.entries.take(id as usize) {
            let h = self.hash_key(&e.namespace, &e.name);
            if let Ok(found) = self.index.find_entry(h, |x| *x == id) {
                found.remove();
            }
            self.free.push(id);
        }
    }

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

    /// The validated Service of an id.
    pub fn service(&self, id: ServiceId) -> Option<&ServiceOutcome> {
        self.entry(id)?.service.as_ref().map(|s| &s.outcome)
    }

    pub fn service_count(&self) -> usize {
        self.entries.values().filter(|e| e.service.is_some()).count()
    }

    /// The slices of a Service, with their names.
    pub fn slices_of(&self, id: ServiceId) -> impl Iterator<Item = (&str, &ParsedSlice)> {
        self.entry(id)
            .into_iter()
            .flat_map(|e| e.slices.iter().filter_map(|s| Some((&*s.name, s.parsed.as_ref()?))))
    }

    /// The names the slices' endpoints refer to.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Every problem of every object held.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.entries
            .values()
            .flat_map(|e| {
                e.service
                    .iter()
                    .flat_map(|s| s.problems.iter())
                    .chain(e.slices.iter().flat_map(|s| s.problems.iter()))
            })
            .chain(self.nodes.values().flat_map(|(_, _, n)| n.problems.iter()))
    }

    fn round(&self, origin: Origin, kind: u8) -> u32 {
        self.rounds.get(&(origin, kind)).copied().unwrap_or(0)
    }

    /// Applies an event; returns the problems not seen before (to report).
    pub fn apply(&mut self, event: SourceEvent) -> Vec<Problem> {
        let mut fresh = Vec::new();
        match event {
            SourceEvent::ReplaceStart { origin, kinds } => self.replace_start(origin, kinds),
            SourceEvent::ReplaceEnd { origin, kinds } => self.replace_end(origin, kinds),
            SourceEvent::ReplaceAbort { origin, kinds } => self.close_replace(origin, kinds),
            SourceEvent::Batch(events) => {
                for e in events {
                    fresh.extend(self.apply(e));
                }
            }
            SourceEvent::Replace { origin, kinds, services, slices, nodes } => {
                self.replace_start(origin, kinds);
                for s in &services {
                    self.put_service(origin, s, &mut fresh);
                }
                for s in &slices {
                    self.put_slice(origin, s, &mut fresh);
                }
                for n in nodes {
                    self.put_node(origin, n, &mut fresh);
                }
                self.replace_end(origin, kinds);
            }
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
            SourceEvent::ServiceApplied { origin, service } => self.put_service(origin, &service, &mut fresh),
            SourceEvent::ServiceDeleted { key } => {
                if let Some(id) = self.id(&key) {
                    self.delete_service(id);
                }
            }
            SourceEvent::SliceApplied { origin, slice } => self.put_slice(origin, &slice, &mut fresh),
            SourceEvent::SliceDeleted { key } => self.delete_slice(&key),
            SourceEvent::Synced(_) => {}
        }
        fresh
    }

    fn replace_start(&mut self, origin: Origin, kinds: Kinds) {
        for (kind, on) in
            [(KIND_SERVICES, kinds.services), (KIND_SLICES, kinds.slices), (KIND_NODES, kinds.nodes)]
        {
            if on {
                *self.rounds.entry((origin, kind)).or_default() += 1;
                self.open.insert((origin, kind));
            }
        }
    }

    /// Whether a source is in the middle of sending everything it has (a
    /// relist or a file reload): its objects are better applied together.
    pub fn replacing(&self) -> bool {
        !self.open.is_empty()
    }

    fn close_replace(&mut self, origin: Origin, kinds: Kinds) {
        for (kind, on) in
            [(KIND_SERVICES, kinds.services), (KIND_SLICES, kinds.slices), (KIND_NODES, kinds.nodes)]
        {
            if on {
                self.open.remove(&(origin, kind));
            }
        }
    }

    fn replace_end(&mut self, origin: Origin, kinds: Kinds) {
        self.close_replace(origin, kinds);
        if kinds.services {
            let round = self.round(origin, KIND_SERVICES);
            let gone: Vec<ServiceId> = self
                .ids()
                .filter(|id| {
                    self.entry(*id)
                        .and_then(|e| e.service.as_ref())
                        .is_some_and(|s| s.origin == origin && s.seen != round)
                })
                .collect();
            for id in gone {
                self.delete_service(id);
            }
        }
        if kinds.slices {
            let round = self.round(origin, KIND_SLICES);
            let gone: Vec<ObjKey> = self
                .entries
                .values()
                .flat_map(|e| {
                    e.slices
                        .iter()
                        .filter(|s| s.origin == origin && s.seen != round)
                        .map(|s| ObjKey::new(e.namespace.to_string(), s.name.to_string()))
                })
                .collect();
            for key in gone {
                self.delete_slice(&key);
            }
        }
        if kinds.nodes {
            let round = self.round(origin, KIND_NODES);
            let gone: Vec<String> = self
                .nodes
                .iter()
                .filter(|(_, (o, seen, _))| *o == origin && *seen != round)
                .map(|(k, _)| k.clone())
                .collect();
            for name in gone {
                self.delete_node(&name);
            }
        }
        self.names.trim();
    }

    fn ids(&self) -> impl Iterator<Item = ServiceId> + '_ {
        self.entries.iter().map(|(i, _)| i as ServiceId)
    }

    fn put_node(&mut self, origin: Origin, node: IngestedNode, fresh: &mut Vec<Problem>) {
        let round = self.round(origin, KIND_NODES);
        if let Some((o, seen, old)) = self.nodes.get_mut(&node.name)
            && *old == node
        {
            (*o, *seen) = (origin, round);
            return;
        }
        let old = self.nodes.get(&node.name).map(|(_, _, n)| n);
        fresh.extend(node.problems.iter().filter(|p| old.is_none_or(|o| !o.problems.contains(p))).cloned());
        self.node_infos.insert(node.name.clone(), node.info.clone());
        self.nodes.insert(node.name.clone(), (origin, round, node));
        self.nodes_dirty = true;
    }

    fn delete_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.node_infos.remove(name);
            self.nodes_dirty = true;
        }
    }

    fn put_service(&mut self, origin: Origin, svc: &Service, fresh: &mut Vec<Problem>) {
        let key = service_key(svc);
        let (outcome, problems) = parse_service(svc, self.service_proxy_name.as_deref(), &mut self.names);
        let round = self.round(origin, KIND_SERVICES);
        let id = self.id_or_add(key);
        let Some(entry) = self.entry_mut(id) else { return };
        if let Some(old) = entry.service.as_mut()
            && old.outcome == outcome
            && *old.problems == *problems
        {
            (old.origin, old.seen) = (origin, round);
            return;
        }
        let old = entry.service.as_ref().map(|s| &s.problems);
        fresh.extend(problems.iter().filter(|p| old.is_none_or(|o| !o.contains(p))).cloned());
        entry.service = Some(StoredService { origin, seen: round, outcome, problems: problems.into() });
        self.dirty.insert(id);
    }

    fn delete_service(&mut self, id: ServiceId) {
        let Some(entry) = self.entry_mut(id) else { return };
        if entry.service.take().is_some() {
            entry.gone = entry.slices.is_empty();
            self.dirty.insert(id);
        }
    }

    fn find_slice(&self, key: &ObjKey) -> Option<(ServiceId, usize)> {
        let h = self.hash_key(&key.namespace, &key.name);
        let entries = &self.entries;
        let at = |id: ServiceId| -> Option<usize> {
            let e = entries.get(id as usize)?;
            (*e.namespace == *key.namespace).then_some(())?;
            e.slices.iter().position(|s| *s.name == *key.name)
        };
        let mut found = None;
        for &(hash, id) in self.slice_owner.iter_hash(h) {
            if hash == h
                && let Some(i) = at(id)
            {
                found = Some((id, i));
                break;
            }
        }
        found
    }

    fn put_slice(&mut self, origin: Origin, slice: &EndpointSlice, fresh: &mut Vec<Problem>) {
        let key = slice_key(slice);
        let service = slice_service(slice);
        let (parsed, problems) = parse_slice(slice, &mut self.names);
        let round = self.round(origin, KIND_SLICES);
        let existing = self.find_slice(&key);
        if let (Some((id, i)), Some(svc)) = (existing, &service)
            && self.entry(id).is_some_and(|e| *e.namespace == *svc.namespace && *e.name == *svc.name)
        {
            // Same Service: an update in place, or nothing.
            let entry = self.entry_mut(id).expect("found above");
            let s = &mut entry.slices[i];
            if s.parsed == parsed && *s.problems == *problems {
                (s.origin, s.seen) = (origin, round);
                return;
            }
            fresh.extend(problems.iter().filter(|p| !s.problems.contains(p)).cloned());
            *s = StoredSlice { name: s.name.clone(), origin, seen: round, parsed, problems: problems.into() };
            self.dirty.insert(id);
            self.note_trigger(id, slice);
            return;
        }
        fresh.extend(problems.iter().cloned());
        if existing.is_some() {
            self.delete_slice(&key);
        }
        // A slice without a Service label is kept (for its problems) under
        // no Service: nothing reads it.
        let Some(svc) = service else { return };
        let id = self.id_or_add(svc);
        let h = self.hash_key(&key.namespace, &key.name);
        let name: Box<str> = key.name.into();
        if let Some(entry) = self.entry_mut(id) {
            // Most Services have one slice: no room for more until needed.
            entry.slices.reserve_exact(1);
            entry.slices.push(StoredSlice { name, origin, seen: round, parsed, problems: problems.into() });
        }
        self.slice_owner.insert_unique(h, (h, id), |(hash, _)| *hash);
        self.dirty.insert(id);
        self.note_trigger(id, slice);
    }

    fn note_trigger(&mut self, id: ServiceId, slice: &EndpointSlice) {
        if let Some(t) = trigger_time(slice) {
            let earliest = self.triggers.entry(id).or_insert(t);
            *earliest = (*earliest).min(t);
        }
    }

    fn delete_slice(&mut self, key: &ObjKey) {
        let Some((id, i)) = self.find_slice(key) else { return };
        let h = self.hash_key(&key.namespace, &key.name);
        if let Ok(found) = self.slice_owner.find_entry(h, |(hash, owner)| *hash == h && *owner == id) {
            found.remove();
        }
        if let Some(entry) = self.entry_mut(id) {
            entry.slices.swap_remove(i);
            entry.gone = entry.service.is_none() && entry.slices.is_empty();
        }
        self.dirty.insert(id);
    }

    /// The trigger times of the changes since the last call, per Service.
    pub fn take_triggers(&mut self) -> BTreeMap<ServiceId, SystemTime> {
        std::mem::take(&mut self.triggers)
    }

    /// Gives back trigger times whose changes a sync did not apply.
    pub fn restore_triggers(&mut self, triggers: impl IntoIterator<Item = (ServiceId, SystemTime)>) {
        for (k, t) in triggers {
            let earliest = self.triggers.entry(k).or_insert(t);
            *earliest = (*earliest).min(t);
        }
    }

    /// The Services to rebuild since the last call; `None` means all.
    pub fn take_dirty(&mut self) -> Option<BTreeSet<ServiceId>> {
        let dirty = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.all_dirty) { None } else { Some(dirty) }
    }

    /// Every Service id known (with a Service, or slices, or not released).
    pub fn all_ids(&self) -> BTreeSet<ServiceId> {
        self.ids().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(yaml: &str) -> (Vec<Service>, Vec<EndpointSlice>) {
        let (o, _) = crate::decode::files::parse_objects(yaml).expect("yaml");
        (o.services, o.slices)
    }

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1], nodeName: n1}, {addresses: [10.0.0.2], nodeName: n1}]\nports: [{name: '', port: 8080}]\n";

    #[test]
    fn a_replace_keeps_what_was_sent_again_and_drops_the_rest() {
        let mut st = Store::default();
        let (services, slices) = objects(WEB);
        st.apply(SourceEvent::replace(0, &services, &slices));
        let id = st.id(&ObjKey::new("ns", "web")).expect("known");
        assert_eq!(st.slices_of(id).count(), 1);
        assert_eq!(st.take_dirty().map(|d| d.len()), Some(1));
        // The same objects again: nothing changed.
        st.apply(SourceEvent::replace(0, &services, &slices));
        assert_eq!(st.take_dirty().map(|d| d.len()), Some(0));
        // Streamed: only the Service this time.
        st.apply(SourceEvent::ReplaceStart { origin: 0, kinds: Kinds::ALL });
        st.apply(SourceEvent::service(0, &services[0]));
        assert_eq!(st.slices_of(id).count(), 1, "nothing goes before the end");
        st.apply(SourceEvent::ReplaceEnd { origin: 0, kinds: Kinds::ALL });
        assert_eq!(st.slices_of(id).count(), 0);
        assert!(st.service(id).is_some());
        // Another origin's replace leaves origin 0 alone.
        st.apply(SourceEvent::replace(1, &[], &[]));
        assert!(st.service(id).is_some());
    }

    #[test]
    fn endpoints_share_their_node_names_and_ids_wait_for_release() {
        let mut st = Store::default();
        let (services, slices) = objects(WEB);
        st.apply(SourceEvent::replace(0, &services, &slices));
        let id = st.id(&ObjKey::new("ns", "web")).expect("known");
        let (_, s) = st.slices_of(id).next().expect("slice");
        assert_eq!(s.endpoints[0].node, s.endpoints[1].node, "one id per node name");
        assert_eq!(st.names().node(s.endpoints[0].node).map(|n| &**n), Some("n1"));
        st.apply(SourceEvent::replace(0, &[], &[]));
        assert_eq!(st.key(id), Some(ObjKey::new("ns", "web")), "kept until released");
        st.release(id);
        assert_eq!(st.key(id), None);
        assert_eq!(st.id(&ObjKey::new("ns", "web")), None);
    }

    #[test]
    fn a_slice_that_changes_its_service_moves() {
        let mut st = Store::default();
        let (services, mut slices) = objects(WEB);
        st.apply(SourceEvent::replace(0, &services, &slices));
        let web = st.id(&ObjKey::new("ns", "web")).expect("web");
        if let Some(l) = slices[0].metadata.labels.as_mut() {
            l.insert(crate::model::slices::LABEL_SERVICE_NAME.into(), "api".into());
        }
        st.apply(SourceEvent::slice(0, &slices[0]));
        let api = st.id(&ObjKey::new("ns", "api")).expect("api");
        assert_eq!((st.slices_of(web).count(), st.slices_of(api).count()), (0, 1));
        let dirty = st.take_dirty().expect("some");
        assert!(dirty.contains(&web) && dirty.contains(&api));
    }
}
