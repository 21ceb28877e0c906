//! What the `socklb-probe` helper reports, and how tests summarise it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One connect (or datagram round trip) as seen by the client.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Attempt {
    /// CLOCK_MONOTONIC, comparable between processes on this machine.
    pub t_start_ns: u64,
    pub t_end_ns: u64,
    pub ok: bool,
    /// The backend that answered (it replies with its own address).
    pub backend: Option<String>,
    /// getpeername (or the datagram's source for unconnected UDP).
    pub peer: Option<String>,
    /// getsockname.
    pub local: Option<String>,
    pub errno: Option<i32>,
    pub error: Option<String>,
    /// The destination (when a client cycles through several).
    #[serde(default)]
    pub to: Option<String>,
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn now_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Parses the probe's JSON lines.
pub fn parse_attempts(stdout: &[u8]) -> Vec<Attempt> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad probe line {l:?}: {e}")))
        .collect()
}

/// How many successful attempts each backend answered.
pub fn by_backend(attempts: &[Attempt]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.ok) {
        if let Some(b) = &a.backend {
            *counts.entry(b.clone()).or_default() += 1;
        }
    }
    counts
}
