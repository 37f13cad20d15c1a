//! Where a training step's time goes, by kind of op (`peft bench train --profile`).
//!
//! The fused ops time their CPU forward and backward into a few global counters while
//! profiling is on; the trainer times its optimizer. Off (the default) a span costs one relaxed
//! atomic load. Spans are leaves: an op's span never encloses another op's, so the kinds add
//! up. What is not covered — candle's own ops (residual adds, copies, the embedding) and
//! their backward, the autograd walk and gradient accumulation — is the step time minus the
//! kinds: "framework and candle ops". (Off the fused CPU path the attention's two matmuls are
//! candle's too, and only its softmax counts as attention.)
//!
//! This module only counts; the bench reads and prints.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The kinds of op a step is broken into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Frozen-weight and LoRA linears (forward and backward GEMMs).
    Gemm,
    /// Widening a quantized base (NF4, GGUF block types) to f32 tiles for those GEMMs.
    Dequant,
    /// RMSNorm, RoPE, SwiGLU/GeGLU, dropout.
    Elementwise,
    /// The attention: scores, causal softmax and the mix of values, forward and backward
    /// (`ops::causal_attention_with`).
    Attention,
    /// The output projection fused with cross-entropy.
    Loss,
    /// Gradient clipping and AdamW.
    Optimizer,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Gemm,
        Kind::Dequant,
        Kind::Elementwise,
        Kind::Attention,
        Kind::Loss,
        Kind::Optimizer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Gemm => "GEMM (linears)",
            Kind::Dequant => "widening quantized weights",
            Kind::Elementwise => "elementwise (norm, rope, act)",
            Kind::Attention => "attention (scores, softmax, values)",
            Kind::Loss => "loss (head + cross-entropy)",
            Kind::Optimizer => "optimizer (clip + AdamW)",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
/// FLOPs of the GEMM kind's matmuls.
static GEMM_FLOPS: AtomicU64 = AtomicU64::new(0);

/// Turns counting on or off (and clears the counters).
pub fn set_enabled(on: bool) {
    reset();
    ON.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

pub fn reset() {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
    GEMM_FLOPS.store(0, Ordering::Relaxed);
}

/// Seconds per kind since the last reset, in [`Kind::ALL`]'s order, and the GEMM kind's FLOPs.
pub fn totals() -> ([f64; 6], f64) {
    let mut out = [0.0; 6];
    for (o, n) in out.iter_mut().zip(&NANOS) {
        *o = n.load(Ordering::Relaxed) as f64 * 1e-9;
    }
    (out, GEMM_FLOPS.load(Ordering::Relaxed) as f64)
}

/// Adds `flops` to the GEMM kind's count (when profiling).
pub fn add_gemm_flops(flops: f64) {
    if enabled() {
        GEMM_FLOPS.fetch_add(flops as u64, Ordering::Relaxed);
    }
}

/// Times its scope into `kind` when profiling is on.
pub struct Span(Option<(Kind, Instant)>);

pub fn span(kind: Kind) -> Span {
    Span(enabled().then(|| (kind, Instant::now())))
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((kind, t)) = self.0 {
            let i = Kind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
            NANOS[i].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// GFLOP/s of the machine's GEMM on a `[m, k] · [k, n]` f32 product through the same kernel
/// the linears call (`x · Wᵀ`, best of a few runs): the rate a step's linears could reach.
///
/// # Errors
/// A GEMM error (none for consistent sizes).
pub fn machine_gemm_gflops(m: usize, k: usize, n: usize) -> candle_core::Result<f64> {
    use super::gemm::{matmul, MatRef};
    let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
    let mut best = f64::MAX;
    for _ in 0..8 {
        let t = Instant::now();
        let y = matmul(MatRef::row_major(&x, m, k), MatRef::row_major(&w, n, k).t())?;
        std::hint::black_box(&y);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best.max(1e-12) / 1e9)
}
