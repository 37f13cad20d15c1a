//! Fetching one file of a commit through hf-hub into the cache, with progress events and
//! errors in our words. hf-hub does the HTTP (metadata request, resumable `.part` transfer,
//! retries, blob + symlink); this module decides what is cached, turns its [`Progress`] calls
//! into [`DownloadEvent`]s and its [`ApiError`]s into messages that say what to do.

use super::{check_cancel, hub_err, DownloadEvent, HubRef};
use crate::error::{Error, Result};
use hf_hub::api::sync::{ApiError, ApiRepo};
use hf_hub::api::Progress;
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// Why an hf-hub call failed, in the terms our messages need.
pub(super) enum Failure {
    /// The server answered with this HTTP status (and hub error code, e.g. `RevisionNotFound`).
    Status {
        code: u16,
        hub_code: Option<String>,
    },
    /// No answer: DNS, refused connection, TLS, timeout, connection dropped.
    Unreachable(String),
    /// Reading the body or writing the file failed.
    Io(std::io::Error),
    Other(String),
}

pub(super) fn classify(e: ApiError) -> Failure {
    match e {
        ApiError::RequestError(err) => {
            let text = err.to_string();
            match err.into_response() {
                Some(resp) => Failure::Status {
                    code: resp.status(),
                    hub_code: resp.header("x-error-code").map(String::from),
                },
                None => Failure::Unreachable(text),
            }
        }
        ApiError::IoError(io) => Failure::Io(io),
        ApiError::TooManyRetries(inner) => classify(*inner),
        other => Failure::Other(other.to_string()),
    }
}

/// Downloads single files of one commit into its snapshot.
pub(super) struct Fetcher<'a> {
    pub(super) hub: &'a HubRef,
    pub(super) endpoint: &'a str,
    pub(super) repo: ApiRepo,
    pub(super) snapshot: &'a Path,
    pub(super) sha: &'a str,
}

