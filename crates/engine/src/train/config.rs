//! Every training knob, with its default and what it trades off.

use crate::data::render::TrainOn;
use crate::peft::method::Method;
use crate::train::optim::AdamWSettings;
use crate::train::schedule::Scheduler;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
    /// Validation loss every N steps (0 = only at the end).
    pub eval_every: usize,
    /// Checkpoint every N steps (0 = only when cancelled and at the end).
    pub save_every: usize,
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
        }
    }
}
