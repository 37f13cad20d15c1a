//! Step 5: train on a background thread with a cancel token, streaming every engine event
//! with the run's record; pause (checkpoint and stop) and resume exactly. The engine keeps
//! the record (`run.json` in the run folder); the history is the engine's list of run folders.

use crate::error::{busy, internal, ApiError, ApiResult};
use crate::paths::{existing, Kind};
use crate::state::{lock, AppState, TrainJob};
pub use crate::train_update::TrainUpdate;
use peft_engine::train::history::{self, RunRecord};
use peft_engine::train::run_lock;
use peft_engine::train::{prepare::validate, train, TrainConfig, TrainEvent};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tauri::ipc::Channel;
use tauri::State;

/// Starts a run on the open model and dataset with `config`, or resumes `resume_run` (with the
/// settings and data it was started with, on the open model, which must be the run's). Returns
/// the run's record at once; progress and the final record arrive on `on_event`.
#[tauri::command]
pub fn train_start(
    state: State<'_, AppState>,
    config: TrainConfig,
    resume_run: Option<String>,
    on_event: Channel<TrainUpdate>,
) -> ApiResult<RunRecord> {
    let mut job = lock(&state.train)?;
    if job
        .as_ref()
        .is_some_and(|j| j.running.load(Ordering::Relaxed))
    {
        return Err(busy("Training"));
    }
    let runs = state.runs_dir();
    let (spec, model) = state.current_model()?;
    let (record, resume) = match resume_run {
        Some(id) => {
            let r = history::find(&runs, &id)?;
            // Another app window (or a `peft train`) trains it now: say so instead of failing
            // later on the engine's lock.
            if run_lock::in_use_now(&r.dir) {
                return Err(in_use(&id));
            }
            if !r.resumable() {
                return Err(ApiError::new(
                    "NotResumable",
                    format!(
                        "run {id} is {:?}; only paused, interrupted or failed runs resume",
                        r.status
                    ),
                ));
            }
            if r.model != model.source.spec() {
                return Err(ApiError::new(
                    "WrongModel",
                    format!(
                        "run {id} trained {}; open that model to resume it (the open one is {spec})",
                        r.model
                    ),
                ));
            }
            existing(&r.data, Kind::File)?;
            let dir = r.dir.clone();
            // What the job reports until the engine's first event (it saves the same).
            let r = RunRecord {
                status: history::RunStatus::Running,
                error: None,
                finished_at: None,
                ..r
            };
            (r, Some(dir))
        }
        None => {
            validate(&config)?;
            let data = lock(&state.dataset)?
                .as_ref()
                .map(|d| d.path.clone())
                .ok_or_else(|| ApiError::new("NoDataset", "Choose a dataset first (step 3)."))?;
            let dir = runs.join(history::reserve_id(&runs)?);
            (
                RunRecord::new(&dir, &model.source.spec(), &data, &config),
                None,
            )
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(true));
    let shared = Arc::new(Mutex::new(record.clone()));
    let events = Arc::new(Mutex::new(on_event));
    *job = Some(TrainJob {
        run_id: record.id.clone(),
        cancel: cancel.clone(),
        running: running.clone(),
        record: shared.clone(),
        events: events.clone(),
    });
    let send = move |u: TrainUpdate| {
        if let Ok(c) = events.lock() {
            let _ = c.send(u);
        }
    };
    let (cfg, data, out) = (
        record.config.clone(),
        PathBuf::from(&record.data),
        record.dir.clone(),
    );
    std::thread::Builder::new()
        .name("train".into())
        .spawn(move || {
            let mut on = |e: &TrainEvent, r: &RunRecord| {
                if let Ok(mut s) = shared.lock() {
                    *s = r.clone();
                }
                send(TrainUpdate::Event {
                    event: Box::new(e.clone()),
                    record: Box::new(r.clone()),
                });
            };
            // A panic must not leave the job "running" forever: it becomes a failed run.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                train(
                    &model,
                    &data,
                    &out,
                    &cfg,
                    resume.as_deref(),
                    Some(&cancel),
                    &mut on,
                )
            }));
            // The engine saved the final record (completed, paused or failed) in the run folder.
            let mut last = RunRecord::load(&out)
                .or_else(|_| shared.lock().map(|r| r.clone()))
                .unwrap_or_else(|p| p.into_inner().clone());
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if last.error.is_none() => last.error = Some(e.into()),
                Ok(Err(_)) => {}
                Err(_) => {
                    last.status = history::RunStatus::Failed;
                    last.error = Some(internal("training stopped on an internal error (a bug)"));
                    let _ = last.save();
                }
            }
            if let Ok(mut s) = shared.lock() {
                *s = last.clone();
            }
            running.store(false, Ordering::Relaxed);
            send(TrainUpdate::Finished {
                record: Box::new(last),
            });
        })
        .map_err(|e| internal(format!("cannot start the training thread: {e}")))?;
    Ok(record)
}

