//! The estimate's measured constants ([`Calibration`], fitted to `peft bench plan`) and a short
//! measurement of this machine's speed for the time estimate: f32 GEMM GFLOP/s at a
//! training-like shape (256 tokens × 576 → 1536, SmolLM2's MLP) and memory-copy bandwidth.
//! About a third of a second; the result is a [`Throughput`] the pure estimate takes.
//!
//! Why not time a real training step: a step of even the demo model spends most of its time in
//! per-op overhead, which does not scale to larger models; GEMM speed does, and the estimate's
//! `gemm_efficiency` (fitted by `peft bench plan`) carries the rest. This module is the only
//! part of `plan` that measures anything.

use super::estimate::Throughput;
use crate::error::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Measured constants. Every one was fitted to `peft bench plan` runs (see the CLI's
/// `bench_plan.rs`) on the reference machine; the doc of each says what it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Resident bytes of the process before any model: binary, libc/rayon threads, allocator
    /// arenas, the dataset. Measured as the peak RSS of a checkpointed 128-token run of the
    /// 260K-parameter demo model (24 MiB) minus its model terms.
    pub runtime_bytes: u64,
    /// Tokenizer and chat template per vocabulary entry (the `tokenizers` BPE maps hold every
    /// token string twice plus merges): fitted from SmolLM2 (49,152 tokens) vs the demo (512).
    pub tokenizer_bytes_per_token: u64,
    /// Vocabulary-sized f32 buffers alive together while the loss backpropagates into the
    /// logits, beyond the 4 forward ones (gather's zeros and scatter, log-softmax's grads
    /// through exp and the two subtractions, max's mask and its f32 copy, the accumulated
    /// logits gradient). Counting gives ≈ 4; the SmolLM2 checkpointed runs, whose peak is this
    /// moment, measured ≈ 6.5 (the rest is glibc keeping freed vocabulary-sized chunks).
    pub logits_grad_copies: f64,
    /// Extra resident bytes per byte of block activations. The tensor-by-tensor count of
    /// `block_activations` under-predicted SmolLM2 LoRA runs by ≈ 25–30 % of the activation
    /// terms: candle's backward allocates each op's input gradients before freeing the output
    /// gradient, and freed blocks under glibc's (dynamic, up to 32 MiB) mmap threshold stay
    /// resident. Fitted: 0.30.
    pub activation_slack: f64,
    /// Share of the GEMM probe's speed the matmuls of a training step sustain (thinner
    /// shapes, transposed operands in backward).
    pub gemm_efficiency: f64,
    /// Bytes moved per activation byte by elementwise work over forward and backward.
    pub memory_passes: f64,
    /// The same for each logits element the loss computes (exp, max, sum, the gradient).
    pub logit_passes_cost: f64,
    /// Ops (forward and backward, at the op probe's cost) of a block without adapters.
    pub ops_per_block: f64,
    /// Ops each LoRA adapter adds to its block.
    pub ops_per_adapter: f64,
    /// Ops outside the blocks: embedding, final norm, loss, clipping, AdamW per tensor.
    pub ops_outside_blocks: f64,
    /// Passes over 4 B per trainable parameter in each optimizer step (AdamW reads the
    /// weight, gradient and two moments and writes three; the gradient norm reads once more).
    pub optimizer_passes: f64,
    /// The same per micro-step (candle allocates each gradient and accumulates into it).
    pub gradient_passes: f64,
    /// CUDA/Metal context and allocator reserve on a GPU.
    pub gpu_context_bytes: u64,
    /// Fixed seconds per optimizer step (batch assembly, progress, the loss read-back).
    pub step_overhead_s: f64,
}

impl Default for Calibration {
    fn default() -> Self {
        Self {
            runtime_bytes: 13 << 20,
            tokenizer_bytes_per_token: 400,
            logits_grad_copies: 6.5,
            activation_slack: 0.10,
            gemm_efficiency: 0.38,
            memory_passes: 3.0,
            logit_passes_cost: 3.0,
            ops_per_block: 150.0,
            ops_per_adapter: 10.0,
            ops_outside_blocks: 100.0,
            optimizer_passes: 8.0,
            gradient_passes: 2.0,
            gpu_context_bytes: 400 << 20,
            step_overhead_s: 0.05,
        }
    }
}

/// Runs the two probes for about `budget` each (at least one repetition).
///
/// # Errors
/// [`crate::Error::Candle`] if candle cannot allocate the probe tensors.
pub fn measure_throughput(budget: Duration) -> Result<Throughput> {
    let (m, k, n) = (256usize, 576usize, 1536usize);
    let x = Tensor::ones((m, k), candle_core::DType::F32, &Device::Cpu)?;
    let w = Tensor::ones((n, k), candle_core::DType::F32, &Device::Cpu)?;
    // One warm-up call: thread-pool start and first-touch page faults are not throughput.
    let _ = x.matmul(&w.t()?)?;
    let t0 = Instant::now();
    let mut reps = 0u32;
    while reps == 0 || t0.elapsed() < budget {
        let _ = x.matmul(&w.t()?)?;
        reps += 1;
    }
    let gemm_gflops = 2.0 * (m * k * n) as f64 * reps as f64 / t0.elapsed().as_secs_f64() / 1e9;

    let src = vec![1.0f32; 8 << 20]; // 32 MiB
    let mut dst = vec![0.0f32; src.len()];
    let t0 = Instant::now();
    let mut copies = 0u32;
    while copies == 0 || t0.elapsed() < budget {
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        copies += 1;
    }
    // A copy reads and writes every byte.
    let mem_gbps = 2.0 * 4.0 * src.len() as f64 * copies as f64 / t0.elapsed().as_secs_f64() / 1e9;
    Ok(Throughput {
        gemm_gflops,
        mem_gbps,
        op_us: measure_op_us(budget)?,
    })
}

/// µs per op of a small recorded graph, forward and backward: what candle spends on an op
/// besides its arithmetic (allocation, dispatch to its thread pools, gradient bookkeeping).
/// The chain mixes matmuls and elementwise ops one to two, as a block does.
fn measure_op_us(budget: Duration) -> Result<f64> {
    const TRIPLES: usize = 12;
    let dev = &Device::Cpu;
    let w = candle_core::Var::ones((64, 64), candle_core::DType::F32, dev)?;
    let b = candle_core::Var::ones((16, 64), candle_core::DType::F32, dev)?;
    let run = || -> Result<()> {
        let mut x = b.as_tensor().clone();
        for _ in 0..TRIPLES {
            x = (x.matmul(w.as_tensor())?.mul(b.as_tensor())? + b.as_tensor())?;
        }
        x.sum_all()?.backward()?;
        Ok(())
    };
    run()?;
    let t0 = Instant::now();
    let mut reps = 0u32;
    while reps == 0 || t0.elapsed() < budget {
        run()?;
        reps += 1;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / (reps as f64 * 3.0 * TRIPLES as f64))
}
