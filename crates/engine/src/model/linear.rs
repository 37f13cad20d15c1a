//! A linear layer of the decoder: a base weight (frozen or trainable, dense, NF4, or a GGUF
//! block type kept for inference), an optional bias, and an optional LoRA adapter on top.
//!
//! Which kernel runs is decided by structure, not flags: a base weight that is a candle `Var`
//! (full or selective fine-tuning) goes through the ordinary matmul so it receives a gradient;
//! a plain tensor goes through [`crate::ops::frozen_linear`], whose backward returns only the
//! input gradient; an NF4 weight goes through the NF4 op; a GGUF-typed weight through the
//! quantized kernels when generating and through the tiled op of `quant::ggml_op` (input
//! gradient, like NF4's) when training. The LoRA delta is added by
//! [`crate::model::lora::Lora::forward`], or, over a frozen base on the CPU, computed together
//! with the base product by [`crate::model::lora::Lora::forward_with_base`] (dense) or
//! [`crate::model::lora::Lora::forward_with_rows`] (NF4, and GGUF types while training; each
//! tile widened inside the op): one op instead of two plus an add, so fewer full-size buffers
//! and gradient accumulations.

use crate::model::ctx::ForwardCtx;
use crate::model::lora::Lora;
use crate::ops::{frozen_linear_with, trained_linear, OpPath};
use crate::quant::ggml::GgmlWeight;
use crate::quant::nf4::Nf4Tensor;
use crate::quant::nf4_op::Nf4Linear;
use candle_core::{DType, Result, Tensor};
use std::sync::Arc;

/// The weight a linear layer multiplies by, `[out, in]`.
#[derive(Clone)]
pub enum Base {
    /// f32 or bf16; a `Var`-backed tensor when trainable.
    Dense(Tensor),
    /// Frozen 4-bit NormalFloat with double-quantized constants (QLoRA); dequantized tile by
    /// tile inside the matmul, forward and backward.
    Nf4(Arc<Nf4Tensor>),
    /// Frozen, in the GGUF file's own block type (`Q4_1`, `Q4_K`, …): generation, with the
    /// LoRA delta added unmerged on top of the quantized product, and QLoRA over the file's
    /// own quantization.
    Ggml(Arc<GgmlWeight>),
}

#[derive(Clone)]
pub struct Linear {
    pub base: Base,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
    /// True while the adapter's delta is folded into `base` (then `forward` skips the adapter).
    pub merged: bool,
}

/// `x · Wᵀ`, picking the kernel by whether `w` is trainable (see the module docs).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    matmul_t_with(OpPath::Auto, x, w)
}

/// [`matmul_t`] with the frozen case through the kernel `path` picks for `x`'s device.
pub fn matmul_t_with(path: OpPath, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.is_variable() {
        // Trained weights compute in the activations' dtype; a 2-D product keeps CUDA's
        // matmul on its supported (row-major / transposed) layouts.
        let w = w.to_dtype(x.dtype())?;
        let k = x.dim(candle_core::D::Minus1)?;
        let mut dims = x.dims().to_vec();
        if let Some(d) = dims.last_mut() {
            *d = w.dim(0)?;
        }
        let x2 = x.contiguous()?.reshape((x.elem_count() / k.max(1), k))?;
        x2.matmul(&w.t()?)?.reshape(dims)
    } else {
        frozen_linear_with(path, x, w)
    }
}

/// Whether the base product and the adapter can run as one op: the base must be frozen (the op
/// returns no gradient for it). The op picks its fused or generic kernel itself.
fn fusable(w: &Tensor) -> bool {
    !w.track_op() && matches!(w.dtype(), DType::F32 | DType::BF16 | DType::F16)
}

/// Whether an adapter over a quantized base runs in the fused LoRA linear: the fused CPU
/// path with f32 activations (elsewhere the format's own generic op plus the delta).
fn rows_fusable(ctx: &ForwardCtx, x: &Tensor) -> bool {
    ctx.ops.fused_on(x.device()) && x.dtype() == DType::F32
}

