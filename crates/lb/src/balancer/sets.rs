//! One Service's backend sets: the transaction per set, and removal.

use std::collections::{BTreeSet, HashMap};

use socklb_common::{BackendValue, MemberKey, SetEntry, SetState, ip_from_addr, set_flags};

use super::{ApplyReport, Balancer, Departed, Draft, Failure, ServiceRecord, ServiceRef, SetRecord};
use crate::{
    datapath::{Datapath, DatapathError, MapOp},
    desired::{DesiredService, DesiredSet, SetKey},
    slots::Run,
};

fn socket_addr(b: &BackendValue) -> std::net::SocketAddr {
    std::net::SocketAddr::new(ip_from_addr(&b.addr), u16::from_be(b.port))
}

/// Applies `ops` in order; on the first failure returns how many took
/// effect and the error.
fn run_ops(dp: &mut dyn Datapath, ops: &[MapOp]) -> (usize, Option<DatapathError>) {
    dp.apply_batch(ops)
}

impl Balancer {
    pub(super) fn apply_service(
        &mut self,
        service: ServiceRef,
        want: Option<&DesiredService>,
        force: bool,
        names: &dyn super::ServiceNames,
        dp: &mut dyn Datapath,
        report: &mut ApplyReport,
    ) {
        let object = names.key(service).map_or_else(|| "Service".to_string(), |k| format!("Service {k}"));
        let old = self.take_service(service).map(|r| r.draft()).unwrap_or_default();
        let mut rec = Draft::default();
        let mut by_key: HashMap<SetKey, u32> = HashMap::new();
        let mut failure: Option<Failure> = None;
        let old_problems: BTreeSet<_> = old.problems.iter().cloned().collect();
        if let Some(want) = want {
            for d in &want.sets {
                let existing = old
                    .sets
                    .iter()
                    .copied()
                    .find(|id| self.set(*id).is_some_and(|r| r.key == d.key))
                    .or_else(|| self.adopt_set(service, d));
                match self.program_set(service, existing, d, force, dp, report) {
                    Ok(id) => {
                        rec.sets.push(id);
                        by_key.insert(d.key, id);
                    }
                    Err(f) => {
                        // The previous version keeps serving, with its frontends.
                        if let Some(id) = existing {
                            rec.sets.push(id);
                            by_key.insert(d.key, id);
                        }
                        if let Failure::Capacity(what) = &f {
                            rec.problems.push(socklb_k8s::model::Problem::new(
                                socklb_k8s::model::problem::ProblemKind::Capacity,
                                &object,
                                format!("port {}", d.key.port),
                                what.clone(),
                            ));
                        }
                        failure.get_or_insert(f);
                    }
                }
            }
        }
        // Sets the Service no longer has: removed once nothing points at them.
        for id in &old.sets {
            if !rec.sets.contains(id) {
                if let Some(r) = self.sets.get_mut(*id as usize).and_then(Option::as_mut) {
                    r.owner = ServiceRef(u32::MAX);
                }
                self.orphans.insert(*id);
            }
        }
        self.claim(service, &old, &mut rec, want, &by_key);
        for p in &rec.problems {
            if !old_problems.contains(p) {
                report.problems.push((service, p.clone()));
            }
        }
        if let Some(f) = failure {
            report.failed.insert(service, f);
        }
        if want.is_some() {
            self.put_service(service, ServiceRecord::from_draft(rec));
        }
    }

    /// On the first sync after a restart: the set a previous agent left for
    /// this identity, now this Service's.
    fn adopt_set(&mut self, service: ServiceRef, d: &DesiredSet) -> Option<u32> {
        let id = self.adoptable.remove(&d.key_hash)?;
        let rec = self.sets.get_mut(id as usize).and_then(Option::as_mut)?;
        rec.owner = service;
        rec.key = d.key;
        self.orphans.remove(&id);
        Some(id)
    }

