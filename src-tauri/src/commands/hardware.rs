//! Step 1: what this machine has, and what it can train, in one sentence (the engine's).

use super::blocking;
use crate::error::ApiResult;
use crate::state::{lock, AppState};
use peft_engine::hardware::Hardware;
use peft_engine::plan::machine::{machine_summary, MachineSummary};
use peft_engine::plan::DataStats;
use serde::Serialize;
use tauri::State;
use ts_rs::TS;

/// The scan and the planner's verdict for the open model (or the bundled one).
#[derive(Debug, Clone, Serialize, TS)]
pub struct HardwareView {
    pub hardware: Hardware,
    pub verdict: MachineSummary,
}

/// Scans (or re-scans) the machine. Never fails for a missing GPU: that is a note.
#[tauri::command]
pub async fn hardware_scan(state: State<'_, AppState>) -> ApiResult<HardwareView> {
    let hw = blocking(|| Ok(Hardware::scan())).await?;
    *lock(&state.hardware)? = Some(hw.clone());
    let (config, name) = match lock(&state.model)?.as_ref() {
        Some(m) => (m.model.config.clone(), m.model.info.source.clone()),
        None => {
            let files = peft_engine::model::load::open_model(
                &peft_engine::model::load::ModelSource::Bundled,
                Default::default(),
            )?;
            (files.config, "the bundled demo model".to_string())
        }
    };
    let data = match lock(&state.dataset)?.as_ref() {
        Some(d) => DataStats::from_report(&d.report),
        None => DataStats::from_lengths(vec![256]),
    };
    Ok(HardwareView {
        verdict: machine_summary(&hw, &config, &name, &data),
        hardware: hw,
    })
}

/// The scan the plan uses: the last one, or a fresh one.
pub(crate) fn current(state: &AppState) -> ApiResult<Hardware> {
    let mut hw = lock(&state.hardware)?;
    Ok(hw.get_or_insert_with(Hardware::scan).clone())
}
