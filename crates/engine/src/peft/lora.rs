//! LoRA (Hu et al. 2021): a frozen `W` plus a trainable low-rank update,
//! `y = W·x + scale · B·(A·dropout(x))`, `A: [r, in]`, `B: [out, r]`,
//! `scale = alpha / r` (or `alpha / √r` with rsLoRA).
//!
//! `A` starts Kaiming-uniform (bound `1/√in`, PEFT's `a = √5`) and `B` at zero, so a fresh
//! adapter leaves the model's output unchanged. This module is the one place the delta is
//! computed ([`Lora::forward`], [`Lora::forward_with_base`], [`Lora::delta_weight`]); merging adds
//! `delta_weight` to `W`.

use super::lora_linear_op::lora_linear;
use super::lora_op::{lora_delta, DropoutMask};
use crate::model::linear::ForwardCtx;
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

/// A LoRA adapter on one linear layer.
#[derive(Clone)]
pub struct Lora {
    /// `[r, in]`; a `Var`-backed tensor while training.
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f32,
    /// Distinguishes this adapter's dropout stream from its neighbours'.
    pub stream: u64,
}

/// `alpha / r`, or `alpha / √r` for rsLoRA (Kalajdzievski 2023: keeps the update's scale
/// stable as the rank grows).
pub fn lora_scale(alpha: f64, rank: usize, rslora: bool) -> f64 {
    if rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    }
}

impl Lora {
    /// A fresh trainable adapter: `A ~ U(−1/√in, 1/√in)` from `seed`, `B = 0`.
    pub fn init(
        in_features: usize,
        out_features: usize,
        rank: usize,
        scale: f64,
        dropout: f32,
        seed: u64,
        stream: u64,
    ) -> Result<(Self, Var, Var)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(seed, stream));
        let bound = 1.0 / (in_features as f32).sqrt();
        let a: Vec<f32> = (0..rank * in_features)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (rank, in_features), &Device::Cpu)?)?;
        let b = Var::zeros((out_features, rank), DType::F32, &Device::Cpu)?;
        Ok((
            Self {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale,
                dropout,
                stream,
            },
            a,
            b,
        ))
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// `scale · B·(A·dropout(x))` for `x: [..., in]` (one fused op, see [`super::lora_op`]).
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let a = self.a.to_dtype(DType::F32)?;
        let b = self.b.to_dtype(DType::F32)?;
        lora_delta(x, &a, &b, self.scale, self.dropout_mask(ctx))
    }

    /// `x·Wᵀ + scale · B·(A·dropout(x))` for a frozen dense `w: [out, in]`, as one op (see
    /// [`super::lora_linear_op`]): the same value and dropout mask as `frozen_linear(x, w) +
    /// self.forward(x, ctx)`, without the second output buffer and the add.
    pub fn forward_with_base(&self, x: &Tensor, w: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let a = self.a.to_dtype(DType::F32)?;
        let b = self.b.to_dtype(DType::F32)?;
        lora_linear(x, w, &a, &b, self.scale, self.dropout_mask(ctx))
    }

    /// Seeded by (step, adapter) so a resumed run and a checkpointed recomputation draw the
    /// same mask.
    fn dropout_mask(&self, ctx: &ForwardCtx) -> Option<DropoutMask> {
        (ctx.train && self.dropout > 0.0).then(|| DropoutMask {
            p: self.dropout,
            seed: mix(ctx.step_seed, self.stream),
        })
    }

    /// `scale · B·A`, `[out, in]`: what merging adds to `W`.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let a = self.a.to_dtype(DType::F32)?.detach();
        let b = self.b.to_dtype(DType::F32)?.detach();
        b.matmul(&a)? * self.scale
    }
}

/// SplitMix64-style mixing of two seeds into one.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
