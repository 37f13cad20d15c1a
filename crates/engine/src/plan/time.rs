//! Seconds per optimizer step, itemised like the memory estimate, from the machine's measured
//! [`Throughput`] and the constants in [`Calibration`] (each fitted by `peft bench plan`).
//!
//! A step is the sum of four kinds of work, each scaled by the probe that measures it:
//! - **GEMM**: matmul FLOPs (see [`train_flops_per_token`]) at the probe's GFLOP/s times
//!   `gemm_efficiency` (training shapes are thinner than the probe's, and the backward's
//!   transposed operands pack more slowly);
//! - **memory**: elementwise passes over every activation the blocks compute (not only what
//!   they keep: checkpointing recomputes), over the attention scores (quadratic in the
//!   sequence, and what a small model's step is mostly made of), over the logits (the fused
//!   loss computes them twice) and NF4 dequantization, at the copy probe's GB/s;
//! - **optimizer**: AdamW, the gradient norm and candle's gradient allocation and
//!   accumulation, as passes over every trainable parameter;
//! - **fixed**: batch assembly, progress and the loss read-back.
//!
//! Per-op overhead (allocation, thread hand-off, graph bookkeeping) has no term of its own:
//! fitted against `peft bench plan` with a probe for it, it came out at zero for blocks, because
//! it scales with the activation bytes the memory term already counts.

use super::calibrate::Calibration;
use super::estimate::{block_activations, train_flops_per_token, PlanRequest, Throughput};
use super::params::{tensors, trainable_parameters};
use crate::model::config::Config;
use crate::peft::method::Method;
use serde::{Deserialize, Serialize};

/// Seconds of one optimizer step (all its micro-steps), by kind of work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTime {
    pub gemm_s: f64,
    pub memory_s: f64,
    pub optimizer_s: f64,
    pub fixed_s: f64,
}

impl StepTime {
    pub fn total(&self) -> f64 {
        self.gemm_s + self.memory_s + self.optimizer_s + self.fixed_s
    }
}

/// Parameters of the block projections stored in NF4 (QLoRA), dequantized on every pass.
fn nf4_params(c: &Config, method: &Method) -> f64 {
    if !matches!(method, Method::Qlora(_)) {
        return 0.0;
    }
    tensors(c)
        .iter()
        .filter(|t| t.block_linear)
        .map(|t| t.numel as f64)
        .sum()
}

/// What one optimizer step does, before any machine speed: the inputs of [`step_time`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepWork {
    /// Matmul FLOPs.
    pub flops: f64,
    /// Bytes of activations the blocks compute (recomputation included), without the
    /// attention scores.
    pub activation_bytes: f64,
    /// Bytes of attention scores and probabilities the blocks compute.
    pub attention_bytes: f64,
    /// Bytes of logits the loss computes, once per pass.
    pub logit_bytes: f64,
    /// Bytes NF4 dequantization writes.
    pub dequant_bytes: f64,
    pub micro_steps: f64,
    /// Bytes of trainable parameters (f32).
    pub trainable_bytes: f64,
}

/// The work of one optimizer step of `req`.
pub fn step_work(c: &Config, req: &PlanRequest) -> StepWork {
    let micro = req.grad_accum.max(1) as f64;
    let tokens = (req.batch_size.max(1) * req.seq_len.max(1)) as f64;
    let layers = c.num_hidden_layers as f64;
    let recompute = if req.grad_checkpointing { 1.5 } else { 1.0 };
    let per_block = block_activations(c, &req.method, req.seq_len, true);
    let block_bytes = |n: u64| 4.0 * tokens * layers * n as f64 * recompute * micro;
    let logit_passes = if super::estimate::loss_is_fused(c, &req.method) {
        2.0
    } else {
        1.0
    };
    StepWork {
        flops: micro * tokens * train_flops_per_token(c, req),
        activation_bytes: block_bytes(per_block.dense + per_block.lora),
        attention_bytes: block_bytes(per_block.attention),
        logit_bytes: micro * 4.0 * tokens * c.vocab_size as f64 * logit_passes,
        dequant_bytes: micro * 4.0 * nf4_params(c, &req.method) * (1.0 + recompute),
        micro_steps: micro,
        trainable_bytes: 4.0 * trainable_parameters(c, &req.method) as f64,
    }
}

/// The step time of `req` on the machine described by `req.throughput`.
pub fn step_time(c: &Config, req: &PlanRequest, k: &Calibration) -> StepTime {
    step_time_of(&step_work(c, req), &req.throughput, k)
}

/// [`StepWork`] at a machine's speed.
pub fn step_time_of(w: &StepWork, tp: &Throughput, k: &Calibration) -> StepTime {
    let bw = tp.mem_gbps.max(0.1) * 1e9;
    StepTime {
        gemm_s: w.flops / (tp.gemm_gflops.max(1.0) * 1e9 * k.gemm_efficiency),
        memory_s: (k.memory_passes * w.activation_bytes
            + k.attention_passes * w.attention_bytes
            + k.logit_passes * w.logit_bytes
            + k.dequant_passes * w.dequant_bytes)
            / bw,
        optimizer_s: w.trainable_bytes * (k.optimizer_passes + k.gradient_passes * w.micro_steps)
            / bw,
        fixed_s: k.step_overhead_s,
    }
}
