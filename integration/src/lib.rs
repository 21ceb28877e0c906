//! Kernel test harness: every test gets its own network namespace, child
//! cgroup and bpffs instance, and removes them when it ends, also when it
//! fails (the guards clean up in `Drop`).
//!
//! Safety rules this harness keeps:
//! * programs attach only to the test's child cgroup, never the root;
//! * clients and servers run inside the test's network namespace, where
//!   virtual IPs have no route: an untranslated connect fails with
//!   ENETUNREACH and no packet leaves the machine;
//! * only processes this harness started are killed, by their PID.

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod probe;
pub mod program;
pub mod sandbox;
pub mod soak;

pub use program::{Programmer, Svc};

/// The programs built with the `upgrade-test` feature: a "new build" whose
/// instructions differ from the agent's embedded ones.
pub const UPGRADE_OBJECT: &str = concat!(env!("OUT_DIR"), "/socklb-sock");
pub use sandbox::Sandbox;

/// Whether kernel tests can run. Without root they are skipped with a
/// message, except in CI (`CI=true`), where a skipped kernel test is a failure.
pub fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("kernel tests need root, and CI=true forbids skipping them");
    }
    eprintln!("SKIPPED: kernel tests need root (run `sudo scripts/test.sh`)");
    false
}

/// Returns early from a test when it cannot run (see [`have_root`]).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::have_root() {
            return;
        }
    };
}

/// Parses a socket address literal in a test.
pub fn sa(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address literal {s:?}: {e}"))
}

/// How many programs are attached to a cgroup (effective or not), by bpftool.
pub fn attached_programs(cgroup: &std::path::Path) -> usize {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool (scripts/setup.sh installs it)");
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_str(&text).expect("bpftool json");
    v.as_array().map_or(0, Vec::len)
}
