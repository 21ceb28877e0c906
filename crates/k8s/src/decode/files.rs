//! Kubernetes objects from YAML, as `kubectl get svc,endpointslices -A -o
//! yaml` prints them: a `kind: List`, or documents separated by `---`.
//! JSON (`-o json`) is read too, with a parser several times faster, which
//! matters for files of 100k services.
//!
//! A syntax error anywhere rejects the whole text (with its line), so that a
//! file caught half-written never replaces a good state. An object that is
//! well-formed YAML but not a valid Service or EndpointSlice is skipped with
//! a problem naming it and the offending field.

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::{
    decode::{
        json_list,
        node::{IngestedNode, NodeObject, ingest_node},
        objects::{EndpointSlice, Service},
    },
    model::{Problem, problem::ProblemKind},
};

#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// `kind: Node` (`kubectl get nodes -o yaml`), decoded compactly.
    pub nodes: Vec<NodeObject>,
}

/// One object of a file, decoded.
#[derive(Clone, Debug)]
pub enum Object {
    Service(Box<Service>),
    Slice(Box<EndpointSlice>),
    Node(Box<IngestedNode>),
}

/// Checks that a JSON text is well-formed from end to end, without keeping
/// any of it; returns a hash of it (to skip a file that did not change).
/// A half-written file is refused here, before any of it is used. A
/// `kind: List` is checked item by item from memory (see `json_list`).
pub fn check_json<R: std::io::Read + std::io::Seek>(mut reader: R) -> Result<u64, SyntaxError> {
    use std::hash::Hasher;
    let mut hash = super::json_delta::text_hasher();
    let shape = json_list::for_each_item(
        &mut reader,
        |item, at| {
            serde_json::from_slice::<serde::de::IgnoredAny>(item)
                .map(|_| ())
                .map_err(|e| at.error_in_item(&e))
        },
        |bytes| hash.write(bytes),
    )?;
    match shape {
        json_list::Shape::List => Ok(hash.finish()),
        json_list::Shape::NotAList => {
            reader.rewind().map_err(|e| SyntaxError { line: 1, column: 1, message: e.to_string() })?;
            check_json_general(reader)
        }
    }
}

/// Reads a JSON file object by object: a `kind: List` is streamed (each
/// item decoded into its compact form and handed to `each` before the next
/// is read), so a file of 100k services never exists as a whole in memory.
/// Returns the problems of objects that could not be decoded.
pub fn stream_json<R: std::io::Read + std::io::Seek>(
    mut reader: R,
    mut each: impl FnMut(Object),
) -> Result<Vec<Problem>, SyntaxError> {
    let mut problems = Vec::new();
    let shape = json_list::for_each_item(
        &mut reader,
        |item, _| {
            decode_json_item(item, &mut each, &mut problems);
            Ok(())
        },
        |_| {},
    )?;
    match shape {
        json_list::Shape::List => Ok(problems),
        json_list::Shape::NotAList => {
            reader.rewind().map_err(|e| SyntaxError { line: 1, column: 1, message: e.to_string() })?;
            stream_json_general(reader, each)
        }
    }
}

/// Checks that a JSON text is well-formed from end to end, without keeping
/// any of it; returns a hash of it (to skip a file that did not change).
/// A half-written file is refused here, before any of it is used.
fn check_json_general(reader: impl std::io::Read) -> Result<u64, SyntaxError> {
    use std::hash::Hasher;
    struct Hashing<R> {
        inner: R,
        hash: std::collections::hash_map::DefaultHasher,
    }
    impl<R: std::io::Read> std::io::Read for Hashing<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.hash.write(&buf[..n]);
            Ok(n)
        }
    }
    // The hash sees the buffer's refills, not serde_json's byte reads.
    let mut r = std::io::BufReader::new(Hashing { inner: reader, hash: Default::default() });
    let mut de = serde_json::Deserializer::from_reader(&mut r);
    serde::de::IgnoredAny::deserialize(&mut de).map_err(json_error)?;
    de.end().map_err(json_error)?;
    drop(de);
    Ok(r.into_inner().hash.finish())
}

fn json_error(e: serde_json::Error) -> SyntaxError {
    SyntaxError { line: e.line(), column: e.column(), message: e.to_string() }
}

