#!/usr/bin/env bash
# The main job on an embedded example: socklb load-balances the services of
# examples/cluster.yaml for a client in a sandbox, and the client reports
# which backends answered and what getpeername said.
#
#   sudo scripts/demo.sh
#
# Everything lives in a sandbox made here and removed on exit, even on
# failure: a network namespace (backends and client), a child cgroup (the
# programs attach there, never to the root cgroup) and a private bpffs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh needs root (network namespaces, cgroups, BPF): run sudo scripts/demo.sh" >&2
  exit 1
fi

scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
echo "[demo] building socklb and the test client"
cargo build --quiet -p socklb -p socklb-integration
SOCKLB=target/debug/socklb
PROBE=target/debug/socklb-probe

NAME="socklb-demo-$$"
CG2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
[ -n "$CG2" ] || { echo "no cgroup2 mount found" >&2; exit 1; }
CGROUP="$CG2/$NAME"
WORK=$(mktemp -d "/tmp/$NAME.XXXX")
BPFFS_MOUNT="$WORK/bpffs"
BPFFS="$BPFFS_MOUNT/socklb"
METRICS_PORT=$((20000 + $$ % 20000))
PIDS=()

cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  [ -d "$BPFFS" ] && "$SOCKLB" uninstall --cgroup "$CGROUP" --bpffs "$BPFFS" >/dev/null
  mountpoint -q "$BPFFS_MOUNT" && umount "$BPFFS_MOUNT"
  rm -rf "$WORK"
  [ -d "$CGROUP" ] && rmdir "$CGROUP"
  ip netns del "$NAME" 2>/dev/null
}
trap cleanup EXIT

echo "[demo] sandbox: netns $NAME, cgroup $CGROUP, bpffs $BPFFS_MOUNT"
ip netns add "$NAME"
ip -n "$NAME" link set lo up
mkdir "$CGROUP"
mkdir -p "$BPFFS_MOUNT"
mount -t bpf bpf "$BPFFS_MOUNT"

# Backends of examples/cluster.yaml, and this "node's" address for NodePorts.
V4=(10.244.1.1 10.244.2.1 10.244.3.1 10.244.1.2 10.244.2.2 10.244.1.3 10.244.3.3 10.244.2.4 10.244.3.4 10.244.1.5 10.244.2.5 192.168.50.10)
V6=(fd00:244:1::1 fd00:244:2::1 fd00:244:1::2 fd00:244:2::2)
for a in "${V4[@]}"; do ip -n "$NAME" addr add "$a/32" dev lo; done
for a in "${V6[@]}"; do ip -n "$NAME" addr add "$a/128" dev lo nodad; done

SERVE=(--netns "$NAME")
for a in 10.244.1.1 10.244.2.1 10.244.3.1 10.244.1.2 10.244.2.2 10.244.1.3 10.244.3.3 10.244.2.4 10.244.3.4; do SERVE+=(--tcp "$a:8080"); done
SERVE+=(--tcp "[fd00:244:1::1]:8443" --tcp "[fd00:244:2::1]:8443" --tcp "[fd00:244:1::2]:8080" --tcp "[fd00:244:2::2]:8080")
for a in 10.244.1.5 10.244.2.5; do SERVE+=(--udp "$a:5353" --tcp "$a:5353"); done
"$PROBE" serve "${SERVE[@]}" > "$WORK/servers.log" &
PIDS+=($!)

echo "[demo] starting: socklb agent --from-file examples/cluster.yaml"
RUST_LOG=warn "$SOCKLB" agent --from-file examples/cluster.yaml \
  --cgroup "$CGROUP" --bpffs "$BPFFS" \
  --metrics-addr "127.0.0.1:$METRICS_PORT" \
  --nodeport-addresses 192.168.50.10,127.0.0.1 --node-name node-a &
PIDS+=($!)
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null || { echo "agent did not become ready" >&2; exit 1; }

echo
echo "[demo] what the datapath holds (socklb list):"
"$SOCKLB" list --bpffs "$BPFFS"

echo
echo "[demo] a client in the sandbox connects 200 times to each frontend:"
"$PROBE" table --cgroup "$CGROUP" --netns "$NAME" --count 200 \
  --target "web=10.96.0.10:80" \
  --target "api6=[fd00:96::20]:443" \
  --target "dual/v4=10.96.0.30:80" \
  --target "dual/v6=[fd00:96::30]:80" \
  --target "web/v4-mapped=[::ffff:10.96.0.10]:80" \
  --target "shop/cluster=10.96.0.40:80" \
  --target "shop/nodeport=192.168.50.10:30080" \
  --target "pod-own-loopback=127.0.0.1:30080" \
  --target "shop/external=203.0.113.10:80" \
  --target "draining=10.96.0.60:80" \
  --target "empty=10.96.0.50:80" \
  --target "kube-dns/udp=10.96.0.53:53/udp" \
  --target "kube-dns/tcp=10.96.0.53:53" \
  --target "not-a-svc=10.96.0.99:80"

echo "(empty: no endpoint, refused; pod-own-loopback: a NodePort on loopback is for host"
echo " processes only, a pod's loopback is its own; not-a-svc: never translated)"
echo
echo "[demo] per-service counters from the BPF maps (/metrics):"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^socklb_service_(translations|refusals)_total' | sort
echo
echo "[demo] done; cleaning up the sandbox"
