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
use std::path::Path;
use tauri::State;
use ts_rs::TS;

#[derive(Debug, Clone, Serialize, TS)]
pub struct SegmentDto {
    pub text: String,
    /// True when these tokens carry loss (the model learns to produce them).
    pub trained: bool,
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct RowErrorDto {
    pub line: u32,
    pub field: String,
    pub message: String,
}

/// Rows with `lo <= tokens < hi`.
#[derive(Debug, Clone, Serialize, TS)]
pub struct HistogramBin {
    pub lo: u32,
    pub hi: u32,
    pub count: u32,
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct DatasetReportDto {
    pub path: String,
    pub file_name: String,
    /// True for the bundled Bolt stories.
    pub bundled: bool,
    /// `Chat`, `Alpaca`, `ShareGpt`, `PromptCompletion`, `QuestionAnswer` or `Text`.
    pub format: String,
    pub rows: u32,
    pub skipped: u32,
    pub errors: Vec<RowErrorDto>,
    pub fallback_template: bool,
    pub max_len: u32,
    pub min_tokens: u32,
    pub p50_tokens: u32,
    pub p95_tokens: u32,
    pub max_tokens: u32,
    pub mean_tokens: f64,
    pub histogram: Vec<HistogramBin>,
    pub truncated: u32,
    pub truncated_share: f64,
    #[ts(type = "number")]
    pub trained_tokens: u64,
    #[ts(type = "number")]
    pub total_tokens: u64,
    pub example: Vec<SegmentDto>,
}

pub(crate) fn report_dto(path: &Path, r: &DatasetReport, bundled: bool) -> DatasetReportDto {
    DatasetReportDto {
        path: path.display().to_string(),
        file_name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        bundled,
        format: serde_json::to_value(r.format)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        rows: r.rows as u32,
        skipped: r.skipped as u32,
        errors: r
            .errors
            .iter()
            .map(|e| RowErrorDto {
                line: e.line as u32,
                field: e.field.clone(),
                message: e.message.clone(),
            })
            .collect(),
        fallback_template: r.fallback_template,
        max_len: r.max_len as u32,
        min_tokens: r.lengths.min as u32,
        p50_tokens: r.lengths.p50 as u32,
        p95_tokens: r.lengths.p95 as u32,
        max_tokens: r.lengths.max as u32,
        mean_tokens: r.lengths.mean,
        histogram: r
            .histogram
            .iter()
            .map(|&(lo, hi, count)| HistogramBin {
                lo: lo as u32,
                hi: hi as u32,
                count: count as u32,
            })
            .collect(),
        truncated: r.truncated as u32,
        truncated_share: r.truncated_share,
        trained_tokens: r.trained_tokens as u64,
        total_tokens: r.total_tokens as u64,
        example: r
            .example
            .iter()
            .map(|s| SegmentDto {
                text: s.text.clone(),
                trained: s.trained,
            })
            .collect(),
    }
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
) -> ApiResult<DatasetReportDto> {
    let file = existing(&path, Kind::File)?;
    if max_len == 0 {
        return Err(ApiError::new(
            "InvalidSetting",
            "The sequence length must be at least 1.",
        ));
    }
    let (_, _, model) = state.current_model()?;
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
    let bundled = demo_dir.is_some_and(|d| file.starts_with(d));
    let dto = report_dto(&file, &report, bundled);
    *lock(&state.dataset)? = Some(DatasetSlot { path: file, report });
    Ok(dto)
}
