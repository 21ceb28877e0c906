use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use socklb_common::{
    BackendValue, FrontendKey, FrontendValue, MemberKey, PROTO_TCP, SCOPE_INTERNAL, SlotKey, map_names,
};

use super::*;
use crate::datapath::{
    fake::FakeDatapath,
    faulty::{FailMap, FaultyDatapath, RandomFaults},
};

fn backend(n: u8) -> BackendValue {
    BackendValue {
        addr: [0, 0, 0xffff_u32.to_be(), u32::from_ne_bytes([10, 244, 0, n])],
        port: 8080u16.to_be(),
        proto: PROTO_TCP,
        flags: 0,
    }
}

fn frontend(n: u8) -> FrontendKey {
    FrontendKey {
        addr: [0, 0, 0xffff_u32.to_be(), u32::from_ne_bytes([10, 96, 0, n])],
        port: 80u16.to_be(),
        proto: PROTO_TCP,
        scope: SCOPE_INTERNAL,
    }
}

/// Services as (id, backend numbers), frontends as (frontend number, id).
fn desired(services: &[(u32, &[u8])], frontends: &[(u8, u32)]) -> DesiredState {
    let mut d = DesiredState::default();
    for &(id, bs) in services {
        for &b in bs {
            d.backends.insert(u32::from(b), backend(b));
        }
        let backends = bs.iter().map(|&b| u32::from(b)).collect();
        d.services.insert(
            id,
            DesiredService {
                backends,
                flags: socklb_common::service_flags::MEMBERSHIP,
                ..Default::default()
            },
        );
    }
    for &(f, id) in frontends {
        d.frontends.insert(frontend(f), FrontendValue { service_id: id, flags: 0, _pad: 0 });
    }
    d
}

fn converge(dp: &mut FakeDatapath, mirror: &mut MapState, want: &DesiredState) -> ExecReport {
    let p = plan(mirror, want);
    let report = execute(&p, dp, mirror);
    assert_eq!(&dp.state, mirror, "the mirror must track the maps");
    report
}

#[test]
fn a_new_service_is_written_backends_first_and_frontend_last() {
    let want = desired(&[(1, &[1, 2])], &[(10, 1)]);
    let p = plan(&MapState::default(), &want);
    let ops: Vec<_> = p.ops().cloned().collect();
    let pos = |f: &dyn Fn(&MapOp) -> bool| ops.iter().position(f).expect("op present");
    let backend_put = pos(&|o| matches!(o, MapOp::PutBackend { .. }));
    let slot_put = pos(&|o| matches!(o, MapOp::PutSlot { .. }));
    let switch = pos(&|o| matches!(o, MapOp::PutService { .. }));
    let frontend_put = pos(&|o| matches!(o, MapOp::PutFrontend { .. }));
    assert!(backend_put < slot_put && slot_put < switch && switch < frontend_put, "{ops:#?}");
}

#[test]
fn replacing_the_backend_set_writes_a_new_generation_and_switches_with_one_write() {
    let mut dp = FakeDatapath::default();
    let mut mirror = MapState::default();
    converge(&mut dp, &mut mirror, &desired(&[(1, &[1, 2, 3])], &[(10, 1)]));
    let g0 = mirror.services[&1].generation;

    let want = desired(&[(1, &[4, 5, 6])], &[(10, 1)]);
    let p = plan(&mirror, &want);
    let service_writes: Vec<_> = p.ops().filter(|o| matches!(o, MapOp::PutService { .. })).collect();
    assert_eq!(service_writes.len(), 1, "exactly one switch");
    for op in p.ops() {
        if let MapOp::PutSlot { key, .. } = op {
            assert_eq!(key.generation, g0.wrapping_add(1), "new slots never overwrite live ones");
        }
    }
    converge(&mut dp, &mut mirror, &want);
    assert_eq!(mirror.logical_view(), want);
    assert!(mirror.is_tidy(), "old generation and old backends are gone: {mirror:#?}");
}

#[test]
fn planning_again_after_success_does_nothing() {
    let mut dp = FakeDatapath::default();
    let mut mirror = MapState::default();
    let want = desired(&[(1, &[1, 2]), (2, &[2, 3])], &[(10, 1), (11, 2), (12, 2)]);
    converge(&mut dp, &mut mirror, &want);
    assert!(plan(&mirror, &want).is_empty());
}

