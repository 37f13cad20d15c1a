//! Step 2: open a model — the bundled demo, a local folder, a `.gguf` file or a hub id
//! (downloaded with progress, cancellable between files, resumable by opening it again).

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::paths::{existing, Kind};
use crate::state::{lock, AppState, ModelSlot};
use peft_engine::model::decoder::LoadOptions;
use peft_engine::model::hub::{DownloadEvent, HubOptions};
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tauri::ipc::Channel;
use tauri::State;
use ts_rs::TS;

/// Download progress, per file, as the engine reports it.
#[derive(Debug, Clone, Serialize, TS)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DownloadProgress {
    Start {
        file: String,
        #[ts(type = "number")]
        total_bytes: u64,
    },
    Progress {
        file: String,
        #[ts(type = "number")]
        bytes_done: u64,
        #[ts(type = "number")]
        total_bytes: u64,
    },
    Done {
        file: String,
    },
    Cached {
        file: String,
    },
    /// Files are in place; building the model in memory.
    Loading,
}

impl From<DownloadEvent> for DownloadProgress {
    fn from(e: DownloadEvent) -> Self {
        match e {
            DownloadEvent::Start { file, total_bytes } => Self::Start { file, total_bytes },
            DownloadEvent::Progress {
                file,
                bytes_done,
                total_bytes,
            } => Self::Progress {
                file,
                bytes_done,
                total_bytes,
            },
            DownloadEvent::Done { file } => Self::Done { file },
            DownloadEvent::Cached { file } => Self::Cached { file },
        }
    }
}

/// What the Model step shows.
#[derive(Debug, Clone, Serialize, TS, PartialEq)]
pub struct ModelInfoDto {
    /// What the user gave (`demo`, a path, `org/name`).
    pub spec: String,
    /// The engine's description of the source.
    pub source: String,
    pub bundled: bool,
    pub architecture: String,
    #[ts(type = "number")]
    pub parameters: u64,
    pub dtype_on_disk: String,
    #[ts(type = "number")]
    pub size_on_disk_bytes: u64,
    pub context_length: u32,
    pub vocab_size: u32,
    pub layers: u32,
    pub hidden_size: u32,
    pub has_chat_template: bool,
    /// The Jinja template used for chat (the engine's documented fallback when the model has
    /// none).
    pub chat_template: String,
}

pub(crate) fn info_dto(spec: &str, m: &LoadedModel) -> ModelInfoDto {
    let i = &m.info;
    ModelInfoDto {
        spec: spec.to_string(),
        source: i.source.clone(),
        bundled: m.source == ModelSource::Bundled,
        architecture: i.architecture.clone(),
        parameters: i.parameters as u64,
        dtype_on_disk: i.dtype_on_disk.clone(),
        size_on_disk_bytes: i.size_on_disk_bytes,
        context_length: i.context_length as u32,
        vocab_size: i.vocab_size as u32,
        layers: i.layers as u32,
        hidden_size: i.hidden_size as u32,
        has_chat_template: i.has_chat_template,
        chat_template: m.template.source().to_string(),
    }
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

/// Loads a model for training: the recipe consumes its model, so each run gets a fresh copy.
/// Hub models are read from the cache (they were downloaded when opened).
pub(crate) fn load_again(source: &ModelSource) -> ApiResult<LoadedModel> {
    let open = OpenOptions {
        hub: HubOptions {
            offline: true,
            ..Default::default()
        },
        ..Default::default()
    };
    Ok(LoadedModel::load(source, open, &LoadOptions::default())?)
}

/// Opens a model (downloading it first for hub ids), makes it the wizard's model, and
/// returns its facts. Progress goes to `on_progress`; `model_cancel_download` stops the
/// download before the next file (opening again resumes).
#[tauri::command]
pub async fn model_open(
    state: State<'_, AppState>,
    spec: String,
    on_progress: Channel<DownloadProgress>,
) -> ApiResult<ModelInfoDto> {
    let source = parse_source(&spec)?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let mut slot = lock(&state.download_cancel)?;
        if slot.is_some() {
            return Err(ApiError::busy("Opening a model"));
        }
        *slot = Some(cancel.clone());
    }
    let src = source.clone();
    let flag = cancel.clone();
    let result = blocking(move || {
        let mut on_download = |e: DownloadEvent| {
            let _ = on_progress.send(e.into());
        };
        let files = peft_engine::model::load::open_model(
            &src,
            OpenOptions {
                on_download: Some(&mut on_download),
                cancel: Some(&flag),
                ..Default::default()
            },
        )?;
        let _ = on_progress.send(DownloadProgress::Loading);
        Ok(LoadedModel::from_files(files, &LoadOptions::default())?)
    })
    .await;
    *lock(&state.download_cancel)? = None;
    let model = result?;
    let dto = info_dto(spec.trim(), &model);
    *lock(&state.model)? = Some(ModelSlot {
        spec: spec.trim().to_string(),
        source,
        base: Arc::new(model),
    });
    // A new model invalidates what was derived from the old one.
    *lock(&state.tuned)? = None;
    *lock(&state.dataset)? = None;
    Ok(dto)
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
pub fn model_current(state: State<'_, AppState>) -> ApiResult<Option<ModelInfoDto>> {
    Ok(lock(&state.model)?
        .as_ref()
        .map(|m| info_dto(&m.spec, &m.base)))
}