    /// Writes one set if it changed: members, fresh slots, then the switch.
    fn program_set(
        &mut self,
        owner: ServiceRef,
        existing: Option<u32>,
        d: &DesiredSet,
        force: bool,
        dp: &mut dyn Datapath,
        report: &mut ApplyReport,
    ) -> Result<u32, Failure> {
        let flags = d.flags | set_flags::PRESENT;
        let count = d.backends.len() as u16;
        if let Some(id) = existing
            && let Some(rec) = self.set(id)
        {
            let st = rec.state();
            let same = rec.entry.content_hash == d.content_hash
                && st.flags == flags
                && st.count == count
                && rec.entry.affinity_timeout_secs == d.affinity_timeout_secs
                && rec.entry.key_hash == d.key_hash;
            if same && !force {
                let old_extra = rec.extra_known.clone();
                self.known_changed(id, d, None, &old_extra, report);
                if let Some(r) = self.sets.get_mut(id as usize).and_then(Option::as_mut) {
                    r.extra_known = d.extra_known.clone();
                }
                return Ok(id);
            }
        }
        // Members must match the old version before they are diffed: an
        // undo still owed for this set is paid first.
        if let Some(id) = existing
            && self.member_debt.iter().any(|(d, _, _)| *d == id)
        {
            self.pay_member_debt(dp, report);
            if self.member_debt.iter().any(|(d, _, _)| *d == id) {
                return Err(Failure::Write("undoing an abandoned update of its members failed".into()));
            }
        }
        let old =
            existing.and_then(|id| self.set(id).map(|r| (r.run(), r.state().flags, r.extra_known.clone())));
        let old_backends = match old {
            Some((run, _, _)) => dp.read_slots(run).map_err(|e| Failure::Write(e.to_string()))?,
            None => Vec::new(),
        };
        let (id, new_id) = match existing {
            Some(id) => (id, false),
            None => match self.ids.alloc() {
                Some(id) => (id, true),
                None => {
                    return Err(Failure::Capacity(format!(
                        "no free backend set id: {} sets is the limit (--max-services)",
                        self.caps.sets.min(self.ceilings.sets)
                    )));
                }
            },
        };
        let Some(run) = self.alloc_run(d.backends.len() as u32, dp) else {
            if new_id {
                self.ids.release_unpublished(id);
            }
            return Err(Failure::Capacity(format!(
                "no {} free backend slots: {} slots is the limit (--max-backends)",
                d.backends.len(),
                self.caps.slots.min(self.ceilings.slots)
            )));
        };

        // 1. Members: joiners in, leavers out, before the switch.
        let old_membership = old.as_ref().is_some_and(|(_, f, _)| f & set_flags::MEMBERSHIP != 0);
        let was: BTreeSet<MemberKey> = if old_membership {
            old_backends.iter().map(|b| MemberKey::of(id, b)).collect()
        } else {
            BTreeSet::new()
        };
        let will: BTreeSet<MemberKey> = if d.membership() {
            d.backends.iter().map(|b| MemberKey::of(id, b)).collect()
        } else {
            BTreeSet::new()
        };
        let mut ops: Vec<MapOp> = Vec::new();
        if new_id {
            ops.push(MapOp::ResetCounters { id });
        }
        let puts: Vec<MemberKey> = will.difference(&was).copied().collect();
        ops.extend(puts.iter().map(|k| MapOp::PutMember(*k)));
        let deletes = was.difference(&will).count();
        ops.extend(was.difference(&will).map(|k| MapOp::DeleteMember(*k)));
        // 2. The backends, in slots no reader can be using.
        if run.len > 0 {
            ops.push(MapOp::PutSlots { base: run.base, backends: d.backends.clone() });
        }
        // 3. The switch.
        let entry = SetEntry {
            state: SetState { base: run.base, count, flags }.pack(),
            affinity_timeout_secs: d.affinity_timeout_secs,
            _pad: 0,
            key_hash: d.key_hash,
            content_hash: d.content_hash,
        };
        ops.push(MapOp::PutSet { id, entry });

        let (done, err) = run_ops(dp, &ops);
        report.ops += done;
        if let Some(e) = err {
            // Abandon: the switch did not happen, so no reader saw the new
            // slots. Members go back to what the old version has: joiners
            // out again, leavers back in.
            let first_put = usize::from(new_id);
            let added = done.saturating_sub(first_put).min(puts.len());
            let leavers: Vec<MemberKey> = was.difference(&will).copied().collect();
            let removed = done.saturating_sub(first_put + puts.len()).min(leavers.len());
            let undo: Vec<MapOp> = puts[..added]
                .iter()
                .map(|k| MapOp::DeleteMember(*k))
                .chain(leavers[..removed].iter().map(|k| MapOp::PutMember(*k)))
                .collect();
            let (undone, _) = run_ops(dp, &undo);
            report.ops += undone;
            self.members = (self.members + added as u64).saturating_sub(removed as u64);
            self.members = (self.members + undo[..undone].iter().filter(|o| !o.is_delete()).count() as u64)
                .saturating_sub(undo[..undone].iter().filter(|o| o.is_delete()).count() as u64);
            self.slots.release_unpublished(run);
            if undone < undo.len() {
                // Retried at every apply; the id stays taken until then, so
                // no other set inherits these members.
                self.member_debt.push((id, new_id, undo[undone..].to_vec()));
            } else if new_id {
                self.ids.release_unpublished(id);
            }
            let full = e.is_map_full();
            let msg = e.to_string();
            return Err(if full { Failure::Capacity(msg) } else { Failure::Write(msg) });
        }
        self.members = (self.members + puts.len() as u64).saturating_sub(deletes as u64);
        let epoch = dp.epoch();
        let old_extra = match old {
            Some((old_run, _, extra)) => {
                self.slots.retire(old_run, epoch);
                extra
            }
            None => Box::new([]),
        };
        self.put_record(id, SetRecord { owner, key: d.key, entry, extra_known: d.extra_known.clone() });
        self.known_changed(id, d, Some(&old_backends), &old_extra, report);
        Ok(id)
    }

