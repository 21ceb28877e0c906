//! Stable ids for backend sets and backends.
//!
//! A set's id is keyed by its identity text (stored in `SVC_NAMES`), a
//! backend's by its address, port and protocol. Both are rebuilt from the
//! pinned maps on start, so a restarted agent reuses every id and, with an
//! unchanged desired state, writes nothing. New ids are handed out round the
//! id space rather than lowest-first, so a freed id is not reused at once
//! (sockets and affinity entries may still name it for a moment).

use std::collections::{BTreeSet, HashMap};

use socklb_common::Addr;

use crate::datapath::MapState;

/// A backend's identity.
pub type BackendKey = (Addr, u16, u8);

#[derive(Clone, Debug)]
struct Space {
    /// Ids are in `1..limit`.
    limit: u32,
    next: u32,
    used: BTreeSet<u32>,
}

impl Space {
    fn new(limit: u32) -> Self {
        Self { limit: limit.max(2), next: 1, used: BTreeSet::new() }
    }

    fn take(&mut self) -> Option<u32> {
        let span = self.limit - 1;
        if self.used.len() as u64 >= u64::from(span) {
            return None;
        }
        for _ in 0..span {
            let id = self.next;
            self.next = if self.next + 1 >= self.limit { 1 } else { self.next + 1 };
            if self.used.insert(id) {
                return Some(id);
            }
        }
        None
    }

    fn mark(&mut self, id: u32) {
        self.used.insert(id);
        if id >= self.next && id + 1 < self.limit {
            self.next = id + 1;
        }
    }
}

#[derive(Clone, Debug)]
pub struct IdAllocator {
    services: HashMap<String, u32>,
    service_names: HashMap<u32, String>,
    backends: HashMap<BackendKey, u32>,
    backend_keys: HashMap<u32, BackendKey>,
    service_space: Space,
    backend_space: Space,
    /// Node ids (for `NODE_LOCAL`), by node name.
    nodes: HashMap<String, u32>,
    node_space: Space,
}

/// Node ids are below this (far above any cluster's node count).
const MAX_NODES: u32 = 1 << 20;

impl IdAllocator {
    /// Service ids are below `max_services` (the size of the per-service
    /// counter array); backend ids below `max_backends`.
    pub fn new(max_services: u32, max_backends: u32) -> Self {
        Self {
            services: HashMap::new(),
            service_names: HashMap::new(),
            backends: HashMap::new(),
            backend_keys: HashMap::new(),
            service_space: Space::new(max_services),
            backend_space: Space::new(max_backends),
            nodes: HashMap::new(),
            node_space: Space::new(MAX_NODES),
        }
    }

    /// Adopts every id the maps already use.
    pub fn from_maps(state: &MapState, max_services: u32, max_backends: u32) -> Self {
        let mut ids = Self::new(max_services, max_backends);
        for (&id, name) in &state.names {
            ids.services.insert(name.as_str().to_string(), id);
            ids.service_names.insert(id, name.as_str().to_string());
            ids.service_space.mark(id);
        }
        // Services without a name (an interrupted run) keep their id taken
        // until the plan deletes them.
        for &id in state.services.keys() {
            ids.service_space.mark(id);
        }
        for (&id, b) in &state.backends {
            ids.backends.insert((b.addr, b.port, b.proto), id);
            ids.backend_keys.insert(id, (b.addr, b.port, b.proto));
            ids.backend_space.mark(id);
        }
        // Node ids the maps use stay taken. A node with a node-local set is
        // named by that set's name ("... node:NAME"); the others are matched
        // by address once the Nodes are known (`Renderer::update_nodes`).
        for id in
            state.node_addrs.values().map(|n| n.node_id).chain(state.node_local.keys().map(|k| k.node_id))
        {
            ids.node_space.mark(id);
        }
        for (k, v) in &state.node_local {
            let name = state.names.get(&v.service_id).and_then(|n| {
                socklb_k8s::model::SetName::parse(n.as_str())
                    .and_then(|p| p.policy.strip_prefix("node:"))
                    .map(str::to_string)
            });
            if let Some(name) = name
                && !ids.nodes.contains_key(&name)
            {
                ids.nodes.insert(name, k.node_id);
            }
        }
        ids
    }

