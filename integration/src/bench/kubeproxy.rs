//! kube-proxy's rule layouts, generated for a benchmark workload, so that the
//! iptables and nftables peers run exactly what kube-proxy would program
//! (pkg/proxy/iptables/proxier.go, pkg/proxy/nftables/proxier.go).

use std::fmt::Write;

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use super::workload::Workload;

/// The pod CIDR kube-proxy is told about (`--cluster-cidr`): traffic from
/// outside it is marked for masquerade.
pub const CLUSTER_CIDR: &str = "10.128.0.0/9";

/// kube-proxy's `portProtoHash`: base32(sha256(name + protocol))[:16].
pub fn port_proto_hash(service_port_name: &str, protocol: &str) -> String {
    let digest = Sha256::digest(format!("{service_port_name}{protocol}").as_bytes());
    BASE32.encode(&digest)[..16].to_string()
}

fn svc_chain(name: &str, proto: &str) -> String {
    format!("KUBE-SVC-{}", port_proto_hash(name, proto))
}

fn sep_chain(name: &str, proto: &str, endpoint: &str) -> String {
    format!("KUBE-SEP-{}", port_proto_hash(&format!("{name}{proto}{endpoint}"), ""))
}

/// The iptables-restore input for the workload (nat and filter tables).
pub fn iptables_restore(w: &Workload) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for s in w.services() {
        let name = format!("{}/{}:{}", s.namespace, s.name, s.port_name);
        let proto = s.proto;
        let p = proto.to_lowercase();
        let svc = svc_chain(&name, proto);
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} -j {svc}",
            s.vip, s.port
        );
        let _ = writeln!(
            rules,
            "-A {svc} -m comment --comment \"{name} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
            s.vip, s.port
        );
        if let Some(np) = s.node_port {
            // externalTrafficPolicy Cluster: KUBE-NODEPORTS -> KUBE-EXT -> KUBE-SVC.
            let ext = format!("KUBE-EXT-{}", port_proto_hash(&name, proto));
            let _ = writeln!(chains, ":{ext} - [0:0]");
            let _ = writeln!(
                rules,
                "-A KUBE-NODEPORTS -m comment --comment {name} -m {p} -p {p} --dport {np} -j {ext}"
            );
            let _ = writeln!(
                rules,
                "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(rules, "-A {ext} -j {svc}");
        }
        let n = s.endpoints.len();
        for (i, ep) in s.endpoints.iter().enumerate() {
            let endpoint = format!("{ep}:{}", s.target_port);
            let sep = sep_chain(&name, proto, &endpoint);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            if i + 1 < n {
                let probability = 1.0 / (n - i) as f64;
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"{name} -> {endpoint}\" -m statistic --mode random --probability {probability:.10} -j {sep}"
                );
            } else {
                let _ = writeln!(rules, "-A {svc} -m comment --comment \"{name} -> {endpoint}\" -j {sep}");
            }
            let _ = writeln!(rules, "-A {sep} -m comment --comment {name} -s {ep}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(
                rules,
                "-A {sep} -m comment --comment {name} -m {p} -p {p} -j DNAT --to-destination {endpoint}"
            );
        }
    }
    let mut out = String::new();
    out.push_str("*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n");
    out.push_str("-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n");
    out.push_str("-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n");
    out.push_str("-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    out.push_str("COMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    out.push_str(&chains);
    out.push_str("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    out.push_str("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    out.push_str(
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    );
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    out.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    out.push_str(&rules);
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    out.push_str("COMMIT\n");
    out
}

fn nft_base(name: &str) -> String {
    // kube-proxy: a hash prefix keeps chain names unique and short.
    let hash = port_proto_hash(name, "");
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_/".contains(c) { c } else { '_' }).collect();
    format!("{}-{safe}", &hash[..8])
}

fn service_chain(s: &super::workload::Service) -> String {
    format!(
        "service-{}",
        nft_base(&format!("{}/{}/{}/{}", s.namespace, s.name, s.proto.to_lowercase(), s.port_name))
    )
}

fn endpoint_chain(s: &super::workload::Service, ep: &std::net::Ipv4Addr) -> String {
    format!(
        "endpoint-{}",
        nft_base(&format!(
            "{}/{}/{}/{}__{ep}/{}",
            s.namespace,
            s.name,
            s.proto.to_lowercase(),
            s.port_name,
            s.target_port
        ))
    )
}

/// The `nft -f` input for the workload: table `ip kube-proxy`.
pub fn nftables(w: &Workload) -> String {
    nftables_with(w, false)
}

/// [`nftables`], optionally with a `counter` at the head of every service
/// and external chain (kube-proxy has none; tests count packets with them).
pub fn nftables_with(w: &Workload, counters: bool) -> String {
    let mut out = String::new();
    out.push_str("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n");
    out.push_str("flush table ip kube-proxy\n");
    out.push_str("add chain ip kube-proxy mark-for-masquerade\n");
    out.push_str("add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n");
    out.push_str("add chain ip kube-proxy masquerading\n");
    out.push_str("add rule ip kube-proxy masquerading mark and 0x4000 == 0 return\n");
    out.push_str("add rule ip kube-proxy masquerading mark set mark xor 0x4000\n");
    out.push_str("add rule ip kube-proxy masquerading masquerade fully-random\n");
    out.push_str("add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }\n");
    out.push_str("add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }\n");
    out.push_str("add chain ip kube-proxy services\n");
    out.push_str("add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n");
    out.push_str("add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n");
    out.push_str("add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n");
    out.push_str("add rule ip kube-proxy nat-prerouting jump services\n");
    out.push_str("add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n");
    out.push_str("add rule ip kube-proxy nat-output jump services\n");
    out.push_str("add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }\n");
    out.push_str("add rule ip kube-proxy nat-postrouting jump masquerading\n");
    for s in w.services() {
        out.push_str(&service_chains_with(s, counters));
    }
    out
}

/// The chains and the map element of one service (also what an incremental
/// update of that service rewrites).
pub fn service_chains(s: &super::workload::Service) -> String {
    service_chains_with(s, false)
}

fn service_chains_with(s: &super::workload::Service, counters: bool) -> String {
    let mut out = String::new();
    let p = s.proto.to_lowercase();
    let svc = service_chain(s);
    let _ = writeln!(out, "add chain ip kube-proxy {svc}");
    let _ = writeln!(out, "flush chain ip kube-proxy {svc}");
    if counters {
        let _ = writeln!(out, "add rule ip kube-proxy {svc} ip daddr {} {p} dport {} counter", s.vip, s.port);
    }
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {svc} ip daddr {} {p} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        s.vip, s.port
    );
    let mut arms = Vec::new();
    for (i, ep) in s.endpoints.iter().enumerate() {
        let ec = endpoint_chain(s, ep);
        let _ = writeln!(out, "add chain ip kube-proxy {ec}");
        let _ = writeln!(out, "flush chain ip kube-proxy {ec}");
        let _ = writeln!(out, "add rule ip kube-proxy {ec} ip saddr {ep} jump mark-for-masquerade");
        let _ = writeln!(out, "add rule ip kube-proxy {ec} meta l4proto {p} dnat to {ep}:{}", s.target_port);
        arms.push(format!("{i} : goto {ec}"));
    }
    if !arms.is_empty() {
        let _ = writeln!(
            out,
            "add rule ip kube-proxy {svc} numgen random mod {} vmap {{ {} }}",
            arms.len(),
            arms.join(" , ")
        );
    }
    let _ = writeln!(
        out,
        "add element ip kube-proxy service-ips {{ {} . {p} . {} : goto {svc} }}",
        s.vip, s.port
    );
    if let Some(np) = s.node_port {
        // externalTrafficPolicy Cluster: masquerade, then the service chain.
        let ext = svc.replacen("service-", "external-", 1);
        let _ = writeln!(out, "add chain ip kube-proxy {ext}");
        let _ = writeln!(out, "flush chain ip kube-proxy {ext}");
        if counters {
            let _ = writeln!(out, "add rule ip kube-proxy {ext} counter");
        }
        let _ = writeln!(out, "add rule ip kube-proxy {ext} jump mark-for-masquerade");
        let _ = writeln!(out, "add rule ip kube-proxy {ext} goto {svc}");
        let _ = writeln!(out, "add element ip kube-proxy service-nodeports {{ {p} . {np} : goto {ext} }}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sixteen_base32_characters() {
        let h = port_proto_hash("default/web:http", "tcp");
        assert_eq!(h.len(), 16);
        assert!(h.chars().all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)));
    }

    #[test]
    fn iptables_layout_has_one_portal_rule_per_service_and_probabilities() {
        let w = Workload::new(3, 2);
        let text = iptables_restore(&w);
        let portals =
            text.lines().filter(|l| l.starts_with("-A KUBE-SERVICES") && l.contains("cluster IP")).count();
        assert_eq!(portals, 3 + 1, "TCP services plus the UDP one");
        assert!(text.contains("--probability 0.5000000000 "));
        assert!(text.contains("-j DNAT --to-destination"));
        assert!(text.ends_with("COMMIT\n"));
    }

    #[test]
    fn nftables_layout_uses_a_verdict_map_and_numgen() {
        let w = Workload::new(2, 3);
        let text = nftables(&w);
        assert_eq!(text.matches("add element ip kube-proxy service-ips").count(), 3);
        assert!(text.contains("numgen random mod 3 vmap"));
    }
}
