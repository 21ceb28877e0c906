//! Kubernetes objects from YAML, as `kubectl get svc,endpointslices -A -o
//! yaml` prints them: a `kind: List`, or documents separated by `---`.
//! JSON (`-o json`) is read too, with a parser several times faster, which
//! matters for files of 100k services.
//!
//! A syntax error anywhere rejects the whole text (with its line), so that a
//! file caught half-written never replaces a good state. An object that is
//! well-formed YAML but not a valid Service or EndpointSlice is skipped with
//! a problem naming it and the offending field.

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::{
    decode::node::{IngestedNode, NodeObject, ingest_node},
    model::{Problem, problem::ProblemKind},
    store::{IngestedService, IngestedSlice, ingest_service, ingest_slice},
};

#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// `kind: Node` (`kubectl get nodes -o yaml`), decoded compactly.
    pub nodes: Vec<NodeObject>,
}

/// Validated objects, ready for the store.
#[derive(Clone, Debug, Default)]
pub struct Ingested {
    pub services: Vec<IngestedService>,
    pub slices: Vec<IngestedSlice>,
    pub nodes: Vec<IngestedNode>,
}

/// Parses and validates a file's text. JSON is streamed object by object
/// (each raw object is validated and dropped before the next is decoded), so
/// a file of 100k services never exists as a tree in memory.
pub fn ingest_text(
    text: &str,
    service_proxy_name: Option<&str>,
) -> Result<(Ingested, Vec<Problem>), SyntaxError> {
    let mut out = Ingested::default();
    if !text.trim_start().starts_with('{') {
        let (objects, problems) = parse_objects(text)?;
        out.services = objects.services.iter().map(|s| ingest_service(s, service_proxy_name)).collect();
        out.slices = objects.slices.iter().map(ingest_slice).collect();
        out.nodes = objects.nodes.iter().filter_map(ingest_node).collect();
        return Ok((out, problems));
    }
    #[derive(serde::Deserialize)]
    struct List<'a> {
        #[serde(borrow, default)]
        items: Option<Vec<&'a serde_json::value::RawValue>>,
    }
    let json_error =
        |e: serde_json::Error| SyntaxError { line: e.line(), column: e.column(), message: e.to_string() };
    let whole: &serde_json::value::RawValue = serde_json::from_str(text).map_err(json_error)?;
    let items = match serde_json::from_str::<List<'_>>(whole.get()).map_err(json_error)?.items {
        Some(items) => items,
        None => vec![whole],
    };
    let mut problems = Vec::new();
    for raw in items {
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
        let Ok(head) = serde_json::from_str::<Head>(raw.get()) else {
            problems.push(Problem::new(
                ProblemKind::Malformed,
                "object in the list",
                "(object)",
                "not a Kubernetes object",
            ));
            continue;
        };
        let meta = head.metadata.unwrap_or_default();
        let (ns, name) = (
            meta.namespace.unwrap_or_else(|| "default".into()),
            meta.name.unwrap_or_else(|| "<unnamed>".into()),
        );
        match (head.api_version.as_str(), head.kind.as_str()) {
            ("v1", "Service") => {
                if let Some(svc) = decode_raw::<Service>(raw.get(), "Service", &ns, &name, &mut problems) {
                    out.services.push(ingest_service(&svc, service_proxy_name));
                }
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                if let Some(slice) =
                    decode_raw::<EndpointSlice>(raw.get(), "EndpointSlice", &ns, &name, &mut problems)
                {
                    out.slices.push(ingest_slice(&slice));
                }
            }
            ("v1", "Node") => {
                if let Some(node) = decode_raw::<NodeObject>(raw.get(), "Node", &ns, &name, &mut problems) {
                    out.nodes.extend(ingest_node(&node));
                }
            }
            (api, kind) => tracing::debug!(api, kind, "ignoring object of another kind"),
        }
    }
    Ok((out, problems))
}

fn decode_raw<T: serde::de::DeserializeOwned>(
    raw: &str,
    kind: &str,
    ns: &str,
    name: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let mut de = serde_json::Deserializer::from_str(raw);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(obj) => Some(obj),
        Err(e) => {
            let field = e.path().to_string();
            problems.push(Problem::new(
                ProblemKind::Malformed,
                format!("{kind} {ns}/{name}"),
                field,
                e.into_inner().to_string(),
            ));
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
            let field = e.path().to_string();
            problems.push(Problem::new(
                ProblemKind::Malformed,
                format!("{kind} {ns}/{name}"),
                field,
                e.into_inner().to_string(),
            ));
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
    fn json_is_ingested_object_by_object_with_the_same_problems() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default"},"spec":{"clusterIP":"10.96.0.10","ports":[{"port":80}]}},
            {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"web-1","namespace":"default","labels":{"kubernetes.io/service-name":"web"}},"addressType":"IPv4","endpoints":[{"addresses":["10.244.0.1"]}]},
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"bad","namespace":"default"},"spec":{"ports":[{"port":"x"}]}},
            {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}]}"#;
        let (ingested, problems) = ingest_text(text, None).expect("valid json");
        assert_eq!(ingested.services.len(), 1);
        assert_eq!(ingested.slices.len(), 1);
        assert_eq!(
            ingested.slices[0].service.as_ref().map(ToString::to_string).as_deref(),
            Some("default/web")
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].object, "Service default/bad");
        assert_eq!(problems[0].field, "spec.ports[0].port");
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
