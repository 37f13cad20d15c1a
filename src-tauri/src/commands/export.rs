//! Step 7: the adapter in PEFT format (copied out of the run folder) or a merged model folder
//! (base + adapter folded into plain weights), with where each can be used.

use super::blocking;
use crate::commands::model::load_again;
use crate::error::{ApiError, ApiResult};
use crate::history::{self, RunStatus};
use crate::paths::{output_dir, plain_id};
use crate::state::AppState;
use peft_engine::export::merge::{write_merged, ExportDtype};
use peft_engine::peft::adapter_io::{
    apply_adapter, ADAPTER_CONFIG, ADAPTER_WEIGHTS, DELTA_WEIGHTS, RUN_FILE,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
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

/// Exports the completed run `run_id` into `dest` (an absolute folder; default
/// `<app data>/exports/<run>-<kind>`), and lists what was written.
#[tauri::command]
pub async fn export_run(
    state: State<'_, AppState>,
    run_id: String,
    kind: ExportKind,
    dest: Option<String>,
) -> ApiResult<ExportResult> {
    plain_id(&run_id)?;
    let record = history::load(&state.runs_dir(), &run_id)?;
    if record.status != RunStatus::Completed {
        return Err(ApiError::new(
            "NoRun",
            "Only a completed run has an adapter to export.",
        ));
    }
    let dest = match dest.filter(|d| !d.trim().is_empty()) {
        Some(d) => output_dir(&d)?,
        None => {
            let suffix = if kind == ExportKind::Adapter {
                "adapter"
            } else {
                "merged"
            };
            state
                .data_dir
                .join("exports")
                .join(format!("{run_id}-{suffix}"))
        }
    };
    let run_dir = PathBuf::from(&record.dir);
    let source = crate::commands::model::parse_source(&record.model)?;
    let out = dest.clone();
    blocking(move || {
        std::fs::create_dir_all(&out)
            .map_err(|e| ApiError::new("Io", format!("{}: {e}", out.display())))?;
        match kind {
            ExportKind::Adapter => {
                for name in [ADAPTER_CONFIG, ADAPTER_WEIGHTS, DELTA_WEIGHTS, RUN_FILE] {
                    let from = run_dir.join(name);
                    if from.exists() {
                        std::fs::copy(&from, out.join(name))
                            .map_err(|e| ApiError::new("Io", format!("{}: {e}", from.display())))?;
                    }
                }
            }
            ExportKind::Merged => {
                let mut model = load_again(&source)?;
                apply_adapter(&mut model.decoder, &run_dir)?;
                write_merged(&mut model, &out, ExportDtype::F32)?;
            }
        }
        Ok(())
    })
    .await?;
    Ok(ExportResult {
        kind,
        files: list_files(&dest)?,
        usage: usage(kind, &dest),
        dir: dest.display().to_string(),
    })
}
