//! Generic (any-device) versions of the linear ops: the frozen linear `x·Wᵀ`, the LoRA delta
//! `scale·B·(A·dropout(x))` and the two together. Same maths and gradients as
//! `frozen_linear.rs`, `lora_delta.rs` and `lora_linear.rs`; written with candle matmuls
//! through [`super::generic`], so the frozen `W` is held by the op and never gets a gradient.
//!
//! Precision: the base product runs in the activations' dtype (bf16 on a GPU; the frozen weight
//! is cast to it per call when stored otherwise); the adapter's part runs in f32 — `A`, `B`
//! and their gradients stay f32, as in mixed-precision LoRA — and is cast back.
//!
//! Dropout: the mask is the fused op's exact mask ([`DropoutMask`], a hash of seed and element
//! index), built on the host and uploaded as one byte per element; candle has no integer bit
//! operations to compute that hash on a device.

use super::dropout::DropoutMask;
use super::generic::{apply, rows2, with_last, GenericOp};
use candle_core::{DType, Result, Tensor};

/// `x` (any shape) times the dropout mask, in f32.
fn dropped(x: &Tensor, mask: &Option<DropoutMask>) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    match mask {
        Some(m) => x.mul(&m.keep_tensor(x.shape(), x.device())?),
        None => Ok(x),
    }
}

/// `x·Wᵀ` for `x: [..., in]` in `x`'s dtype, `[m, out]`.
fn base_product(x2: &Tensor, w: &Tensor) -> Result<Tensor> {
    x2.matmul(&w.to_dtype(x2.dtype())?.t()?)
}

/// `dy·W`, `[m, in]`, in `dy`'s dtype.
fn base_input_grad(g2: &Tensor, w: &Tensor) -> Result<Tensor> {
    g2.matmul(&w.to_dtype(g2.dtype())?.contiguous()?)
}

struct FrozenLinear {
    /// `[out, in]`, frozen.
    w: Tensor,
}

impl GenericOp for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear-generic"
    }

    fn forward(&self, xs: &[Tensor]) -> Result<Tensor> {
        let x = &xs[0];
        base_product(&rows2(x)?, &self.w)?.reshape(with_last(x.dims(), self.w.dim(0)?))
    }

    fn backward(
        &self,
        xs: &[Tensor],
        _want: &[bool],
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let x = &xs[0];
        let dx = base_input_grad(&rows2(&dy.to_dtype(x.dtype())?)?, &self.w)?;
        Ok(vec![Some(dx.reshape(x.shape())?)])
    }
}

/// `x · Wᵀ` for a frozen `w: [out, in]`; any device, no gradient for `w`.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    apply(FrozenLinear { w: w.clone() }, &[x])
}

/// The adapter's half of both ops: inputs `x, A, B`.
struct Adapter {
    scale: f64,
    dropout: Option<DropoutMask>,
}

/// Gradients of the adapter part: `(dx_lora [m, in] f32, dA, dB)`.
type AdapterGrads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

impl Adapter {
    /// `(dropout(x) [m, in], h = dropout(x)·Aᵀ [m, r])`, f32.
    fn inner(&self, x: &Tensor, a: &Tensor) -> Result<(Tensor, Tensor)> {
        let xd = rows2(&dropped(x, &self.dropout)?)?;
        let h = xd.matmul(&a.t()?)?;
        Ok((xd, h))
    }

    /// `scale · h·Bᵀ`, `[m, out]` f32.
    fn forward(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (_, h) = self.inner(x, a)?;
        (h * self.scale)?.matmul(&b.t()?)
    }

    fn backward(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        g2: &Tensor,
        want: &[bool],
    ) -> Result<AdapterGrads> {
        let g2 = g2.to_dtype(DType::F32)?;
        let (xd, h) = self.inner(x, a)?;
        let db = match want[2] {
            true => Some((g2.t()?.matmul(&h)? * self.scale)?),
            false => None,
        };
        let dh = (g2.matmul(b)? * self.scale)?;
        let da = match want[1] {
            true => Some(dh.t()?.matmul(&xd)?),
            false => None,
        };
        let dx = match want[0] {
            true => Some(dropped(&dh.matmul(a)?, &self.dropout)?),
            false => None,
        };
        Ok((dx, da, db))
    }
}

struct LoraDelta(Adapter);

impl GenericOp for LoraDelta {
    fn name(&self) -> &'static str {
        "lora-delta-generic"
    }

    fn forward(&self, xs: &[Tensor]) -> Result<Tensor> {
        let (x, a, b) = (&xs[0], &xs[1], &xs[2]);
        self.0
            .forward(x, a, b)?
            .to_dtype(x.dtype())?
            .reshape(with_last(x.dims(), b.dim(0)?))
    }

    fn backward(
        &self,
        xs: &[Tensor],
        want: &[bool],
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let (x, a, b) = (&xs[0], &xs[1], &xs[2]);
        let (dx, da, db) = self.0.backward(x, a, b, &rows2(dy)?, want)?;
        let dx = dx
            .map(|d| d.to_dtype(x.dtype())?.reshape(x.shape()))
            .transpose()?;
        Ok(vec![dx, da, db])
    }
}

/// `scale · B·(A·dropout(x))` for `x: [..., in]`, `a: [r, in]`, `b: [out, r]` (f32); any device.
pub fn lora_delta(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    apply(LoraDelta(Adapter { scale, dropout }), &[x, a, b])
}

struct LoraLinear {
    /// `[out, in]`, frozen.
    w: Tensor,
    adapter: Adapter,
}

impl GenericOp for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear-generic"
    }

    fn forward(&self, xs: &[Tensor]) -> Result<Tensor> {
        let (x, a, b) = (&xs[0], &xs[1], &xs[2]);
        let base = base_product(&rows2(x)?, &self.w)?;
        let delta = self.adapter.forward(x, a, b)?.to_dtype(base.dtype())?;
        (base + delta)?.reshape(with_last(x.dims(), self.w.dim(0)?))
    }

    fn backward(
        &self,
        xs: &[Tensor],
        want: &[bool],
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let (x, a, b) = (&xs[0], &xs[1], &xs[2]);
        let g2 = rows2(dy)?;
        let (dx, da, db) = self.adapter.backward(x, a, b, &g2, want)?;
        let dx = match dx {
            Some(lora) => {
                let base = base_input_grad(&g2.to_dtype(x.dtype())?, &self.w)?;
                let dx = (lora.to_dtype(base.dtype())? + base)?;
                Some(dx.reshape(x.shape())?)
            }
            None => None,
        };
        Ok(vec![dx, da, db])
    }
}

/// `x·Wᵀ + scale·B·(A·dropout(x))` with a frozen `w: [out, in]`, `a: [r, in]`, `b: [out, r]`;
/// any device, no gradient for `w`.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    let op = LoraLinear {
        w: w.clone(),
        adapter: Adapter { scale, dropout },
    };
    apply(op, &[x, a, b])
}
