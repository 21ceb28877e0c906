//! What this kernel offers, for the start-up log and `socklb status`.
//!
//! The authoritative check for the programs is loading them (the loader
//! names the hook the kernel refuses); this module probes what loading
//! cannot show, and reports the kernel release.

use serde::Serialize;

use crate::sockdiag;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub min_kernel: &'static str,
    pub available: bool,
    pub detail: String,
}

/// The running kernel's release string.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

/// SOCK_DESTROY needs CONFIG_INET_DIAG_DESTROY: destroying a socket that
/// does not exist answers ENOENT when the feature is there and EOPNOTSUPP
/// when it is not.
pub fn probe_sock_destroy() -> Feature {
    let (available, detail) = match sockdiag::destroy_probe() {
        Ok(()) => (true, "SOCK_DESTROY supported".to_string()),
        Err(e) if e.raw_os_error() == Some(95) => {
            (false, "kernel built without CONFIG_INET_DIAG_DESTROY: stale sockets cannot be destroyed".into())
        }
        Err(e) => (false, format!("sock_diag unavailable: {e}")),
    };
    Feature { name: "sock_diag SOCK_DESTROY (stale sockets)", min_kernel: "4.5", available, detail }
}

/// Every probed feature, plus the hooks as the loader reported them.
pub fn detect() -> Vec<Feature> {
    vec![probe_sock_destroy()]
}
