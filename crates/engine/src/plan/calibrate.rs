//! The estimate's measured constants ([`Calibration`], fitted to `peft bench plan`) and a short
//! measurement of this machine's speed for the time estimate: f32 GEMM GFLOP/s at a
//! training-like shape (256 tokens × 576 → 1536, SmolLM2's MLP) and the bandwidth of an
//! elementwise op on an activation-sized tensor.
//! About two thirds of a second; the result is a [`Throughput`] the pure estimate takes.
//!
//! Why not time a real training step: the recommender ranks dozens of configurations, some
//! too large to run; GEMM and memory speed scale to any of them, and the step's work is
//! counted exactly (`plan::time`). This module is the only part of `plan` that measures
//! anything.

use super::request::Throughput;
use crate::error::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Measured constants. Every one was fitted to `peft bench plan` runs (see the CLI's
/// `bench_plan.rs`) on the reference machine; the doc of each says what it stands for. The
/// time constants come from a non-negative least-squares fit of relative step-time error
/// (`plan::fit`) over the 24 cells of `peft bench plan --methods lora,qlora,full`, each cell the
/// median of nine runs (three benchmarks of three rounds); `--fit` prints the refit for a run, and
/// `PEFT_BENCH_PLAN_RAW=1` each run's measured step, probes and `StepWork` as JSON on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Resident bytes of the process before any model: binary, libc/rayon threads, allocator
    /// arenas, the dataset. Measured as the peak RSS of a checkpointed 128-token run of the
    /// 260K-parameter demo model minus its model terms (6.5 MiB since the CPU's fused loss and
    /// QLoRA op keep less): 20.1–20.4 MiB in two runs of `peft bench plan --model demo`
    /// (2026-12-01, the second session; the same binary as the session before, which measured
    /// 24.4 MiB on a VM of the same type, measures 20.4 now). 16 MiB since the next session:
    /// that cell measured 22.1–22.5 MiB (the previous binary 21.0–21.1 on the same VM; the
    /// extra MiB is the GEMM crate's per-thread packing slab, now touched by every pool thread
    /// as each packs its own part of the weight, `ops::gemm::split`).
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
    /// Extra resident bytes per byte of block activations: candle's backward allocates each
    /// op's input gradients before freeing the output gradient, and freed blocks under glibc's
    /// (dynamic, up to 32 MiB) mmap threshold stay resident. Fitted: 0.30 while RMSNorm's
    /// weight and SwiGLU ran as composite candle ops, 0.10 after the fused LoRA and loss ops,
    /// 0 since RMSNorm·weight and SwiGLU are fused too (their composite backward was most of
    /// those temporaries).
    pub activation_slack: f64,
    /// Share of the GEMM probe's speed the matmuls of a training step sustain (thinner
    /// shapes, transposed operands in backward). Set from `peft bench train --configs lora
    /// --profile` (2026-12-01: the linears at 212.8 GFLOP/s against the engine's own GEMM at
    /// 274.8 on the probe's shape; 0.69 while the probe ran candle's matmul) rather than
    /// fitted: with two model shapes every per-token term is collinear with the FLOPs.
    pub gemm_efficiency: f64,
    /// Bytes moved per byte of block activation the forward computes (the forward, and
    /// candle's backward with its zero-filled and accumulated gradients), at the elementwise
    /// probe's speed (cache-resident, so a "pass" here is ≈ 1/3 of a DRAM pass). Fitted: 22.5.
    pub memory_passes: f64,
    /// The same per byte of attention scores (causal softmax and its backward, the thin
    /// `[s, s]·[s, head_dim]` matmuls). Fitted: 128.
    pub attention_passes: f64,
    /// The same per byte of logits the fused loss computes (exp, max, sum; in backward the
    /// softmax minus the one-hot). Set to 24, not fitted (see `gemm_efficiency`).
    pub logit_passes: f64,
    /// The same per byte of weights NF4 dequantization writes. Fitted: 12.
    pub dequant_passes: f64,
    /// The same per byte of activations and scores recomputed by checkpointing (the forward
    /// once more, and the per-block graph and gradient hand-off around it). Fitted: 25.
    pub recompute_passes: f64,
    /// The same per byte of matmul weight per pass (the GEMM packs its weight operand into
    /// panels on every call; the backward reads it transposed). Fitted: 21.4, what makes a
    /// 128-token step of SmolLM2 slower per token than a 384-token one, while each of the
    /// two threads packed the whole weight; halved since each packs its own half
    /// (`ops::gemm::split`).
    pub weight_passes: f64,
    /// Passes over 4 B per trainable parameter in each optimizer step (AdamW reads the
    /// weight, gradient and two moments and writes three; the gradient norm reads once more),
    /// at the elementwise probe's speed. Set from `peft bench train --configs full --profile`
    /// (SmolLM2-135M, 2026-12-01): "optimizer (clip + AdamW)" 0.236 s a step over 538 MB of
    /// parameters at 81 GB/s: 35.5. Not fitted: a free fit drives it to 0 (full fine-tuning's
    /// extra work scales with the parameters in every term, and two model shapes cannot
    /// separate them), which would price AdamW on a 7B model at nothing.
    pub optimizer_passes: f64,
    /// The same per micro-step (the gradients handed from the graph to the optimizer: the
    /// embedding's scatter, the tied head's sum, the buffers). Set from the same profile: the
    /// step's "rest" is 0.13 s longer than LoRA's: 19. (Both were fitted together, to 121,
    /// while candle still zero-filled and accumulated every weight gradient.)
    pub gradient_passes: f64,
    /// CUDA/Metal context and allocator reserve on a GPU.
    pub gpu_context_bytes: u64,
    /// Seconds per pass through one adapted projection beyond its FLOPs and bytes: the fused
    /// LoRA linear runs half a dozen rank-sized matmuls, each a hand-off to the thread pool.
    /// Fitted: 94 µs while the loop woke the pool from outside for each; 52 µs refitted on the
    /// demo model's 12 cells (where it is most of the step) once the loop runs on the pool
    /// (`peft bench plan --model demo --methods lora,qlora,full --rounds 1 --fit`, 2026-12-01;
    /// the same fit's other terms, several at 0, were not adopted).
    pub adapter_pass_s: f64,
    /// Fixed seconds per optimizer step (batch assembly, progress, the loss read-back).
    /// Fitted: 7 ms.
    pub step_overhead_s: f64,
}

