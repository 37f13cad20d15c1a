//! Run records: one `run.json` per run folder with the settings, status, loss curves, best
//! checkpoint, base storage and memory of the run, kept current by the recipe while it trains.
//! The CLI (`peft train --out DIR`) and the app (`<app data>/runs/<id>/`) write the same
//! record; the app lists a folder of them as its run history.
//!
//! A record still saying `running` when no process is training it was left by a process that
//! stopped mid-run: [`list`] reports it as interrupted (resumable from its last checkpoint),
//! unless another process holds its folder's lock (`train::run_lock`) and trains it now.

use crate::error::{Error, ErrorReport, Result};
use crate::fsutil::{read_json, write_json_atomic};
use crate::model::decoder::StorageReport;
use crate::train::config::TrainConfig;
use crate::train::run_lock::{in_use, in_use_now, RunLock};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record's file name inside a run folder.
pub const RECORD_FILE: &str = "run.json";
/// Where the best-evaluation adapter of a run is kept, inside its folder.
pub const BEST_DIR: &str = "best";

/// Where a run stands.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    /// Stopped on request; a checkpoint holds the progress and it resumes exactly.
    Paused,
    Completed,
    Failed,
    /// The process stopped while it ran; resumable from its last checkpoint if one was written.
    Interrupted,
}

/// The evaluation with the lowest validation loss so far, whose adapter is kept in `best/`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct BestCheckpoint {
    pub step: usize,
    pub eval_loss: f64,
}

/// Which of a run's adapters to use.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum WhichAdapter {
    /// The adapter at the end of the run.
    #[default]
    Final,
    /// The adapter of the evaluation with the lowest validation loss (less over-fitted when
    /// the run trained past it).
    Best,
}

/// The run's memory, compared like with like: the plan's peak is a whole `peft train` process;
/// inside a process that already holds things (the app's window, a model opened earlier) the
/// run adds its peak less what was already in memory when it began.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct RunMemory {
    /// Resident memory of the process when the run began.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub baseline_rss_bytes: u64,
    /// The planner's peak for these settings (a whole `peft train` process).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub planned_peak_bytes: u64,
    /// The part of the plan already in memory when the run began: runtime, tokenizer and
    /// base weights the run shares with the opened model.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub already_loaded_bytes: u64,
    /// `planned_peak − already_loaded`: what the run itself is planned to add.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub planned_growth_bytes: u64,
    /// The largest growth over the baseline measured so far (sampled at every step).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub peak_growth_bytes: u64,
}

/// Where a run's adapter was trained.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunOrigin {
    /// Trained here by the recipe.
    #[default]
    Local,
    /// An adapter trained elsewhere and brought back (`train::import`). Its record's `config`
    /// holds the method and LoRA settings read from `adapter_config.json`; the other settings
    /// are the run's own only when `from_recipe` (else defaults: the adapter does not say).
    Imported {
        /// `axolotl`, `llamafactory`, `trl`, or `None` when nothing in the folder says.
        engine: Option<String>,
        /// The file that told which trainer it was.
        evidence: Option<String>,
        /// The folder it was imported from.
        source: String,
        /// `base_model_name_or_path` as the adapter records it.
        base_model: Option<String>,
        /// The adapter's settings in one line (rank, alpha, targets, fully trained modules).
        settings: String,
        /// It came back to a `peft recipe export` folder: the record's settings are those of
        /// the exported run.
        from_recipe: bool,
    },
}

/// One run as its folder records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct RunRecord {
    /// The run folder's name.
    pub id: String,
    /// The model as it opens again (`demo`, a path, `org/name@revision`).
    pub model: String,
    pub data: String,
    pub config: TrainConfig,
    pub status: RunStatus,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub step: usize,
    pub total_steps: usize,
    /// `(step, loss)` of every completed step.
    pub losses: Vec<(usize, f64)>,
    pub eval_losses: Vec<(usize, f64)>,
    pub best: Option<BestCheckpoint>,
    /// How the base was stored while it trained (counted from the layers).
    pub storage: Option<StorageReport>,
    pub memory: Option<RunMemory>,
    pub error: Option<ErrorReport>,
    /// The run folder (checkpoints, `best/` and, once complete, the adapter).
    pub dir: PathBuf,
    /// Trained here, or imported from another trainer (records written before this field
    /// existed were all trained here).
    #[serde(default)]
    pub origin: RunOrigin,
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Checks that `id` is a plain run id (letters, digits, `-`, `_`; at most 64), so joining it
/// to a folder can never leave that folder.
///
/// # Errors
/// [`Error::Invalid`] for anything else.
pub fn check_id(id: &str) -> Result<&str> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(id)
    } else {
        Err(Error::invalid("run", format!("`{id}` is not a run id")))
    }
}

/// A new run id under `runs` (`run-<unix seconds>-<n>`), its folder created empty here: the
/// creation is the reservation, so two app instances starting runs in the same second (both
/// seeing `-1` free) still get different ids — `create_dir` fails for all but one of them.
pub fn reserve_id(runs: &Path) -> Result<String> {
    std::fs::create_dir_all(runs).map_err(|e| Error::io(runs, e))?;
    let base = format!("run-{}", now() as u64);
    let mut n = 1;
    loop {
        let id = format!("{base}-{n}");
        match std::fs::create_dir(runs.join(&id)) {
            Ok(()) => return Ok(id),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(Error::io(runs.join(&id), e)),
        }
    }
}

