//! One trainer per run folder: an OS file lock on `run.lock` held for as long as a process
//! trains into the folder. Two app windows, an app and a `peft train --resume`, or two
//! `--resume`s over the same folder would otherwise write the same checkpoints and record at
//! once (and a second window would take the first one's live run for an interrupted one).
//!
//! The operating system releases the lock when the process ends in any way, `kill -9` and
//! power loss included, so "the record says running and nobody holds the lock" is exactly "the
//! process that trained it stopped mid-run". This module is not a lock between threads of one
//! process beyond that: the app keeps its own job state for its own run.

use crate::error::{Error, Result};
use fs2::FileExt;
use std::fs::{File, OpenOptions};
use std::path::Path;

/// The lock file's name inside a run folder (empty; only its lock matters).
pub const LOCK_FILE: &str = "run.lock";

/// Held while a process trains into a run folder; dropping it releases the folder.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

fn open(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))
}

impl RunLock {
    /// Takes run folder `dir` (creating it) for this process.
    ///
    /// # Errors
    /// [`Error::Invalid`] (`run`) when another process, or another window of the app, trains
    /// into it now; I/O failures naming the folder or lock file.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let file = open(dir)?;
        match file.try_lock_exclusive() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(e) if e.kind() == fs2::lock_contended_error().kind() => Err(in_use(dir)),
            Err(e) => Err(Error::io(dir.join(LOCK_FILE), e)),
        }
    }
}

/// The error for a folder another trainer holds.
pub fn in_use(dir: &Path) -> Error {
    Error::invalid(
        "run",
        format!(
            "{} is being trained by another process or app window right now; stop it there, or wait until it ends",
            dir.display()
        ),
    )
}

/// Whether some process (this one included) trains into `dir` now. A folder without a lock
/// file, or one that cannot be opened, is not in use.
pub fn in_use_now(dir: &Path) -> bool {
    if !dir.join(LOCK_FILE).is_file() {
        return false;
    }
    let Ok(file) = open(dir) else {
        return false;
    };
    // Taking it for a moment and letting it go is how "is anybody holding it" is asked.
    file.try_lock_exclusive().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::history::{list, RunRecord, RunStatus};
    use crate::train::TrainConfig;

    #[test]
    fn one_holder_at_a_time_and_list_leaves_a_held_run_alone() {
        let runs = tempfile::tempdir().unwrap();
        let (live, dead) = (runs.path().join("run-1-1"), runs.path().join("run-1-2"));
        for dir in [&live, &dead] {
            RunRecord::new(dir, "demo", Path::new("d.jsonl"), &TrainConfig::default())
                .save()
                .unwrap();
        }
        let held = RunLock::acquire(&live).unwrap();
        assert!(in_use_now(&live) && !in_use_now(&dead));
        let e = RunLock::acquire(&live).unwrap_err().to_string();
        assert!(e.contains("another process"), "{e}");
        let status = |id: &str| {
            list(runs.path(), &[])
                .into_iter()
                .find(|r| r.id == id)
                .unwrap()
                .status
        };
        assert_eq!(status("run-1-1"), RunStatus::Running);
        assert_eq!(status("run-1-2"), RunStatus::Interrupted);
        assert!(crate::train::history::delete(runs.path(), "run-1-1").is_err());
        drop(held);
        assert!(!in_use_now(&live));
        assert_eq!(status("run-1-1"), RunStatus::Interrupted);
        crate::train::history::delete(runs.path(), "run-1-1").unwrap();
    }
}
