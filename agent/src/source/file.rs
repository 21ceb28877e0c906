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
    decode::{
        files::{Object, check_json, read_objects, stream_json},
        json_delta::{ListMemory, Reload},
    },
    store::{Kinds, Origin, SourceEvent},
};

use crate::metrics::Metrics;

/// How often the file's metadata is checked: a stat() every 10 ms costs
/// next to nothing and bounds the event-to-datapath latency of an edit.
pub const POLL: Duration = Duration::from_millis(10);

/// How long changed metadata must stand still before the content is read.
pub const QUIET: Duration = POLL;

/// How long a file that turned empty must stay empty before its services
/// are all removed: long enough for any writer between truncate and write,
/// short enough for the 2 s an edit may take to apply.
pub const EMPTY_SETTLE: Duration = Duration::from_millis(1000);

/// Objects per event sent to the agent while a JSON file streams: one
/// wake-up of the agent per batch, not per object.
const BATCH: usize = 256;

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

    /// Whether `seen` is another file than the one last read (a rename
    /// into place), rather than the same file written again.
    pub fn replaced(&self, seen: Option<&Stamp>) -> bool {
        match (self.read.as_ref(), seen) {
            (Some(Some(read)), Some(now)) => read.inode != now.inode,
            _ => false,
        }
    }

    /// A read of `seen` failed: it is not read again until the file
    /// changes, unless it was read before it stood still (`early`).
    pub fn failed_read(&mut self, seen: Option<Stamp>, early: bool) {
        if !early {
            self.mark_read(seen);
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
                tracing::info!(file = %w.path.display(), read_ms = w.last_read.as_millis(), "loaded");
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
    /// How long the last read took (for the log).
    last_read: Duration,
    /// The items of the last JSON list read (for deltas).
    memory: Option<ListMemory>,
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
        // A change must stand still before it is read. A JSON file renamed
        // into place (a new inode: `mv`, ConfigMap symlink swaps) is read at
        // once: if it was in fact still being written, it does not parse,
        // and it is read again once it stands still.
        let early = stable_for < QUIET;
        if early && !(self.settle.replaced(seen.as_ref()) && is_json(&self.path)) {
            return Reading::Nothing;
        }
        let failed = |e: &dyn std::fmt::Display| Reading::Failed(format!("{}: {e}", self.path.display()));
        let started = Instant::now();
        if is_json(&self.path) {
            return self.poll_json(seen, started, early, metrics, tx);
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
        let mut events = vec![SourceEvent::ReplaceStart { origin, kinds: Kinds::ALL }];
        events.extend(objects.into_iter().map(|o| event_of(origin, o)));
        events.push(SourceEvent::ReplaceEnd { origin, kinds: Kinds::ALL });
        if tx.blocking_send(SourceEvent::Batch(events)).is_err() {
            return Reading::Closed;
        }
        self.last_hash = Some(hash);
        self.last_read = started.elapsed();
        Reading::Sent
    }

    /// A JSON file: an edit of a list is read as a delta (only new items
    /// decoded, see `json_delta`); anything else in two passes, a check of
    /// the whole text and then object by object.
    fn poll_json(
        &mut self,
        seen: Option<Stamp>,
        started: Instant,
        early: bool,
        metrics: &Metrics,
        tx: &mpsc::Sender<SourceEvent>,
    ) -> Reading {
        let failed = |e: &dyn std::fmt::Display| {
            if early {
                // Read before it stood still: maybe not yet complete.
                Reading::Nothing
            } else {
                Reading::Failed(format!("{}: {e}", self.path.display()))
            }
        };
        let origin = self.origin;
        if let Some(memory) = &self.memory {
            let reload = match std::fs::File::open(&self.path) {
                Ok(f) => memory.reload(f),
                Err(e) => {
                    self.settle.failed_read(seen, early);
                    return failed(&e);
                }
            };
            if stamp(&self.path) != seen {
                return Reading::Nothing; // it moved while we read: again once it settles
            }
            match reload {
                Err(e) => {
                    self.settle.failed_read(seen, early);
                    return failed(&e);
                }
                Ok(Reload::Same { text_hash }) => {
                    self.settle.mark_read(seen);
                    self.last_hash = Some(text_hash);
                    return Reading::Nothing;
                }
                Ok(Reload::Delta { objects, problems, memory, text_hash }) => {
                    self.settle.mark_read(seen);
                    self.report(&problems, metrics);
                    let events = objects.into_iter().map(|o| event_of(origin, o)).collect();
                    if tx.blocking_send(SourceEvent::Batch(events)).is_err() {
                        return Reading::Closed;
                    }
                    self.had_objects = !memory.is_empty();
                    self.memory = Some(memory);
                    self.last_hash = Some(text_hash);
                    self.last_read = started.elapsed();
                    return Reading::Sent;
                }
                Ok(Reload::Whole) => {}
            }
        }
        // First pass: well-formed from end to end, and changed?
        let hash = match std::fs::File::open(&self.path).map(check_json) {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                self.settle.failed_read(seen, early);
                return failed(&e);
            }
            Err(e) => {
                self.settle.failed_read(seen, early);
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
        // Second pass: object by object, in batches.
        if tx.blocking_send(SourceEvent::ReplaceStart { origin, kinds: Kinds::ALL }).is_err() {
            return Reading::Closed;
        }
        let mut objects = 0usize;
        let mut closed = false;
        let mut batch = Vec::with_capacity(BATCH);
        let mut each = |o: Object| {
            objects += 1;
            batch.push(event_of(origin, o));
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                closed |= !closed && tx.blocking_send(SourceEvent::Batch(full)).is_err();
            }
        };
        let mut memory = None;
        let read: Result<Vec<_>, String> = match std::fs::File::open(&self.path) {
            Err(e) => Err(e.to_string()),
            Ok(f) => match ListMemory::load(f, &mut each) {
                Ok(Some((problems, m))) => {
                    memory = Some(m);
                    Ok(problems)
                }
                // Not a list (one object): read the general way.
                Ok(None) => match std::fs::File::open(&self.path) {
                    Ok(f) => stream_json(f, &mut each).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            },
        };
        if !batch.is_empty() {
            closed |= tx.blocking_send(SourceEvent::Batch(batch)).is_err();
        }
        if closed {
            return Reading::Closed;
        }
        // An error here: it changed between the passes; the next poll reads
        // it again.
        let problems = match read {
            Ok(p) => p,
            Err(e) => {
                if tx.blocking_send(SourceEvent::ReplaceAbort { origin, kinds: Kinds::ALL }).is_err() {
                    return Reading::Closed;
                }
                return failed(&e);
            }
        };
        self.report(&problems, metrics);
        if tx.blocking_send(SourceEvent::ReplaceEnd { origin, kinds: Kinds::ALL }).is_err() {
            return Reading::Closed;
        }
        self.memory = memory;
        self.last_hash = Some(hash);
        self.had_objects = objects > 0;
        self.last_read = started.elapsed();
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
            let mut events: Vec<SourceEvent> = std::iter::from_fn(|| self.rx.try_recv().ok()).collect();
            while let Some(e) = events.pop() {
                match e {
                    SourceEvent::ServiceApplied { .. } => n += 1,
                    SourceEvent::ReplaceEnd { .. } => ended = true,
                    SourceEvent::Batch(inner) => events.extend(inner),
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

    /// Writes `text` beside the watched file and renames it into place.
    fn rename_in(f: &Fixture, text: &str) {
        let tmp = f.w.path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &f.w.path).expect("rename");
    }

    /// Services applied, and whether a replace started, since the last call.
    fn drain(f: &mut Fixture) -> (usize, bool) {
        let (mut n, mut replace) = (0, false);
        let mut events: Vec<SourceEvent> = std::iter::from_fn(|| f.rx.try_recv().ok()).collect();
        while let Some(e) = events.pop() {
            match e {
                SourceEvent::ServiceApplied { .. } => n += 1,
                SourceEvent::ReplaceStart { .. } => replace = true,
                SourceEvent::Batch(inner) => events.extend(inner),
                _ => {}
            }
        }
        (n, replace)
    }

    #[test]
    fn a_json_edit_renamed_into_place_is_read_at_once_and_only_its_changes_are_sent() {
        let mut f = Fixture::new();
        let svc = |i: u32, ip: u32| {
            format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"s{i}","namespace":"n"}},"spec":{{"clusterIP":"10.96.0.{ip}","ports":[{{"port":80}}]}}}}"#
            )
        };
        let list = |items: &[String]| {
            format!(r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#, items.join(","))
        };
        rename_in(&f, &list(&[svc(1, 1), svc(2, 2), svc(3, 3)]));
        assert!(matches!(f.settle(), Reading::Sent));
        assert_eq!(drain(&mut f), (3, true), "the first read is a replace");

        // s2 changes and s4 is added: one poll, two objects, no replace.
        rename_in(&f, &list(&[svc(1, 1), svc(2, 9), svc(3, 3), svc(4, 4)]));
        assert!(matches!(f.poll(), Reading::Sent), "a rename is complete: no quiet period");
        assert_eq!(drain(&mut f), (2, false));

        // s1 goes: a removal is read whole.
        rename_in(&f, &list(&[svc(2, 9), svc(3, 3), svc(4, 4)]));
        assert!(matches!(f.settle(), Reading::Sent));
        assert_eq!(drain(&mut f), (3, true));

        // A broken file renamed in is not taken for a half-written one for
        // ever: once it stands still, it is reported.
        rename_in(&f, &list(&[svc(2, 9)])[..40]);
        assert!(matches!(f.poll(), Reading::Nothing), "early: maybe still being written");
        assert!(matches!(f.settle(), Reading::Failed(m) if m.contains("line")));
        assert_eq!(drain(&mut f), (0, false));
    }
}
