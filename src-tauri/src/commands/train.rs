//! Step 5: train on a background thread with a cancel token, streaming every step over a
//! channel; pause (checkpoint and stop) and resume exactly; keep every run in the history.

use crate::commands::model::{load_again, parse_source};
use crate::error::{ApiError, ApiResult};
use crate::history::{self, now, RunRecord, RunStatus};
use crate::paths::{existing, Kind};
use crate::settings::TrainSettings;
use crate::state::{lock, AppState, TrainJob};
use peft_engine::train::{train, TrainEvent, TrainStatus};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tauri::ipc::Channel;
use tauri::State;
use ts_rs::TS;

/// What the Train step receives while a run goes.
#[derive(Debug, Clone, Serialize, TS)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrainUpdate {
    Started {
        run_id: String,
        total_steps: u32,
        start_step: u32,
        train_examples: u32,
        val_examples: u32,
        #[ts(type = "number")]
        trainable_params: u64,
        #[ts(type = "number")]
        total_params: u64,
    },
    Step {
        step: u32,
        total_steps: u32,
        epoch: f64,
        loss: f64,
        eval_loss: Option<f64>,
        lr: f64,
        grad_norm: f64,
        tokens_per_s: f64,
        eta_s: f64,
        #[ts(type = "number")]
        rss_bytes: u64,
        elapsed_s: f64,
    },
    Eval {
        step: u32,
        loss: f64,
    },
    Checkpoint {
        step: u32,
    },
    /// The run ended (completed, paused or failed); the record is what the history keeps.
    Finished {
        /// Boxed: a record with its curves is much larger than the other updates.
        record: Box<RunRecord>,
    },
}

/// Applies an engine event to the run's record and translates it for the UI.
fn record_event(r: &mut RunRecord, e: &TrainEvent) -> TrainUpdate {
    match e {
        TrainEvent::Started {
            total_steps,
            start_step,
            train_examples,
            val_examples,
            trainable_params,
            total_params,
            ..
        } => {
            // A resumed run recomputes the steps after its checkpoint exactly: drop them.
            let s = *start_step as f64;
            r.losses.retain(|p| p[0] <= s);
            r.eval_losses.retain(|p| p[0] <= s);
            r.total_steps = *total_steps as u32;
            r.step = *start_step as u32;
            TrainUpdate::Started {
                run_id: r.id.clone(),
                total_steps: *total_steps as u32,
                start_step: *start_step as u32,
                train_examples: *train_examples as u32,
                val_examples: *val_examples as u32,
                trainable_params: *trainable_params as u64,
                total_params: *total_params as u64,
            }
        }
        TrainEvent::Step(s) => {
            r.step = s.step as u32;
            r.losses.push([s.step as f64, s.loss]);
            TrainUpdate::Step {
                step: s.step as u32,
                total_steps: s.total_steps as u32,
                epoch: s.epoch,
                loss: s.loss,
                eval_loss: s.eval_loss,
                lr: s.lr,
                grad_norm: s.grad_norm,
                tokens_per_s: s.tokens_per_s,
                eta_s: s.eta_s,
                rss_bytes: s.rss_bytes,
                elapsed_s: s.elapsed_s,
            }
        }
        TrainEvent::Eval { step, loss } => {
            r.eval_losses.push([*step as f64, *loss]);
            TrainUpdate::Eval {
                step: *step as u32,
                loss: *loss,
            }
        }
        TrainEvent::Checkpoint { step, .. } => TrainUpdate::Checkpoint { step: *step as u32 },
    }
}

