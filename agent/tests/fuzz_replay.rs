//! The cargo-fuzz target's body (`fuzz/src/pipeline.rs`) in the
//! suite: every seed of `fuzz/seeds/objects` and `examples/cluster.yaml`,
//! plus byte-level mutations of them like the fuzzer's own (truncation,
//! flipped, inserted and removed bytes, spliced halves). The fuzzer itself needs
//! nightly and a sanitizer build that takes longer than the whole suite, so
//! it runs apart (docs/reliability.md).

use std::{fs, path::PathBuf};

use proptest::prelude::*;
#[path = "../../fuzz/src/pipeline.rs"]
mod pipeline;

use pipeline::run_objects;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn inputs(dir: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(repo().join(dir)) else { return Vec::new() };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).ok()?)))
        .collect();
    out.sort();
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = inputs("fuzz/seeds/objects").into_iter().map(|(_, b)| b).collect();
    if let Ok(example) = fs::read(repo().join("examples/cluster.yaml")) {
        all.push(example);
    }
    all
}

#[test]
fn the_seeds_run_through_the_whole_pipeline_and_program_services() {
    let seeds = inputs("fuzz/seeds/objects");
    assert!(seeds.len() >= 2, "fuzz/seeds/objects holds the seeds");
    for (name, bytes) in &seeds {
        let outcome = run_objects(bytes);
        assert!(outcome.parsed, "seed {name} parses");
        assert!(
            outcome.services > 0 && outcome.ops_applied > 0,
            "seed {name} programs services: {outcome:?}"
        );
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// The first part of one seed and the rest of another.
    Splice(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Bytes that matter to YAML and JSON, and some that never should.
    let token = prop_oneof![
        Just(b":".to_vec()),
        Just(b"- ".to_vec()),
        Just(b"\n---\n".to_vec()),
        Just(b"{".to_vec()),
        Just(b"]".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"&a *a".to_vec()),
        Just(b"!!binary".to_vec()),
        Just(b"65536".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"::ffff:".to_vec()),
        Just(vec![0xff, 0xfe]),
        Just(vec![0]),
        proptest::collection::vec(any::<u8>(), 1..8),
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), token).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(a, b, c)| Mutation::Splice(a, b, c)),
    ]
}

fn apply(seeds: &[Vec<u8>], base: usize, m: &[Mutation]) -> Vec<u8> {
    let mut data = seeds[base % seeds.len()].clone();
    for m in m {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match m {
            Mutation::Truncate(i) => data.truncate(at(*i, data.len())),
            Mutation::Flip(i, b) if !data.is_empty() => {
                let i = i % data.len();
                data[i] ^= b | 1;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(i, t) => {
                let i = at(*i, data.len());
                data.splice(i..i, t.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let i = at(*i, data.len());
                let end = (i + n).min(data.len());
                data.drain(i..end);
            }
            Mutation::Splice(other, cut, from) => {
                let other = &seeds[other % seeds.len()];
                let cut = at(*cut, data.len());
                let from = at(*from, other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
        }
    }
    data
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn mutated_seeds_never_panic(base in any::<usize>(), muts in proptest::collection::vec(mutation(), 1..6)) {
        let seeds = seeds();
        let data = apply(&seeds, base, &muts);
        let outcome = run_objects(&data);
        // Text that does not parse programs nothing, and the pipeline keeps
        // no hidden state: the same input gives the same outcome.
        prop_assert!(outcome.parsed || outcome.ops_applied == 0);
        prop_assert_eq!(&outcome, &run_objects(&data));
    }
}

/// The mutations must leave much of the input readable, or the test would
/// only ever exercise the parser's error path.
#[test]
fn most_single_mutations_still_reach_the_planner() {
    use proptest::strategy::ValueTree;
    let seeds = seeds();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut parsed, mut programmed) = (0, 0);
    let trials = 300;
    for _ in 0..trials {
        let base = any::<usize>().new_tree(&mut runner).expect("tree").current();
        let m = mutation().new_tree(&mut runner).expect("tree").current();
        let outcome = run_objects(&apply(&seeds, base, &[m]));
        parsed += usize::from(outcome.parsed);
        programmed += usize::from(outcome.ops_applied > 0);
    }
    assert!(parsed * 100 >= trials * 25, "only {parsed} of {trials} mutated inputs parsed");
    assert!(programmed * 100 >= trials * 15, "only {programmed} of {trials} mutated inputs reached the maps");
    eprintln!("{parsed} of {trials} parsed, {programmed} programmed services");
}
