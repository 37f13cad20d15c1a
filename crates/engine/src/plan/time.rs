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
//!   loss computes them twice), NF4 dequantization and the frozen weights every matmul packs
//!   (per pass, whatever the token count: what makes short sequences slower per token), at
//!   the elementwise probe's GB/s;
//! - **optimizer**: AdamW, the gradient norm and candle's gradient allocation and
//!   accumulation, as passes over every trainable parameter;
//! - **fixed**: per pass through an adapted projection (its rank-sized matmuls cost the
//!   thread-pool hand-off more than arithmetic: what makes LoRA on a 260K model slower than full
//!   fine-tuning), and per step (batch assembly, progress, the loss read-back).
//!
//! Checkpointing's recomputed forward has its own elementwise term rather than a factor on
//! the others: around it are the per-block graph and the gradient hand-off, so a recomputed
//! byte costs more than a byte of the plain forward.

use super::calibrate::Calibration;
use super::params::{adapted_linears, tensors, trainable_parameters};
use super::request::{ComputeDevice, PlanRequest, Throughput};
use super::work::{
    bf16_flops_per_token, block_activations, head_gemm_passes, logit_passes, train_flops_per_token,
};
use crate::model::config::Config;
use crate::peft::method::Method;
use serde::{Deserialize, Serialize};

/// Seconds of one optimizer step (all its micro-steps), by kind of work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
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

/// Weights of the block projections and of the output head (the embedding when tied).
fn matmul_params(c: &Config) -> (f64, f64) {
    let block = tensors(c)
        .iter()
        .filter(|t| t.block_linear)
        .map(|t| t.numel as f64)
        .sum();
    (block, (c.vocab_size * c.hidden_size) as f64)
}

/// What one optimizer step does, before any machine speed: the inputs of [`step_time`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct StepWork {
    /// Matmul FLOPs at the f32 rate.
    pub flops: f64,
    /// Matmul FLOPs at the bf16 rate (a `bf16_compute` run's frozen-base products).
    #[serde(default)]
    pub bf16_flops: f64,
    /// Bytes of activations the blocks compute in forward, without the attention scores.
    pub activation_bytes: f64,
    /// Bytes of attention scores and probabilities the blocks compute in forward.
    pub attention_bytes: f64,
    /// Bytes of activations and scores that checkpointing computes a second time (zero
    /// without it).
    pub recomputed_bytes: f64,
    /// Passes through an adapted projection (forward, backward, recomputed forward) over the
    /// step: each runs half a dozen rank-sized matmuls whose cost is mostly the hand-off to the
    /// thread pool, whatever the token count.
    pub adapter_passes: f64,
    /// Bytes of logits the loss computes, once per pass.
    pub logit_bytes: f64,
    /// Bytes NF4 dequantization writes.
    pub dequant_bytes: f64,
    /// Bytes of matmul weights (block projections and the output head, f32) read by every
    /// forward, backward and recomputed pass: the GEMM packs each one whatever the token count.
    pub weight_bytes: f64,
    pub micro_steps: f64,
    /// Bytes of trainable parameters (f32).
    pub trainable_bytes: f64,
}

/// The work of one optimizer step of `req`.
pub fn step_work(c: &Config, req: &PlanRequest) -> StepWork {
    let micro = req.grad_accum.max(1) as f64;
    let tokens = (req.batch_size.max(1) * req.seq_len.max(1)) as f64;
    let layers = c.num_hidden_layers as f64;
    let per_block = block_activations(
        c,
        &req.method,
        req.seq_len,
        req.device == super::request::ComputeDevice::Cpu,
    );
    let block_bytes = |n: u64| 4.0 * tokens * layers * n as f64 * micro;
    let recomputed = if req.grad_checkpointing {
        block_bytes(per_block.dense + per_block.lora + per_block.attention)
    } else {
        0.0
    };
    let on_cpu = req.device == ComputeDevice::Cpu;
    let logit_passes = logit_passes(c, &req.method, on_cpu);
    let block_passes = if req.grad_checkpointing { 3.0 } else { 2.0 };
    let head_passes = head_gemm_passes(c, &req.method, on_cpu);
    let (block_params, head_params) = matmul_params(c);
    let bf16_flops = micro * tokens * bf16_flops_per_token(c, req);
    // bf16 weights are half the bytes a pass reads.
    let weight_width = if bf16_flops > 0.0 { 2.0 } else { 4.0 };
    StepWork {
        flops: micro * tokens * train_flops_per_token(c, req) - bf16_flops,
        bf16_flops,
        activation_bytes: block_bytes(per_block.dense + per_block.lora),
        attention_bytes: block_bytes(per_block.attention),
        recomputed_bytes: recomputed,
        adapter_passes: micro * adapted_linears(c, &req.method).len() as f64 * block_passes,
        logit_bytes: micro * 4.0 * tokens * c.vocab_size as f64 * logit_passes,
        dequant_bytes: micro * 4.0 * nf4_params(c, &req.method) * block_passes,
        weight_bytes: micro
            * weight_width
            * (block_params * block_passes + head_params * head_passes),
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
        gemm_s: (w.flops / tp.gemm_gflops.max(1.0)
            + w.bf16_flops / tp.bf16_gemm_gflops.unwrap_or(tp.gemm_gflops).max(1.0))
            / (1e9 * k.gemm_efficiency),
        memory_s: (k.memory_passes * w.activation_bytes
            + k.attention_passes * w.attention_bytes
            + k.recompute_passes * w.recomputed_bytes
            + k.logit_passes * w.logit_bytes
            + k.dequant_passes * w.dequant_bytes
            + k.weight_passes * w.weight_bytes)
            / bw,
        optimizer_s: w.trainable_bytes * (k.optimizer_passes + k.gradient_passes * w.micro_steps)
            / bw,
        fixed_s: k.step_overhead_s + k.adapter_pass_s * w.adapter_passes,
    }
}
