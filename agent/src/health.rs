//! What `/healthz` answers: kube-proxy's rule, plus the datapath itself.
//!
//! * 503 when the datapath is detached (its pinned links are gone, or no
//!   longer attached to the cgroup): the node is not served at all.
//! * 503 when changes have been waiting for longer than `--health-timeout`
//!   without a sync that applied them (kube-proxy: "queued but not updated
//!   within the health timeout"), for example a map write that keeps failing.
//! * Otherwise 200. Before the first sync the agent waits for its sources;
//!   that is `/readyz`'s business, not a liveness failure.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Checks that the datapath is attached; `Err` says what is wrong.
pub type DatapathCheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

pub struct Health {
    /// The health timeout, in milliseconds.
    timeout_ms: AtomicU64,
    /// When the oldest change that no sync has applied yet arrived.
    pending_since: Mutex<Option<Instant>>,
    datapath: Mutex<Option<DatapathCheck>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("timeout", &self.timeout()).finish_non_exhaustive()
    }
}

/// kube-proxy's default health timeout is 2 × its 30 s sync period.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for Health {
    fn default() -> Self {
        Self::new(DEFAULT_TIMEOUT)
    }
}

impl Health {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout_ms: AtomicU64::new(timeout.as_millis() as u64),
            pending_since: Mutex::new(None),
            datapath: Mutex::new(None),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_datapath_check(&self, check: DatapathCheck) {
        if let Ok(mut g) = self.datapath.lock() {
            *g = Some(check);
        }
    }

    /// A change arrived that the datapath does not have yet.
    pub fn queued(&self, now: Instant) {
        if let Ok(mut g) = self.pending_since.lock() {
            g.get_or_insert(now);
        }
    }

    /// A sync applied everything that was queued.
    pub fn synced(&self) {
        if let Ok(mut g) = self.pending_since.lock() {
            *g = None;
        }
    }

    /// `Ok` when healthy, else why not.
    pub fn verdict(&self, now: Instant) -> Result<(), String> {
        if let Ok(g) = self.datapath.lock()
            && let Some(check) = g.as_ref()
        {
            check().map_err(|e| format!("datapath detached: {e}"))?;
        }
        let pending = self.pending_since.lock().ok().and_then(|g| *g);
        if let Some(since) = pending {
            let waited = now.saturating_duration_since(since);
            let timeout = self.timeout();
            if waited > timeout {
                return Err(format!(
                    "changes pending for {} without a successful sync (health timeout {})",
                    humantime::format_duration(Duration::from_secs(waited.as_secs())),
                    humantime::format_duration(timeout)
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_changes_turn_unhealthy_only_after_the_timeout() {
        let h = Health::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(h.verdict(t0).is_ok());
        h.queued(t0);
        h.queued(t0 + Duration::from_secs(30)); // the oldest counts
        assert!(h.verdict(t0 + Duration::from_secs(59)).is_ok());
        let e = h.verdict(t0 + Duration::from_secs(61)).expect_err("stale");
        assert!(e.contains("pending for 1m 1s"), "{e}");
        h.synced();
        assert!(h.verdict(t0 + Duration::from_secs(90)).is_ok());
    }

    #[test]
    fn a_detached_datapath_is_unhealthy() {
        let h = Health::default();
        h.set_datapath_check(Box::new(|| Err("link connect4 is gone".into())));
        let e = h.verdict(Instant::now()).expect_err("detached");
        assert!(e.contains("datapath detached: link connect4 is gone"), "{e}");
    }
}