/// Pauses the running job: the engine writes a checkpoint and stops; resume continues exactly.
#[tauri::command]
pub fn train_cancel(state: State<'_, AppState>) -> ApiResult<bool> {
    Ok(match lock(&state.train)?.as_ref() {
        Some(j) if j.running.load(Ordering::Relaxed) => {
            j.cancel.store(true, Ordering::Relaxed);
            true
        }
        _ => false,
    })
}

/// The current (or last) run of this session with its curves so far, to re-attach a view.
#[tauri::command]
pub fn train_status(state: State<'_, AppState>) -> ApiResult<Option<RunRecord>> {
    let job = lock(&state.train)?;
    Ok(match job.as_ref() {
        Some(j) => Some(lock(&j.record)?.clone()),
        None => None,
    })
}

/// Re-attaches a view to the running job (the window was reloaded, so the channel the run was
/// started with has no listener): its progress goes to `on_event` from now on. Returns the
/// run's record so far, or `None` when nothing trains.
#[tauri::command]
pub fn train_attach(
    state: State<'_, AppState>,
    on_event: Channel<TrainUpdate>,
) -> ApiResult<Option<RunRecord>> {
    let job = lock(&state.train)?;
    let Some(j) = job.as_ref().filter(|j| j.running.load(Ordering::Relaxed)) else {
        return Ok(None);
    };
    *lock(&j.events)? = on_event;
    let record = lock(&j.record)?.clone();
    Ok(Some(record))
}

/// Every run in the history, newest first.
#[tauri::command]
pub fn runs_list(state: State<'_, AppState>) -> ApiResult<Vec<RunRecord>> {
    let job = lock(&state.train)?;
    let active: Vec<&str> = job
        .as_ref()
        .filter(|j| j.running.load(Ordering::Relaxed))
        .map(|j| j.run_id.as_str())
        .into_iter()
        .collect();
    Ok(history::list(&state.runs_dir(), &active))
}

/// Deletes a finished run and its files.
#[tauri::command]
pub fn run_delete(state: State<'_, AppState>, run_id: String) -> ApiResult<()> {
    let job = lock(&state.train)?;
    if job
        .as_ref()
        .is_some_and(|j| j.run_id == run_id && j.running.load(Ordering::Relaxed))
    {
        return Err(busy("This run"));
    }
    let runs = state.runs_dir();
    if history::find(&runs, &run_id).is_ok_and(|r| run_lock::in_use_now(&r.dir)) {
        return Err(in_use(&run_id));
    }
    Ok(history::delete(&runs, &run_id)?)
}

/// A run another window or process is training (the engine's `run_lock` says so).
fn in_use(id: &str) -> ApiError {
    ApiError::new(
        "Busy",
        format!("run {id} is being trained by another PEFT Studio window or a `peft train` process; stop it there first."),
    )
}
