#!/usr/bin/env bash
# One-time, idempotent setup of everything a fresh machine lacks to build and
# test socklb: Debian packages, nightly's rust-src and a bpf-linker that uses
# the same LLVM as the nightly rustc that compiles the eBPF crate.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

# Run as root (apt) when needed; the Rust bits go to the invoking user's
# rustup/cargo home, which is root's under `sudo` and in CI.
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

# --- Debian packages -------------------------------------------------------
# iproute2: netns/veth in tests; bpftool: inspection; dnsutils: dig for the
# UDP resolver test; iptables/nftables: benchmark peers; python3: test clients.
APT_PACKAGES=(iproute2 bpftool dnsutils iptables nftables python3 procps util-linux pkg-config)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# --- Rust toolchains -------------------------------------------------------
command -v rustup >/dev/null || { log "rustup not found; this machine kind ships one"; exit 1; }
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi

# --- bpf-linker against nightly's own libLLVM --------------------------------
# bpf-linker must use the LLVM major of the rustc that emits the bitcode, so
# it is built against the libLLVM shipped inside the nightly sysroot. The
# prefix lives in a stable place because the linker binary keeps an rpath to it.
SYSROOT=$(rustc +nightly --print sysroot)
LLVM_SO=$(ls "$SYSROOT"/lib/libLLVM.so.* 2>/dev/null | head -n1 || true)
[ -n "$LLVM_SO" ] || { log "no libLLVM.so.* in $SYSROOT/lib"; exit 1; }
SONAME=$(basename "$LLVM_SO")
LLVM_MAJOR=$(echo "$SONAME" | sed -E 's/^libLLVM\.so\.([0-9]+).*/\1/')
PREFIX="${SOCKLB_LLVM_PREFIX:-${CARGO_HOME:-$HOME/.cargo}/socklb-llvm-$LLVM_MAJOR}"
mkdir -p "$PREFIX/lib"
ln -sfn "$LLVM_SO" "$PREFIX/lib/libLLVM.so"
ln -sfn "$LLVM_SO" "$PREFIX/lib/$SONAME"

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
want_stamp="llvm-$LLVM_MAJOR $SONAME"
stamp="$PREFIX/.bpf-linker-built-for"
if [ -x "$CARGO_BIN/bpf-linker" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] \
   && "$CARGO_BIN/bpf-linker" --version >/dev/null 2>&1; then
  log "bpf-linker present ($("$CARGO_BIN/bpf-linker" --version 2>/dev/null))"
else
  log "building bpf-linker against $SONAME (takes a few minutes)"
  # With the stable toolchain where there is one named so; images such as
  # rust:1-bookworm name theirs by version, and it is the default there.
  TOOLCHAIN=""
  if rustup toolchain list | grep -q '^stable'; then
    TOOLCHAIN="+stable"
  fi
  LLVM_PREFIX="$PREFIX" cargo $TOOLCHAIN install bpf-linker --locked --force \
    --no-default-features --features "llvm-$LLVM_MAJOR"
  "$CARGO_BIN/bpf-linker" --version >/dev/null
  echo "$want_stamp" > "$stamp"
fi

log "done"
