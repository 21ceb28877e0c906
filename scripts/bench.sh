#!/usr/bin/env bash
# Benchmarks socklb against the physical floor and kube-proxy's iptables and
# nftables layouts, in one run on this machine, and writes
# docs/benchmarks.md (+ docs/bench/*.svg plots, docs/benchmarks.json).
#
#   sudo scripts/bench.sh --quick   # N = 1, 1k, 10k; E = 1 (a few minutes)
#                                   # → docs/benchmarks-quick.md, docs/bench-quick/
#   sudo scripts/bench.sh           # N = 1, 1k, 10k, 100k; E = 1, 10 (up to an hour)
#
# Every peer runs in its own network namespace made here; the programs
# attach to a child cgroup made here; everything is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh needs root (network namespaces, cgroups, BPF, iptables): run sudo scripts/bench.sh" >&2
  exit 1
fi
QUICK=()
OUT=docs/benchmarks.md
PLOTS=docs/bench
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=(--quick); OUT=docs/benchmarks-quick.md; PLOTS=docs/bench-quick ;;
    *) echo "usage: scripts/bench.sh [--quick]" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
echo "[bench] building (release)"
cargo build --quiet --release -p socklb -p socklb-integration --bins
mkdir -p "$PLOTS"
RUN_ID="r$$"
# The harness removes its sandboxes itself; this covers an interrupted run.
trap 'target/release/socklb-bench cleanup --run-id "$RUN_ID"' EXIT
target/release/socklb-bench run "${QUICK[@]}" --run-id "$RUN_ID" --socklb target/release/socklb \
  --out "$OUT" --plots "$PLOTS"
echo "[bench] report: $OUT"
