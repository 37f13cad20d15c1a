//! What the planner is asked about: the run's knobs ([`PlanRequest`]), the device it runs on
//! ([`ComputeDevice`]) and the machine's measured speed ([`Throughput`]). Plain values; the
//! rest of `plan` computes from them.

use crate::model::decoder::WeightDtype;
use crate::peft::method::Method;
use serde::{Deserialize, Serialize};

/// Where the run computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ComputeDevice {
    #[default]
    Cpu,
    Cuda,
    Metal,
}

impl ComputeDevice {
    pub fn as_str(&self) -> &'static str {
        match self {
            ComputeDevice::Cpu => "cpu",
            ComputeDevice::Cuda => "cuda",
            ComputeDevice::Metal => "metal",
        }
    }

    /// The kind of an opened device (what a run on it is planned as).
    pub fn of(device: &candle_core::Device) -> Self {
        match device {
            candle_core::Device::Cpu => ComputeDevice::Cpu,
            candle_core::Device::Cuda(_) => ComputeDevice::Cuda,
            candle_core::Device::Metal(_) => ComputeDevice::Metal,
        }
    }
}

/// The machine's measured speed (from `plan::calibrate`), the input to the time estimate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Throughput {
    /// f32 GEMM speed with all threads, GFLOP/s.
    pub gemm_gflops: f64,
    /// Bytes per second an elementwise op moves on activation-sized tensors (all threads),
    /// GB/s.
    pub mem_gbps: f64,
    /// This CPU's bf16 GEMM speed (f32 sums; AMX tiles or their emulation,
    /// `ops::Bf16Backend`), GFLOP/s: the rate of a `bf16_compute` run's frozen-base products.
    /// `None`: not measured; such a run is then timed at the f32 rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16_gemm_gflops: Option<f64>,
}

impl Default for Throughput {
    /// This project's 2-core reference machine (median probes over a `peft bench plan` run).
    fn default() -> Self {
        Self {
            gemm_gflops: 165.0,
            mem_gbps: 48.0,
            bf16_gemm_gflops: None,
        }
    }
}

/// The run being planned; the same knobs as `TrainConfig` (`train::config` converts both
/// ways).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct PlanRequest {
    pub method: Method,
    pub seq_len: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub grad_checkpointing: bool,
    /// Storage of frozen dense weights (QLoRA's block projections are NF4 regardless).
    pub weight_dtype: WeightDtype,
    pub device: ComputeDevice,
    /// A validation split is evaluated (its forward pass has its own peak).
    pub evaluation: bool,
    pub throughput: Throughput,
    /// Sample packing: every row is `seq_len` tokens of several examples, so an epoch costs
    /// its packed rows rather than one sequence per example (`recommend`'s epoch time).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packing: bool,
    /// The GGUF block types a QLoRA run over this model trains over instead of NF4
    /// (`Method::base_storage_for`), as the file stores them; set by [`PlanRequest::for_model`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf_base: Option<GgufBase>,
    /// The frozen base meets the activations in bf16 (`TrainConfig::bf16_compute`; CPU LoRA
    /// and QLoRA): its products run at [`Throughput::bf16_gemm_gflops`], and LoRA stores it
    /// in bf16 (`weight_dtype`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bf16_compute: bool,
}

/// Bytes of a GGUF's tensors kept in their block types under QLoRA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct GgufBase {
    /// The block linears (every one is in a block type, or this is not set).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub linear_bytes: u64,
    /// The embedding, when it is in a block type too (a tied head then is as well; the fused
    /// loss widens it tile by tile).
    #[cfg_attr(feature = "ts", ts(type = "number | null"))]
    pub embed_bytes: Option<u64>,
}

impl PlanRequest {
    /// This request for `model`: where QLoRA would train over the file's own block types,
    /// their bytes ([`LoadedModel::gguf_linear_bytes`]).
    pub fn for_model(mut self, model: &crate::model::loaded::LoadedModel) -> Self {
        self.gguf_base = model.gguf_linear_bytes().map(|linear_bytes| GgufBase {
            linear_bytes,
            embed_bytes: model.gguf_tensor_bytes("model.embed_tokens.weight"),
        });
        self
    }
}

impl Default for PlanRequest {
    fn default() -> Self {
        Self {
            method: Method::Lora(Default::default()),
            seq_len: 256,
            batch_size: 1,
            grad_accum: 1,
            grad_checkpointing: false,
            weight_dtype: WeightDtype::F32,
            device: ComputeDevice::Cpu,
            evaluation: true,
            throughput: Throughput::default(),
            packing: false,
            gguf_base: None,
            bf16_compute: false,
        }
    }
}
