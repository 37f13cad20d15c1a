//! Step 2: open a model — the bundled demo, a local folder, a `.gguf` file or a hub id
//! (downloaded with progress, cancellable between files, resumable by opening it again).
//! Opening reads no weights: the engine builds them in the storage each use needs.

use super::blocking;
use crate::error::{busy, ApiError, ApiResult};
use crate::paths::{existing, Kind};
use crate::state::{lock, AppState, ModelSlot};
use peft_engine::model::hub::DownloadEvent;
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::{LoadedModel, ModelInfo};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tauri::ipc::Channel;
use tauri::State;
use ts_rs::TS;

/// The open model as the Model step shows it.
#[derive(Debug, Clone, Serialize, TS)]
pub struct OpenedModel {
    /// What the user gave (`demo`, a path, `org/name`).
    pub spec: String,
    pub info: ModelInfo,
}

/// Turns what the user gave into a source. Absolute paths are validated and canonicalised;
/// anything else must be `demo` or a hub id (relative paths would depend on the app's
/// working folder, which the user never sees).
///
/// # Errors
/// `BadPath` for a missing path or a file that is not `.gguf`; the engine's `InvalidSetting`
/// for text that is no hub id.
pub fn parse_source(spec: &str) -> ApiResult<ModelSource> {
    let spec = spec.trim();
    if Path::new(spec).is_absolute() {
        let p = Path::new(spec);
        return if p.is_dir() {
            Ok(ModelSource::Folder(existing(spec, Kind::Dir)?))
        } else {
            let f = existing(spec, Kind::File)?;
            if f.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            {
                Ok(ModelSource::Gguf(f))
            } else {
                Err(ApiError::new(
                    "BadPath",
                    format!("{spec} is a file but not a .gguf file; pick a model folder or a .gguf file"),
                ))
            }
        };
    }
    match ModelSource::parse(spec)? {
        s @ (ModelSource::Bundled | ModelSource::Hub(_)) => Ok(s),
        _ => Err(ApiError::new(
            "BadPath",
            format!("{spec}: give an absolute path, a hub id like org/name, or demo"),
        )),
    }
}

/// Opens a model (downloading it first for hub ids), makes it the wizard's model, and
/// returns its facts. Progress goes to `on_progress`; `model_cancel_download` stops the
/// download before the next file (opening again resumes).
#[tauri::command]
pub async fn model_open(
    state: State<'_, AppState>,
    spec: String,
    on_progress: Channel<DownloadEvent>,
) -> ApiResult<OpenedModel> {
    let source = parse_source(&spec)?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let mut slot = lock(&state.download_cancel)?;
        if slot.is_some() {
            return Err(busy("Opening a model"));
        }
        *slot = Some(cancel.clone());
    }
    let flag = cancel.clone();
    let result = blocking(move || {
        let mut on_download = |e: DownloadEvent| {
            let _ = on_progress.send(e);
        };
        let open = OpenOptions {
            on_download: Some(&mut on_download),
            cancel: Some(&flag),
            ..Default::default()
        };
        Ok(LoadedModel::open(&source, open)?)
    })
    .await;
    *lock(&state.download_cancel)? = None;
    let model = result?;
    let opened = OpenedModel {
        spec: spec.trim().to_string(),
        info: model.info.clone(),
    };
    *lock(&state.model)? = Some(ModelSlot {
        spec: opened.spec.clone(),
        model: Arc::new(model),
    });
    // A new model invalidates what was derived from the old one.
    *lock(&state.tuned)? = None;
    *lock(&state.dataset)? = None;
    Ok(opened)
}

/// Stops a running download before its next file.
#[tauri::command]
pub fn model_cancel_download(state: State<'_, AppState>) -> ApiResult<bool> {
    Ok(match lock(&state.download_cancel)?.as_ref() {
        Some(c) => {
            c.store(true, Ordering::Relaxed);
            true
        }
        None => false,
    })
}

/// The open model, if any (the UI re-reads it after a reload).
#[tauri::command]
pub fn model_current(state: State<'_, AppState>) -> ApiResult<Option<OpenedModel>> {
    Ok(lock(&state.model)?.as_ref().map(|m| OpenedModel {
        spec: m.spec.clone(),
        info: m.model.info.clone(),
    }))
}
