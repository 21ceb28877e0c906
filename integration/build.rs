//! Builds a second variant of the eBPF programs (feature `upgrade-test`:
//! one instruction differs) for the in-place upgrade test.
use std::path::Path;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir).join("../ebpf-sock");
    let root = root.to_str().context("ebpf-sock path is not UTF-8")?;
    let package = Package {
        name: "socklb-ebpf-sock",
        root_dir: root,
        features: &["upgrade-test"],
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
