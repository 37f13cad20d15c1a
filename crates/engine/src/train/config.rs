//! Every training knob, with its default and what it trades off, and the glue between a run's
//! settings and the planner: [`TrainConfig::plan_request`] (what to estimate) and
//! [`TrainConfig::with_plan`] (adopt a recommended candidate), used by the CLI and the app
//! alike. [`TrainConfig::demo`] is the bundled demo's setting.

use crate::data::render::TrainOn;
use crate::device::DeviceChoice;
use crate::model::decoder::WeightDtype;
use crate::peft::method::Method;
use crate::plan::{ComputeDevice, PlanRequest, Throughput};
use crate::train::optim::AdamWSettings;
use crate::train::schedule::Scheduler;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct TrainConfig {
    pub method: Method,
    /// Longest example in tokens; longer ones are cut. Activation memory grows linearly with
    /// it (attention scores quadratically).
    pub seq_len: usize,
    /// Examples per forward pass. Memory grows linearly; throughput improves a little.
    pub batch_size: usize,
    /// Micro-batches per optimizer step: a larger effective batch at no extra memory.
    pub grad_accum: usize,
    /// Peak learning rate (LoRA likes ~2e-4; full fine-tuning ~2e-5).
    pub lr: f64,
    pub scheduler: Scheduler,
    /// Optimizer steps of linear warmup from 0.
    pub warmup_steps: usize,
    pub epochs: f64,
    /// Stop after this many optimizer steps (overrides `epochs`).
    pub max_steps: Option<usize>,
    /// Validation loss every N steps (0 = only at the end). Each evaluation that beats the
    /// best so far also saves the adapter as the run's best checkpoint.
    pub eval_every: usize,
    /// Checkpoint every N steps (0 = only when cancelled and at the end).
    pub save_every: usize,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub seed: u64,
    /// Recompute each block in backward instead of keeping its activations: much less
    /// memory, roughly a third more time.
    pub grad_checkpointing: bool,
    /// Clip the global gradient norm to this (0 = off).
    pub max_grad_norm: f64,
    /// Share of examples held out for validation.
    pub val_fraction: f64,
    pub adamw: AdamWSettings,
    pub train_on: TrainOn,
    pub skip_bad_rows: bool,
    /// Precision of the saved LoRA adapter file (bf16 halves it; loading accepts both).
    #[serde(default)]
    pub adapter_dtype: crate::peft::adapter_io::AdapterDtype,
    /// Storage of the dense frozen weights (bf16 halves them; compute stays f32). QLoRA's
    /// block linears are NF4 whatever this says: the method decides.
    #[serde(default)]
    pub weight_dtype: WeightDtype,
    /// Where the run computes (`None`: auto, the planner's device: a GPU this build supports,
    /// else the CPU). On a GPU activations and frozen weights are bf16; adapters, gradients
    /// and optimizer state stay f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub device: Option<DeviceChoice>,
    /// Sample packing: short examples laid end to end in rows of `seq_len` tokens, each with
    /// its own positions and attention confined to itself (the same loss and gradients as one
    /// by one), so a step computes on real tokens instead of many tiny sequences or padding.
    /// Off in records from before it existed (and left out of records when off, so those runs
    /// still resume with the same settings).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packing: bool,
    /// The frozen base multiplied in bf16 with f32 sums (the CLI's `--bf16-compute`, like
    /// PyTorch's CPU autocast): LoRA's dense base stored in bf16, QLoRA's NF4 or GGUF base
    /// rounded to bf16 tile by tile (the QLoRA paper's compute dtype). Native on CPUs with AMX,
    /// emulated (the same numbers, no faster than f32) elsewhere ([`crate::ops::Bf16Backend`]).
    /// Adapters, gradients and optimizer state stay f32. A GPU computes in bf16 whatever this
    /// says. Left out of records when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bf16_compute: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            method: Method::Lora(Default::default()),
            seq_len: 256,
            batch_size: 1,
            grad_accum: 1,
            lr: 2e-4,
            scheduler: Scheduler::Cosine,
            warmup_steps: 0,
            epochs: 1.0,
            max_steps: None,
            eval_every: 0,
            save_every: 0,
            seed: 42,
            grad_checkpointing: false,
            max_grad_norm: 1.0,
            val_fraction: 0.1,
            adamw: AdamWSettings::default(),
            train_on: TrainOn::Assistant,
            skip_bad_rows: false,
            adapter_dtype: Default::default(),
            weight_dtype: WeightDtype::F32,
            device: None,
            packing: false,
            bf16_compute: false,
        }
    }
}