/// Reads a JSON file object by object: a `kind: List` is streamed (each
/// item decoded into its compact form and handed to `each` before the next
/// is read), so a file of 100k services never exists as a whole in memory.
/// Returns the problems of objects that could not be decoded.
fn stream_json_general(
    reader: impl std::io::Read,
    mut each: impl FnMut(Object),
) -> Result<Vec<Problem>, SyntaxError> {
    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde_json::value::RawValue;

    struct Items<'a, F>(&'a mut F, &'a mut Vec<Problem>);
    impl<'de, F: FnMut(Object)> DeserializeSeed<'de> for Items<'_, F> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de, F: FnMut(Object)> Visitor<'de> for Items<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of objects")
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
                decode_json_item(raw.get().as_bytes(), self.0, self.1);
            }
            Ok(())
        }
    }
    struct Top<'a, F>(&'a mut F, &'a mut Vec<Problem>);
    impl<'de, F: FnMut(Object)> Visitor<'de> for Top<'_, F> {
        /// The fields other than `items` (a single object), as raw JSON.
        type Value = Vec<(String, Box<RawValue>)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a Kubernetes object or list")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut rest = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                if key == "items" {
                    map.next_value_seed(Items(&mut *self.0, &mut *self.1))?;
                } else {
                    rest.push((key, map.next_value::<Box<RawValue>>()?));
                }
            }
            Ok(rest)
        }
    }
    let mut problems = Vec::new();
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(reader));
    let rest =
        serde::Deserializer::deserialize_map(&mut de, Top(&mut each, &mut problems)).map_err(json_error)?;
    de.end().map_err(json_error)?;
    // Not a list: the text was one object; put it back together.
    if !rest.iter().any(|(k, _)| k == "items") && rest.iter().any(|(k, _)| k == "kind") {
        let fields: Vec<String> = rest
            .iter()
            .map(|(k, v)| format!("{}:{}", serde_json::Value::from(k.as_str()), v.get()))
            .collect();
        let text = format!("{{{}}}", fields.join(","));
        decode_json_item(text.as_bytes(), &mut each, &mut problems);
    }
    Ok(problems)
}

/// Decodes one JSON object of a list into its kind's compact form.
pub fn decode_json_item(raw: &[u8], each: &mut impl FnMut(Object), problems: &mut Vec<Problem>) {
    #[derive(serde::Deserialize, Default)]
    struct Meta {
        name: Option<String>,
        namespace: Option<String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        #[serde(default)]
        kind: String,
        #[serde(default)]
        api_version: String,
        #[serde(default)]
        metadata: Option<Meta>,
    }
    let Ok(head) = serde_json::from_slice::<Head>(raw) else {
        problems.push(Problem::new(
            ProblemKind::Malformed,
            "object in the list",
            "(object)",
            "not a Kubernetes object",
        ));
        return;
    };
    let meta = head.metadata.unwrap_or_default();
    let (ns, name) =
        (meta.namespace.unwrap_or_else(|| "default".into()), meta.name.unwrap_or_else(|| "<unnamed>".into()));
    match (head.api_version.as_str(), head.kind.as_str()) {
        ("v1", "Service") => {
            if let Some(svc) = decode_raw::<Service>(raw, "Service", &ns, &name, problems) {
                each(Object::Service(Box::new(svc)));
            }
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            if let Some(slice) = decode_raw::<EndpointSlice>(raw, "EndpointSlice", &ns, &name, problems) {
                each(Object::Slice(Box::new(slice)));
            }
        }
        ("v1", "Node") => {
            if let Some(node) = decode_raw::<NodeObject>(raw, "Node", &ns, &name, problems)
                && let Some(node) = ingest_node(&node)
            {
                each(Object::Node(Box::new(node)));
            }
        }
        (api, kind) => tracing::debug!(api, kind, "ignoring object of another kind"),
    }
}

/// Every object of a text, sorted by kind (tests, small inputs).
#[derive(Clone, Debug, Default)]
pub struct All {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<IngestedNode>,
}

/// Reads every object of a YAML or JSON text at once.
pub fn read_all(text: &str) -> Result<(All, Vec<Problem>), SyntaxError> {
    let mut all = All::default();
    let problems = read_objects(text, |o| match o {
        Object::Service(s) => all.services.push(*s),
        Object::Slice(s) => all.slices.push(*s),
        Object::Node(n) => all.nodes.push(*n),
    })?;
    Ok((all, problems))
}

