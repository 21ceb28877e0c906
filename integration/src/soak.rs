//! The reliability tests run at test size in `scripts/test.sh` and longer in
//! `scripts/soak.sh`, which sets SOCKLB_SOAK_SECS. Each test prints its
//! figures as one `SOAK {json}` line on stderr, which soak.sh collects.

use std::time::Duration;

/// How long a reliability test runs under soak, if it does.
pub fn soak_duration() -> Option<Duration> {
    std::env::var("SOCKLB_SOAK_SECS").ok().and_then(|v| v.parse().ok()).map(Duration::from_secs)
}

/// Prints one test's figures for soak.sh (and for anyone reading the test
/// output).
pub fn report(test: &str, figures: serde_json::Value) {
    eprintln!("SOAK {}", serde_json::json!({"test": test, "figures": figures}));
}