impl RunRecord {
    /// A fresh record for a run into `dir`.
    pub fn new(dir: &Path, model: &str, data: &Path, config: &TrainConfig) -> Self {
        Self {
            id: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            model: model.to_string(),
            data: data.display().to_string(),
            config: config.clone(),
            status: RunStatus::Running,
            started_at: now(),
            finished_at: None,
            step: 0,
            total_steps: 0,
            losses: Vec::new(),
            eval_losses: Vec::new(),
            best: None,
            storage: None,
            memory: None,
            error: None,
            dir: dir.to_path_buf(),
            origin: RunOrigin::Local,
        }
    }

    /// Reads `dir/run.json`.
    ///
    /// # Errors
    /// [`Error::Io`] when missing, [`Error::Json`] when malformed, naming the file.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut r: RunRecord = read_json(&dir.join(RECORD_FILE))?;
        // The folder may have moved since it was written.
        r.dir = dir.to_path_buf();
        Ok(r)
    }

    /// Writes the record atomically (a crash leaves the old or the new file, never half).
    ///
    /// # Errors
    /// I/O failures naming the file.
    pub fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        write_json_atomic(&self.dir.join(RECORD_FILE), self)
    }

    /// Whether `resume` can continue this run.
    pub fn resumable(&self) -> bool {
        matches!(
            self.status,
            RunStatus::Paused | RunStatus::Interrupted | RunStatus::Failed
        )
    }

    /// The folder holding the adapter (or delta) `which` names.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the run has not completed, or has no best checkpoint.
    pub fn adapter_dir(&self, which: WhichAdapter) -> Result<PathBuf> {
        match which {
            WhichAdapter::Final if self.status == RunStatus::Completed => Ok(self.dir.clone()),
            WhichAdapter::Final => Err(Error::invalid(
                "run",
                format!(
                    "run {} has not completed; its adapter is written when training completes (its best checkpoint is usable earlier)",
                    self.id
                ),
            )),
            WhichAdapter::Best => match self.best {
                Some(_) => Ok(self.dir.join(BEST_DIR)),
                None => Err(Error::invalid(
                    "run",
                    format!("run {} has no evaluated checkpoint yet", self.id),
                )),
            },
        }
    }
}

/// Every run folder under `runs`, newest first. A record saying `running` whose id is not in
/// `active` is reported (and saved) as interrupted.
pub fn list(runs: &Path, active: &[&str]) -> Vec<RunRecord> {
    let Ok(rd) = std::fs::read_dir(runs) else {
        return Vec::new();
    };
    let mut out: Vec<RunRecord> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(RECORD_FILE).is_file())
        .filter_map(|e| RunRecord::load(&e.path()).ok())
        .map(|r| {
            if r.status == RunStatus::Running && !active.contains(&r.id.as_str()) {
                mark_interrupted(r)
            } else {
                r
            }
        })
        .collect();
    out.sort_by(|a, b| b.started_at.total_cmp(&a.started_at));
    out
}

/// A record saying `running` that this process does not train: interrupted when no other
/// process holds its folder either (another app window or a `peft train` may be training it:
/// then it is left as it is). The lock is held while the record is re-read and saved, so a
/// run that ends (or starts) meanwhile is not overwritten.
fn mark_interrupted(mut r: RunRecord) -> RunRecord {
    let lock = RunLock::acquire(&r.dir);
    if lock.is_err() && in_use_now(&r.dir) {
        return r;
    }
    // A folder this process cannot lock or write is still reported interrupted.
    match RunRecord::load(&r.dir) {
        Ok(mut now) if now.status == RunStatus::Running => {
            now.status = RunStatus::Interrupted;
            let _ = now.save();
            now
        }
        Ok(now) => now,
        Err(_) => {
            r.status = RunStatus::Interrupted;
            r
        }
    }
}

/// The record of run `id` under `runs`.
///
/// # Errors
/// [`Error::Invalid`] for a malformed id; those of [`RunRecord::load`].
pub fn find(runs: &Path, id: &str) -> Result<RunRecord> {
    RunRecord::load(&runs.join(check_id(id)?))
}

/// Removes run `id` and its files.
///
/// # Errors
/// [`Error::Invalid`] for a malformed id; I/O failures naming the folder.
pub fn delete(runs: &Path, id: &str) -> Result<()> {
    let dir = runs.join(check_id(id)?);
    // Not under a trainer's feet (another window's or process's run).
    if in_use_now(&dir) {
        return Err(in_use(&dir));
    }
    std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_reserved_at_once_from_many_threads_get_different_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let runs = tmp.path().join("runs");
        // Eight "instances" reserving 25 ids each, all within the same second or two: with a
        // check-then-create id they would collide.
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..25)
                            .map(|_| reserve_id(&runs).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 200, "duplicate run ids: {ids:?}");
        for id in &ids {
            assert!(runs.join(id).is_dir(), "{id} was not created");
            check_id(id).unwrap();
        }
    }
}
