//! Where a configuration that does not fit this machine would fit: the smallest common GPU class
//! ([`super::gpu_classes`]) for the planner's estimate of the same run on one CUDA GPU, and how
//! to take it there (`peft recipe export`, the app's "Continue on a GPU server").
//!
//! The estimate is the same request with the device switched to CUDA and the dense base stored
//! in bf16, because the exported configs train in bf16 mixed precision (`scaleout`). It is our
//! memory model of our engine, not a measurement of Axolotl, LLaMA-Factory or TRL; the text
//! says so. Not here: choosing or renting anything, or multi-GPU sharding arithmetic (a run
//! beyond the largest class is pointed at the export's ZeRO-3 / FSDP launch file).

use super::calibrate::Calibration;
use super::estimate::estimate_with;
use super::gpu_classes::{smallest_fitting_class, usable_bytes};
use super::request::{ComputeDevice, PlanRequest};
use crate::memory::format_bytes;
use crate::model::config::Config;
use crate::model::decoder::WeightDtype;
use serde::{Deserialize, Serialize};

/// How the user continues a run elsewhere (CLI and app), named in every suggestion.
pub const EXPORT_HINT: &str =
    "export it with `peft recipe export --engine axolotl|llamafactory|trl --out DIR` \
     (in the app: Export → Continue on a GPU server)";

/// A configuration that does not fit here, and the GPU class it would fit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ElsewhereFit {
    /// The candidate's label (`LoRA`, `LoRA with checkpointing`, …).
    pub label: String,
    pub seq_len: usize,
    /// The planner's device peak of this run on one CUDA GPU with a bf16 base.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub gpu_bytes: u64,
    /// The smallest common class it fits (`L4 24 GB`); `None` beyond the largest single GPU.
    pub gpu: Option<String>,
    /// What of that class a run can use (its total less the CUDA context and allocator share).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub gpu_usable_bytes: u64,
    /// Where that class is typically found.
    pub typical: Option<String>,
    /// The class has no bf16 (T4): the exported config's `bf16` must become `fp16`.
    pub needs_fp16: bool,
    /// One sentence for the plan's summary.
    pub sentence: String,
}

/// The GPU class the run `req` (labelled `label`) would fit on, by its estimate on CUDA.
pub fn elsewhere(c: &Config, label: &str, req: &PlanRequest, k: &Calibration) -> ElsewhereFit {
    let on_gpu = PlanRequest {
        device: ComputeDevice::Cuda,
        weight_dtype: WeightDtype::Bf16,
        ..req.clone()
    };
    let gpu_bytes = estimate_with(c, &on_gpu, k).device_bytes;
    let class = smallest_fitting_class(gpu_bytes);
    let seq = req.seq_len;
    let sentence = match class {
        Some(g) => format!(
            "{label} at {seq} tokens would fit one {} GPU ({}): about {} by our estimate of it on CUDA with bf16 weights{}; {EXPORT_HINT}.",
            g.name,
            g.typical,
            format_bytes(gpu_bytes),
            if g.bf16 { "" } else { " (this card has no bf16: set fp16 in the exported config)" },
        ),
        None => format!(
            "{label} at {seq} tokens needs about {} on CUDA by our estimate, more than any single GPU: \
             shard it over several with the exported ZeRO-3 / FSDP launch file; {EXPORT_HINT}.",
            format_bytes(gpu_bytes)
        ),
    };
    ElsewhereFit {
        label: label.to_string(),
        seq_len: seq,
        gpu_bytes,
        gpu: class.map(|g| g.name.to_string()),
        gpu_usable_bytes: class.map(usable_bytes).unwrap_or(0),
        typical: class.map(|g| g.typical.to_string()),
        needs_fp16: class.is_some_and(|g| !g.bf16),
        sentence,
    }
}
