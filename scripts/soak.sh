#!/usr/bin/env bash
# Runs the reliability tests at soak length and prints their figures:
#   1. SIGKILL restarts (and an in-place upgrade) under connect load,
#   2. random Service and EndpointSlice churn under connect load,
#   3. API server faults (watch restarts, 500s, 410, absence, slow server).
#
#   sudo scripts/soak.sh                # 10 minutes in all (default)
#   sudo scripts/soak.sh --duration 30m # longer; s, m or h
#
# Each test gets a third of the time (at least its test-suite size). The
# tests make their own namespaces, cgroups and bpffs directories and remove
# them, also on failure. Figures: connects, failures, restarts, changes
# applied, convergence times and the agent's RSS over time; the raw lines
# are kept in soak-results/.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=600
while [ $# -gt 0 ]; do
  case "$1" in
    --duration)
      [ $# -ge 2 ] || { echo "--duration needs a value (e.g. 10m)" >&2; exit 2; }
      case "$2" in
        *h) DURATION=$(( ${2%h} * 3600 )) ;;
        *m) DURATION=$(( ${2%m} * 60 )) ;;
        *s) DURATION=${2%s} ;;
        *[!0-9]*|'') echo "bad duration: $2 (use e.g. 600s, 10m, 1h)" >&2; exit 2 ;;
        *) DURATION=$2 ;;
      esac
      shift 2 ;;
    *) echo "usage: scripts/soak.sh [--duration 10m]" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" -ne 0 ]; then
  echo "soak.sh needs root (network namespaces, cgroups, BPF): run sudo scripts/soak.sh" >&2
  exit 1
fi

scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
echo "[soak] building (release)"
cargo build --quiet --release -p socklb -p socklb-integration --bins

PER_TEST=$(( DURATION / 3 ))
mkdir -p soak-results
OUT="soak-results/soak-$(date -u +%Y%m%dT%H%M%SZ).log"
echo "[soak] ${DURATION}s in all, ${PER_TEST}s per test; raw output: $OUT"
set +e
SOCKLB_SOAK_SECS=$PER_TEST cargo test --release -p socklb-integration \
  --test reliability --test api_faults -- --test-threads=1 --nocapture 2>&1 | tee "$OUT" | grep -E '^test |SOAK \{'
STATUS=${PIPESTATUS[0]}
set -e

python3 - "$OUT" <<'PY'
import json, sys
# A figure line may follow the test's name on the same line.
rows = [json.loads(l[l.index("SOAK {") + 5:]) for l in open(sys.argv[1]) if "SOAK {" in l]
def rss(series):
    s = [x for x in series if x]
    return f"{s[0]/1024:.1f} → {max(s)/1024:.1f} → {s[-1]/1024:.1f} MiB (first → peak → last, {len(s)} samples)" if s else "-"
for r in rows:
    f, t = r["figures"], r["test"]
    print(f"\n## {t}")
    if t == "restarts":
        print(f"- {f['seconds']} s of load: {f['connects']} connects ({f['connects_per_sec']:.0f}/s), {f['failed']} failed")
        print(f"- {f['restarts']} SIGKILL restarts (the last one an in-place program upgrade); maps unchanged after each")
        r2 = sorted(f["restart_to_ready_ms"])
        print(f"- restart to ready: median {r2[len(r2)//2]} ms, max {r2[-1]} ms")
        print(f"- agent RSS after each start: {rss(f['agent_rss_kib_after_each_start'])}")
    elif t == "churn":
        print(f"- {f['changes']} changes ({f['endpoint_changes']} EndpointSlice, {f['service_changes']} Service) at 400/s")
        print(f"- {f['connects']} connects, {f['connects_checked']} checked against the history; "
              f"{f['failed_for_services_with_backends']} failed for services that always had a backend; "
              f"{f['to_never_backend']} to an address that never was a backend")
        d = f["removal_to_datapath_ms"]
        print(f"- a removed backend was last reached p50 {d['p50']:.1f} ms, p99 {d['p99']:.1f} ms, max {d['max']:.1f} ms "
              f"after the API server had the change")
        print(f"- agent RSS, each second: {rss(f['agent_rss_kib_each_second'])}")
    elif t == "api_faults":
        print(f"- {f['connects']} connects to a stable service during all faults, {f['failed']} failed")
        print(f"- {f['watch_restarts']} watch restarts: agent RSS {f['agent_rss_kib_before']/1024:.1f} MiB before, "
              f"{rss(f['agent_rss_kib_each_tenth_of_the_restarts'])}")
        print(f"- converged {f['converged_after_500s_and_410_ms']} ms after 500s and 410 Gone; "
              f"{f['converged_after_return_ms']} ms after a {f['absence_s']} s absence; "
              f"{f['converged_with_slow_server_ms']} ms with a 1 s slow server")
if len(rows) < 3:
    print(f"\n[soak] only {len(rows)} of 3 tests reported figures", file=sys.stderr)
PY
if [ "$STATUS" -ne 0 ]; then
  echo "[soak] FAILED (see $OUT)" >&2
  exit "$STATUS"
fi
echo "[soak] passed"