/// Every object of a YAML or JSON text (small files, tests).
pub fn read_objects(text: &str, mut each: impl FnMut(Object)) -> Result<Vec<Problem>, SyntaxError> {
    if text.trim_start().starts_with('{') {
        return stream_json(std::io::Cursor::new(text.as_bytes()), each);
    }
    let (objects, problems) = parse_objects(text)?;
    for s in objects.services {
        each(Object::Service(Box::new(s)));
    }
    for s in objects.slices {
        each(Object::Slice(Box::new(s)));
    }
    for n in objects.nodes.iter().filter_map(ingest_node) {
        each(Object::Node(Box::new(n)));
    }
    Ok(problems)
}

/// The problem of an object that does not decode, naming the field.
fn malformed<E: std::fmt::Display>(
    e: serde_path_to_error::Error<E>,
    kind: &str,
    ns: &str,
    name: &str,
) -> Problem {
    let field = e.path().to_string();
    Problem::new(ProblemKind::Malformed, format!("{kind} {ns}/{name}"), field, e.into_inner().to_string())
}

fn decode_raw<T: serde::de::DeserializeOwned>(
    raw: &[u8],
    kind: &str,
    ns: &str,
    name: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    // The plain decode is fast; the path of a bad field is worth a second
    // decode only when there is one.
    if let Ok(obj) = serde_json::from_slice::<T>(raw) {
        return Some(obj);
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(obj) => Some(obj),
        Err(e) => {
            problems.push(malformed(e, kind, ns, name));
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

fn syntax_error(e: &serde_yaml_ng::Error) -> SyntaxError {
    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    SyntaxError { line, column, message: e.to_string() }
}

/// Parses every document; objects of other kinds are ignored.
pub fn parse_objects(text: &str) -> Result<(Objects, Vec<Problem>), SyntaxError> {
    if text.trim_start().starts_with('{') {
        return parse_json(text);
    }
    let mut values = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| syntax_error(&e))?;
        values.push(value);
    }
    let mut objects = Objects::default();
    let mut problems = Vec::new();
    for value in values {
        collect(value, &mut objects, &mut problems);
    }
    Ok((objects, problems))
}

fn parse_json(text: &str) -> Result<(Objects, Vec<Problem>), SyntaxError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| SyntaxError {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let mut objects = Objects::default();
    let mut problems = Vec::new();
    let items = match value {
        serde_json::Value::Object(mut o) if o.get("items").is_some_and(|i| i.is_array()) => {
            match o.remove("items") {
                Some(serde_json::Value::Array(items)) => items,
                _ => Vec::new(),
            }
        }
        other => vec![other],
    };
    for item in items {
        let kind = item.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let api = item.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let ns =
            item.pointer("/metadata/namespace").and_then(|v| v.as_str()).unwrap_or("default").to_string();
        let name = item.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or("<unnamed>").to_string();
        match (api.as_str(), kind.as_str()) {
            ("v1", "Service") => {
                if let Some(o) = decode_json(item, "Service", &ns, &name, &mut problems) {
                    objects.services.push(o);
                }
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                if let Some(o) = decode_json(item, "EndpointSlice", &ns, &name, &mut problems) {
                    objects.slices.push(o);
                }
            }
            ("v1", "Node") => {
                if let Some(o) = decode_json(item, "Node", &ns, &name, &mut problems) {
                    objects.nodes.push(o);
                }
            }
            _ => tracing::debug!(api, kind, "ignoring object of another kind"),
        }
    }
    Ok((objects, problems))
}

fn decode_json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    kind: &str,
    ns: &str,
    name: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(obj) => Some(obj),
        Err(e) => {
            problems.push(malformed(e, kind, ns, name));
            None
        }
    }
}

fn str_field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn collect(value: Value, objects: &mut Objects, problems: &mut Vec<Problem>) {
    if value.is_null() {
        return; // an empty document
    }
    let kind = str_field(&value, &["kind"]).unwrap_or_default().to_string();
    let api = str_field(&value, &["apiVersion"]).unwrap_or_default().to_string();
    match (api.as_str(), kind.as_str()) {
        (_, "List") | (_, "ServiceList") | (_, "EndpointSliceList") | (_, "NodeList") => {
            if let Some(Value::Sequence(items)) = value.get("items").cloned() {
                for item in items {
                    collect(item, objects, problems);
                }
            }
        }
        ("v1", "Service") => {
            if let Some(svc) = decode::<Service>(value, "Service", problems) {
                objects.services.push(svc);
            }
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            if let Some(slice) = decode::<EndpointSlice>(value, "EndpointSlice", problems) {
                objects.slices.push(slice);
            }
        }
        ("v1", "Node") => {
            if let Some(node) = decode::<NodeObject>(value, "Node", problems) {
                objects.nodes.push(node);
            }
        }
        _ => tracing::debug!(api, kind, "ignoring object of another kind"),
    }
}

