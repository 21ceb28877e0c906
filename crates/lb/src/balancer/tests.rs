use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use proptest::prelude::*;
use socklb_common::{SCOPE_INTERNAL, SetState, map_names, set_flags};
use socklb_k8s::model::{
    BackendSet, Family, Frontend, FrontendKind, ObjKey, Policy, Proto, ServiceModel, SetId,
};

use super::*;
use crate::{
    capacity::Ceilings,
    datapath::{
        MapOp, MapState,
        fake::FakeDatapath,
        faulty::{FailMap, FaultyDatapath, RandomFaults},
    },
};

#[derive(Default)]
struct Names(BTreeMap<ServiceRef, ObjKey>);

impl ServiceNames for Names {
    fn key(&self, s: ServiceRef) -> Option<ObjKey> {
        self.0.get(&s).cloned()
    }
}

fn names(n: u32) -> Names {
    Names((0..n).map(|i| (ServiceRef(i), ObjKey::new("ns", format!("s{i:03}")))).collect())
}

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + n))
}

/// Service `i` with a ClusterIP 10.96.0.i:80 and backends 10.244.x.y:8080.
fn model(i: u32, backends: &[u32], flags: u16, vip: u32) -> ServiceModel {
    let id = SetId {
        service: ObjKey::new("ns", format!("s{i:03}")),
        port: 80,
        proto: if flags & set_flags::MEMBERSHIP != 0 { Proto::Udp } else { Proto::Tcp },
        family: Family::V4,
        policy: Policy::Cluster,
    };
    let mut addrs: Vec<SocketAddr> = backends.iter().map(|b| SocketAddr::new(ip(*b), 8080)).collect();
    addrs.sort();
    addrs.dedup();
    ServiceModel {
        sets: vec![BackendSet {
            id: id.clone(),
            port_name: "http".into(),
            backends: addrs.clone(),
            local: BTreeSet::new(),
            known: addrs,
            flags,
            affinity_timeout_secs: if flags & set_flags::AFFINITY != 0 { 60 } else { 0 },
        }],
        frontends: vec![Frontend {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + vip)), 80),
            proto: id.proto,
            scope: SCOPE_INTERNAL,
            kind: FrontendKind::ClusterIp,
            set: id,
        }],
        node_ports: Vec::new(),
    }
}

fn apply_all(
    b: &mut Balancer,
    models: &BTreeMap<u32, Option<ServiceModel>>,
    names: &Names,
    dp: &mut dyn Datapath,
) -> ApplyReport {
    let changes: Vec<(ServiceRef, Option<&ServiceModel>)> =
        models.iter().map(|(i, m)| (ServiceRef(*i), m.as_ref())).collect();
    b.apply(&changes, names, dp)
}

/// What a reader sees, per Service name: its backends and flags.
fn served(st: &MapState) -> BTreeMap<(IpAddr, u16), (u16, Vec<SocketAddr>)> {
    let view = st.logical_view();
    st.frontends
        .iter()
        .map(|(k, v)| {
            let (entry, backends) = view.sets.get(&v.set_id).cloned().unwrap_or_default();
            let addrs = backends
                .iter()
                .map(|b| SocketAddr::new(socklb_common::ip_from_addr(&b.addr), u16::from_be(b.port)))
                .collect();
            (
                (socklb_common::ip_from_addr(&k.addr), u16::from_be(k.port)),
                (SetState::unpack(entry.state).flags, addrs),
            )
        })
        .collect()
}

fn ceilings() -> Ceilings {
    Ceilings::new(100_000, 1_000_000)
}

#[test]
fn services_are_programmed_and_an_unchanged_apply_writes_nothing() {
    let mut dp = FakeDatapath::default();
    let mut b = Balancer::new(dp.capacities(), ceilings());
    let n = names(3);
    let models: BTreeMap<u32, Option<ServiceModel>> =
        (0..3).map(|i| (i, Some(model(i, &[i * 10 + 1, i * 10 + 2], 0, i)))).collect();
    let r = apply_all(&mut b, &models, &n, &mut dp);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(r.applied.len(), 3);
    let st = dp.read_state().expect("state");
    assert_eq!(st.frontends.len(), 3);
    assert_eq!(st.sets.len(), 3);
    assert!(st.is_tidy());
    let seen = served(&st);
    assert_eq!(seen.len(), 3);
    assert!(seen.values().all(|(f, b)| f & set_flags::PRESENT != 0 && b.len() == 2));
    let before = dp.log.len();
    let r = apply_all(&mut b, &models, &n, &mut dp);
    assert_eq!((r.ops, dp.log.len()), (0, before), "nothing changed, nothing written");
    assert!(r.departed.is_empty());
}