#[test]
fn a_flag_change_alone_rewrites_only_the_service_entry() {
    let mut dp = FakeDatapath::default();
    let mut mirror = MapState::default();
    let mut want = desired(&[(1, &[1, 2])], &[(10, 1)]);
    converge(&mut dp, &mut mirror, &want);
    want.services.get_mut(&1).expect("svc").affinity_timeout_secs = 10_800;
    let p = plan(&mirror, &want);
    let ops: Vec<_> = p.ops().collect();
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(
        matches!(ops[0], MapOp::PutService { value, .. } if value.generation == mirror.services[&1].generation)
    );
}

#[test]
fn a_failed_update_leaves_the_previous_version_serving() {
    let mut mirror = MapState::default();
    let mut fake = FakeDatapath::default();
    converge(&mut fake, &mut mirror, &desired(&[(1, &[1, 2]), (2, &[3])], &[(10, 1), (11, 2)]));
    let before = mirror.logical_view();

    // The slots map is full: service 1's new set cannot be written.
    let mut dp = FaultyDatapath::new(fake, FailMap(map_names::SLOTS));
    let want = desired(&[(1, &[4, 5]), (2, &[3])], &[(10, 1), (11, 2)]);
    let p = plan(&mirror, &want);
    let report = execute(&p, &mut dp, &mut mirror);
    assert!(report.map_full());
    assert_eq!(report.services_failed, BTreeSet::from([1]));
    let after = dp.inner.state.logical_view();
    assert_eq!(after.services[&1], before.services[&1], "service 1 keeps its old set");
    assert_eq!(after.services[&2], before.services[&2], "service 2 is unaffected");
    assert_eq!(dp.inner.state, mirror);
}

#[test]
fn a_frontend_of_a_service_that_failed_to_appear_is_not_written() {
    let mut mirror = MapState::default();
    let mut dp = FaultyDatapath::new(FakeDatapath::default(), FailMap(map_names::SERVICES));
    let want = desired(&[(1, &[1])], &[(10, 1)]);
    let report = execute(&plan(&mirror, &want), &mut dp, &mut mirror);
    assert!(!report.is_complete());
    assert!(dp.inner.state.frontends.is_empty(), "no frontend may point at a missing service");
    assert!(dp.inner.state.slots.is_empty(), "half-written slots are rolled back");
}

#[test]
fn removing_a_service_deletes_frontend_then_service_then_backends() {
    let mut dp = FakeDatapath::default();
    let mut mirror = MapState::default();
    converge(&mut dp, &mut mirror, &desired(&[(1, &[1, 2])], &[(10, 1)]));
    dp.log.clear();
    converge(&mut dp, &mut mirror, &DesiredState::default());
    let pos = |f: &dyn Fn(&MapOp) -> bool| dp.log.iter().position(f).expect("op present");
    let fe = pos(&|o| matches!(o, MapOp::DeleteFrontend(_)));
    let svc = pos(&|o| matches!(o, MapOp::DeleteService { .. }));
    let slot = pos(&|o| matches!(o, MapOp::DeleteSlot(_)));
    let be = pos(&|o| matches!(o, MapOp::DeleteBackend { .. }));
    assert!(fe < svc && svc < slot && slot < be, "{:#?}", dp.log);
    assert_eq!(mirror, MapState::default());
}

#[test]
fn leftovers_of_an_interrupted_run_are_cleaned_up() {
    let mut state = MapState::default();
    state.slots.insert(SlotKey { service_id: 9, generation: 3, index: 0 }, 1);
    state.members.insert(MemberKey { service_id: 9, backend_id: 1 });
    state.backends.insert(1, backend(1));
    let mut dp = FakeDatapath::new(state.clone());
    let mut mirror = state;
    converge(&mut dp, &mut mirror, &DesiredState::default());
    assert_eq!(mirror, MapState::default());
}

#[test]
fn a_missing_live_slot_is_repaired_by_switching_to_a_complete_generation() {
    let mut dp = FakeDatapath::default();
    let mut mirror = MapState::default();
    let want = desired(&[(1, &[1, 2])], &[(10, 1)]);
    converge(&mut dp, &mut mirror, &want);
    let g = mirror.services[&1].generation;
    // Drift: somebody deleted a slot behind the agent's back.
    dp.state.slots.remove(&SlotKey { service_id: 1, generation: g, index: 1 });
    let mut read_back = dp.state.clone();
    converge(&mut dp, &mut read_back, &want);
    assert_eq!(read_back.logical_view(), want);
    assert!(read_back.is_tidy());
}

// ---- Properties over random sequences of desired states ----

