//! The cgroup hooks socklb attaches, the programs that serve them, and what
//! each needs from the kernel.
//!
//! Every helper a program calls and every attach type is probed at start
//! (see [`probe`]); a hook whose needs the kernel lacks is refused before
//! anything is touched, with the helper and the kernel that brought it. The
//! one helper with a fallback is `bpf_set_retval` (Linux 5.18): where it is
//! missing, the `_compat` programs refuse with the hook's plain "deny",
//! which applications see as EPERM instead of ECONNREFUSED / EADDRINUSE.

use serde::Serialize;
use socklb_common::sys::{self, PROG_TYPE_CGROUP_SOCK, PROG_TYPE_CGROUP_SOCK_ADDR, Probe};

/// A helper a program calls, with the kernel that brought it (for the
/// program type in question, where that came later than the helper).
#[derive(Clone, Copy, Debug)]
pub struct Helper {
    pub id: u32,
    pub name: &'static str,
    pub since: &'static str,
}

const MAP_LOOKUP: Helper = Helper { id: 1, name: "bpf_map_lookup_elem", since: "4.17" };
const MAP_UPDATE: Helper = Helper { id: 2, name: "bpf_map_update_elem", since: "4.17" };
const MAP_DELETE: Helper = Helper { id: 3, name: "bpf_map_delete_elem", since: "4.17" };
const KTIME: Helper = Helper { id: 5, name: "bpf_ktime_get_ns", since: "4.17" };
const PRANDOM: Helper = Helper { id: 7, name: "bpf_get_prandom_u32", since: "4.17" };
const SOCKET_COOKIE_ADDR: Helper = Helper { id: 46, name: "bpf_get_socket_cookie", since: "5.0" };
const SOCKET_COOKIE_SOCK: Helper = Helper { id: 46, name: "bpf_get_socket_cookie", since: "5.8" };
const SK_STORAGE_ADDR: Helper = Helper { id: 107, name: "bpf_sk_storage_get", since: "5.3" };
const SK_STORAGE_SOCK: Helper = Helper { id: 107, name: "bpf_sk_storage_get", since: "5.9" };
const NETNS_COOKIE: Helper = Helper { id: 122, name: "bpf_get_netns_cookie", since: "5.7" };
/// The helper with a fallback (see the module documentation).
pub const SET_RETVAL: Helper = Helper { id: 187, name: "bpf_set_retval", since: "5.18" };

const ADDR_HELPERS: &[Helper] = &[
    MAP_LOOKUP,
    MAP_UPDATE,
    MAP_DELETE,
    KTIME,
    PRANDOM,
    SOCKET_COOKIE_ADDR,
    SK_STORAGE_ADDR,
    NETNS_COOKIE,
    SET_RETVAL,
];
const REVERSE_HELPERS: &[Helper] = &[SK_STORAGE_ADDR];
const BIND_HELPERS: &[Helper] = &[MAP_LOOKUP, NETNS_COOKIE, SET_RETVAL];
const RELEASE_HELPERS: &[Helper] = &[SK_STORAGE_SOCK, SOCKET_COOKIE_SOCK, MAP_DELETE];

/// One cgroup hook and the program that serves it.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// Also the link's pin name under `<bpffs>/links/`.
    pub name: &'static str,
    pub program: &'static str,
    /// The same program without `bpf_set_retval`, if it uses it.
    pub compat: Option<&'static str>,
    pub prog_type: u32,
    /// `enum bpf_attach_type`.
    pub attach_type: u32,
    /// The kernel that brought the attach type.
    pub since: &'static str,
    pub helpers: &'static [Helper],
}

const fn addr_hook(
    name: &'static str,
    program: &'static str,
    compat: Option<&'static str>,
    attach_type: u32,
    since: &'static str,
    helpers: &'static [Helper],
) -> Hook {
    Hook { name, program, compat, prog_type: PROG_TYPE_CGROUP_SOCK_ADDR, attach_type, since, helpers }
}

/// Every hook socklb attaches.
pub const HOOKS: [Hook; 11] = [
    addr_hook("connect4", "sl_connect4", Some("sl_connect4_compat"), 10, "4.17", ADDR_HELPERS),
    addr_hook("connect6", "sl_connect6", Some("sl_connect6_compat"), 11, "4.17", ADDR_HELPERS),
    addr_hook("sendmsg4", "sl_sendmsg4", Some("sl_sendmsg4_compat"), 14, "4.18", ADDR_HELPERS),
    addr_hook("sendmsg6", "sl_sendmsg6", Some("sl_sendmsg6_compat"), 15, "4.18", ADDR_HELPERS),
    addr_hook("recvmsg4", "sl_recvmsg4", None, 19, "5.2", REVERSE_HELPERS),
    addr_hook("recvmsg6", "sl_recvmsg6", None, 20, "5.2", REVERSE_HELPERS),
    addr_hook("getpeername4", "sl_getpeer4", None, 29, "5.8", REVERSE_HELPERS),
    addr_hook("getpeername6", "sl_getpeer6", None, 30, "5.8", REVERSE_HELPERS),
    Hook {
        name: "post_bind4",
        program: "sl_postbind4",
        compat: Some("sl_postbind4_compat"),
        prog_type: PROG_TYPE_CGROUP_SOCK,
        attach_type: 12,
        since: "4.17",
        helpers: BIND_HELPERS,
    },
    Hook {
        name: "post_bind6",
        program: "sl_postbind6",
        compat: Some("sl_postbind6_compat"),
        prog_type: PROG_TYPE_CGROUP_SOCK,
        attach_type: 13,
        since: "4.17",
        helpers: BIND_HELPERS,
    },
    Hook {
        name: "sock_release",
        program: "sl_release",
        compat: None,
        prog_type: PROG_TYPE_CGROUP_SOCK,
        attach_type: 34,
        since: "5.9",
        helpers: RELEASE_HELPERS,
    },
];

