//! The deployment manifests against the binary: every manifest parses, the
//! DaemonSet's flags exist in `socklb agent --help`, the RBAC covers exactly
//! what the agent watches, and the probes hit the paths and port it serves.

use std::{collections::BTreeMap, path::Path, process::Command};

use serde_yaml_ng::Value;

fn manifests() -> BTreeMap<String, Vec<Value>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("manifests/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .filter(|v: &Value| !v.is_null())
            .collect();
        out.insert(path.file_name().expect("name").to_string_lossy().into_owned(), docs);
    }
    out
}

fn objects(kind: &str) -> Vec<Value> {
    manifests().into_values().flatten().filter(|v| v["kind"].as_str() == Some(kind)).collect()
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_sequence().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_string)).collect()
}

#[test]
fn every_manifest_parses_and_kustomization_lists_them_all() {
    let all = manifests();
    let kustomization = &all["kustomization.yaml"][0];
    let listed = str_list(&kustomization["resources"]);
    for name in all.keys().filter(|n| *n != "kustomization.yaml") {
        assert!(listed.contains(name), "{name} is not in kustomization.yaml");
    }
    for doc in all.values().flatten() {
        assert!(doc["kind"].as_str().is_some(), "a manifest without kind: {doc:?}");
    }
}

#[test]
fn rbac_is_exactly_get_list_watch_on_services_endpointslices_and_nodes() {
    let roles = objects("ClusterRole");
    assert_eq!(roles.len(), 1);
    let mut granted: Vec<(String, String, Vec<String>)> = Vec::new();
    for rule in roles[0]["rules"].as_sequence().expect("rules") {
        let mut verbs = str_list(&rule["verbs"]);
        verbs.sort();
        for group in str_list(&rule["apiGroups"]) {
            for resource in str_list(&rule["resources"]) {
                granted.push((group.clone(), resource, verbs.clone()));
            }
        }
    }
    granted.sort();
    let read = vec!["get".to_string(), "list".to_string(), "watch".to_string()];
    assert_eq!(
        granted,
        vec![
            (String::new(), "nodes".into(), read.clone()),
            (String::new(), "services".into(), read.clone()),
            ("discovery.k8s.io".into(), "endpointslices".into(), read),
        ],
        "the agent watches these and nothing else (agent/src/source/kube.rs)"
    );
    let binding = &objects("ClusterRoleBinding")[0];
    assert_eq!(binding["roleRef"]["name"].as_str(), roles[0]["metadata"]["name"].as_str());
    let sa = &objects("ServiceAccount")[0];
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
}

/// The DaemonSet's agent arguments with `$(VAR)` resolved from the ConfigMap.
fn agent_args() -> (Vec<String>, Value) {
    let ds = objects("DaemonSet").remove(0);
    let config = objects("ConfigMap").remove(0);
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for env in container["env"].as_sequence().expect("env") {
        let name = env["name"].as_str().expect("name").to_string();
        if let Some(key) = env["valueFrom"]["configMapKeyRef"]["key"].as_str() {
            let value = config["data"][key].as_str().unwrap_or_else(|| panic!("ConfigMap lacks {key}"));
            vars.insert(name, value.to_string());
        } else if let Some(v) = env["value"].as_str() {
            vars.insert(name, v.to_string());
        }
    }
    let args = str_list(&container["args"])
        .into_iter()
        .map(|a| {
            let mut a = a;
            for (k, v) in &vars {
                a = a.replace(&format!("$({k})"), v);
            }
            assert!(!a.contains("$("), "unresolved variable in {a}");
            a
        })
        .collect();
    (args, container.clone())
}

