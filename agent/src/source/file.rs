//! `--from-file`: a YAML file of Services and EndpointSlices, watched.
//!
//! The file is polled (cheaply: metadata first, content only when it moved),
//! so edits, atomic renames (ConfigMap updates swap a symlink) and files on
//! any filesystem are all picked up within tens of milliseconds. A file that does not parse keeps the last good
//! state, with one error naming the file and the line.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;

use super::yaml::{Ingested, ingest_text};
use crate::{
    metrics::Metrics,
    store::{Origin, SourceEvent},
};

/// How often the file's metadata is checked: a stat() every 20 ms costs
/// next to nothing and bounds the event-to-datapath latency of an edit.
pub const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp { modified: m.modified().ok(), len: m.len(), inode: m.ino() })
}

/// What reading the file gave.
pub enum Reading {
    Objects(Ingested),
    /// Unchanged content (a touch): nothing to do.
    Unchanged,
    Failed(String),
}

/// Reads and validates once; `last` is a hash of the previous content, to
/// skip touches without keeping a copy of a possibly large file.
pub fn read_once(path: &Path, last: &mut Option<u64>, proxy: Option<&str>, metrics: &Metrics) -> Reading {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Reading::Failed(format!("{}: {e}", path.display())),
    };
    let hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        h.finish()
    };
    if *last == Some(hash) {
        return Reading::Unchanged;
    }
    match ingest_text(&text, proxy) {
        Ok((objects, problems)) => {
            for p in &problems {
                tracing::warn!(file = %path.display(), object = %p.object, field = %p.field, reason = %p.reason, "skipped invalid object");
                metrics.invalid(p.kind.label());
            }
            *last = Some(hash);
            Reading::Objects(objects)
        }
        Err(e) => Reading::Failed(format!("{}: {e}", path.display())),
    }
}

/// Watches one file and sends its whole content on every change.
pub async fn run(
    path: PathBuf,
    origin: Origin,
    service_proxy_name: Option<String>,
    tx: mpsc::Sender<SourceEvent>,
    metrics: Arc<Metrics>,
) {
    let mut last_text: Option<u64> = None;
    let mut last_stamp: Option<Stamp> = None;
    let mut last_error: Option<String> = None;
    let mut synced = false;
    loop {
        let now = stamp(&path).ok();
        if now.is_none() || now != last_stamp {
            // Parsing a large file takes a while: off the async workers.
            let reading = tokio::task::block_in_place(|| {
                read_once(&path, &mut last_text, service_proxy_name.as_deref(), &metrics)
            });
            match reading {
                Reading::Objects(objects) => {
                    last_error = None;
                    let event =
                        SourceEvent::Replace { origin, services: objects.services, slices: objects.slices };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                    if !synced {
                        synced = true;
                        if tx.send(SourceEvent::Synced("file")).await.is_err() {
                            return;
                        }
                    }
                    tracing::info!(file = %path.display(), "loaded");
                }
                Reading::Unchanged => {}
                Reading::Failed(message) => {
                    if last_error.as_ref() != Some(&message) {
                        tracing::error!(error = %message, "cannot use the file; keeping the last good state");
                        metrics.source_error("file");
                        last_error = Some(message);
                    }
                }
            }
            last_stamp = now;
        }
        tokio::time::sleep(POLL).await;
    }
}