/// Starts a run on the open model and dataset with `settings`, or resumes `resume_run` (with
/// the settings, model and data it was started with). Returns the run's record at once;
/// progress and the final record arrive on `on_event`.
#[tauri::command]
pub fn train_start(
    state: State<'_, AppState>,
    settings: TrainSettings,
    resume_run: Option<String>,
    on_event: Channel<TrainUpdate>,
) -> ApiResult<RunRecord> {
    let mut job = lock(&state.train)?;
    if job
        .as_ref()
        .is_some_and(|j| j.running.load(Ordering::Relaxed))
    {
        return Err(ApiError::busy("Training"));
    }
    let runs = state.runs_dir();
    let (record, source, resume) = match resume_run {
        Some(id) => {
            let mut r = history::load(&runs, &id)?;
            if !matches!(
                r.status,
                RunStatus::Paused | RunStatus::Interrupted | RunStatus::Failed
            ) {
                return Err(ApiError::new(
                    "NotResumable",
                    format!(
                        "run {id} is {:?}; only paused or interrupted runs resume",
                        r.status
                    ),
                ));
            }
            existing(&r.data, Kind::File)?;
            let source = parse_source(&r.model)?;
            r.status = RunStatus::Running;
            r.error = None;
            r.finished_at = None;
            let dir = PathBuf::from(&r.dir);
            (r, source, Some(dir))
        }
        None => {
            let (spec, source, _) = state.current_model()?;
            let data = lock(&state.dataset)?
                .as_ref()
                .map(|d| d.path.clone())
                .ok_or_else(|| ApiError::new("NoDataset", "Choose a dataset first (step 3)."))?;
            let id = history::new_id(&runs);
            let dir = history::run_dir(&runs, &id)?;
            let r = RunRecord {
                id,
                model: spec,
                data: data.display().to_string(),
                settings,
                status: RunStatus::Running,
                started_at: now(),
                finished_at: None,
                step: 0,
                total_steps: 0,
                losses: Vec::new(),
                eval_losses: Vec::new(),
                error: None,
                dir: dir.display().to_string(),
            };
            (r, source, None)
        }
    };
    history::save(&runs, &record)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(true));
    let shared = Arc::new(Mutex::new(record.clone()));
    *job = Some(TrainJob {
        run_id: record.id.clone(),
        cancel: cancel.clone(),
        running: running.clone(),
        record: shared.clone(),
    });
    let cfg = record.settings.to_config();
    let (data, out) = (PathBuf::from(&record.data), PathBuf::from(&record.dir));
    std::thread::Builder::new()
        .name("train".into())
        .spawn(move || {
            let result = load_again(&source).and_then(|model| {
                let mut on = |e: &TrainEvent| {
                    let update = match shared.lock() {
                        Ok(mut r) => record_event(&mut r, e),
                        Err(_) => return,
                    };
                    let _ = on_event.send(update);
                };
                Ok(train(
                    model,
                    &data,
                    &out,
                    &cfg,
                    resume.as_deref(),
                    Some(&cancel),
                    &mut on,
                )?)
            });
            let final_record = {
                let mut r = shared.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok(s) => {
                        r.status = match s.status {
                            TrainStatus::Completed => RunStatus::Completed,
                            TrainStatus::Cancelled => RunStatus::Paused,
                        };
                        r.step = s.steps as u32;
                    }
                    Err(e) => {
                        r.status = RunStatus::Failed;
                        r.error = Some(e);
                    }
                }
                r.finished_at = Some(now());
                let _ = history::save(&runs, &r);
                r.clone()
            };
            running.store(false, Ordering::Relaxed);
            let _ = on_event.send(TrainUpdate::Finished {
                record: Box::new(final_record),
            });
        })
        .map_err(|e| ApiError::internal(format!("cannot start the training thread: {e}")))?;
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

/// Every run in the history, newest first.
#[tauri::command]
pub fn runs_list(state: State<'_, AppState>) -> ApiResult<Vec<RunRecord>> {
    let job = lock(&state.train)?;
    let active = job
        .as_ref()
        .filter(|j| j.running.load(Ordering::Relaxed))
        .map(|j| j.run_id.clone());
    Ok(history::list(&state.runs_dir(), active.as_deref()))
}

/// Deletes a finished run and its files.
#[tauri::command]
pub fn run_delete(state: State<'_, AppState>, run_id: String) -> ApiResult<()> {
    let job = lock(&state.train)?;
    if job
        .as_ref()
        .is_some_and(|j| j.run_id == run_id && j.running.load(Ordering::Relaxed))
    {
        return Err(ApiError::busy("This run"));
    }
    history::delete(&state.runs_dir(), &run_id)
}
