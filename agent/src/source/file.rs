//! `--from-file`: a YAML file of Services and EndpointSlices, watched.
//!
//! The file is polled (cheaply: metadata first, content only when it moved),
//! so edits, atomic renames (ConfigMap updates swap a symlink) and files on
//! any filesystem are all picked up within tens of milliseconds. A file that
//! does not parse keeps the last good state, with one error naming the file
//! and the line.
//!
//! Writers that do not rename (`cp`, shell redirection, most editors' "save
//! in place") truncate the file and then write it: for a moment it is empty
//! or half written, and an empty file is valid YAML with no objects. So a
//! change is read only once the file's metadata has stood still for a poll
//! interval, a read during which the file moved is thrown away, and a file
//! that turned empty must stay empty for [`EMPTY_SETTLE`] before it removes
//! every service it used to hold.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;

use socklb_k8s::decode::files::{Ingested, ingest_text};
use socklb_k8s::store::{Origin, SourceEvent};

use crate::metrics::Metrics;

/// How often the file's metadata is checked: a stat() every 20 ms costs
/// next to nothing and bounds the event-to-datapath latency of an edit.
pub const POLL: Duration = Duration::from_millis(20);

/// How long changed metadata must stand still before the content is read.
pub const QUIET: Duration = POLL;

/// How long a file that turned empty must stay empty before its services
/// are all removed: long enough for any writer between truncate and write,
/// short enough for the 2 s an edit may take to apply.
pub const EMPTY_SETTLE: Duration = Duration::from_millis(1000);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: m.modified().ok(), len: m.len(), inode: m.ino() })
}

/// Tracks, poll by poll, whether the file changed since it was last read
/// and for how long its new metadata has stood still. Pure, for tests.
#[derive(Debug, Default)]
pub struct Settle {
    /// The metadata of the last content that was read (used or rejected).
    read: Option<Option<Stamp>>,
    /// Metadata that differs from `read`, and since when it was seen.
    candidate: Option<(Option<Stamp>, Instant)>,
}

impl Settle {
    /// Notes the metadata seen at `now`. `None`: nothing changed since the
    /// last read. `Some(d)`: it changed, and has been as it is now for `d`.
    pub fn observe(&mut self, seen: Option<Stamp>, now: Instant) -> Option<Duration> {
        if self.read.as_ref() == Some(&seen) {
            self.candidate = None;
            return None;
        }
        match &self.candidate {
            Some((s, since)) if *s == seen => Some(now.saturating_duration_since(*since)),
            _ => {
                self.candidate = Some((seen, now));
                Some(Duration::ZERO)
            }
        }
    }

    /// The content behind `seen` was read and dealt with.
    pub fn mark_read(&mut self, seen: Option<Stamp>) {
        self.read = Some(seen);
        self.candidate = None;
    }
}

/// Whether a text holds no document at all (an empty or truncated file),
/// as opposed to an explicit empty list.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    })
}

/// What one poll decided.
enum Reading {
    /// Nothing to do (unchanged, still moving, or a touch).
    Nothing,
    Objects(Ingested),
    /// The file turned empty and has not stayed so for long enough.
    EmptyPending,
    Failed(String),
}

