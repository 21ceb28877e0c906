//! How big the maps are, and how big they should be.
//!
//! The maps the agent writes are sized from what it programs, with
//! headroom, never from a fixed capacity: a node of a 10-service cluster
//! holds kilobytes, not the hundreds of megabytes a 1M-backend capacity
//! would reserve. When the agent needs more than a map holds, it grows the
//! maps (a new generation, filled, then switched to); `--max-services` and
//! `--max-backends` are the ceilings of that growth.

use std::fmt;

use socklb_common::{capacity as min, map_names as m};

/// Sizes of the maps (`max_entries`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// `SETS` and `COUNTERS`.
    pub sets: u32,
    /// `BACKENDS` slots.
    pub slots: u32,
    pub frontends: u32,
    pub members: u32,
    pub node_addrs: u32,
    pub node_ports: u32,
    pub node_local: u32,
    /// The tables the programs fill, sized by flags.
    pub affinity: u32,
    pub udp_reverse: u32,
    pub udp_connected: u32,
}

impl Default for Capacities {
    /// The smallest maps.
    fn default() -> Self {
        Self {
            sets: min::MIN_SETS,
            slots: min::MIN_SLOTS,
            frontends: min::MIN_HASH,
            members: min::MIN_HASH,
            node_addrs: min::MIN_HASH,
            node_ports: min::MIN_HASH,
            node_local: min::MIN_HASH,
            affinity: min::AFFINITY,
            udp_reverse: min::UDP_REV,
            udp_connected: min::UDP_CONNECTED,
        }
    }
}

impl fmt::Display for Capacities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sets, {} slots, {} frontends, {} members, {} node addresses, {} NodePorts, {} node-local sets",
            self.sets,
            self.slots,
            self.frontends,
            self.members,
            self.node_addrs,
            self.node_ports,
            self.node_local
        )
    }
}

impl Capacities {
    /// The `max_entries` of a map, for the maps that have one to choose.
    pub fn max_entries(&self, map: &str) -> Option<u32> {
        Some(match map {
            m::SETS | m::COUNTERS => self.sets,
            m::BACKENDS => self.slots,
            m::FRONTENDS => self.frontends,
            m::MEMBERS => self.members,
            m::NODE_ADDRS => self.node_addrs,
            m::NODEPORTS => self.node_ports,
            m::NODE_LOCAL => self.node_local,
            m::AFFINITY => self.affinity,
            m::UDP_CONNECTED => self.udp_connected,
            m::UDP_REV | m::UDP_REV_INDEX => self.udp_reverse,
            _ => return None,
        })
    }

    /// Whether `need` fits in these maps.
    pub fn holds(&self, need: &Usage) -> bool {
        need.sets <= u64::from(self.sets)
            && need.slots <= u64::from(self.slots)
            && need.frontends <= u64::from(self.frontends)
            && need.members <= u64::from(self.members)
            && need.node_addrs <= u64::from(self.node_addrs)
            && need.node_ports <= u64::from(self.node_ports)
            && need.node_local <= u64::from(self.node_local)
    }

    /// Sizes for `need` with headroom (half as much again, so that growth
    /// is rare), never below the current sizes or the minimums, never above
    /// the ceilings.
    pub fn grown_for(&self, need: &Usage, ceilings: &Ceilings) -> Self {
        let size = |now: u32, need: u64, floor: u32, ceiling: u32| -> u32 {
            if need <= u64::from(now) {
                return now;
            }
            let want = need.saturating_add(need / 2).max(u64::from(floor));
            // Round to a multiple of 512 entries.
            let want = want.div_ceil(512).saturating_mul(512);
            u32::try_from(want).unwrap_or(u32::MAX).min(ceiling).max(now)
        };
        Self {
            sets: size(self.sets, need.sets, min::MIN_SETS, ceilings.sets),
            slots: size(self.slots, need.slots, min::MIN_SLOTS, ceilings.slots),
            frontends: size(self.frontends, need.frontends, min::MIN_HASH, ceilings.frontends),
            members: size(self.members, need.members, min::MIN_HASH, ceilings.slots),
            node_addrs: size(self.node_addrs, need.node_addrs, min::MIN_HASH, ceilings.node_tables),
            node_ports: size(self.node_ports, need.node_ports, min::MIN_HASH, ceilings.node_tables),
            node_local: size(self.node_local, need.node_local, min::MIN_HASH, ceilings.node_tables),
            ..*self
        }
    }
}

/// The largest the maps may grow to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ceilings {
    /// `--max-services`: backend sets (one per service port, family and
    /// policy).
    pub sets: u32,
    /// `--max-backends`: backend slots over all sets.
    pub slots: u32,
    pub frontends: u32,
    pub node_tables: u32,
}

impl Ceilings {
    pub fn new(max_services: u32, max_backends: u32) -> Self {
        Self {
            sets: max_services.max(1),
            slots: max_backends.max(1),
            frontends: max_services.saturating_mul(4).max(min::MIN_HASH),
            node_tables: 1 << 20,
        }
    }
}

/// Entries in use (or needed), per map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub sets: u64,
    pub slots: u64,
    pub frontends: u64,
    pub members: u64,
    pub node_addrs: u64,
    pub node_ports: u64,
    pub node_local: u64,
}

impl Usage {
    pub fn plus(self, o: Self) -> Self {
        Self {
            sets: self.sets + o.sets,
            slots: self.slots + o.slots,
            frontends: self.frontends + o.frontends,
            members: self.members + o.members,
            node_addrs: self.node_addrs + o.node_addrs,
            node_ports: self.node_ports + o.node_ports,
            node_local: self.node_local + o.node_local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_grow_with_headroom_up_to_the_ceilings() {
        let c = Capacities::default();
        let ceil = Ceilings::new(10_000, 100_000);
        let need = Usage { sets: 1_000, slots: 90_000, frontends: 100, ..Default::default() };
        let g = c.grown_for(&need, &ceil);
        assert_eq!(g.sets, 1_536);
        assert_eq!(g.slots, 100_000, "capped at --max-backends");
        assert_eq!(g.frontends, c.frontends, "fits: unchanged");
        assert!(g.holds(&need));
        assert!(!c.holds(&need));
        let huge = Usage { slots: 1 << 30, ..Default::default() };
        assert!(!g.grown_for(&huge, &ceil).holds(&huge), "beyond the ceiling does not fit");
    }
}
