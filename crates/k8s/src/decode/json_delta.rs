//! Reloading a JSON list without decoding what did not change.
//!
//! A file source reads its whole file again on every change, and decoding
//! 10k Services and their slices costs hundreds of milliseconds. What an
//! edit changes is usually a few items. So the last load is remembered as
//! one pair of hashes per item (its bytes, and the key of the object it
//! became: 16 bytes, not the object), and a reload hashes every item but
//! decodes only those whose bytes are new. Unchanged bytes were valid
//! before, so they need no second check.
//!
//! An item that disappeared is a change of the same object when a new item
//! has its key; otherwise it is a removal, and since only the key's hash is
//! remembered, the caller reads the file whole (a replace) instead. So are a
//! text that is not a list and a reload that changes too much.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    io::Read,
};

use super::{
    files::{Object, SyntaxError, decode_json_item},
    json_list::{self, Shape},
};
use crate::model::Problem;

/// Past this many changed items a reload is read whole: a delta is for
/// edits, and its objects wait in memory until the text is known good.
pub const MAX_DELTA: usize = 1024;

/// The items of the last load: content hash to key hash (0: the item did
/// not become an object).
#[derive(Clone, Debug, Default)]
pub struct ListMemory {
    items: HashMap<u64, u64>,
}

/// What a reload found.
#[derive(Debug)]
pub enum Reload {
    /// Only these objects are new or changed; nothing was removed.
    Delta { objects: Vec<Object>, problems: Vec<Problem>, memory: ListMemory, text_hash: u64 },
    /// Nothing changed at all.
    Same { text_hash: u64 },
    /// Read the text whole instead (a removal, too many changes, not a list).
    Whole,
}

/// The hasher of whole texts (fast; equal hashes skip a reload).
pub fn text_hasher() -> impl Hasher {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x7e47).build_hasher()
}

/// A fixed-seed hash of an item's bytes (the same from run to run).
fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x50c1b).hash_one(bytes)
}

/// The hash of an object's kind and name (never 0).
pub fn key_hash(o: &Object) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match o {
        Object::Service(s) => (0u8, &s.metadata.namespace, &s.metadata.name).hash(&mut h),
        Object::Slice(s) => (1u8, &s.metadata.namespace, &s.metadata.name).hash(&mut h),
        Object::Node(n) => (2u8, &n.name).hash(&mut h),
    }
    h.finish().max(1)
}

impl ListMemory {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Reads a whole list, handing each object to `each`, and remembers it.
    /// `Ok(None)`: the text is not a list (nothing was handed over).
    pub fn load(
        reader: impl Read,
        mut each: impl FnMut(Object),
    ) -> Result<Option<(Vec<Problem>, ListMemory)>, SyntaxError> {
        let mut problems = Vec::new();
        let mut memory = ListMemory::default();
        let shape = json_list::for_each_item(
            reader,
            |item, _| {
                let mut key = 0;
                decode_json_item(
                    item,
                    &mut |o| {
                        key = key_hash(&o);
                        each(o);
                    },
                    &mut problems,
                );
                memory.items.insert(content_hash(item), key);
                Ok(())
            },
            |_| {},
        )?;
        Ok((shape == Shape::List).then_some((problems, memory)))
    }

