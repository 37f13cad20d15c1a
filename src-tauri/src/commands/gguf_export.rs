//! Step 7, for llama.cpp, Ollama and LM Studio: a run's adapter (final or best) or the open
//! base model exported as a merged GGUF, a LoRA adapter GGUF, an Ollama folder or LM Studio's
//! layout, each followed by the engine's self-check — one call, `train::tuned::export_tuned`.
//! The engine decides the weights, the name, the per-tensor type mix and the template; the
//! shell only resolves the run and the destination and streams progress.

use super::blocking;
use crate::error::{busy, ApiError, ApiResult};
use crate::paths::output_dir;
use crate::state::{lock, AppState};
use peft_engine::export::gguf::ExportProgress;
use peft_engine::export::gguf_quant::GgufQuant;
use peft_engine::export::run::{ExportFormat, ExportReport, ExportRequest};
use peft_engine::export::selfcheck::CheckOptions;
use peft_engine::train::history;
use peft_engine::train::tuned::export_tuned;
use peft_engine::train::WhichAdapter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tauri::ipc::Channel;
use tauri::State;

/// LM Studio's publisher folder for what the app exports.
const PUBLISHER: &str = "peft-studio";

/// Exports run `run_id`'s adapter `which` (or, without a run, the open base model) as `format`
/// in `quant` into `dest` (an absolute folder; LM Studio: its models folder;
/// default `<app data>/exports/<run or base>-<format>`), streaming progress on `on_progress`.
/// The report carries the files, the type mix, the self-check and what to run next; a failed
/// self-check is an error (`ExportCheckFailed`); [`export_gguf_cancel`] stops it (`Cancelled`).
#[tauri::command]
pub async fn export_gguf(
    state: State<'_, AppState>,
    run_id: Option<String>,
    which: WhichAdapter,
    format: ExportFormat,
    quant: GgufQuant,
    dest: Option<String>,
    on_progress: Channel<ExportProgress>,
) -> ApiResult<ExportReport> {
    let (spec, model) = state.current_model()?;
    let adapter = match &run_id {
        Some(id) => {
            let record = history::find(&state.runs_dir(), id)?;
            if record.model != model.source.spec() {
                return Err(ApiError::new(
                    "WrongModel",
                    format!(
                        "run {id} trained {}; open that model to export it (the open one is {spec})",
                        record.model
                    ),
                ));
            }
            let dir = record
                .adapter_dir(which)
                .map_err(|e| ApiError::new("NoRun", e.to_string()))?;
            Some(dir)
        }
        None => None,
    };
    let out = match dest.filter(|d| !d.trim().is_empty()) {
        Some(d) => output_dir(&d)?,
        None => {
            let what = match (&run_id, which) {
                (None, _) => "base".to_string(),
                (Some(id), WhichAdapter::Final) => id.clone(),
                (Some(id), WhichAdapter::Best) => format!("{id}-best"),
            };
            state
                .data_dir
                .join("exports")
                .join(format!("{what}-{}", format.as_str()))
        }
    };
    let req = ExportRequest {
        format,
        quant,
        out,
        // Empty: the engine names it for the model and the run.
        name: String::new(),
        publisher: PUBLISHER.into(),
        check: CheckOptions::default(),
        cancel: Some(Arc::new(AtomicBool::new(false))),
    };
    {
        let mut slot = lock(&state.export_cancel)?;
        if slot.is_some() {
            return Err(busy("An export"));
        }
        *slot = req.cancel.clone();
    }
    let result = blocking(move || {
        let mut progress = |p: ExportProgress| {
            // A closed window only loses progress; the export goes on.
            let _ = on_progress.send(p);
        };
        Ok(export_tuned(
            &model,
            adapter.as_deref(),
            &req,
            &mut progress,
        )?)
    })
    .await;
    *lock(&state.export_cancel)? = None;
    result
}

/// Stops the running GGUF export before its next tensor or self-check conversation; `false`
/// when none runs. Nothing is left under the final name unless the file was complete.
#[tauri::command]
pub fn export_gguf_cancel(state: State<'_, AppState>) -> ApiResult<bool> {
    Ok(match lock(&state.export_cancel)?.as_ref() {
        Some(c) => {
            c.store(true, Ordering::Relaxed);
            true
        }
        None => false,
    })
}
