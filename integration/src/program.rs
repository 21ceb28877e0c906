//! Programs services into the pinned maps directly, through the agent's
//! balancer and datapath, for tests of the datapath alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
};

use anyhow::{Context, Result, bail};
use socklb_bpf::maps::AyaMaps;
use socklb_common::{PROTO_TCP, SCOPE_INTERNAL, set_flags};
use socklb_k8s::model::{
    BackendSet, Family, Frontend, FrontendKind, ObjKey, Policy, Proto, ServiceModel, SetId,
};
use socklb_lb::{
    ApplyReport, Balancer, ServiceNames, ServiceRef,
    capacity::Ceilings,
    datapath::{Datapath, MapState},
};

/// One service for the test: its frontends and its backends.
#[derive(Clone, Debug)]
pub struct Svc {
    pub id: u32,
    pub proto: u8,
    pub frontends: Vec<SocketAddr>,
    pub backends: Vec<SocketAddr>,
    /// `socklb_common::set_flags`.
    pub flags: u16,
    pub affinity_timeout_secs: u32,
}

impl Svc {
    pub fn tcp(id: u32, vip: &str, backends: &[&str]) -> Self {
        Self {
            id,
            proto: PROTO_TCP,
            frontends: vec![vip.parse().expect("vip")],
            backends: backends.iter().map(|b| b.parse().expect("backend")).collect(),
            flags: 0,
            affinity_timeout_secs: 0,
        }
    }

    pub fn udp(id: u32, vip: &str, backends: &[&str]) -> Self {
        Self { proto: socklb_common::PROTO_UDP, flags: set_flags::MEMBERSHIP, ..Self::tcp(id, vip, backends) }
    }

    /// Adds more frontends (e.g. the IPv6 VIP of a dual-stack service).
    pub fn also(mut self, vip: &str) -> Self {
        self.frontends.push(vip.parse().expect("vip"));
        self
    }

    pub fn with_affinity(mut self, timeout_secs: u32) -> Self {
        self.flags |= set_flags::AFFINITY | set_flags::MEMBERSHIP;
        self.affinity_timeout_secs = timeout_secs;
        self
    }

    fn key(&self) -> ObjKey {
        ObjKey::new("test", format!("svc-{}", self.id))
    }

    /// One backend set with every backend, every frontend reaching it.
    fn model(&self) -> ServiceModel {
        let proto = Proto::from_number(self.proto).unwrap_or(Proto::Tcp);
        let id = SetId { service: self.key(), port: 80, proto, family: Family::V4, policy: Policy::Cluster };
        ServiceModel {
            sets: vec![BackendSet {
                id: id.clone(),
                port_name: String::new(),
                backends: self.backends.clone(),
                local: BTreeSet::new(),
                known: {
                    let mut k = self.backends.clone();
                    k.sort();
                    k.dedup();
                    k
                },
                flags: self.flags,
                affinity_timeout_secs: self.affinity_timeout_secs,
            }],
            frontends: self
                .frontends
                .iter()
                .map(|f| Frontend {
                    addr: *f,
                    proto,
                    scope: SCOPE_INTERNAL,
                    kind: FrontendKind::ClusterIp,
                    set: id.clone(),
                })
                .collect(),
            node_ports: Vec::new(),
        }
    }
}

#[derive(Default)]
struct Names(BTreeMap<ServiceRef, ObjKey>);

impl ServiceNames for Names {
    fn key(&self, s: ServiceRef) -> Option<ObjKey> {
        self.0.get(&s).cloned()
    }
}

pub struct Programmer {
    pub maps: AyaMaps,
    balancer: Balancer,
    names: Names,
    adopting: bool,
}

impl Programmer {
    /// Opens the pinned maps and adopts what they hold.
    pub fn open(bpffs: &Path) -> Result<Self> {
        let maps = AyaMaps::open(bpffs)?;
        let balancer =
            Balancer::adopt(&maps, Ceilings::new(1 << 20, 1 << 24)).context("adopting the maps")?;
        Ok(Self { maps, balancer, names: Names::default(), adopting: true })
    }

    /// What the maps hold.
    pub fn state(&self) -> MapState {
        self.maps.read_state().expect("read the maps")
    }

    /// The id of test service `svc`'s set.
    pub fn set_id(&self, svc: u32) -> u32 {
        self.balancer.sets_of(ServiceRef(svc)).first().copied().expect("the service has a set")
    }

    /// Makes the maps hold exactly `services`.
    pub fn set(&mut self, services: &[Svc]) -> Result<ApplyReport> {
        let models: Vec<(ServiceRef, ServiceModel)> =
            services.iter().map(|s| (ServiceRef(s.id), s.model())).collect();
        for s in services {
            self.names.0.insert(ServiceRef(s.id), s.key());
        }
        let gone: Vec<ServiceRef> =
            self.names.0.keys().copied().filter(|r| !services.iter().any(|s| s.id == r.0)).collect();
        let mut changes: Vec<(ServiceRef, Option<&ServiceModel>)> =
            models.iter().map(|(r, m)| (*r, Some(m))).collect();
        changes.extend(gone.iter().map(|r| (*r, None)));
        let mut report = self.balancer.apply(&changes, &self.names, &mut self.maps);
        if std::mem::take(&mut self.adopting) {
            let done = self.balancer.finish_adoption(&self.names, &mut self.maps);
            report.ops += done.ops;
            report.failed.extend(done.failed);
        }
        for r in gone {
            self.names.0.remove(&r);
        }
        if !report.failed.is_empty() {
            bail!("programming the maps failed: {:?}", report.failed);
        }
        Ok(report)
    }
}