    /// Reads a changed list, decoding only the items this memory does not
    /// hold. Checks the whole text (structure, and every new item).
    pub fn reload(&self, reader: impl Read) -> Result<Reload, SyntaxError> {
        let mut next: HashMap<u64, u64> = HashMap::with_capacity(self.items.len());
        let mut objects = Vec::new();
        let mut problems = Vec::new();
        let mut text = text_hasher();
        let mut too_many = false;
        let shape = json_list::for_each_item(
            reader,
            |item, at| {
                let h = content_hash(item);
                if let Some(key) = self.items.get(&h) {
                    next.insert(h, *key);
                    return Ok(());
                }
                if objects.len() >= MAX_DELTA {
                    too_many = true;
                    return Ok(());
                }
                serde_json::from_slice::<serde::de::IgnoredAny>(item).map_err(|e| at.error_in_item(&e))?;
                let mut key = 0;
                decode_json_item(
                    item,
                    &mut |o| {
                        key = key_hash(&o);
                        objects.push(o);
                    },
                    &mut problems,
                );
                next.insert(h, key);
                Ok(())
            },
            |bytes| text.write(bytes),
        )?;
        let text_hash = text.finish();
        if shape != Shape::List || too_many {
            return Ok(Reload::Whole);
        }
        if objects.is_empty() && problems.is_empty() && next.len() == self.items.len() {
            return Ok(Reload::Same { text_hash });
        }
        let changed: std::collections::HashSet<u64> = objects.iter().map(key_hash).collect();
        let removed =
            self.items.iter().any(|(h, key)| *key != 0 && !next.contains_key(h) && !changed.contains(key));
        if removed {
            return Ok(Reload::Whole);
        }
        Ok(Reload::Delta { objects, problems, memory: ListMemory { items: next }, text_hash })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, ip: &str) -> String {
        format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}","namespace":"default"}},"spec":{{"clusterIP":"{ip}","ports":[{{"port":80}}]}}}}"#
        )
    }

    fn list(items: &[String]) -> String {
        format!(r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#, items.join(","))
    }

    fn names(objects: &[Object]) -> Vec<String> {
        objects
            .iter()
            .map(|o| match o {
                Object::Service(s) => s.metadata.name.clone().unwrap_or_default(),
                _ => String::new(),
            })
            .collect()
    }

    fn loaded(text: &str) -> ListMemory {
        let mut n = 0;
        let (problems, memory) =
            ListMemory::load(text.as_bytes(), |_| n += 1).expect("valid").expect("a list");
        assert!(problems.is_empty());
        assert_eq!(n, memory.len());
        memory
    }

    #[test]
    fn a_reload_decodes_only_new_and_changed_items() {
        let a = service("a", "10.96.0.1");
        let b = service("b", "10.96.0.2");
        let memory = loaded(&list(&[a.clone(), b.clone()]));
        // b changes, c is added.
        let text = list(&[a.clone(), service("b", "10.96.0.9"), service("c", "10.96.0.3")]);
        let Reload::Delta { objects, memory: next, .. } = memory.reload(text.as_bytes()).expect("valid")
        else {
            panic!("expected a delta");
        };
        assert_eq!(names(&objects), ["b", "c"]);
        assert_eq!(next.len(), 3);
        // The same text again: nothing.
        assert!(matches!(next.reload(text.as_bytes()).expect("valid"), Reload::Same { .. }));
    }

    #[test]
    fn a_removal_a_non_list_or_a_big_change_is_read_whole() {
        let a = service("a", "10.96.0.1");
        let b = service("b", "10.96.0.2");
        let memory = loaded(&list(&[a.clone(), b]));
        assert!(matches!(
            memory.reload(list(std::slice::from_ref(&a)).as_bytes()).expect("valid"),
            Reload::Whole
        ));
        assert!(matches!(memory.reload(a.as_bytes()).expect("valid"), Reload::Whole));
        let many: Vec<String> = (0..MAX_DELTA + 1).map(|i| service(&format!("s{i}"), "10.96.1.1")).collect();
        assert!(matches!(memory.reload(list(&many).as_bytes()).expect("valid"), Reload::Whole));
    }

    #[test]
    fn a_broken_new_item_refuses_the_reload_but_unchanged_items_are_not_checked_again() {
        let a = service("a", "10.96.0.1");
        let memory = loaded(&list(std::slice::from_ref(&a)));
        let broken = format!(r#"{{"apiVersion":"v1","items":[{a},{{"kind": tru}}]}}"#);
        assert!(memory.reload(broken.as_bytes()).is_err());
        let cut = list(&[a.clone(), service("b", "10.96.0.2")]);
        assert!(memory.reload(&cut.as_bytes()[..cut.len() - 3]).is_err());
    }

    #[test]
    fn an_invalid_object_is_a_problem_and_its_removal_needs_no_whole_read() {
        let a = service("a", "10.96.0.1");
        let bad = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"},"spec":{"ports":"no"}}"#
            .to_string();
        let memory = loaded(&list(std::slice::from_ref(&a)));
        let Reload::Delta { objects, problems, memory: next, .. } =
            memory.reload(list(&[a.clone(), bad]).as_bytes()).expect("valid json")
        else {
            panic!("expected a delta");
        };
        assert!(objects.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        // The invalid item goes again: it never was an object.
        assert!(matches!(next.reload(list(&[a]).as_bytes()).expect("valid"), Reload::Delta { .. }));
    }
}