impl Fetcher<'_> {
    pub(super) fn fetch(
        &self,
        file: &str,
        on_event: &mut dyn FnMut(DownloadEvent),
        cancel: Option<&AtomicBool>,
    ) -> Result<()> {
        check_cancel(cancel)?;
        let target = self.snapshot.join(file);
        if target.is_file() {
            on_event(DownloadEvent::Cached {
                file: file.to_string(),
            });
            return Ok(());
        }
        // A symlink left dangling (its blob deleted) would make hf-hub's symlink call fail.
        if target.symlink_metadata().is_ok() {
            std::fs::remove_file(&target).map_err(|e| Error::io(&target, e))?;
        }
        // A second attempt after a process was killed between writing a whole `.part` and
        // renaming it: hf-hub resumes such a file with a range at its end, which the hub
        // refuses (416: every later run would fail the same way), or which a server that
        // ignores ranges answers with the whole file, doubling it. The `.part` (or the doubled
        // blob) is deleted, and the second attempt starts from nothing.
        for attempt in 0..2 {
            let state = Cell::new(Transfer::default());
            let progress = EventProgress {
                file,
                on_event: &mut *on_event,
                state: &state,
                emitted: 0,
            };
            let result = self.repo.download_with_progress(file, progress);
            let t = state.get();
            let path = match result.map_err(classify) {
                Ok(path) => path,
                Err(Failure::Status { code: 416, .. }) if attempt == 0 => {
                    self.remove_parts()?;
                    continue;
                }
                Err(f) => return Err(hub_err(self.hub, self.fetch_failure(file, t, f))),
            };
            if path != target {
                return Err(hub_err(
                    self.hub,
                    format!(
                        "{} sent {file} of another commit than {} ({})",
                        self.endpoint,
                        self.sha,
                        path.display()
                    ),
                ));
            }
            // ureq rejects a body shorter than its Content-Length; this also catches a server
            // that sent none, so that a short file never stays in the snapshot.
            let len = std::fs::metadata(&target)
                .map_err(|e| Error::io(&target, e))?
                .len();
            if len == t.total {
                break;
            }
            if let Ok(blob) = std::fs::canonicalize(&target) {
                let _ = std::fs::remove_file(blob);
            }
            let _ = std::fs::remove_file(&target);
            if attempt == 1 {
                return Err(hub_err(
                    self.hub,
                    format!(
                        "download of {file} interrupted after {len} of {} bytes; run again",
                        t.total
                    ),
                ));
            }
            check_cancel(cancel)?;
        }
        verify_sha256(self.hub, file, &target)?;
        on_event(DownloadEvent::Done {
            file: file.to_string(),
        });
        Ok(())
    }

    /// Deletes the unfinished transfers (`blobs/*.part`) of this repo. hf-hub names them by
    /// the etag of its own metadata request, which it does not expose, so all of them go: one
    /// process fetches a repo's files one after another, and only a refused resume gets here.
    fn remove_parts(&self) -> Result<()> {
        let Some(blobs) = self
            .snapshot
            .parent()
            .and_then(Path::parent)
            .map(|r| r.join("blobs"))
        else {
            return Ok(());
        };
        let Ok(entries) = std::fs::read_dir(&blobs) else {
            return Ok(());
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|x| x == "part") {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }

    fn fetch_failure(&self, file: &str, t: Transfer, failure: Failure) -> String {
        let hub = self.hub;
        match failure {
            // The transfer had begun: what is on disk is kept in `blobs/<etag>.part`.
            Failure::Io(_) | Failure::Unreachable(_) if t.started => {
                let cause = match failure {
                    Failure::Io(e) => e.to_string(),
                    Failure::Unreachable(c) => c,
                    _ => String::new(),
                };
                format!(
                    "download of {file} interrupted after {} of {} bytes; run again to resume \
                     ({cause})",
                    t.done, t.total
                )
            }
            Failure::Unreachable(cause) => format!(
                "cannot reach {}: {cause} — use a local folder, or set HF_HUB_OFFLINE=1 to use \
                 the cache",
                self.endpoint
            ),
            Failure::Status { code: 404, .. } => {
                format!(
                    "file {file} not found in {} at commit {}",
                    hub.repo, self.sha
                )
            }
            Failure::Status {
                code: 401 | 403, ..
            } => format!(
                "access to {file} of {} denied: set HF_TOKEN, and accept the model's terms on the \
                 hub if it is gated",
                hub.repo
            ),
            Failure::Status { code, .. } => {
                format!("{} answered HTTP {code} for {file}", self.endpoint)
            }
            Failure::Io(e) => format!("cannot write {file} into the cache: {e}"),
            Failure::Other(cause) => format!("cannot download {file}: {cause}"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Transfer {
    started: bool,
    done: u64,
    total: u64,
}

/// Turns hf-hub's progress calls into [`DownloadEvent`]s, at most ~100 per file.
struct EventProgress<'a> {
    file: &'a str,
    on_event: &'a mut dyn FnMut(DownloadEvent),
    state: &'a Cell<Transfer>,
    /// Last `bytes_done` reported: hf-hub re-inits (count back to 0) on each retry, and events
    /// must not go backwards.
    emitted: u64,
}

impl EventProgress<'_> {
    fn emit_progress(&mut self, t: Transfer) {
        self.emitted = t.done;
        (self.on_event)(DownloadEvent::Progress {
            file: self.file.to_string(),
            bytes_done: t.done,
            total_bytes: t.total,
        });
    }
}

impl Progress for EventProgress<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        let mut t = self.state.get();
        t.total = size as u64;
        t.done = 0;
        if !t.started {
            t.started = true;
            (self.on_event)(DownloadEvent::Start {
                file: self.file.to_string(),
                total_bytes: t.total,
            });
        }
        self.state.set(t);
    }

    fn update(&mut self, size: usize) {
        let mut t = self.state.get();
        t.done += size as u64;
        self.state.set(t);
        let step = (t.total / 100).max(64 * 1024);
        if t.done > self.emitted && (t.done >= t.total || t.done - self.emitted >= step) {
            self.emit_progress(t);
        }
    }

    fn finish(&mut self) {
        let t = self.state.get();
        if t.done > self.emitted {
            self.emit_progress(t);
        }
    }
}

/// The hub names an LFS file's blob (weights) by the sha256 of its content (`x-linked-etag`,
/// which hf-hub uses as the blob's file name): when the name is one, the downloaded bytes must
/// hash to it. A mismatch (a corrupted or tampered transfer) removes the file, so it never
/// stays in the cache. Blobs named otherwise (git object ids of small files) are not checked.
fn verify_sha256(hub: &HubRef, file: &str, target: &Path) -> Result<()> {
    let Ok(blob) = std::fs::canonicalize(target) else {
        return Ok(());
    };
    let want = blob
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let got = crate::fsutil::sha256_file(&blob)?;
    if got != want {
        let _ = std::fs::remove_file(&blob);
        let _ = std::fs::remove_file(target);
        return Err(hub_err(
            hub,
            format!("{file}: downloaded bytes have sha256 {got}, the hub says {want}; removed, run again"),
        ));
    }
    Ok(())
}
