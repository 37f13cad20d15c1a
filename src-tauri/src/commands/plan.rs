//! Step 4: the planner's recommendation and alternatives, and a live estimate of the edited
//! settings. All numbers, bands and the candidate → settings mapping are the engine's.

use super::blocking;
use crate::commands::hardware;
use crate::error::{internal, ApiError, ApiResult};
use crate::state::{lock, AppState};
use peft_engine::plan::devices::{device_options, DeviceOption};
use peft_engine::plan::{
    measure_throughput, recommend, Candidate, DataStats, GgufBase, PlanRequest, RecommendOptions,
    Recommendation, Throughput,
};
use peft_engine::train::TrainConfig;
use serde::Serialize;
use std::time::Duration;
use tauri::State;
use ts_rs::TS;

/// The recommendation, and for each candidate the full settings it stands for (the user's
/// other settings kept: `TrainConfig::with_plan`).
#[derive(Debug, Clone, Serialize, TS)]
pub struct PlanView {
    pub recommendation: Recommendation,
    /// `configs[i]` is `candidates[i]` applied to the settings the plan was asked with.
    pub configs: Vec<TrainConfig>,
    /// The devices the run may train on (the settings' `device` picks one; the plan is for it).
    pub devices: Vec<DeviceOption>,
}

/// This machine's speed, measured once per app start (about a third of a second).
fn throughput(state: &AppState) -> ApiResult<Throughput> {
    if let Some(t) = *lock(&state.throughput)? {
        return Ok(t);
    }
    let t = measure_throughput(Duration::from_millis(150))?;
    *lock(&state.throughput)? = Some(t);
    Ok(t)
}

/// The inputs every plan needs: model config, hardware, data lengths, throughput.
/// What a plan is made from: the model's config, the machine, the dataset, and the measured
/// throughput with the model's GGUF base (if QLoRA would train over one).
type PlanInputs = (
    peft_engine::Config,
    peft_engine::hardware::Hardware,
    DataStats,
    (Throughput, Option<GgufBase>),
);

fn inputs(state: &AppState) -> ApiResult<PlanInputs> {
    let (_, model) = state.current_model()?;
    // The engine's word on what QLoRA over this model stores (a GGUF's own block types).
    let gguf = PlanRequest::default().for_model(&model).gguf_base;
    let data = lock(&state.dataset)?
        .as_ref()
        .map(|d| DataStats::from_report(&d.report))
        .ok_or_else(|| ApiError::new("NoDataset", "Choose a dataset first (step 3)."))?;
    Ok((
        model.config.clone(),
        hardware::current(state)?,
        data,
        (throughput(state)?, gguf),
    ))
}

/// Planner options for `cfg`: its method, sequence length and packing fixed (`fixed`) or the
/// planner's to choose; its batch, accumulation and LoRA settings kept either way.
fn options(
    cfg: &TrainConfig,
    (t, gguf_base): (Throughput, Option<GgufBase>),
    fixed: bool,
) -> RecommendOptions {
    let d = RecommendOptions::default();
    RecommendOptions {
        method: fixed.then(|| cfg.method.clone()),
        lora: cfg.method.lora().cloned().unwrap_or(d.lora.clone()),
        seq_len: fixed.then_some(cfg.seq_len),
        batch_size: cfg.batch_size,
        grad_accum: cfg.grad_accum,
        base: PlanRequest {
            gguf_base,
            ..cfg.plan_request(Default::default(), t)
        },
        device: cfg.device.unwrap_or_default(),
        // Recommending, the engine packs where it shortens the epoch; an estimate of the
        // user's settings keeps theirs.
        packing: fixed.then_some(cfg.packing),
        // Likewise bf16 compute: on where the CPU has AMX, unless the user set it.
        bf16_compute: fixed.then_some(cfg.bf16_compute),
        ..d
    }
}

/// Ranks configurations for the open model, the chosen dataset and this machine. `base`
/// carries the knobs the planner does not choose (learning rate, epochs…), kept in every
/// candidate's settings.
#[tauri::command]
pub async fn plan_recommend(state: State<'_, AppState>, base: TrainConfig) -> ApiResult<PlanView> {
    let (config, hw, data, t) = inputs(&state)?;
    let opts = options(&base, t, false);
    let devices = device_options(&hw);
    let recommendation = blocking(move || Ok(recommend(&config, &hw, &data, &opts))).await?;
    let configs = recommendation
        .candidates
        .iter()
        .map(|c| base.with_plan(&c.request))
        .collect();
    Ok(PlanView {
        recommendation,
        configs,
        devices,
    })
}

/// The estimate of exactly these settings, and whether they fit (updated live as the user
/// edits).
#[tauri::command]
pub async fn plan_estimate(
    state: State<'_, AppState>,
    config: TrainConfig,
) -> ApiResult<Candidate> {
    let (model_config, hw, data, t) = inputs(&state)?;
    blocking(move || {
        let rec = recommend(&model_config, &hw, &data, &options(&config, t, true));
        rec.candidates
            .into_iter()
            .find(|c| {
                c.request.seq_len == config.seq_len
                    && c.request.grad_checkpointing == config.grad_checkpointing
            })
            .ok_or_else(|| internal("the planner returned no estimate for these settings"))
    })
    .await
}
