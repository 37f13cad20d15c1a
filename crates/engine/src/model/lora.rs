//! The LoRA adapter of a linear layer (Hu et al. 2021): a frozen `W` plus a low-rank update,
//! `y = W·x + scale · B·(A·dropout(x))`, `A: [r, in]`, `B: [out, r]`.
//!
//! This is the one place the delta is computed ([`Lora::forward`], [`Lora::forward_with_base`],
//! [`Lora::delta_weight`]); merging adds `delta_weight` to `W` (`model::linear`). It lives with
//! the model because it is part of a layer's forward pass; making fresh adapters, choosing
//! targets and reading/writing adapter files is `crate::peft`.

use crate::model::ctx::ForwardCtx;
use crate::ops::{
    lora_delta_with, lora_linear_bf16, lora_linear_rows, lora_linear_rows_bf16, lora_linear_with,
    DropoutMask, FrozenRows,
};
use crate::seed::mix;
use candle_core::{DType, Result, Tensor};
use std::sync::Arc;

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

impl Lora {
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// `scale · B·(A·dropout(x))` for `x: [..., in]` (one fused op, see [`crate::ops::lora_delta`]).
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let a = self.a.to_dtype(DType::F32)?;
        let b = self.b.to_dtype(DType::F32)?;
        lora_delta_with(ctx.ops, x, &a, &b, self.scale, self.dropout_mask(ctx))
    }

    /// `x·Wᵀ + scale · B·(A·dropout(x))` for a frozen dense `w: [out, in]`, as one op (see
    /// [`crate::ops::lora_linear`]): the same value and dropout mask as `frozen_linear(x, w) +
    /// self.forward(x, ctx)`, without the second output buffer and the add.
    pub fn forward_with_base(&self, x: &Tensor, w: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let a = self.a.to_dtype(DType::F32)?;
        let b = self.b.to_dtype(DType::F32)?;
        let dropout = self.dropout_mask(ctx);
        if ctx.bf16_products
            && w.dtype() == DType::BF16
            && ctx.ops.fused_on(x.device())
            && x.dtype() == DType::F32
        {
            return lora_linear_bf16(x, w, &a, &b, self.scale, dropout);
        }
        lora_linear_with(ctx.ops, x, w, &a, &b, self.scale, dropout)
    }

    /// `x·Wᵀ + scale · B·(A·dropout(x))` over a quantized frozen base (NF4, a GGUF block type),
    /// widened tile by tile inside the same fused op as [`Lora::forward_with_base`] (QLoRA at
    /// LoRA's op count). The CPU with f32 `x` only; see [`crate::ops::lora_linear_rows`].
    pub fn forward_with_rows(
        &self,
        x: &Tensor,
        w: Arc<dyn FrozenRows>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let a = self.a.to_dtype(DType::F32)?;
        let b = self.b.to_dtype(DType::F32)?;
        if ctx.bf16_products {
            return lora_linear_rows_bf16(x, w, &a, &b, self.scale, self.dropout_mask(ctx));
        }
        lora_linear_rows(x, w, &a, &b, self.scale, self.dropout_mask(ctx))
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
