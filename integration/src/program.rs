//! Programs services into the pinned maps directly, through the agent's
//! plan and datapath, for tests of the datapath alone.

use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use anyhow::{Result, bail};
use socklb_bpf::maps::AyaMaps;
use socklb_common::{
    BackendValue, FrontendKey, FrontendValue, PROTO_TCP, SCOPE_INTERNAL, addr_from_ip, frontend_flags,
};
use socklb_lb::{
    datapath::{Datapath, DesiredService, DesiredState, MapState},
    plan::{self, ExecReport},
};

/// One service for the test: its frontends and its backends.
#[derive(Clone, Debug)]
pub struct Svc {
    pub id: u32,
    pub proto: u8,
    pub frontends: Vec<SocketAddr>,
    pub backends: Vec<SocketAddr>,
    /// `socklb_common::service_flags`.
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
        Self {
            proto: socklb_common::PROTO_UDP,
            flags: socklb_common::service_flags::MEMBERSHIP,
            ..Self::tcp(id, vip, backends)
        }
    }

    /// Adds more frontends (e.g. the IPv6 VIP of a dual-stack service).
    pub fn also(mut self, vip: &str) -> Self {
        self.frontends.push(vip.parse().expect("vip"));
        self
    }

    pub fn with_affinity(mut self, timeout_secs: u32) -> Self {
        self.flags |= socklb_common::service_flags::AFFINITY | socklb_common::service_flags::MEMBERSHIP;
        self.affinity_timeout_secs = timeout_secs;
        self
    }
}

pub struct Programmer {
    pub maps: AyaMaps,
    pub mirror: MapState,
    ids: BTreeMap<(SocketAddr, u8), u32>,
}

impl Programmer {
    /// Opens the pinned maps and reads what they hold.
    pub fn open(bpffs: &Path) -> Result<Self> {
        let maps = AyaMaps::open(bpffs)?;
        let mirror = maps.read_state()?;
        let ids = mirror
            .backends
            .iter()
            .map(|(&id, b)| {
                let ip = socklb_common::ip_from_addr(&b.addr);
                ((SocketAddr::new(ip, u16::from_be(b.port)), b.proto), id)
            })
            .collect();
        Ok(Self { maps, mirror, ids })
    }

    fn backend_id(&mut self, addr: SocketAddr, proto: u8) -> u32 {
        let next = self.ids.values().max().copied().unwrap_or(0) + 1;
        *self.ids.entry((addr, proto)).or_insert(next)
    }

    pub fn desired(&mut self, services: &[Svc]) -> DesiredState {
        let mut desired = DesiredState::default();
        for svc in services {
            let mut ids = Vec::new();
            for &b in &svc.backends {
                let id = self.backend_id(b, svc.proto);
                desired.backends.insert(
                    id,
                    BackendValue {
                        addr: addr_from_ip(b.ip()),
                        port: b.port().to_be(),
                        proto: svc.proto,
                        flags: 0,
                    },
                );
                ids.push(id);
            }
            desired.services.insert(
                svc.id,
                DesiredService {
                    backends: ids,
                    flags: svc.flags,
                    affinity_timeout_secs: svc.affinity_timeout_secs,
                    ..Default::default()
                },
            );
            for f in &svc.frontends {
                let key = FrontendKey {
                    addr: addr_from_ip(f.ip()),
                    port: f.port().to_be(),
                    proto: svc.proto,
                    scope: SCOPE_INTERNAL,
                };
                let value = FrontendValue { service_id: svc.id, flags: frontend_flags::CLUSTER_IP, _pad: 0 };
                desired.frontends.insert(key, value);
            }
        }
        desired
    }

    /// Makes the maps hold exactly `services`.
    pub fn set(&mut self, services: &[Svc]) -> Result<ExecReport> {
        let desired = self.desired(services);
        let plan = plan::plan(&self.mirror, &desired);
        let report = plan::execute(&plan, &mut self.maps, &mut self.mirror);
        if !report.is_complete() {
            bail!("programming the maps failed: {:?}", report.failures);
        }
        Ok(report)
    }
}