#[test]
fn the_daemonset_flags_exist_and_its_probes_match_the_agent() {
    let (args, container) = agent_args();
    assert_eq!(args[0], "agent");
    let help = Command::new(env!("CARGO_BIN_EXE_socklb"))
        .args(["agent", "--help"])
        .output()
        .expect("socklb agent --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in &args[1..] {
        let flag = arg.split('=').next().expect("flag");
        assert!(help.contains(&format!("{flag} ")), "{flag} is not a flag of `socklb agent`");
    }
    // The whole command line parses (values included).
    let check = Command::new(env!("CARGO_BIN_EXE_socklb")).args(&args).arg("--help").output().expect("parse");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    let metrics = args.iter().find_map(|a| a.strip_prefix("--metrics-addr=")).expect("--metrics-addr");
    let listen = socklb::http::parse_listen(metrics, Some("192.0.2.1")).expect("--metrics-addr parses");
    for (probe, path) in [("livenessProbe", socklb::http::HEALTHZ), ("readinessProbe", socklb::http::READYZ)]
    {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        let host: std::net::IpAddr = get["host"].as_str().expect("host").parse().expect("ip");
        let port = get["port"].as_u64().expect("port") as u16;
        assert!(
            listen.contains(&std::net::SocketAddr::new(host, port)),
            "{probe}: the agent listens on {listen:?}, not {host}:{port}"
        );
    }
    let ds = objects("DaemonSet").remove(0);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    assert_eq!(pod["priorityClassName"].as_str(), Some("system-node-critical"));
    assert_eq!(pod["tolerations"][0]["operator"].as_str(), Some("Exists"));
    assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"].as_u64(), Some(1));
    let caps = str_list(&container["securityContext"]["capabilities"]["add"]);
    for cap in ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON"] {
        assert!(caps.contains(&cap.to_string()), "missing capability {cap}");
    }
    assert_eq!(container["securityContext"]["privileged"].as_bool(), Some(false));
    let node_name =
        container["env"].as_sequence().expect("env").iter().find(|e| e["name"].as_str() == Some("NODE_NAME"));
    assert_eq!(
        node_name.map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str()),
        Some(Some("spec.nodeName"))
    );
    let mounts: Vec<String> = container["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str().map(str::to_string))
        .collect();
    assert!(mounts.contains(&"/sys/fs/bpf".to_string()));
    assert!(
        args.iter().any(|a| a.starts_with("--cgroup=") && mounts.iter().any(|m| a.ends_with(m.as_str())))
    );
    assert!(container["resources"]["requests"].is_mapping() && container["resources"]["limits"].is_mapping());
}

#[test]
fn the_init_container_prepares_the_mounts_the_agent_uses() {
    let (args, container) = agent_args();
    let ds = objects("DaemonSet").remove(0);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true), "node-init enters PID 1's mount namespace");
    let init = &pod["initContainers"][0];
    let command = str_list(&init["command"]);
    assert_eq!(command[1..], ["node-init"], "node-init with its defaults");
    assert_eq!(init["securityContext"]["privileged"].as_bool(), Some(true));
    // node-init's defaults are where the agent looks.
    let help =
        Command::new(env!("CARGO_BIN_EXE_socklb")).args(["node-init", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("[default: /run/socklb/cgroupv2]") && help.contains("[default: /sys/fs/bpf]"),
        "{help}"
    );
    assert!(args.contains(&"--cgroup=/run/socklb/cgroupv2".to_string()), "{args:?}");
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let host_path = |name: &str| {
        volumes.iter().find(|v| v["name"].as_str() == Some(name)).and_then(|v| v["hostPath"]["path"].as_str())
    };
    assert_eq!(host_path("cgroup"), Some("/run/socklb/cgroupv2"));
    assert_eq!(host_path("bpffs"), Some("/sys/fs/bpf"));
    for m in container["volumeMounts"].as_sequence().expect("mounts") {
        assert_eq!(m["mountPropagation"].as_str(), Some("HostToContainer"), "{m:?}");
    }
}

#[test]
fn the_config_map_defaults_are_the_ones_a_fleet_wants() {
    let config = objects("ConfigMap").remove(0);
    let data = &config["data"];
    assert_eq!(data["nodeport-addresses"].as_str(), Some("primary"));
    assert_eq!(data["mode"].as_str(), Some("serve"));
    assert_eq!(data["k8s-api-server"].as_str(), Some(""), "set per cluster (docs/deploy.md)");
    let (_, container) = agent_args();
    let env_keys: Vec<&str> = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .filter_map(|e| e["valueFrom"]["configMapKeyRef"]["key"].as_str())
        .collect();
    for key in data.as_mapping().expect("data").keys().filter_map(|k| k.as_str()) {
        assert!(env_keys.contains(&key), "ConfigMap key {key} reaches no flag");
    }
}