    /// Departed and rejoined backends of a set. `old_backends` is `None`
    /// when the backends did not change (only the listed-but-not-ready
    /// endpoints may have).
    fn known_changed(
        &self,
        id: u32,
        d: &DesiredSet,
        old_backends: Option<&[BackendValue]>,
        old_extra: &[std::net::SocketAddr],
        report: &mut ApplyReport,
    ) {
        if old_backends.is_none() && old_extra == &d.extra_known[..] {
            return;
        }
        let proto = d.key.proto.number();
        let now: BTreeSet<std::net::SocketAddr> =
            d.backends.iter().map(socket_addr).chain(d.extra_known.iter().copied()).collect();
        let was: BTreeSet<std::net::SocketAddr> = match old_backends {
            None => d.backends.iter().map(socket_addr).chain(old_extra.iter().copied()).collect(),
            Some(old) => old.iter().map(socket_addr).chain(old_extra.iter().copied()).collect(),
        };
        let entry = |a: &std::net::SocketAddr| Departed { set_id: id, backend: *a, proto };
        report.departed.extend(was.difference(&now).map(entry));
        report.rejoined.extend(now.difference(&was).map(entry));
    }

    /// Retries the member writes that undoing abandoned sets left.
    pub(super) fn pay_member_debt(&mut self, dp: &mut dyn Datapath, report: &mut ApplyReport) {
        for (id, new_id, ops) in std::mem::take(&mut self.member_debt) {
            let (done, _) = run_ops(dp, &ops);
            report.ops += done;
            if done < ops.len() {
                self.member_debt.push((id, new_id, ops[done..].to_vec()));
            } else if new_id {
                self.ids.release_unpublished(id);
            }
        }
    }

    /// A run of `len` free slots, after waiting for retired runs if needed.
    fn alloc_run(&mut self, len: u32, dp: &mut dyn Datapath) -> Option<Run> {
        if let Some(run) = self.slots.alloc(len) {
            return Some(run);
        }
        if self.slots.retired() > 0 {
            dp.wait_grace();
            self.reclaim(dp);
            if let Some(run) = self.slots.alloc(len) {
                return Some(run);
            }
        }
        // Free slots enough, but no run long enough: grow by the run.
        let need = crate::capacity::Usage {
            slots: self.slots.capacity() as u64 + u64::from(len),
            ..Default::default()
        };
        let to = self.caps.grown_for(&need, &self.ceilings);
        if to != self.caps && dp.grow(&to).is_ok() {
            self.grew(to);
            return self.slots.alloc(len);
        }
        None
    }

    /// Removes the sets no Service wants and nothing points at: the entry
    /// (the switch to "gone"), then its members; slots and id are reused
    /// after a grace period.
    pub(super) fn remove_orphans(&mut self, dp: &mut dyn Datapath, report: &mut ApplyReport) {
        self.pay_member_debt(dp, report);
        let ready: Vec<u32> = self
            .orphans
            .iter()
            .copied()
            .filter(|id| !self.refs.contains_key(id) && !self.member_debt.iter().any(|(d, _, _)| d == id))
            .collect();
        for id in ready {
            let Some(rec) = self.set(id) else {
                self.orphans.remove(&id);
                continue;
            };
            let (run, flags, extra, proto) =
                (rec.run(), rec.state().flags, rec.extra_known.clone(), rec.key.proto.number());
            let Ok(backends) = dp.read_slots(run) else { continue };
            let mut ops = vec![MapOp::DeleteSet { id }];
            if flags & set_flags::MEMBERSHIP != 0 {
                ops.extend(backends.iter().map(|b| MapOp::DeleteMember(MemberKey::of(id, b))));
            }
            let (done, err) = run_ops(dp, &ops);
            report.ops += done;
            self.members = self.members.saturating_sub(done.saturating_sub(1) as u64);
            if err.is_some() {
                // The entry or members are left: retried at the next apply
                // (deleting what is gone succeeds). The id is not reused
                // before its members are gone.
                continue;
            }
            let epoch = dp.epoch();
            self.slots.retire(run, epoch);
            self.ids.retire(id, epoch);
            self.take_record(id);
            self.orphans.remove(&id);
            let entry = |a: std::net::SocketAddr| Departed { set_id: id, backend: a, proto };
            let gone: BTreeSet<std::net::SocketAddr> =
                backends.iter().map(socket_addr).chain(extra.iter().copied()).collect();
            report.departed.extend(gone.into_iter().map(entry));
        }
    }
}