impl Default for Calibration {
    fn default() -> Self {
        Self {
            runtime_bytes: 16 << 20,
            tokenizer_bytes_per_token: 400,
            logits_grad_copies: 6.5,
            activation_slack: 0.0,
            gemm_efficiency: 0.77,
            memory_passes: 22.5,
            attention_passes: 128.1,
            logit_passes: 24.0,
            dequant_passes: 12.1,
            weight_passes: 10.7,
            recompute_passes: 24.8,
            optimizer_passes: 35.5,
            gradient_passes: 19.0,
            gpu_context_bytes: 400 << 20,
            step_overhead_s: 0.0070,
            adapter_pass_s: 52e-6,
        }
    }
}

/// Median seconds of one call of `f`, repeated for about `budget` (at least 3 times). The
/// median, not the mean: a neighbour's burst on a shared machine inflates a few repetitions,
/// not the machine's sustained speed.
fn median_secs(budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up: thread-pool start and first-touch page faults are not throughput
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 3 || start.elapsed() < budget {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2].max(1e-9))
}

/// Runs the three probes (f32 GEMM, elementwise, bf16 GEMM) for about `budget` each, on a
/// thread pool of their own as a training run's steps are (`runtime::on_own_pool`), so each
/// probe's products start on the calling thread as a step's do.
///
/// # Errors
/// [`crate::Error::Candle`] if candle cannot allocate the probe tensors.
pub fn measure_throughput(budget: Duration) -> Result<Throughput> {
    crate::runtime::on_own_pool(|| probes(budget))
}

fn probes(budget: Duration) -> Result<Throughput> {
    let (m, k, n) = (256usize, 576usize, 1536usize);
    // Through the engine's own GEMM call (`ops::gemm`, how the linears share a product between
    // threads), not candle's matmul: the probe measures the kernel the step runs.
    let (xs, ws) = (vec![1f32; m * k], vec![1f32; n * k]);
    let gemm_s = median_secs(budget, || {
        use crate::ops::gemm::{matmul, MatRef};
        let y = matmul(
            MatRef::row_major(&xs, m, k),
            MatRef::row_major(&ws, n, k).t(),
        )?;
        std::hint::black_box(&y);
        Ok(())
    })?;
    // Elementwise work runs through candle's thread pool on tensors the size of a block's
    // activations (here 1.5 MiB), mostly in cache: a plain DRAM copy read both slower and far
    // noisier on a shared machine than the training step's elementwise ops turned out to be.
    let a = Tensor::ones((m, n), candle_core::DType::F32, &Device::Cpu)?;
    let b = Tensor::ones((m, n), candle_core::DType::F32, &Device::Cpu)?;
    let elementwise_s = median_secs(budget, || {
        std::hint::black_box((&a * &b)?);
        Ok(())
    })?;
    // The bf16 kernel on the same shape (a frozen projection's forward: the weight's own rows,
    // activations rounded on the way in), whichever backend this CPU runs.
    let ws = vec![half::bf16::ONE; n * k];
    let mut ys = vec![0f32; m * n];
    let bf16_s = median_secs(budget, || {
        let w = crate::ops::bf16_gemm::BfRhs::Transposed(&ws);
        crate::ops::bf16_gemm::gemm_bf16(&mut ys, n, &xs, m, k, w, n, false)?;
        std::hint::black_box(&ys);
        Ok(())
    })?;
    let flops = 2.0 * (m * k * n) as f64;
    Ok(Throughput {
        gemm_gflops: flops / gemm_s / 1e9,
        // Two operands read, one result written.
        mem_gbps: 3.0 * 4.0 * (m * n) as f64 / elementwise_s / 1e9,
        bf16_gemm_gflops: Some(flops / bf16_s / 1e9),
    })
}
