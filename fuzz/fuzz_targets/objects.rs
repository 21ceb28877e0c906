//! Any text a file source (or a broken API server) could hand the agent:
//! ingest it, build the model and plan it into a fake datapath
//! (`fuzz/src/pipeline.rs`, shared with the suite's seed replay). Nothing
//! may panic.
#![no_main]

#[path = "../src/pipeline.rs"]
mod pipeline;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pipeline::run_objects(data);
});