/// Decodes one object, naming the field that does not fit.
fn decode<T: serde::de::DeserializeOwned>(
    value: Value,
    kind: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let ns = str_field(&value, &["metadata", "namespace"]).unwrap_or("default").to_string();
    let name = str_field(&value, &["metadata", "name"]).unwrap_or("<unnamed>").to_string();
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(obj) => Some(obj),
        Err(e) => {
            let field = e.path().to_string();
            problems.push(Problem::new(
                ProblemKind::Malformed,
                format!("{kind} {ns}/{name}"),
                if field == "." { String::from("(object)") } else { field },
                e.into_inner().to_string(),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: default}
  spec:
    clusterIP: 10.96.0.10
    ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-abc
    namespace: default
    labels: {kubernetes.io/service-name: web}
  addressType: IPv4
  endpoints: [{addresses: [10.244.0.1]}]
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Endpoints
  metadata: {name: web, namespace: default}
"#;

    #[test]
    fn a_kubectl_list_yields_services_and_slices_and_ignores_other_kinds() {
        let (objs, problems) = parse_objects(LIST).expect("valid yaml");
        assert_eq!(objs.services.len(), 1);
        assert_eq!(objs.slices.len(), 1);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn kubectl_json_is_read_too() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default"},"spec":{"clusterIP":"10.96.0.10"}},
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"bad","namespace":"default"},"spec":{"ports":[{"port":"x"}]}}]}"#;
        let (objs, problems) = parse_objects(text).expect("valid json");
        assert_eq!(objs.services.len(), 1);
        assert_eq!(problems[0].field, "spec.ports[0].port");
        let err = parse_objects("{\n \"kind\": ").expect_err("broken json");
        assert_eq!(err.line, 2);
    }

    #[test]
    fn json_is_streamed_object_by_object_with_the_same_problems() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default"},"spec":{"clusterIP":"10.96.0.10","ports":[{"port":80}]}},
            {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"web-1","namespace":"default","labels":{"kubernetes.io/service-name":"web"}},"addressType":"IPv4","endpoints":[{"addresses":["10.244.0.1"]}]},
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"bad","namespace":"default"},"spec":{"ports":[{"port":"x"}]}},
            {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}]}"#;
        let (mut services, mut slices) = (0, 0);
        let problems = stream_json(std::io::Cursor::new(text.as_bytes()), |o| match o {
            Object::Service(_) => services += 1,
            Object::Slice(_) => slices += 1,
            Object::Node(_) => {}
        })
        .expect("valid json");
        assert_eq!((services, slices), (1, 1));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].object, "Service default/bad");
        assert_eq!(problems[0].field, "spec.ports[0].port");
    }

    #[test]
    fn one_json_object_is_read_and_a_broken_file_is_refused_before_anything_is_used() {
        let one = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},"spec":{"clusterIP":"10.96.0.10"}}"#;
        let mut n = 0;
        stream_json(std::io::Cursor::new(one.as_bytes()), |_| n += 1).expect("valid json");
        assert_eq!(n, 1);
        let broken =
            r#"{"kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}},"#;
        let err = check_json(std::io::Cursor::new(broken.as_bytes())).expect_err("half written");
        assert_eq!(err.line, 1);
        assert_eq!(
            check_json(std::io::Cursor::new(one.as_bytes())).ok(),
            check_json(std::io::Cursor::new(one.as_bytes())).ok(),
            "the hash is stable"
        );
    }

    #[test]
    fn multi_document_yaml_is_read_too() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1}\n---\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n";
        let (objs, _) = parse_objects(text).expect("valid yaml");
        assert_eq!(objs.services.len(), 2);
    }

    #[test]
    fn a_syntax_error_names_the_line() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n";
        let err = parse_objects(text).expect_err("broken yaml");
        assert!(err.line >= 4, "{err}");
        assert!(err.to_string().starts_with("line "), "{err}");
    }

    #[test]
    fn an_object_with_a_wrong_field_type_is_skipped_by_name_and_field() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: prod}
spec:
  ports: [{port: "eighty"}]
---
apiVersion: v1
kind: Service
metadata: {name: good, namespace: prod}
spec: {clusterIP: 10.96.0.2}
"#;
        let (objs, problems) = parse_objects(text).expect("valid yaml");
        assert_eq!(objs.services.len(), 1, "the good one stays");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].object, "Service prod/bad");
        assert_eq!(problems[0].field, "spec.ports[0].port");
    }
}