#[test]
fn a_change_writes_fresh_slots_and_reuses_the_old_ones_only_after_a_grace_period() {
    let mut dp = FakeDatapath::default();
    dp.instant_grace = false;
    let mut b = Balancer::new(dp.capacities(), ceilings());
    let n = names(1);
    let m1 = BTreeMap::from([(0, Some(model(0, &[1, 2, 3], 0, 0)))]);
    apply_all(&mut b, &m1, &n, &mut dp);
    let first = b.set(0).expect("set").run();
    let m2 = BTreeMap::from([(0, Some(model(0, &[1, 2, 4], 0, 0)))]);
    let r = apply_all(&mut b, &m2, &n, &mut dp);
    let second = b.set(0).expect("set").run();
    assert!(second.end() <= first.base || first.end() <= second.base, "{first:?} then {second:?}");
    assert_eq!(r.departed.iter().map(|d| d.backend.ip()).collect::<Vec<_>>(), vec![ip(3)]);
    assert_eq!(r.rejoined.iter().map(|d| d.backend.ip()).collect::<Vec<_>>(), vec![ip(4)]);
    // Without a grace period the first run stays out of use.
    let m3 = BTreeMap::from([(0, Some(model(0, &[5, 6, 7], 0, 0)))]);
    apply_all(&mut b, &m3, &n, &mut dp);
    let third = b.set(0).expect("set").run();
    assert!(third.end() <= first.base || first.end() <= third.base, "{first:?} reused as {third:?}");
    dp.complete_grace();
    let m4 = BTreeMap::from([(0, Some(model(0, &[1, 2, 3], 0, 0)))]);
    apply_all(&mut b, &m4, &n, &mut dp);
    assert_eq!(b.set(0).expect("set").run(), first, "best fit reuses the freed run");
}

#[test]
fn a_set_whose_switch_fails_keeps_serving_its_previous_version() {
    let n = names(2);
    let mut fake = FakeDatapath::default();
    let mut b = Balancer::new(fake.capacities(), ceilings());
    let m1: BTreeMap<u32, Option<ServiceModel>> =
        (0..2).map(|i| (i, Some(model(i, &[i * 10 + 1], set_flags::MEMBERSHIP, i)))).collect();
    apply_all(&mut b, &m1, &n, &mut fake);
    let before = served(&fake.read_state().expect("state"));
    let mut dp = FaultyDatapath::new(fake, FailMap(map_names::SETS));
    let m2: BTreeMap<u32, Option<ServiceModel>> =
        (0..2).map(|i| (i, Some(model(i, &[i * 10 + 2, i * 10 + 3], set_flags::MEMBERSHIP, i)))).collect();
    let r = apply_all(&mut b, &m2, &n, &mut dp);
    assert_eq!(r.failed.len(), 2);
    assert!(r.departed.is_empty(), "nothing left a set");
    let st = dp.read_state().expect("state");
    assert_eq!(served(&st), before, "the previous versions serve");
    assert!(st.is_tidy(), "members of the abandoned versions were taken back: {:?}", st.members);
    // The fault goes away: the retry converges.
    let mut fake = dp.inner;
    let r = apply_all(&mut b, &m2, &n, &mut fake);
    assert!(r.failed.is_empty());
    let st = fake.read_state().expect("state");
    assert!(served(&st).values().all(|(_, b)| b.len() == 2));
    assert!(st.is_tidy());
}