    pub fn service(&mut self, name: &str) -> Option<u32> {
        if let Some(&id) = self.services.get(name) {
            return Some(id);
        }
        let id = self.service_space.take()?;
        self.services.insert(name.to_string(), id);
        self.service_names.insert(id, name.to_string());
        Some(id)
    }

    pub fn backend(&mut self, key: BackendKey) -> Option<u32> {
        if let Some(&id) = self.backends.get(&key) {
            return Some(id);
        }
        let id = self.backend_space.take()?;
        self.backends.insert(key, id);
        self.backend_keys.insert(id, key);
        Some(id)
    }

    /// A node's id, allocated on first use.
    pub fn node(&mut self, name: &str) -> Option<u32> {
        if let Some(&id) = self.nodes.get(name) {
            return Some(id);
        }
        let id = self.node_space.take()?;
        self.nodes.insert(name.to_string(), id);
        Some(id)
    }

    pub fn has_node(&self, name: &str) -> bool {
        self.nodes.contains_key(name)
    }

    /// Gives `name` the id the maps hold for it, if no other node has it.
    pub fn adopt_node(&mut self, name: &str, id: u32) {
        if id == 0 || id >= MAX_NODES || self.nodes.values().any(|v| *v == id) {
            return;
        }
        self.node_space.used.insert(id);
        self.nodes.insert(name.to_string(), id);
    }

    /// The id a set name has, if any (without allocating).
    pub fn known_service(&self, name: &str) -> Option<u32> {
        self.services.get(name).copied()
    }

    /// Frees one service id (it is in neither the maps nor the desired state).
    pub fn release_service(&mut self, id: u32) {
        if let Some(name) = self.service_names.remove(&id) {
            self.services.remove(&name);
        }
        self.service_space.used.remove(&id);
    }

    /// Frees one backend id.
    pub fn release_backend(&mut self, id: u32) {
        if let Some(key) = self.backend_keys.remove(&id) {
            self.backends.remove(&key);
        }
        self.backend_space.used.remove(&id);
    }

    /// Forgets ids that are neither in the maps nor wanted.
    pub fn release_unused(&mut self, in_use_services: &BTreeSet<u32>, in_use_backends: &BTreeSet<u32>) {
        self.services.retain(|_, id| in_use_services.contains(id));
        self.service_names.retain(|id, _| in_use_services.contains(id));
        self.service_space.used.retain(|id| in_use_services.contains(id));
        self.backends.retain(|_, id| in_use_backends.contains(id));
        self.backend_keys.retain(|id, _| in_use_backends.contains(id));
        self.backend_space.used.retain(|id| in_use_backends.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use socklb_common::{BackendValue, ServiceName, ServiceValue};

    use super::*;

    #[test]
    fn ids_are_stable_per_name_and_start_at_one() {
        let mut ids = IdAllocator::new(100, 100);
        let a = ids.service("a").expect("id");
        let b = ids.service("b").expect("id");
        assert_eq!(a, 1);
        assert_ne!(a, b);
        assert_eq!(ids.service("a"), Some(a));
    }

    #[test]
    fn a_full_space_says_so() {
        let mut ids = IdAllocator::new(3, 3); // ids 1 and 2
        assert!(ids.service("a").is_some());
        assert!(ids.service("b").is_some());
        assert_eq!(ids.service("c"), None);
    }

    #[test]
    fn freed_ids_are_not_reused_at_once() {
        let mut ids = IdAllocator::new(100, 100);
        let a = ids.service("a").expect("id");
        ids.release_unused(&BTreeSet::new(), &BTreeSet::new());
        let b = ids.service("b").expect("id");
        assert_ne!(a, b);
    }

    #[test]
    fn a_restart_reuses_the_ids_found_in_the_maps() {
        let mut state = MapState::default();
        state.services.insert(7, ServiceValue::default());
        state.names.insert(7, ServiceName::new("default/web:80/TCP ipv4 cluster"));
        let b = BackendValue { addr: [0, 0, 0, 1], port: 80, proto: 6, flags: 0 };
        state.backends.insert(42, b);
        let mut ids = IdAllocator::from_maps(&state, 100, 100);
        assert_eq!(ids.service("default/web:80/TCP ipv4 cluster"), Some(7));
        assert_eq!(ids.backend((b.addr, b.port, b.proto)), Some(42));
        let fresh = ids.service("other").expect("id");
        assert!(fresh != 7, "a used id is never handed out again");
    }
}
