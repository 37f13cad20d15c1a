//! A short measurement of this machine's speed for the time estimate: f32 GEMM GFLOP/s at a
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
use std::time::{Duration, Instant};

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
    })
}