#[test]
fn removed_services_go_after_their_frontends_and_their_backends_depart() {
    let mut dp = FakeDatapath::default();
    let mut b = Balancer::new(dp.capacities(), ceilings());
    let n = names(2);
    let m: BTreeMap<u32, Option<ServiceModel>> =
        (0..2).map(|i| (i, Some(model(i, &[i + 1], set_flags::MEMBERSHIP, i)))).collect();
    apply_all(&mut b, &m, &n, &mut dp);
    let r = apply_all(&mut b, &BTreeMap::from([(0, None)]), &n, &mut dp);
    assert_eq!(r.departed.len(), 1);
    let st = dp.read_state().expect("state");
    assert_eq!((st.frontends.len(), st.sets.len()), (1, 1));
    assert!(st.is_tidy());
    let log = &dp.log;
    let fe = log.iter().rposition(|op| matches!(op, MapOp::DeleteFrontend(_))).expect("frontend deleted");
    let set = log.iter().rposition(|op| matches!(op, MapOp::DeleteSet { .. })).expect("set deleted");
    assert!(fe < set, "the frontend goes before its set");
}

#[test]
fn the_first_service_by_name_wins_a_frontend_and_the_other_takes_over_when_it_leaves() {
    let mut dp = FakeDatapath::default();
    let mut b = Balancer::new(dp.capacities(), ceilings());
    let n = names(2);
    // Both claim VIP .7; s001 applied first, s000 wins by name.
    apply_all(&mut b, &BTreeMap::from([(1, Some(model(1, &[2], 0, 7)))]), &n, &mut dp);
    let r = apply_all(&mut b, &BTreeMap::from([(0, Some(model(0, &[1], 0, 7)))]), &n, &mut dp);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(r.problems[0].0, ServiceRef(1));
    let backends =
        |dp: &FakeDatapath| served(&dp.read_state().expect("state")).into_values().next().expect("one").1;
    assert_eq!(backends(&dp)[0].ip(), ip(1));
    apply_all(&mut b, &BTreeMap::from([(0, None)]), &n, &mut dp);
    assert_eq!(backends(&dp)[0].ip(), ip(2));
    assert_eq!(b.problems().count(), 0, "the conflict is over");
}

#[test]
fn a_restarted_balancer_adopts_the_maps_and_writes_nothing_for_an_unchanged_cluster() {
    let mut dp = FakeDatapath::default();
    let mut b = Balancer::new(dp.capacities(), ceilings());
    let n = names(4);
    let m: BTreeMap<u32, Option<ServiceModel>> =
        (0..4).map(|i| (i, Some(model(i, &[i + 1, i + 2], set_flags::MEMBERSHIP, i)))).collect();
    apply_all(&mut b, &m, &n, &mut dp);
    let before = dp.read_state().expect("state");
    let writes = dp.log.len();

    // A new agent; one Service is gone meanwhile.
    let mut b = Balancer::adopt(&dp, ceilings()).expect("adopt");
    let mut m = m;
    m.remove(&3);
    let r = apply_all(&mut b, &m, &n, &mut dp);
    assert_eq!((r.ops, dp.log.len()), (0, writes), "adopted as they are");
    let r = b.finish_adoption(&n, &mut dp);
    assert!(r.ops > 0);
    let after = dp.read_state().expect("state");
    assert_eq!(after.sets.len(), 3);
    assert_eq!(after.frontends.len(), 3);
    assert!(after.is_tidy());
    for (id, e) in &after.sets {
        assert_eq!(before.sets.get(id), Some(e), "kept its id and slots");
    }
}

