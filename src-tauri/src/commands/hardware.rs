//! Step 1: what this machine has, and what it can train, in one sentence.

use super::blocking;
use crate::error::ApiResult;
use crate::state::{lock, AppState};
use peft_engine::hardware::{GpuVendor, Hardware};
use peft_engine::memory::format_bytes;
use peft_engine::plan::{recommend, ComputeDevice, DataStats, RecommendOptions};
use serde::Serialize;
use tauri::State;
use ts_rs::TS;

#[derive(Debug, Clone, Serialize, TS)]
pub struct GpuDto {
    pub vendor: String,
    pub name: String,
    #[ts(type = "number")]
    pub total_bytes: u64,
    #[ts(type = "number")]
    pub free_bytes: u64,
    pub unified_memory: bool,
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct HardwareDto {
    pub cpu_model: String,
    pub arch: String,
    pub physical_cores: u32,
    pub logical_cores: u32,
    /// SIMD extensions candle's CPU kernels use (`AVX2`, `FMA`, …).
    pub simd: Vec<String>,
    #[ts(type = "number")]
    pub ram_total_bytes: u64,
    #[ts(type = "number")]
    pub ram_available_bytes: u64,
    pub gpus: Vec<GpuDto>,
    /// Why no GPU was found (no driver, backend not compiled in), for display.
    pub gpu_notes: Vec<String>,
    /// `cpu`, `cuda` or `metal`: where training would run.
    pub device: String,
    /// What this machine can train, in one sentence (from the planner).
    pub summary: String,
}

/// Scans (or re-scans) the machine. Never fails for a missing GPU: that is a note.
#[tauri::command]
pub async fn hardware_scan(state: State<'_, AppState>) -> ApiResult<HardwareDto> {
    let hw = blocking(|| Ok(Hardware::scan())).await?;
    *lock(&state.hardware)? = Some(hw.clone());
    let config = match lock(&state.model)?.as_ref() {
        Some(m) => (m.base.info.config.clone(), m.base.info.source.clone()),
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
    Ok(to_dto(&hw, &config.0, &config.1, &data))
}

pub(crate) fn to_dto(
    hw: &Hardware,
    config: &peft_engine::Config,
    model_name: &str,
    data: &DataStats,
) -> HardwareDto {
    let rec = recommend(config, hw, data, &RecommendOptions::default());
    let device = match rec.device {
        ComputeDevice::Cpu => "cpu",
        ComputeDevice::Cuda => "cuda",
        ComputeDevice::Metal => "metal",
    };
    let place = match rec.device {
        ComputeDevice::Cpu => format!(
            "Training runs on the CPU ({} cores, {} of RAM free)",
            hw.cpu.logical_cores,
            format_bytes(rec.available_bytes)
        ),
        _ => format!(
            "Training runs on the GPU ({} free)",
            format_bytes(rec.available_bytes)
        ),
    };
    let summary = match rec.best() {
        Some(best) => format!(
            "{place}: {} at {} tokens fits {model_name} in {}, at about {:.0} tokens/s.",
            best.label,
            best.request.seq_len,
            format_bytes(best.estimate.peak_bytes),
            best.tokens_per_s
        ),
        None => format!("{place}: {}", rec.summary),
    };
    let f = &hw.cpu.features;
    let simd = [
        ("AVX2", f.avx2),
        ("AVX-512", f.avx512f),
        ("FMA", f.fma),
        ("NEON", f.neon),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| n.to_string())
    .collect();
    HardwareDto {
        cpu_model: hw.cpu.model.clone(),
        arch: hw.cpu.arch.clone(),
        physical_cores: hw.cpu.physical_cores as u32,
        logical_cores: hw.cpu.logical_cores as u32,
        simd,
        ram_total_bytes: hw.memory.total_bytes,
        ram_available_bytes: hw.memory.available_bytes,
        gpus: hw
            .gpu
            .gpus
            .iter()
            .map(|g| GpuDto {
                vendor: match g.vendor {
                    GpuVendor::Nvidia => "NVIDIA".into(),
                    GpuVendor::Apple => "Apple".into(),
                },
                name: g.name.clone(),
                total_bytes: g.total_bytes,
                free_bytes: g.free_bytes,
                unified_memory: g.unified_memory,
            })
            .collect(),
        gpu_notes: hw.gpu.notes.clone(),
        device: device.into(),
        summary,
    }
}

/// The scan the plan uses: the last one, or a fresh one.
pub(crate) fn current(state: &AppState) -> ApiResult<Hardware> {
    let mut hw = lock(&state.hardware)?;
    Ok(hw.get_or_insert_with(Hardware::scan).clone())
}