/// Watches one file and sends its whole content on every change.
pub async fn run(
    path: PathBuf,
    origin: Origin,
    service_proxy_name: Option<String>,
    tx: mpsc::Sender<SourceEvent>,
    metrics: Arc<Metrics>,
) {
    let mut watch = FileWatch { path, proxy: service_proxy_name, ..Default::default() };
    let mut last_error: Option<String> = None;
    let mut warned_empty = false;
    let mut synced = false;
    loop {
        // Parsing a large file takes a while: off the async workers.
        match tokio::task::block_in_place(|| watch.poll(Instant::now(), &metrics)) {
            Reading::Objects(objects) => {
                last_error = None;
                warned_empty = false;
                let event = SourceEvent::Replace {
                    origin,
                    services: objects.services,
                    slices: objects.slices,
                    nodes: objects.nodes,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
                if !synced {
                    synced = true;
                    if tx.send(SourceEvent::Synced("file")).await.is_err() {
                        return;
                    }
                }
                tracing::info!(file = %watch.path.display(), "loaded");
            }
            Reading::Nothing => {}
            Reading::EmptyPending => {
                if !warned_empty {
                    warned_empty = true;
                    tracing::warn!(
                        file = %watch.path.display(),
                        wait = %humantime::format_duration(EMPTY_SETTLE),
                        "the file is empty; its services are removed if it stays so"
                    );
                }
            }
            Reading::Failed(message) => {
                if last_error.as_ref() != Some(&message) {
                    tracing::error!(error = %message, "cannot use the file; keeping the last good state");
                    metrics.source_error("file");
                    last_error = Some(message);
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[derive(Default)]
struct FileWatch {
    path: PathBuf,
    proxy: Option<String>,
    settle: Settle,
    /// A hash of the last content used, to skip touches without keeping a
    /// copy of a possibly large file.
    last_hash: Option<u64>,
    /// Whether the content last used held any object.
    had_objects: bool,
}

impl FileWatch {
    fn poll(&mut self, now: Instant, metrics: &Metrics) -> Reading {
        let seen = stamp(&self.path);
        let Some(stable_for) = self.settle.observe(seen.clone(), now) else {
            return Reading::Nothing;
        };
        if stable_for < QUIET {
            return Reading::Nothing;
        }
        let text = std::fs::read_to_string(&self.path);
        if stamp(&self.path) != seen {
            // It moved while we read: read it again once it settles.
            return Reading::Nothing;
        }
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                self.settle.mark_read(seen);
                return Reading::Failed(format!("{}: {e}", self.path.display()));
            }
        };
        if self.had_objects && is_blank(&text) && stable_for < EMPTY_SETTLE {
            return Reading::EmptyPending;
        }
        self.settle.mark_read(seen);
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut h);
            h.finish()
        };
        if self.last_hash == Some(hash) {
            return Reading::Nothing;
        }
        match ingest_text(&text, self.proxy.as_deref()) {
            Ok((objects, problems)) => {
                for p in &problems {
                    tracing::warn!(file = %self.path.display(), object = %p.object, field = %p.field, reason = %p.reason, "skipped invalid object");
                    metrics.invalid(p.kind.label());
                }
                self.last_hash = Some(hash);
                self.had_objects = !objects.services.is_empty() || !objects.slices.is_empty();
                Reading::Objects(objects)
            }
            Err(e) => Reading::Failed(format!("{}: {e}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(len: u64) -> Option<Stamp> {
        Some(Stamp { modified: None, len, inode: 1 })
    }

    #[test]
    fn a_change_is_read_only_after_it_stood_still_for_the_quiet_period() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        assert_eq!(s.observe(st(10), t0), Some(Duration::ZERO), "first sight: changed, not yet still");
        assert_eq!(s.observe(st(10), t0 + QUIET), Some(QUIET));
        s.mark_read(st(10));
        assert_eq!(s.observe(st(10), t0 + 2 * QUIET), None, "unchanged since read");
    }

    #[test]
    fn metadata_that_keeps_moving_restarts_the_clock() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        s.mark_read(st(10));
        assert_eq!(s.observe(st(0), t0), Some(Duration::ZERO), "truncated");
        assert_eq!(s.observe(st(5), t0 + QUIET), Some(Duration::ZERO), "half written");
        assert_eq!(s.observe(st(20), t0 + 2 * QUIET), Some(Duration::ZERO), "complete");
        assert_eq!(s.observe(st(20), t0 + 3 * QUIET), Some(QUIET));
    }

    #[test]
    fn returning_to_what_was_read_is_no_change() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        s.mark_read(st(10));
        assert!(s.observe(st(0), t0).is_some());
        assert_eq!(s.observe(st(10), t0 + QUIET), None);
        assert_eq!(s.observe(st(0), t0 + 2 * QUIET), Some(Duration::ZERO), "the clock starts again");
    }

    #[test]
    fn a_missing_file_is_a_change_too() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        s.mark_read(st(10));
        assert_eq!(s.observe(None, t0), Some(Duration::ZERO));
        assert_eq!(s.observe(None, t0 + QUIET), Some(QUIET));
    }

    #[test]
    fn blank_means_no_document_at_all() {
        assert!(is_blank(""));
        assert!(is_blank("\n  \n# comment\n---\n"));
        assert!(!is_blank("apiVersion: v1\nkind: List\nitems: []\n"));
        assert!(!is_blank("{}"));
    }

    const ONE_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";

    /// A watched file in a temporary directory, with a clock that moves by
    /// one poll interval per poll.
    struct Fixture {
        _dir: tempfile::TempDir,
        metrics: Metrics,
        w: FileWatch,
        t: Instant,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let w = FileWatch { path: dir.path().join("cluster.yaml"), ..Default::default() };
            Self { _dir: dir, metrics: Metrics::new(), w, t: Instant::now() }
        }

        /// A fixture whose file held one service, already read.
        fn loaded() -> Self {
            let mut f = Self::new();
            f.write(ONE_SERVICE);
            assert!(matches!(f.settle(), Reading::Objects(o) if o.services.len() == 1));
            f
        }

        fn write(&self, text: &str) {
            std::fs::write(&self.w.path, text).expect("write");
        }

        fn poll(&mut self) -> Reading {
            self.t += POLL;
            self.w.poll(self.t, &self.metrics)
        }

        /// Polls until the file yields something other than `Nothing`.
        fn settle(&mut self) -> Reading {
            for _ in 0..200 {
                match self.poll() {
                    Reading::Nothing => continue,
                    other => return other,
                }
            }
            Reading::Nothing
        }
    }

    #[test]
    fn a_file_truncated_in_place_keeps_its_services_until_it_stays_empty() {
        let mut f = Fixture::loaded();
        // Truncated: not applied at once, and not before EMPTY_SETTLE.
        f.write("");
        let first = f.t;
        let mut pending = 0;
        let outcome = loop {
            match f.poll() {
                Reading::EmptyPending => pending += 1,
                Reading::Nothing => {}
                other => break other,
            }
        };
        assert!(pending > 0, "an empty file is held back");
        assert!(f.t - first >= EMPTY_SETTLE, "released after {:?}", f.t - first);
        assert!(matches!(outcome, Reading::Objects(o) if o.services.is_empty()), "then it is applied");
    }

    #[test]
    fn a_file_refilled_before_the_settle_time_never_applies_the_empty_state() {
        let mut f = Fixture::loaded();
        f.write("");
        for _ in 0..5 {
            assert!(matches!(f.poll(), Reading::Nothing | Reading::EmptyPending));
        }
        f.write("apiVersion: v1\nkind: List\nitems: [\n  {unclosed\n");
        assert!(matches!(f.settle(), Reading::Failed(m) if m.contains("line")));
    }

    #[test]
    fn an_explicit_empty_list_applies_without_delay() {
        let mut f = Fixture::loaded();
        f.write("apiVersion: v1\nkind: List\nitems: []\n");
        let before = f.t;
        assert!(matches!(f.settle(), Reading::Objects(o) if o.services.is_empty()));
        assert!(f.t - before <= 3 * POLL, "took {:?}", f.t - before);
    }

    #[test]
    fn an_empty_file_at_start_is_an_empty_state() {
        let mut f = Fixture::new();
        f.write("");
        assert!(matches!(f.settle(), Reading::Objects(o) if o.services.is_empty()));
    }
}
