//! Run history: one folder per run under `<app data>/runs/<id>/`, holding the engine's
//! checkpoints and adapter and our `studio-run.json` (settings, status, loss curves). Finished,
//! paused and failed runs all stay, so the Train step can list, compare and resume them.

use crate::error::{ApiError, ApiResult};
use crate::paths::plain_id;
use crate::settings::TrainSettings;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use ts_rs::TS;

const RECORD: &str = "studio-run.json";

/// Where a run stands.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, TS, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    /// Stopped by the user; a checkpoint holds the progress and it can resume exactly.
    Paused,
    Completed,
    Failed,
    /// The app closed while it ran; resumable from its last checkpoint if one was written.
    Interrupted,
}

/// One run as the history lists it.
#[derive(Clone, Debug, Serialize, Deserialize, TS, PartialEq)]
pub struct RunRecord {
    pub id: String,
    /// The model as the user named it (`demo`, a folder, `org/name`).
    pub model: String,
    pub data: String,
    pub settings: TrainSettings,
    pub status: RunStatus,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub step: u32,
    pub total_steps: u32,
    /// `[step, loss]` pairs.
    pub losses: Vec<[f64; 2]>,
    pub eval_losses: Vec<[f64; 2]>,
    pub error: Option<ApiError>,
    /// The run folder (checkpoints and, once complete, the adapter).
    pub dir: String,
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A new, unique run id: `run-<unix seconds>-<n>`.
pub fn new_id(runs: &Path) -> String {
    let base = format!("run-{}", now() as u64);
    (1..)
        .map(|n| format!("{base}-{n}"))
        .find(|id| !runs.join(id).exists())
        .expect("an unused id exists")
}

pub fn run_dir(runs: &Path, id: &str) -> ApiResult<PathBuf> {
    Ok(runs.join(plain_id(id)?))
}

/// Writes the record atomically (a crash leaves the old or the new file, never half of one).
pub fn save(runs: &Path, r: &RunRecord) -> ApiResult<()> {
    let dir = run_dir(runs, &r.id)?;
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let tmp = dir.join(format!("{RECORD}.tmp"));
    let text = serde_json::to_string_pretty(r).map_err(|e| ApiError::internal(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, dir.join(RECORD)).map_err(|e| io_err(&dir, e))
}

pub fn load(runs: &Path, id: &str) -> ApiResult<RunRecord> {
    let path = run_dir(runs, id)?.join(RECORD);
    let text = std::fs::read_to_string(&path)
        .map_err(|_| ApiError::new("NotFound", format!("no run `{id}` in the history")))?;
    serde_json::from_str(&text)
        .map_err(|e| ApiError::new("BadJson", format!("{}: {e}", path.display())))
}

/// Every run, newest first. A record still saying `running` when `active` is not its id was
/// left by an app that closed mid-run: it is reported (and saved) as interrupted.
pub fn list(runs: &Path, active: Option<&str>) -> Vec<RunRecord> {
    let Ok(rd) = std::fs::read_dir(runs) else {
        return Vec::new();
    };
    let mut out: Vec<RunRecord> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| load(runs, &e.file_name().to_string_lossy()).ok())
        .map(|mut r| {
            if r.status == RunStatus::Running && active != Some(r.id.as_str()) {
                r.status = RunStatus::Interrupted;
                let _ = save(runs, &r);
            }
            r
        })
        .collect();
    out.sort_by(|a, b| b.started_at.total_cmp(&a.started_at));
    out
}

/// Removes a run and its files.
pub fn delete(runs: &Path, id: &str) -> ApiResult<()> {
    let dir = run_dir(runs, id)?;
    std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))
}

fn io_err(p: &Path, e: std::io::Error) -> ApiError {
    ApiError::new("Io", format!("{}: {e}", p.display()))
}
