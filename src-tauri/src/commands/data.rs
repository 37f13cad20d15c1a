//! Step 3: pick a dataset and see what training will see — format, rows, token lengths
//! against the sequence length, one example with its trained tokens, errors with lines.

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::paths::{existing, Kind};
use crate::state::{lock, AppState, DatasetSlot};
use peft_engine::data::demo::write_demo_dataset;
use peft_engine::data::formats::LoadOptions;
use peft_engine::data::inspect::{inspect, DatasetReport};
use serde::Serialize;
use tauri::State;
use ts_rs::TS;

/// The inspected dataset and where it is.
#[derive(Debug, Clone, Serialize, TS)]
pub struct DatasetView {
    /// The canonical path of the file.
    pub path: String,
    /// True for the bundled Bolt stories.
    pub bundled: bool,
    pub report: DatasetReport,
}

/// Writes the bundled demo dataset into the app data folder and returns its path.
#[tauri::command]
pub fn data_demo_path(state: State<'_, AppState>) -> ApiResult<String> {
    let path = write_demo_dataset(&state.data_dir.join("datasets"))?;
    Ok(path.display().to_string())
}

/// Inspects `path` with the open model's tokenizer and template at `max_len` tokens and makes
/// it the wizard's dataset.
#[tauri::command]
pub async fn data_inspect(
    state: State<'_, AppState>,
    path: String,
    max_len: u32,
    skip_bad_rows: bool,
) -> ApiResult<DatasetView> {
    let file = existing(&path, Kind::File)?;
    if max_len == 0 {
        return Err(ApiError::new(
            "InvalidSetting",
            "The sequence length must be at least 1.",
        ));
    }
    let (_, model) = state.current_model()?;
    let f = file.clone();
    let report = blocking(move || {
        Ok(inspect(
            &f,
            &model.tokenizer,
            &model.template,
            max_len as usize,
            &LoadOptions { skip_bad_rows },
        )?)
    })
    .await?;
    let demo_dir = state.data_dir.join("datasets").canonicalize().ok();
    let view = DatasetView {
        path: file.display().to_string(),
        bundled: demo_dir.is_some_and(|d| file.starts_with(d)),
        report: report.clone(),
    };
    *lock(&state.dataset)? = Some(DatasetSlot { path: file, report });
    Ok(view)
}
