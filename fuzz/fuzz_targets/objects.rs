//! Any text a file source (or a broken API server) could hand the agent:
//! ingest it, build the model and plan it into a fake datapath
//! (`socklb::fuzzing::run_objects`). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = socklb::fuzzing::run_objects(data);
});
