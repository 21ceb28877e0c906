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
//!
//! A JSON file is read twice, and never held: once to check that it is
//! well-formed from end to end (and hash it), then object by object, each
//! sent to the agent as it is decoded, between a `ReplaceStart` and a
//! `ReplaceEnd`. A 100k-service file thus costs the agent one object at a
//! time, not a copy of the cluster.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;

use socklb_k8s::{
    decode::files::{Object, check_json, read_objects, stream_json},
    store::{Kinds, Origin, SourceEvent},
};

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
    /// The content went to the agent.
    Sent,
    /// The file turned empty and has not stayed so for long enough.
    EmptyPending,
    Failed(String),
    /// The agent is gone.
    Closed,
}

/// Watches one file and sends its whole content on every change.
pub async fn run(path: PathBuf, origin: Origin, tx: mpsc::Sender<SourceEvent>, metrics: Arc<Metrics>) {
    let mut watch = Some(FileWatch { path, origin, ..Default::default() });
    let mut last_error: Option<String> = None;
    let mut warned_empty = false;
    let mut synced = false;
    loop {
        // Reading a large file takes a while: on a blocking thread, which
        // hands each object to the agent as it is decoded.
        let Some(mut w) = watch.take() else { return };
        let (tx2, metrics2) = (tx.clone(), metrics.clone());
        let Ok((w, reading)) = tokio::task::spawn_blocking(move || {
            let r = w.poll(Instant::now(), &metrics2, &tx2);
            (w, r)
        })
        .await
        else {
            return;
        };
        match reading {
            Reading::Sent => {
                last_error = None;
                warned_empty = false;
                if !synced {
                    synced = true;
                    if tx.send(SourceEvent::Synced("file")).await.is_err() {
                        return;
                    }
                }
                tracing::info!(file = %w.path.display(), "loaded");
            }
            Reading::Nothing => {}
            Reading::Closed => return,
            Reading::EmptyPending => {
                if !warned_empty {
                    warned_empty = true;
                    tracing::warn!(
                        file = %w.path.display(),
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
        watch = Some(w);
        tokio::time::sleep(POLL).await;
    }
}

#[derive(Default)]
struct FileWatch {
    path: PathBuf,
    origin: Origin,
    settle: Settle,
    /// A hash of the last content used, to skip touches without keeping a
    /// copy of a possibly large file.
    last_hash: Option<u64>,
    /// Whether the content last used held any object.
    had_objects: bool,
}

fn event_of(origin: Origin, o: Object) -> SourceEvent {
    match o {
        Object::Service(service) => SourceEvent::ServiceApplied { origin, service },
        Object::Slice(slice) => SourceEvent::SliceApplied { origin, slice },
        Object::Node(node) => SourceEvent::NodeApplied { origin, node },
    }
}

fn is_json(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let mut buf = [0u8; 256];
    let n = f.read(&mut buf).unwrap_or(0);
    buf[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

impl FileWatch {
    fn poll(&mut self, now: Instant, metrics: &Metrics, tx: &mpsc::Sender<SourceEvent>) -> Reading {
        let seen = stamp(&self.path);
        let Some(stable_for) = self.settle.observe(seen.clone(), now) else {
            return Reading::Nothing;
        };
        if stable_for < QUIET {
            return Reading::Nothing;
        }
        let failed = |e: &dyn std::fmt::Display| Reading::Failed(format!("{}: {e}", self.path.display()));
        if is_json(&self.path) {
            // First pass: well-formed from end to end, and changed?
            let hash = match std::fs::File::open(&self.path).map(check_json) {
                Ok(Ok(h)) => h,
                Ok(Err(e)) => {
                    self.settle.mark_read(seen);
                    return failed(&e);
                }
                Err(e) => {
                    self.settle.mark_read(seen);
                    return failed(&e);
                }
            };
            if stamp(&self.path) != seen {
                return Reading::Nothing; // it moved while we read: again once it settles
            }
            self.settle.mark_read(seen);
            if self.last_hash == Some(hash) {
                return Reading::Nothing;
            }
            // Second pass: object by object.
            let origin = self.origin;
            if tx.blocking_send(SourceEvent::ReplaceStart { origin, kinds: Kinds::ALL }).is_err() {
                return Reading::Closed;
            }
            let mut objects = 0usize;
            let mut closed = false;
            let streamed = std::fs::File::open(&self.path).map(|f| {
                stream_json(f, |o| {
                    objects += 1;
                    closed |= !closed && tx.blocking_send(event_of(origin, o)).is_err();
                })
            });
            if closed {
                return Reading::Closed;
            }
            let problems = match streamed {
                Ok(Ok(p)) => p,
                // It changed between the passes: the next poll reads it again.
                Ok(Err(e)) => return failed(&e),
                Err(e) => return failed(&e),
            };
            self.report(&problems, metrics);
            if tx.blocking_send(SourceEvent::ReplaceEnd { origin, kinds: Kinds::ALL }).is_err() {
                return Reading::Closed;
            }
            self.last_hash = Some(hash);
            self.had_objects = objects > 0;
            return Reading::Sent;
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
                return failed(&e);
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
        // YAML is parsed whole first (a syntax error anywhere refuses it all).
        let mut objects = Vec::new();
        let problems = match read_objects(&text, |o| objects.push(o)) {
            Ok(p) => p,
            Err(e) => return failed(&e),
        };
        self.report(&problems, metrics);
        let origin = self.origin;
        self.had_objects = !objects.is_empty();
        let events = std::iter::once(SourceEvent::ReplaceStart { origin, kinds: Kinds::ALL })
            .chain(objects.into_iter().map(|o| event_of(origin, o)))
            .chain(std::iter::once(SourceEvent::ReplaceEnd { origin, kinds: Kinds::ALL }));
        for e in events {
            if tx.blocking_send(e).is_err() {
                return Reading::Closed;
            }
        }
        self.last_hash = Some(hash);
        Reading::Sent
    }

    fn report(&self, problems: &[socklb_k8s::model::Problem], metrics: &Metrics) {
        for p in problems {
            tracing::warn!(file = %self.path.display(), object = %p.object, field = %p.field, reason = %p.reason, "skipped invalid object");
            metrics.invalid(p.kind.label());
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
        tx: mpsc::Sender<SourceEvent>,
        rx: mpsc::Receiver<SourceEvent>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let w = FileWatch { path: dir.path().join("cluster.yaml"), ..Default::default() };
            let (tx, rx) = mpsc::channel(1024);
            Self { _dir: dir, metrics: Metrics::new(), w, t: Instant::now(), tx, rx }
        }

        /// A fixture whose file held one service, already read.
        fn loaded() -> Self {
            let mut f = Self::new();
            f.write(ONE_SERVICE);
            assert!(matches!(f.settle(), Reading::Sent));
            assert_eq!(f.sent_services(), Some(1));
            f
        }

        /// The Services of the replace sent since the last call, if one was.
        fn sent_services(&mut self) -> Option<usize> {
            let (mut n, mut ended) = (0, false);
            while let Ok(e) = self.rx.try_recv() {
                match e {
                    SourceEvent::ServiceApplied { .. } => n += 1,
                    SourceEvent::ReplaceEnd { .. } => ended = true,
                    _ => {}
                }
            }
            ended.then_some(n)
        }

        fn write(&self, text: &str) {
            std::fs::write(&self.w.path, text).expect("write");
        }

        fn poll(&mut self) -> Reading {
            self.t += POLL;
            self.w.poll(self.t, &self.metrics, &self.tx)
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
        assert!(matches!(outcome, Reading::Sent), "then it is applied");
        assert_eq!(f.sent_services(), Some(0));
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
        assert!(matches!(f.settle(), Reading::Sent));
        assert_eq!(f.sent_services(), Some(0));
        assert!(f.t - before <= 3 * POLL, "took {:?}", f.t - before);
    }

    #[test]
    fn an_empty_file_at_start_is_an_empty_state() {
        let mut f = Fixture::new();
        f.write("");
        assert!(matches!(f.settle(), Reading::Sent));
        assert_eq!(f.sent_services(), Some(0));
    }

    #[test]
    fn a_json_file_is_sent_object_by_object_and_a_broken_one_not_at_all() {
        let mut f = Fixture::new();
        let svc = |i: u32| {
            format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"s{i}","namespace":"n"}},"spec":{{"clusterIP":"10.96.0.{i}","ports":[{{"port":80}}]}}}}"#
            )
        };
        let items: Vec<String> = (1..=3).map(svc).collect();
        f.write(&format!(r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#, items.join(",")));
        assert!(matches!(f.settle(), Reading::Sent));
        assert_eq!(f.sent_services(), Some(3));
        // Cut short: refused before anything is sent.
        f.write(&format!(r#"{{"apiVersion":"v1","kind":"List","items":[{},"#, items[0]));
        assert!(matches!(f.settle(), Reading::Failed(m) if m.contains("line")));
        assert_eq!(f.sent_services(), None, "nothing of a broken file is sent");
        assert!(f.rx.try_recv().is_err());
    }
}
