//! Seconds per optimizer step, itemised like the memory estimate, from the machine's measured
//! [`Throughput`] and the constants in [`Calibration`] (each fitted by `peft bench plan`).
//!
//! A step is the sum of five kinds of work, each scaled by the probe that measures it:
//! - **GEMM**: matmul FLOPs (see [`train_flops_per_token`]) at the probe's GFLOP/s times
//!   `gemm_efficiency` (training shapes are thinner than the probe's, and the backward's
//!   transposed operands pack more slowly);
//! - **memory**: elementwise passes over every activation the blocks compute (not only what
//!   they keep: checkpointing recomputes), over the logits (the fused loss computes them twice,
//!   the unfused one keeps them and a handful of gradients), and NF4 dequantization, at the
//!   copy probe's GB/s;
//! - **dispatch**: per-op cost of candle's graph (allocation, thread hand-off, gradient
//!   bookkeeping) times the ops of a block, at the op probe's µs per op — all a step of the
//!   260K demo model costs, little of a 135M model's;
//! - **optimizer**: AdamW, gradient norm and gradient accumulation over every trainable
//!   parameter, as passes over memory;
//! - **fixed**: batch assembly, progress and the loss read-back.

use super::calibrate::Calibration;
use super::estimate::{block_activations, train_flops_per_token, PlanRequest, Throughput};
use super::params::{adapted_linears, tensors, trainable_parameters};
use crate::model::config::Config;
use crate::peft::method::Method;
use serde::{Deserialize, Serialize};

/// Seconds of one optimizer step (all its micro-steps), by kind of work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTime {
    pub gemm_s: f64,
    pub memory_s: f64,
    pub dispatch_s: f64,
    pub optimizer_s: f64,
    pub fixed_s: f64,
}

impl StepTime {
    pub fn total(&self) -> f64 {
        self.gemm_s + self.memory_s + self.dispatch_s + self.optimizer_s + self.fixed_s
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
    /// Bytes of activations the blocks compute (recomputation included).
    pub activation_bytes: f64,
    /// Bytes of logits the loss computes, once per pass.
    pub logit_bytes: f64,
    /// Bytes NF4 dequantization writes.
    pub dequant_bytes: f64,
    /// Ops inside blocks (without adapters), adapter count × passes, and micro-steps.
    pub block_passes: f64,
    pub adapter_passes: f64,
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
    let per_block = block_activations(c, &req.method, req.seq_len, true).total() as f64;
    let logit_passes = if super::estimate::loss_is_fused(c, &req.method) {
        2.0
    } else {
        1.0
    };
    StepWork {
        flops: micro * tokens * train_flops_per_token(c, req),
        activation_bytes: micro * 4.0 * tokens * layers * per_block * recompute,
        logit_bytes: micro * 4.0 * tokens * c.vocab_size as f64 * logit_passes,
        dequant_bytes: micro * 4.0 * nf4_params(c, &req.method) * (1.0 + recompute),
        block_passes: micro * layers * recompute,
        adapter_passes: micro * adapted_linears(c, &req.method).len() as f64 * recompute,
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
    let ops = w.block_passes * k.ops_per_block
        + w.adapter_passes * k.ops_per_adapter
        + w.micro_steps * k.ops_outside_blocks;
    StepTime {
        gemm_s: w.flops / (tp.gemm_gflops.max(1.0) * 1e9 * k.gemm_efficiency),
        memory_s: (k.memory_passes * w.activation_bytes
            + k.logit_passes_cost * w.logit_bytes
            + w.dequant_bytes)
            / bw,
        dispatch_s: ops * tp.op_us * 1e-6,
        optimizer_s: w.trainable_bytes * (k.optimizer_passes + k.gradient_passes * w.micro_steps)
            / bw,
        fixed_s: k.step_overhead_s,
    }
}