/// Whether a trained dense weight's product runs in [`trained_linear`] (its gradient written
/// straight into the trainer's buffer): the fused CPU path, everything f32.
fn trained_fusable(ctx: &ForwardCtx, x: &Tensor, w: &Tensor) -> bool {
    rows_fusable(ctx, x) && w.dtype() == DType::F32 && w.rank() == 2
}

impl Linear {
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            base: Base::Dense(weight),
            bias,
            lora: None,
            merged: false,
        }
    }

    /// `(out_features, in_features)`.
    pub fn dims(&self) -> (usize, usize) {
        match &self.base {
            Base::Dense(w) => (w.dims()[0], w.dims()[1]),
            Base::Nf4(q) => q.shape(),
            Base::Ggml(q) => q.shape(),
        }
    }

    /// `y = x·Wᵀ + b + scale·B·A·dropout(x)`.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let lora = self.lora.as_ref().filter(|_| !self.merged);
        let (mut y, lora_done) = match (&self.base, lora) {
            (Base::Dense(w), Some(lora)) if fusable(w) => {
                (lora.forward_with_base(x, w, ctx)?, true)
            }
            (Base::Dense(w), _) => match &ctx.weight_grads {
                Some(grads) if w.is_variable() && trained_fusable(ctx, x, w) => {
                    (trained_linear(x, w, grads)?, false)
                }
                _ => (matmul_t_with(ctx.ops, x, w)?, false),
            },
            (Base::Nf4(q), Some(lora)) if rows_fusable(ctx, x) && q.device_codes().is_none() => {
                (lora.forward_with_rows(x, q.clone(), ctx)?, true)
            }
            (Base::Ggml(q), Some(lora)) if ctx.train && rows_fusable(ctx, x) => {
                (lora.forward_with_rows(x, q.clone(), ctx)?, true)
            }
            (Base::Nf4(q), _) => (Nf4Linear::new(q.clone()).forward_with(ctx.ops, x)?, false),
            // Training needs the input gradient: the tiled op with a backward.
            (Base::Ggml(q), _) if ctx.train => (q.forward_train(x)?, false),
            (Base::Ggml(q), _) => (q.forward(&x.to_dtype(DType::F32)?)?, false),
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.to_dtype(y.dtype())?)?;
        }
        if let (Some(lora), false) = (lora, lora_done) {
            y = (y + lora.forward(x, ctx)?)?;
        }
        Ok(y)
    }

    /// Folds `scale·B·A` into the base weight (f32). Refuses to merge twice or without an
    /// adapter, so a delta is never added twice.
    pub fn merge(&mut self) -> crate::error::Result<()> {
        let lora = self
            .lora
            .as_ref()
            .ok_or_else(|| crate::error::Error::invalid("merge", "layer has no adapter"))?;
        if self.merged {
            return Err(crate::error::Error::invalid(
                "merge",
                "adapter is already merged",
            ));
        }
        let w = (self.dense_weight()?.detach() + lora.delta_weight()?)?;
        self.base = Base::Dense(w);
        self.merged = true;
        Ok(())
    }

    /// Subtracts the adapter's delta again (exact up to f32 rounding).
    pub fn unmerge(&mut self) -> crate::error::Result<()> {
        let lora = self
            .lora
            .as_ref()
            .ok_or_else(|| crate::error::Error::invalid("unmerge", "layer has no adapter"))?;
        if !self.merged {
            return Err(crate::error::Error::invalid(
                "unmerge",
                "adapter is not merged",
            ));
        }
        let w = (self.dense_weight()?.detach() - lora.delta_weight()?)?;
        self.base = Base::Dense(w);
        self.merged = false;
        Ok(())
    }

    /// The base weight as f32 (dequantized if NF4 or GGUF-typed).
    pub fn dense_weight(&self) -> Result<Tensor> {
        match &self.base {
            Base::Dense(w) => w.to_dtype(DType::F32),
            Base::Nf4(q) => q
                .dequantize()
                .map_err(|e| candle_core::Error::Msg(e.to_string())),
            Base::Ggml(q) => q.dequantize(),
        }
    }
}
