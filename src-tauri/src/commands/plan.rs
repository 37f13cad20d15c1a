//! Step 4: the planner's recommendation and alternatives, and a live estimate of the edited
//! knobs. All numbers come from `peft_engine::plan`; the shell only groups the estimate's
//! itemised lines into the six bands of the memory bar.

use super::blocking;
use crate::commands::hardware;
use crate::error::{ApiError, ApiResult};
use crate::settings::TrainSettings;
use crate::state::{lock, AppState};
use peft_engine::plan::{
    measure_throughput, recommend, Candidate, ComputeDevice, DataStats, Estimate, PlanRequest,
    RecommendOptions, Throughput,
};
use serde::Serialize;
use std::time::Duration;
use tauri::State;
use ts_rs::TS;

/// One band of the stacked memory bar.
#[derive(Debug, Clone, Serialize, TS)]
pub struct MemoryBand {
    /// `weights`, `adapters`, `optimizer`, `activations`, `logits` or `overhead`.
    pub band: String,
    #[ts(type = "number")]
    pub bytes: u64,
}

/// One itemised term of the estimate (the tooltip of a band).
#[derive(Debug, Clone, Serialize, TS)]
pub struct MemoryLine {
    pub name: String,
    pub band: String,
    #[ts(type = "number")]
    pub bytes: u64,
    pub explanation: String,
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct EstimateDto {
    #[ts(type = "number")]
    pub peak_bytes: u64,
    /// The moment of a step when memory peaks (`logits backward`, …).
    pub peak_phase: String,
    pub bands: Vec<MemoryBand>,
    pub lines: Vec<MemoryLine>,
    #[ts(type = "number")]
    pub trainable_params: u64,
    #[ts(type = "number")]
    pub total_params: u64,
    pub tokens_per_s: f64,
    pub epoch_seconds: f64,
    pub fits: bool,
    /// Usable memory minus the peak (negative when it does not fit).
    #[ts(type = "number")]
    pub headroom_bytes: i64,
    pub truncated_share: f64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct CandidateDto {
    pub label: String,
    /// The knobs of this candidate (the user's other settings kept).
    pub settings: TrainSettings,
    pub estimate: EstimateDto,
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct PlanDto {
    /// `cpu`, `cuda` or `metal`.
    pub device: String,
    #[ts(type = "number")]
    pub available_bytes: u64,
    #[ts(type = "number")]
    pub margin_bytes: u64,
    #[ts(type = "number")]
    pub usable_bytes: u64,
    pub summary: String,
    /// Fitting candidates first, best first.
    pub candidates: Vec<CandidateDto>,
}

/// The band of the memory bar an estimate line belongs to (see `plan::estimate` for names).
pub fn band_of(line: &str) -> &'static str {
    match line {
        l if l.starts_with("base_weights") => "weights",
        "adapters" => "adapters",
        "optimizer_state" | "gradients" | "optimizer_temporaries" => "optimizer",
        "logits" | "logits_grad" | "loss_tiles" => "logits",
        l if l.starts_with("activations")
            || l == "block_backward"
            || l == "attention_backward"
            || l == "evaluation_activations"
            || l == "nf4_dequant_tiles" =>
        {
            "activations"
        }
        _ => "overhead",
    }
}

const BANDS: [&str; 6] = [
    "weights",
    "adapters",
    "optimizer",
    "activations",
    "logits",
    "overhead",
];

fn estimate_dto(e: &Estimate, c: &Candidate) -> EstimateDto {
    let lines: Vec<MemoryLine> = e
        .lines
        .iter()
        .map(|l| MemoryLine {
            name: l.name.clone(),
            band: band_of(&l.name).into(),
            bytes: l.bytes,
            explanation: l.explanation.clone(),
        })
        .collect();
    let bands = BANDS
        .iter()
        .map(|b| MemoryBand {
            band: b.to_string(),
            bytes: lines.iter().filter(|l| l.band == *b).map(|l| l.bytes).sum(),
        })
        .collect();
    EstimateDto {
        peak_bytes: e.peak_bytes,
        peak_phase: e.peak_phase.clone(),
        bands,
        lines,
        trainable_params: e.params.trainable as u64,
        total_params: e.params.total as u64,
        tokens_per_s: e.tokens_per_s,
        epoch_seconds: c.epoch_seconds,
        fits: c.fits,
        headroom_bytes: c.headroom_bytes,
        truncated_share: c.truncated_share,
        reason: c.reason.clone(),
    }
}

fn device_name(d: ComputeDevice) -> String {
    match d {
        ComputeDevice::Cpu => "cpu",
        ComputeDevice::Cuda => "cuda",
        ComputeDevice::Metal => "metal",
    }
    .into()
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
fn inputs(
    state: &AppState,
) -> ApiResult<(
    peft_engine::Config,
    peft_engine::hardware::Hardware,
    DataStats,
    Throughput,
)> {
    let (_, _, model) = state.current_model()?;
    let data = lock(&state.dataset)?
        .as_ref()
        .map(|d| DataStats::from_report(&d.report))
        .ok_or_else(|| ApiError::new("NoDataset", "Choose a dataset first (step 3)."))?;
    Ok((
        model.info.config.clone(),
        hardware::current(state)?,
        data,
        throughput(state)?,
    ))
}

fn options(s: &TrainSettings, t: Throughput, fixed: bool) -> RecommendOptions {
    let d = RecommendOptions::default();
    RecommendOptions {
        method: fixed.then(|| s.method()),
        lora: s.method().lora().cloned().unwrap_or(d.lora.clone()),
        seq_len: fixed.then_some(s.seq_len as usize),
        batch_size: s.batch_size as usize,
        grad_accum: s.grad_accum as usize,
        base: PlanRequest {
            throughput: t,
            ..PlanRequest::default()
        },
        ..d
    }
}

/// Ranks configurations for the open model, the chosen dataset and this machine. `base`
/// carries the knobs the planner does not choose (learning rate, epochs…), kept in every
/// candidate's settings.
#[tauri::command]
pub async fn plan_recommend(state: State<'_, AppState>, base: TrainSettings) -> ApiResult<PlanDto> {
    let (config, hw, data, t) = inputs(&state)?;
    let opts = options(&base, t, false);
    let rec = blocking(move || Ok(recommend(&config, &hw, &data, &opts))).await?;
    Ok(PlanDto {
        device: device_name(rec.device),
        available_bytes: rec.available_bytes,
        margin_bytes: rec.margin_bytes,
        usable_bytes: rec.usable_bytes,
        summary: rec.summary.clone(),
        candidates: rec
            .candidates
            .iter()
            .map(|c| CandidateDto {
                label: c.label.clone(),
                settings: base.with_request(&c.request),
                estimate: estimate_dto(&c.estimate, c),
            })
            .collect(),
    })
}

/// The estimate of exactly these knobs, and whether they fit (updated live as the user edits).
#[tauri::command]
pub async fn plan_estimate(
    state: State<'_, AppState>,
    settings: TrainSettings,
) -> ApiResult<EstimateDto> {
    let (config, hw, data, t) = inputs(&state)?;
    blocking(move || {
        let rec = recommend(&config, &hw, &data, &options(&settings, t, true));
        rec.candidates
            .iter()
            .find(|c| {
                c.request.seq_len == settings.seq_len as usize
                    && c.request.grad_checkpointing == settings.grad_checkpointing
            })
            .map(|c| estimate_dto(&c.estimate, c))
            .ok_or_else(|| {
                ApiError::internal("the planner returned no estimate for these settings")
            })
    })
    .await
}
