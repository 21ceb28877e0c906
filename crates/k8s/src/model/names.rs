//! Shared strings: node names, zones and port names repeat across
//! thousands of endpoints; each distinct one is allocated once.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

#[derive(Debug, Default)]
pub struct Names {
    set: HashSet<Arc<str>>,
    /// Node names by a 4-byte id (endpoints hold the id; 0 is none).
    nodes: Vec<Arc<str>>,
    node_ids: HashMap<Arc<str>, u32>,
}

impl Names {
    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.set.insert(a.clone());
        a
    }

    /// The id of a node name (from 1).
    pub fn node_id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.node_ids.get(name) {
            return *id;
        }
        let a = self.intern(name);
        self.nodes.push(a.clone());
        let id = self.nodes.len() as u32;
        self.node_ids.insert(a, id);
        id
    }

    /// The node name of an id.
    pub fn node(&self, id: u32) -> Option<&Arc<str>> {
        id.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    /// Forgets names nothing else holds any more (after a big change).
    /// Node names keep their ids (there are as many as nodes).
    pub fn trim(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_allocated_once_and_forgotten_when_unused() {
        let mut n = Names::default();
        let a = n.intern("node-1");
        let b = n.intern("node-1");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        n.intern("node-2");
        n.trim();
        assert_eq!(n.len(), 0);
    }
}
