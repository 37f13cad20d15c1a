//! "Continue on a GPU server" and back: the wizard's run (the open model, the chosen dataset and
//! the settings) written as a folder for Axolotl, LLaMA-Factory or TRL, and an adapter folder
//! trained there imported as a run of the history (then chat and export use it like any run).
//! Both are the engine's (`scaleout::export`, `train::import`); this finds the inputs in the
//! app state and checks the paths.

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::paths::{existing, output_dir, Kind};
use crate::state::{lock, AppState};
use peft_engine::scaleout::{export, Engine, EngineChoice, ExportReport, ExportRequest};
use peft_engine::train::import::import_adapter;
use peft_engine::train::{history, RunRecord, TrainConfig};
use tauri::State;

/// The trainers a recipe can be written for, as the engine names them.
#[tauri::command]
pub fn recipe_engines() -> Vec<EngineChoice> {
    Engine::choices()
}

/// Writes the run `config` on the open model and dataset as a folder for `engine` into `dest`
/// (an absolute folder; default `<app data>/exports/recipe-<engine>`, replaced by a later
/// export), and reports every setting mapped and every difference.
#[tauri::command]
pub async fn recipe_export(
    state: State<'_, AppState>,
    engine: Engine,
    config: TrainConfig,
    dest: Option<String>,
) -> ApiResult<ExportReport> {
    let (_, model) = state.current_model()?;
    let data = lock(&state.dataset)?
        .as_ref()
        .map(|d| d.path.clone())
        .ok_or_else(|| ApiError::new("NoDataset", "Choose a dataset first (step 3)."))?;
    let out = match dest.filter(|d| !d.trim().is_empty()) {
        Some(d) => output_dir(&d)?,
        None => state
            .data_dir
            .join("exports")
            .join(format!("recipe-{}", engine.as_str())),
    };
    blocking(move || {
        Ok(export(
            &ExportRequest::new(engine, &model, &data, &config),
            &out,
        )?)
    })
    .await
}

/// Imports the adapter folder `dir` (trained elsewhere) as a new run over the open model, after
/// checking that it applies to it; returns the run's record.
#[tauri::command]
pub async fn adapter_import(state: State<'_, AppState>, dir: String) -> ApiResult<RunRecord> {
    let (_, model) = state.current_model()?;
    let src = existing(&dir, Kind::Dir)?;
    let runs = state.runs_dir();
    let out = runs.join(history::reserve_id(&runs)?);
    blocking(move || Ok(import_adapter(&model, &src, &out)?)).await
}
