//! Reading the maps back and repairing what drifted (someone wrote them, a
//! bug, a lost write). A chunk of sets at a time, so that events never wait
//! long behind a resync.

use std::collections::{BTreeMap, BTreeSet};

use socklb_common::{MemberKey, set_flags};

use super::{Balancer, ServiceRef};
use crate::{
    datapath::{Datapath, DatapathError, MapOp},
    hashing::content_hash,
};

/// What a verification step found.
#[derive(Debug, Default)]
pub struct Drift {
    /// Services whose sets differ from their records: to be written again.
    pub services: BTreeSet<ServiceRef>,
    /// Entries repaired in place (frontends, node tables, members, stray
    /// sets).
    pub repaired: usize,
    /// Differences found, in all.
    pub found: usize,
    /// The sets checked.
    pub checked: u32,
    /// The chunk reached the last set: a round is complete.
    pub round_done: bool,
}

impl Balancer {
    /// Checks up to `max_sets` sets, from where the last call stopped.
    pub fn verify_chunk(&mut self, max_sets: u32, dp: &mut dyn Datapath) -> Result<Drift, DatapathError> {
        let mut drift = Drift::default();
        let end = self.caps.sets;
        let from = self.verify_cursor.min(end);
        let to = from.saturating_add(max_sets).min(end);
        let kernel: BTreeMap<u32, socklb_common::SetEntry> = dp.read_sets_in(from, to)?.into_iter().collect();
        for id in from..to {
            drift.checked += 1;
            let k = kernel.get(&id);
            match self.set(id) {
                Some(rec) => {
                    let entry_ok = k == Some(&rec.entry);
                    let content_ok = entry_ok && {
                        let slots = dp.read_slots(rec.run())?;
                        content_hash(&slots) == rec.entry.content_hash
                    };
                    if !(entry_ok && content_ok) {
                        drift.found += 1;
                        if self.orphans.contains(&id) {
                            // Being removed anyway: its entry is cleared again.
                            continue;
                        }
                        drift.services.insert(rec.owner);
                    }
                }
                None => {
                    if k.is_some() && !self.refs.contains_key(&id) {
                        drift.found += 1;
                        let (done, _) = dp.apply_batch(&[MapOp::DeleteSet { id }]);
                        drift.repaired += done;
                    }
                }
            }
        }
        self.verify_cursor = to;
        if to >= end {
            self.verify_cursor = 0;
            drift.round_done = true;
            self.verify_tables(dp, &mut drift)?;
        }
        Ok(drift)
    }

    /// Frontends, NodePorts, node tables and members against the records.
    fn verify_tables(&mut self, dp: &mut dyn Datapath, drift: &mut Drift) -> Result<(), DatapathError> {
        let st = dp.read_tables()?;
        let mut ops: Vec<MapOp> = Vec::new();
        let diff = |ops: &mut Vec<MapOp>, found: &mut usize, want: Vec<MapOp>, extra: Vec<MapOp>| {
            *found += want.len() + extra.len();
            ops.extend(want);
            ops.extend(extra);
        };
        let want_fe: BTreeMap<_, _> = self.programmed_frontends().map(|(k, v)| (*k, *v)).collect();
        diff(
            &mut ops,
            &mut drift.found,
            want_fe
                .iter()
                .filter(|(k, v)| st.frontends.get(k) != Some(v))
                .map(|(&key, &value)| MapOp::PutFrontend { key, value })
                .collect(),
            st.frontends
                .keys()
                .filter(|k| !want_fe.contains_key(k))
                .map(|&k| MapOp::DeleteFrontend(k))
                .collect(),
        );
        let want_np: BTreeMap<_, _> = self.programmed_node_ports().map(|(k, v)| (*k, *v)).collect();
        diff(
            &mut ops,
            &mut drift.found,
            want_np
                .iter()
                .filter(|(k, v)| st.node_ports.get(k) != Some(v))
                .map(|(&key, &value)| MapOp::PutNodePort { key, value })
                .collect(),
            st.node_ports
                .keys()
                .filter(|k| !want_np.contains_key(k))
                .map(|&k| MapOp::DeleteNodePort(k))
                .collect(),
        );
        let want_nl: BTreeMap<_, _> =
            self.node_local.iter().filter_map(|(k, c)| Some((*k, c.programmed?))).collect();
        diff(
            &mut ops,
            &mut drift.found,
            want_nl
                .iter()
                .filter(|(k, v)| st.node_local.get(k) != Some(v))
                .map(|(&key, &value)| MapOp::PutNodeLocal { key, value })
                .collect(),
            st.node_local
                .keys()
                .filter(|k| !want_nl.contains_key(k))
                .map(|&k| MapOp::DeleteNodeLocal(k))
                .collect(),
        );
        let want_na = self.nodes.programmed.clone();
        diff(
            &mut ops,
            &mut drift.found,
            want_na
                .iter()
                .filter(|(k, v)| st.node_addrs.get(*k) != Some(*v))
                .map(|(&addr, &value)| MapOp::PutNodeAddr { addr, value })
                .collect(),
            st.node_addrs
                .keys()
                .filter(|k| !want_na.contains_key(*k))
                .map(|&k| MapOp::DeleteNodeAddr(k))
                .collect(),
        );
        // Members: exactly the backends of the sets that keep members.
        let mut want_members: BTreeSet<MemberKey> = BTreeSet::new();
        let membership: Vec<(u32, crate::slots::Run)> = self
            .sets()
            .filter(|(id, r)| !self.orphans.contains(id) && r.state().flags & set_flags::MEMBERSHIP != 0)
            .map(|(id, r)| (id, r.run()))
            .collect();
        for (id, run) in membership {
            for b in dp.read_slots(run)? {
                want_members.insert(MemberKey::of(id, &b));
            }
        }
        let orphan_members = |m: &MemberKey| self.orphans.contains(&m.set_id);
        diff(
            &mut ops,
            &mut drift.found,
            want_members.difference(&st.members).map(|k| MapOp::PutMember(*k)).collect(),
            st.members
                .difference(&want_members)
                .filter(|m| !orphan_members(m))
                .map(|k| MapOp::DeleteMember(*k))
                .collect(),
        );
        for op in &ops {
            let (done, _) = dp.apply_batch(std::slice::from_ref(op));
            drift.repaired += done;
        }
        self.members = want_members.len() as u64;
        Ok(())
    }
}