#[test]
fn the_maps_grow_when_the_cluster_does_and_stop_at_the_ceiling() {
    let mut dp = FakeDatapath::default();
    let mut b = Balancer::new(dp.capacities(), Ceilings::new(2_000, 5_000));
    let count = 1_000u32;
    let n = names(count);
    let m: BTreeMap<u32, Option<ServiceModel>> =
        (0..count).map(|i| (i, Some(model(i, &[i, i + 1, i + 2], 0, i)))).collect();
    let r = apply_all(&mut b, &m, &n, &mut dp);
    assert!(r.failed.is_empty(), "{:?}", r.failed.values().next());
    assert!(r.grew.is_some());
    assert!(dp.capacities.sets >= count && dp.capacities.slots >= 3 * count);
    assert_eq!(dp.read_state().expect("state").frontends.len(), count as usize);
    // Beyond --max-backends: refused, the rest unharmed.
    let big: Vec<u32> = (0..4_000).collect();
    let r = apply_all(&mut b, &BTreeMap::from([(0, Some(model(0, &big, 0, 0)))]), &n, &mut dp);
    assert!(matches!(r.failed.get(&ServiceRef(0)), Some(Failure::Capacity(_))), "{:?}", r.failed);
    assert!(dp.capacities.slots <= 5_000);
    let st = dp.read_state().expect("state");
    assert_eq!(st.frontends.len(), count as usize);
    assert_eq!(st.backends_of(st.frontends.values().next().expect("fe").set_id).map(|b| b.len()), Some(3));
}

/// A change of Service `i`: its backends and whether it is UDP, or gone.
type Event = (u32, Option<(Vec<u32>, bool)>);

/// A sequence of Service changes.
fn events() -> impl Strategy<Value = Vec<Event>> {
    proptest::collection::vec(
        (
            0u32..8,
            proptest::option::weighted(0.8, (proptest::collection::vec(0u32..12, 0..5), any::<bool>())),
        ),
        1..40,
    )
}

fn to_model(i: u32, e: &Option<(Vec<u32>, bool)>) -> Option<ServiceModel> {
    e.as_ref().map(|(b, udp)| model(i, b, if *udp { set_flags::MEMBERSHIP } else { 0 }, i))
}

proptest! {
    /// With write failures injected, retrying what failed converges to what
    /// a fault-free balancer programs; nothing is left over.
    #[test]
    fn with_injected_write_failures_retries_converge(evs in events(), seed in any::<u64>()) {
        let n = names(8);
        let mut clean = FakeDatapath::default();
        let mut cb = Balancer::new(clean.capacities(), ceilings());
        let mut faulty = FaultyDatapath::new(FakeDatapath::default(), RandomFaults::new(seed, 200));
        let mut fb = Balancer::new(faulty.capacities(), ceilings());
        let mut want: BTreeMap<u32, Option<ServiceModel>> = BTreeMap::new();
        let mut pending: BTreeSet<u32> = BTreeSet::new();
        for (i, e) in &evs {
            let m = to_model(*i, e);
            want.insert(*i, m.clone());
            apply_all(&mut cb, &BTreeMap::from([(*i, m)]), &n, &mut clean);
            pending.insert(*i);
            let batch: BTreeMap<u32, Option<ServiceModel>> =
                pending.iter().map(|s| (*s, want.get(s).cloned().flatten())).collect();
            let r = apply_all(&mut fb, &batch, &n, &mut faulty);
            pending = r.failed.keys().map(|s| s.0).collect();
        }
        faulty.policy.heal();
        for _ in 0..3 {
            let batch: BTreeMap<u32, Option<ServiceModel>> =
                want.iter().map(|(s, m)| (*s, m.clone())).collect();
            let r = apply_all(&mut fb, &batch, &n, &mut faulty);
            prop_assert!(r.failed.is_empty());
        }
        let a = clean.read_state().expect("state");
        let b = faulty.read_state().expect("state");
        prop_assert_eq!(served(&a), served(&b));
        prop_assert!(b.is_tidy(), "members: {:?}", b.members);
        prop_assert_eq!(a.sets.len(), b.sets.len());
    }

    /// Whatever the order of changes, no two sets share a slot.
    #[test]
    fn sets_never_share_slots(evs in events()) {
        let n = names(8);
        let mut dp = FakeDatapath::default();
        let mut b = Balancer::new(dp.capacities(), ceilings());
        for (i, e) in &evs {
            apply_all(&mut b, &BTreeMap::from([(*i, to_model(*i, e))]), &n, &mut dp);
            let runs: Vec<_> = b.sets().map(|(_, r)| r.run()).filter(|r| r.len > 0).collect();
            for (x, r) in runs.iter().enumerate() {
                for o in &runs[x + 1..] {
                    prop_assert!(r.end() <= o.base || o.end() <= r.base, "{:?} {:?}", r, o);
                }
            }
        }
    }
}
