#!/usr/bin/env bash
# Runs every test: setup, formatting and lints, unit and property tests, then
# the kernel tests (real programs, sockets, network namespaces, cgroups).
#
#   sudo scripts/test.sh            everything
#   scripts/test.sh                 without root: kernel tests are skipped
#                                   with a message (CI=true makes that a failure)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n[test] %s\n' "$*" >&2; }

scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log "formatting"
cargo fmt --all -- --check

log "clippy (workspace, all targets)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

log "clippy (eBPF programs, for the BPF target)"
cargo +nightly clippy --quiet -p socklb-ebpf-sock --target bpfel-unknown-none -Z build-std=core \
  --release --target-dir target/bpf-clippy -- -D warnings

log "unit and property tests"
cargo test --quiet

if [ "$(id -u)" -ne 0 ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "kernel tests need root, and CI=true forbids skipping them" >&2
    exit 1
  fi
  log "SKIPPED kernel tests: they need root (run: sudo scripts/test.sh)"
  exit 0
fi

log "kernel tests"
# The upgrade test needs a build with another map layout (layout-next);
# cargo keeps both feature sets' artifacts, so the normal build after it
# only restores target/debug/socklb.
cargo build --quiet -p socklb --bins --features layout-next
cp target/debug/socklb target/debug/socklb-layout-next
# The agent tests run the real socklb binary.
cargo build --quiet -p socklb --bins
# Each test builds its own namespace, cgroup and bpffs, so they may run in
# parallel; two threads keep a 2-core machine responsive.
cargo test -p socklb-integration -- --test-threads="${SOCKLB_TEST_THREADS:-2}"

log "all tests passed"
