//! Rebuild the BPF object when bpf-linker changes (a new LLVM, say).
use std::path::PathBuf;

fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        let linker: PathBuf = linker;
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