impl TrainConfig {
    /// What the demo needs to be visible in about a minute on a laptop CPU: the bundled Bolt
    /// stories are 97–127 tokens, so seq 128; a high LoRA learning rate makes the
    /// 260K-parameter model pick up the style. Measured in the e2e run (debug build, 2 cores):
    /// train loss 3.1 → 0.3, eval loss lowest (~1.25) around step 25 and rising after (it
    /// memorises), which is why the run keeps its best-eval checkpoint; "Tell me a story." is
    /// answered with Bolt and apples while the base model never mentions either.
    pub fn demo() -> Self {
        let lora = crate::peft::method::LoraSettings {
            rank: 16,
            alpha: 32.0,
            dropout: 0.0,
            ..Default::default()
        };
        Self {
            method: Method::Lora(lora),
            seq_len: 128,
            batch_size: 4,
            grad_accum: 1,
            lr: 3e-3,
            epochs: 8.0,
            eval_every: 10,
            warmup_steps: 5,
            ..Self::default()
        }
    }

    /// The device this run computes on, opened.
    ///
    /// # Errors
    /// As [`DeviceChoice::open`] (e.g. a CUDA choice in a build without CUDA).
    pub fn open_device(&self) -> crate::Result<candle_core::Device> {
        self.device.unwrap_or_default().open()
    }

    /// How the dense frozen weights are stored: bf16 when the run multiplies in bf16.
    pub fn base_weight_dtype(&self) -> WeightDtype {
        if self.bf16_compute {
            WeightDtype::Bf16
        } else {
            self.weight_dtype
        }
    }

    /// The planner's request for these settings on `device` at `throughput`.
    pub fn plan_request(&self, device: ComputeDevice, throughput: Throughput) -> PlanRequest {
        PlanRequest {
            method: self.method.clone(),
            seq_len: self.seq_len,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            grad_checkpointing: self.grad_checkpointing,
            weight_dtype: self.base_weight_dtype(),
            device,
            evaluation: self.val_fraction > 0.0,
            throughput,
            packing: self.packing,
            // The model's, not a setting: `PlanRequest::for_model`.
            gguf_base: None,
            bf16_compute: self.bf16_compute,
        }
    }

    /// These settings with the knobs a planner candidate chooses (method, sequence length,
    /// batch, accumulation, checkpointing, weight storage, sample packing, bf16 compute) taken
    /// from `r`; the rest (learning rate, epochs, seed…) kept. A bf16-compute candidate's bf16
    /// base follows from `bf16_compute` ([`TrainConfig::base_weight_dtype`]), so the stored
    /// setting stays this config's own: unticking bf16 compute then leaves no bf16 behind.
    pub fn with_plan(&self, r: &PlanRequest) -> Self {
        Self {
            method: r.method.clone(),
            seq_len: r.seq_len,
            batch_size: r.batch_size,
            grad_accum: r.grad_accum,
            grad_checkpointing: r.grad_checkpointing,
            weight_dtype: match r.bf16_compute {
                true => self.weight_dtype,
                false => r.weight_dtype,
            },
            packing: r.packing,
            bf16_compute: r.bf16_compute,
            ..self.clone()
        }
    }
}
