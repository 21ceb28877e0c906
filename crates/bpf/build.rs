//! Builds the eBPF programs (crate `ebpf-sock`) for the BPF target with the
//! nightly toolchain and bpf-linker, and leaves the object in OUT_DIR, from
//! where `src/loader` embeds it (and so into the `socklb` binary).
use std::path::Path;

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir).join("../../ebpf-sock");
    let root = root.to_str().context("ebpf-sock path is not UTF-8")?;
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var_os("AYA_BUILD_SKIP").is_none() && which_bpf_linker().is_none() {
        bail!(
            "bpf-linker was not found on PATH; run scripts/setup.sh (it builds bpf-linker against nightly's LLVM)"
        );
    }
    // The programs get the agent's layout: a `layout-next` agent embeds
    // programs built for that layout.
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_LAYOUT_NEXT");
    let features: &[&str] =
        if std::env::var_os("CARGO_FEATURE_LAYOUT_NEXT").is_some() { &["layout-next"] } else { &[] };
    let package = Package { name: "socklb-ebpf-sock", root_dir: root, features, ..Default::default() };
    aya_build::build_ebpf([package], Toolchain::default())
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("bpf-linker")).find(|candidate| candidate.is_file())
}