fn arb_desired() -> impl Strategy<Value = DesiredState> {
    // A small universe so that sequences share ids and backends often.
    let service = (1u32..=5, prop::collection::vec(1u8..=10, 0..6));
    let services = prop::collection::vec(service, 0..5);
    let frontends = prop::collection::vec((1u8..=8, any::<prop::sample::Index>()), 0..8);
    (services, frontends).prop_map(|(services, frontends)| {
        let mut d = DesiredState::default();
        let services: BTreeMap<u32, Vec<u8>> = services.into_iter().collect();
        for (id, mut bs) in services {
            bs.sort_unstable();
            bs.dedup();
            for &b in &bs {
                d.backends.insert(u32::from(b), backend(b));
            }
            let backends = bs.into_iter().map(u32::from).collect();
            d.services.insert(
                id,
                DesiredService {
                    name: socklb_common::ServiceName::new(&format!("ns/svc-{id}:p")),
                    backends,
                    flags: if id % 2 == 1 { socklb_common::service_flags::MEMBERSHIP } else { 0 },
                    ..Default::default()
                },
            );
        }
        let ids: Vec<u32> = d.services.keys().copied().collect();
        if !ids.is_empty() {
            for (f, pick) in frontends {
                let id = ids[pick.index(ids.len())];
                d.frontends.insert(frontend(f), FrontendValue { service_id: id, flags: 0, _pad: 0 });
            }
        }
        d
    })
}

/// What a reader of the maps would do with each frontend right now: the
/// backend set it selects from, or None if the frontend is absent.
fn reader_view(state: &MapState) -> BTreeMap<FrontendKey, Option<Vec<u32>>> {
    state
        .frontends
        .iter()
        .map(|(k, f)| {
            let set = state.active_backends(f.service_id);
            if let Some(ids) = &set {
                for id in ids {
                    assert!(state.backends.contains_key(id), "slot points at a deleted backend {id}");
                }
            }
            (*k, set)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn after_the_plan_the_maps_equal_the_desired_state_and_replanning_is_empty(
        steps in prop::collection::vec(arb_desired(), 1..6)
    ) {
        let mut dp = FakeDatapath::default();
        let mut mirror = MapState::default();
        for want in &steps {
            let report = converge(&mut dp, &mut mirror, want);
            prop_assert!(report.is_complete(), "{:?}", report.failures);
            prop_assert_eq!(&dp.state.logical_view(), want);
            prop_assert!(dp.state.is_tidy(), "leftovers: {:#?}", dp.state);
            prop_assert!(plan(&mirror, want).is_empty());
        }
    }

    #[test]
    fn a_reader_at_any_moment_sees_the_old_or_the_new_set_never_a_mix(
        from in arb_desired(), to in arb_desired()
    ) {
        let mut dp = FakeDatapath::default();
        let mut mirror = MapState::default();
        converge(&mut dp, &mut mirror, &from);
        // Replay what the executor actually wrote, in its (batched, phased)
        // order, and look at the maps after every single write.
        let mut state = dp.state.clone();
        dp.log.clear();
        execute(&plan(&mirror, &to), &mut dp, &mut mirror);
        for op in &dp.log {
            state.apply(op);
            for (key, set) in reader_view(&state) {
                let f = state.frontends[&key];
                prop_assert!(
                    from.frontends.get(&key) == Some(&f) || to.frontends.get(&key) == Some(&f),
                    "frontend {key:?} points at neither its old nor its new service"
                );
                let Some(set) = set else {
                    prop_assert!(false, "frontend {key:?} points at an incomplete service");
                    continue;
                };
                let id = f.service_id;
                let was = from.services.get(&id).map(|s| &s.backends);
                let will = to.services.get(&id).map(|s| &s.backends);
                prop_assert!(
                    Some(&set) == was || Some(&set) == will,
                    "service {id} shows {set:?}: neither old {was:?} nor new {will:?}"
                );
            }
        }
    }

    #[test]
    fn with_random_write_failures_retries_converge(
        steps in prop::collection::vec(arb_desired(), 1..5), seed in any::<u64>()
    ) {
        let mut dp = FaultyDatapath::new(FakeDatapath::default(), RandomFaults::new(seed, 200));
        let mut mirror = MapState::default();
        for want in &steps {
            let mut rounds = 0;
            loop {
                let report = execute(&plan(&mirror, want), &mut dp, &mut mirror);
                prop_assert_eq!(&dp.inner.state, &mirror);
                // Whatever failed, every frontend still resolves to a complete set.
                reader_view(&dp.inner.state);
                if report.is_complete() && plan(&mirror, want).is_empty() {
                    break;
                }
                rounds += 1;
                prop_assert!(rounds < 200, "no convergence");
            }
            prop_assert_eq!(&dp.inner.state.logical_view(), want);
            prop_assert!(dp.inner.state.is_tidy());
        }
    }
}