/// Which program a hook gets on this kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Choice {
    pub hook: &'static str,
    pub program: &'static str,
    /// The `_compat` program: refusals are EPERM.
    pub compat: bool,
}

/// What the kernel lacks for a hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Missing {
    pub hook: &'static str,
    /// The attach type or the helper.
    pub what: String,
    pub since: &'static str,
    pub kernel_says: String,
}

/// The probe results for every hook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Support {
    pub choices: Vec<Choice>,
    pub missing: Vec<Missing>,
}

impl Support {
    pub fn program_for(&self, hook: &str) -> Option<&Choice> {
        self.choices.iter().find(|c| c.hook == hook)
    }

    /// Whether refusals are EPERM (some hook runs its compat program).
    pub fn refusals_are_eperm(&self) -> bool {
        self.choices.iter().any(|c| c.compat)
    }
}

/// Probes every attach type and helper the programs use. With
/// `without_set_retval` (tests only), behaves as on a kernel before 5.18.
pub fn probe(without_set_retval: bool) -> Support {
    probe_with(without_set_retval, &mut |h: &Hook, helper: Option<&Helper>| match helper {
        None => sys::probe_attach_type(h.prog_type, h.attach_type),
        Some(helper) => sys::probe_helper(h.prog_type, h.attach_type, helper.id),
    })
}

/// [`probe`] with the kernel's answers given by `kernel` (for tests).
pub fn probe_with(
    without_set_retval: bool,
    kernel: &mut dyn FnMut(&Hook, Option<&Helper>) -> Probe,
) -> Support {
    let mut support = Support::default();
    for hook in &HOOKS {
        if let Probe::Unsupported(why) = kernel(hook, None) {
            support.missing.push(Missing {
                hook: hook.name,
                what: format!("attach type cgroup/{}", hook.name),
                since: hook.since,
                kernel_says: why,
            });
            continue;
        }
        let mut compat = false;
        let mut ok = true;
        for helper in hook.helpers {
            let answer = if helper.id == SET_RETVAL.id && without_set_retval {
                Probe::Unsupported("disabled by SOCKLB_TEST_NO_SET_RETVAL".into())
            } else {
                kernel(hook, Some(helper))
            };
            if let Probe::Unsupported(why) = answer {
                if helper.id == SET_RETVAL.id && hook.compat.is_some() {
                    compat = true;
                } else {
                    ok = false;
                    support.missing.push(Missing {
                        hook: hook.name,
                        what: format!("helper {}", helper.name),
                        since: helper.since,
                        kernel_says: why,
                    });
                }
            }
        }
        if ok {
            let program = if compat { hook.compat.unwrap_or(hook.program) } else { hook.program };
            support.choices.push(Choice { hook: hook.name, program, compat });
        }
    }
    support
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_set_retval_gets_the_compat_programs() {
        let s = probe_with(false, &mut |_, helper| match helper {
            Some(h) if h.id == SET_RETVAL.id => Probe::Unsupported("unknown func bpf_set_retval#187".into()),
            _ => Probe::Supported,
        });
        assert!(s.missing.is_empty(), "{s:?}");
        assert_eq!(s.choices.len(), HOOKS.len());
        assert_eq!(s.program_for("connect4").map(|c| c.program), Some("sl_connect4_compat"));
        assert_eq!(s.program_for("post_bind6").map(|c| c.program), Some("sl_postbind6_compat"));
        assert_eq!(s.program_for("recvmsg4").map(|c| c.program), Some("sl_recvmsg4"));
        assert!(s.refusals_are_eperm());
    }

    #[test]
    fn a_missing_hook_or_helper_is_named_with_its_kernel() {
        let s = probe_with(false, &mut |h, helper| match (h.name, helper) {
            ("getpeername4", None) => Probe::Unsupported("Invalid argument".into()),
            ("sock_release", Some(x)) if x.id == SK_STORAGE_SOCK.id => {
                Probe::Unsupported("unknown func bpf_sk_storage_get#107".into())
            }
            _ => Probe::Supported,
        });
        assert_eq!(s.missing.len(), 2, "{s:?}");
        assert_eq!(s.missing[0].what, "attach type cgroup/getpeername4");
        assert_eq!(s.missing[0].since, "5.8");
        assert_eq!(s.missing[1].what, "helper bpf_sk_storage_get");
        assert!(s.program_for("getpeername4").is_none());
        assert!(!s.refusals_are_eperm());
    }

    #[test]
    fn the_test_switch_forces_the_compat_programs() {
        let s = probe_with(true, &mut |_, _| Probe::Supported);
        assert!(s.choices.iter().filter(|c| c.compat).count() == 6, "{s:?}");
    }
}
