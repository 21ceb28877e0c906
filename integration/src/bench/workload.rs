//! The benchmark's services: N TCP services with E endpoints each, plus one
//! UDP service, with distinct ClusterIPs and distinct endpoint addresses.
//!
//! Addresses: ClusterIPs from 10.96.0.0/12, endpoints from 10.128.0.0/9,
//! which the harness routes as local inside its network namespaces so one
//! server on 0.0.0.0 answers for every endpoint.

use std::{fmt::Write, net::Ipv4Addr};

pub const TCP_PORT: u16 = 80;
pub const TCP_TARGET: u16 = 8080;
pub const UDP_PORT: u16 = 53;
pub const UDP_TARGET: u16 = 5353;
pub const UDP_VIP: Ipv4Addr = Ipv4Addr::new(10, 110, 0, 53);
pub const UDP_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 127, 0, 1);

#[derive(Clone, Debug)]
pub struct Service {
    pub namespace: &'static str,
    pub name: String,
    pub port_name: &'static str,
    pub proto: &'static str,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub target_port: u16,
    pub endpoints: Vec<Ipv4Addr>,
    /// A NodePort (type NodePort, externalTrafficPolicy Cluster).
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub n: usize,
    pub e: usize,
    services: Vec<Service>,
}

fn offset(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + i as u32)
}

impl Workload {
    pub fn new(n: usize, e: usize) -> Self {
        let mut services: Vec<Service> = (0..n)
            .map(|i| Service {
                namespace: "bench",
                name: format!("svc-{i}"),
                port_name: "http",
                proto: "TCP",
                vip: Self::vip(i),
                port: TCP_PORT,
                target_port: TCP_TARGET,
                endpoints: (0..e).map(|j| offset(Ipv4Addr::new(10, 128, 0, 1), i * e + j)).collect(),
                node_port: None,
            })
            .collect();
        services.push(Service {
            namespace: "bench",
            name: "dns".into(),
            port_name: "dns",
            proto: "UDP",
            vip: UDP_VIP,
            port: UDP_PORT,
            target_port: UDP_TARGET,
            endpoints: vec![UDP_ENDPOINT],
            node_port: None,
        });
        Self { n, e, services }
    }

    pub fn vip(i: usize) -> Ipv4Addr {
        offset(Ipv4Addr::new(10, 96, 0, 1), i)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.iter()
    }

    pub fn service(&self, i: usize) -> &Service {
        &self.services[i]
    }

    pub fn service_mut(&mut self, i: usize) -> &mut Service {
        &mut self.services[i]
    }

    /// A TCP service that is not part of the workload (for "add" changes).
    pub fn extra(&self, k: usize) -> Service {
        let i = self.n + 1000 + k;
        Service {
            name: format!("extra-{k}"),
            vip: Self::vip(i),
            endpoints: (0..self.e.max(1)).map(|j| offset(Ipv4Addr::new(10, 200, 0, 1), k * 16 + j)).collect(),
            ..self.services[0].clone()
        }
    }

    pub fn push(&mut self, s: Service) {
        self.services.push(s);
    }

    /// One service (and its slice) as a JSON list.
    pub fn single_json(s: &Service) -> String {
        Workload { n: 0, e: s.endpoints.len(), services: vec![s.clone()] }.cluster_json()
    }

    /// The workload as `kubectl get svc,endpointslices -A -o json` prints it
    /// (JSON: socklb reads it much faster than YAML at 100k services).
    pub fn cluster_json(&self) -> String {
        let mut out = String::with_capacity(self.services.len() * (400 + 80 * self.e));
        out.push_str("{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[");
        let mut first = true;
        for s in &self.services {
            if !first {
                out.push(',');
            }
            first = false;
            let (kind, node_port) = match s.node_port {
                Some(np) => ("NodePort", format!(",\"nodePort\":{np}")),
                None => ("ClusterIP", String::new()),
            };
            let _ = write!(
                out,
                "{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"{}\",\"namespace\":\"{}\"}},\"spec\":{{\"type\":\"{kind}\",\"clusterIP\":\"{}\",\"clusterIPs\":[\"{}\"],\"ports\":[{{\"name\":\"{}\",\"port\":{},\"protocol\":\"{}\",\"targetPort\":{}{node_port}}}]}}}}",
                s.name, s.namespace, s.vip, s.vip, s.port_name, s.port, s.proto, s.target_port
            );
            let eps: Vec<String> = s
                .endpoints
                .iter()
                .map(|a| format!("{{\"addresses\":[\"{a}\"],\"conditions\":{{\"ready\":true,\"serving\":true,\"terminating\":false}}}}"))
                .collect();
            let _ = write!(
                out,
                ",{{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",\"metadata\":{{\"name\":\"{}-x\",\"namespace\":\"{}\",\"labels\":{{\"kubernetes.io/service-name\":\"{}\"}}}},\"addressType\":\"IPv4\",\"endpoints\":[{}],\"ports\":[{{\"name\":\"{}\",\"port\":{},\"protocol\":\"{}\"}}]}}",
                s.name,
                s.namespace,
                s.name,
                eps.join(","),
                s.port_name,
                s.target_port,
                s.proto
            );
        }
        out.push_str("]}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_in_their_ranges() {
        let w = Workload::new(1000, 10);
        assert_eq!(w.service(0).vip, Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(w.service(999).endpoints[9], Ipv4Addr::new(10, 128, 39, 16));
        assert_eq!(w.services().count(), 1001);
    }

    #[test]
    fn the_json_parses_as_a_kubernetes_list() {
        let w = Workload::new(3, 2);
        let v: serde_json::Value = serde_json::from_str(&w.cluster_json()).expect("json");
        assert_eq!(v["items"].as_array().map(Vec::len), Some(8));
    }
}
