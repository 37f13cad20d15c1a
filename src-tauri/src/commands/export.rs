//! Step 7: a run's adapter in PEFT format (copied out of the run folder) or a merged model
//! folder (the full-precision base + the adapter folded into plain weights), with where each
//! can be used. The adapter is the run's final one or its best-evaluation checkpoint.

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::paths::output_dir;
use crate::state::AppState;
use peft_engine::export::merge::{write_merged, ExportDtype};
use peft_engine::model::decoder::LoadOptions;
use peft_engine::peft::adapter_io::{
    apply_adapter, ADAPTER_CONFIG, ADAPTER_WEIGHTS, DELTA_WEIGHTS, RUN_FILE,
};
use peft_engine::train::history;
use peft_engine::train::WhichAdapter;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tauri::State;
use ts_rs::TS;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, TS, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExportKind {
    /// `adapter_config.json` + `adapter_model.safetensors` (PEFT's format).
    Adapter,
    /// A complete Hugging Face model folder with the adapter merged in.
    Merged,
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct ExportedFile {
    pub name: String,
    #[ts(type = "number")]
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct ExportResult {
    pub kind: ExportKind,
    pub which: WhichAdapter,
    pub dir: String,
    pub files: Vec<ExportedFile>,
    /// Where and how to use what was written.
    pub usage: String,
}

fn list_files(dir: &Path) -> ApiResult<Vec<ExportedFile>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| ApiError::new("Io", format!("{}: {e}", dir.display())))?;
    let mut files: Vec<ExportedFile> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| ExportedFile {
            name: e.file_name().to_string_lossy().into_owned(),
            bytes: e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

fn usage(kind: ExportKind, dir: &Path) -> String {
    let d = dir.display();
    match kind {
        ExportKind::Adapter => format!(
            "A PEFT LoRA adapter. In Python: PeftModel.from_pretrained(base_model, \"{d}\") (transformers + peft); \
             with vLLM pass it as a LoRA module; llama.cpp can convert it with convert_lora_to_gguf.py. \
             It only works on top of the exact base model it was trained on."
        ),
        ExportKind::Merged => format!(
            "A standalone Hugging Face model folder (config.json, model.safetensors, tokenizer). \
             Load it with AutoModelForCausalLM.from_pretrained(\"{d}\"), open it again in PEFT Studio, \
             or convert it with llama.cpp's convert_hf_to_gguf.py for Ollama / LM Studio."
        ),
    }
}

/// Exports the adapter `which` of run `run_id` into `dest` (an absolute folder; default
/// `<app data>/exports/<run>-<kind>`), and lists what was written. The merged export uses the
/// open model, which must be the run's.
#[tauri::command]
pub async fn export_run(
    state: State<'_, AppState>,
    run_id: String,
    which: WhichAdapter,
    kind: ExportKind,
    dest: Option<String>,
) -> ApiResult<ExportResult> {
    let record = history::find(&state.runs_dir(), &run_id)?;
    let adapter = record
        .adapter_dir(which)
        .map_err(|e| ApiError::new("NoRun", e.to_string()))?;
    let dest = match dest.filter(|d| !d.trim().is_empty()) {
        Some(d) => output_dir(&d)?,
        None => {
            let suffix = match (kind, which) {
                (ExportKind::Adapter, WhichAdapter::Final) => "adapter",
                (ExportKind::Adapter, WhichAdapter::Best) => "best-adapter",
                (ExportKind::Merged, WhichAdapter::Final) => "merged",
                (ExportKind::Merged, WhichAdapter::Best) => "best-merged",
            };
            state
                .data_dir
                .join("exports")
                .join(format!("{run_id}-{suffix}"))
        }
    };
    let (spec, model) = state.current_model()?;
    if kind == ExportKind::Merged && record.model != model.source.spec() {
        return Err(ApiError::new(
            "WrongModel",
            format!(
                "run {run_id} trained {}; open that model to merge it (the open one is {spec})",
                record.model
            ),
        ));
    }
    let out = dest.clone();
    blocking(move || {
        match kind {
            ExportKind::Adapter => {
                std::fs::create_dir_all(&out)
                    .map_err(|e| ApiError::new("Io", format!("{}: {e}", out.display())))?;
                for name in [ADAPTER_CONFIG, ADAPTER_WEIGHTS, DELTA_WEIGHTS, RUN_FILE] {
                    let from = adapter.join(name);
                    if from.exists() {
                        peft_engine::fsutil::copy_atomic(&from, &out.join(name))?;
                    }
                }
            }
            ExportKind::Merged => {
                // The full-precision base, even for a QLoRA run: merged weights are never
                // derived from 4-bit ones.
                let mut d = model.build_weights(&LoadOptions::default())?;
                apply_adapter(&mut d, &adapter)?;
                write_merged(&model, &mut d, &out, ExportDtype::F32)?;
            }
        }
        Ok(())
    })
    .await?;
    Ok(ExportResult {
        kind,
        which,
        files: list_files(&dest)?,
        usage: usage(kind, &dest),
        dir: dest.display().to_string(),
    })
}
