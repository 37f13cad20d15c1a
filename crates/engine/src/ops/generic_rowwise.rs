//! Generic (any-device) versions of the row-wise ops: RMS norm, SwiGLU, RoPE and the causal
//! softmax. Same maths and the same backward formulas as the fused CPU kernels in
//! `rms_norm.rs`, `swiglu.rs`, `rope.rs` and `causal_softmax.rs` (see those for the
//! derivations); written with candle primitives through [`super::generic`].
//!
//! Precision: whatever the activations' dtype (bf16 on a GPU), norms, softmaxes and gate
//! gradients are computed in f32 and the result is cast back, as mixed-precision trainers do.

use super::generic::{apply, GenericOp};
use candle_core::{DType, Result, Tensor, D};

fn f32(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)
}

struct RmsNorm {
    eps: f64,
}

impl RmsNorm {
    /// `(x̂ = x·r, r)` in f32, `r = 1/√(mean(x²) + ε)` per row.
    fn normalised(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = f32(x)?;
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        Ok((x.broadcast_mul(&r)?, r))
    }
}

impl GenericOp for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-generic"
    }

    fn forward(&self, xs: &[Tensor]) -> Result<Tensor> {
        let (x, w) = (&xs[0], &xs[1]);
        let (xhat, _) = self.normalised(x)?;
        xhat.broadcast_mul(&f32(w)?)?.to_dtype(x.dtype())
    }

    fn backward(
        &self,
        xs: &[Tensor],
        want: &[bool],
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let (x, w) = (&xs[0], &xs[1]);
        let (xhat, r) = self.normalised(x)?;
        let g = f32(dy)?;
        let dx = if want[0] {
            // dx = r · (g⊙w − x̂ · mean(g⊙w⊙x̂))
            let gw = g.broadcast_mul(&f32(w)?)?;
            let c = (&gw * &xhat)?.mean_keepdim(D::Minus1)?;
            let dx = (gw - xhat.broadcast_mul(&c)?)?.broadcast_mul(&r)?;
            Some(dx.to_dtype(x.dtype())?)
        } else {
            None
        };
        let dw = if want[1] {
            let d = w.elem_count();
            let dw = (g * &xhat)?.reshape(((), d))?.sum(0)?;
            Some(dw.reshape(w.shape())?.to_dtype(w.dtype())?)
        } else {
            None
        };
        Ok(vec![dx, dw])
    }
}

/// RMS-normalises `x` over its last dimension and scales by `weight` (`[d]`); any device.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    apply(RmsNorm { eps }, &[x, weight])
}

struct SwiGlu;

impl GenericOp for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu-generic"
    }

    fn forward(&self, xs: &[Tensor]) -> Result<Tensor> {
        let (g, u) = (f32(&xs[0])?, f32(&xs[1])?);
        (g.silu()? * u)?.to_dtype(xs[0].dtype())
    }

    fn backward(
        &self,
        xs: &[Tensor],
        want: &[bool],
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let (g, u, d) = (f32(&xs[0])?, f32(&xs[1])?, f32(dy)?);
        let s = candle_nn::ops::sigmoid(&g)?;
        let dg = if want[0] {
            // d · u · σ(g) · (1 + g·(1 − σ(g)))
            let one_minus = s.affine(-1.0, 1.0)?;
            let inner = ((&g * one_minus)? + 1.0)?;
            Some(((&d * &u)? * &s)?.mul(&inner)?.to_dtype(xs[0].dtype())?)
        } else {
            None
        };
        let du = if want[1] {
            Some(((d * g)? * s)?.to_dtype(xs[1].dtype())?)
        } else {
            None
        };
        Ok(vec![dg, du])
    }
}

/// `silu(gate) · up` for two tensors of the same shape; any device.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        candle_core::bail!(
            "swiglu: gate {:?} and up {:?} differ",
            gate.shape(),
            up.shape()
        );
    }
    apply(SwiGlu, &[gate, up])
}

struct GeGlu;

impl GeGlu {
    /// `tanh(c·(g + κ·g³))`, the inner term of `gelu_pytorch_tanh`.
    fn t(g: &Tensor) -> Result<Tensor> {
        const C: f64 = 0.797_884_560_802_865_4; // √(2/π)
        const K: f64 = 0.044_715;
        let g3 = g.sqr()?.mul(g)?;
        ((g + (g3 * K)?)? * C)?.tanh()
    }
}

impl GenericOp for GeGlu {
    fn name(&self) -> &'static str {
        "geglu-generic"
    }

    fn forward(&self, xs: &[Tensor]) -> Result<Tensor> {
        let (g, u) = (f32(&xs[0])?, f32(&xs[1])?);
        // gelu_tanh(g) = ½·g·(1 + t)
        let a = ((&g * 0.5)? * (Self::t(&g)? + 1.0)?)?;
        (a * u)?.to_dtype(xs[0].dtype())
    }

    fn backward(
        &self,
        xs: &[Tensor],
        want: &[bool],
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        const C: f64 = 0.797_884_560_802_865_4;
        const K: f64 = 0.044_715;
        let (g, u, d) = (f32(&xs[0])?, f32(&xs[1])?, f32(dy)?);
        let t = Self::t(&g)?;
        let dg = if want[0] {
            // gelu_tanh'(g) = ½(1 + t) + ½·g·(1 − t²)·c·(1 + 3κg²)
            let one_minus_t2 = t.sqr()?.affine(-1.0, 1.0)?;
            let inner = (g.sqr()?.affine(3.0 * K, 1.0)? * C)?;
            let slope =
                ((&t + 1.0)? * 0.5)?.add(&((&g * 0.5)?.mul(&one_minus_t2)?.mul(&inner)?))?;
            Some((&d * &u)?.mul(&slope)?.to_dtype(xs[0].dtype())?)
        } else {
            None
        };
        let du = if want[1] {
            let a = ((&g * 0.5)? * (&t + 1.0)?)?;
            Some((d * a)?.to_dtype(xs[1].dtype())?)
        } else {
            None
        };
        Ok(vec![dg, du])
    }
}

/// `gelu_tanh(gate) · up` (GeGLU) for two tensors of the same shape; any device.
pub fn geglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        candle_core::bail!(
            "geglu: gate {:?} and up {:?} differ",
            gate.shape(),
            up.shape()
        );
    }
    apply(GeGlu, &[gate, up])
}

struct Rope {
    /// `[seq, head_dim/2]`, f32.
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// candle's rope kernel (CPU, CUDA and Metal forwards) with tables in `x`'s dtype.
    fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let dt = x.dtype();
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos.to_dtype(dt)?, &sin.to_dtype(dt)?)
    }
}

impl GenericOp for Rope {
    fn name(&self) -> &'static str {
        "rope-generic"
    }

    fn forward(&self, xs: &[Tensor]) -> Result<Tensor> {
        Self::rotate(&xs[0], &self.cos, &self.sin)
    }

    fn backward(
        &self,
        _xs: &[Tensor],
        _want: &[bool],
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        // A rotation's transpose is the rotation by the opposite angle.
        Ok(vec![Some(Self::rotate(dy, &self.cos, &self.sin.neg()?)?)])
    }
}

/// RoPE on `x: [b, heads, seq, head_dim]` with the tables' rows for this call's positions
/// (`cos`, `sin`: `[seq, head_dim/2]`, contiguous); any device.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    apply(
        Rope {
            cos: cos.clone(),
            sin: sin.clone(),
        },
        &[x],
    )
}

struct CausalSoftmax {
    scale: f64,
    offset: usize,
    q: usize,
    /// Sliding window: a query sees at most this many keys, its own included.
    window: Option<usize>,
    /// Packed rows: `[batch, q, 1]` f32, where each query's example starts.
    starts: Option<Tensor>,
}

impl GenericOp for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax-generic"
    }

    fn forward(&self, xs: &[Tensor]) -> Result<Tensor> {
        let s = &xs[0];
        let dims = s.dims().to_vec();
        let (rows, k) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let lead: usize = dims[..dims.len() - 2].iter().product();
        let dev = s.device();
        // Row i of each group of q is the query at position offset + i; key j is visible when
        // j ≤ that position. The [q, k] mask broadcasts over everything else.
        let first = self.offset as f32;
        let pos = Tensor::arange(first, first + self.q as f32, dev)?.reshape((self.q, 1))?;
        let keys = Tensor::arange(0f32, k as f32, dev)?.reshape((1, k))?;
        let mut visible = keys.broadcast_le(&pos)?;
        if let Some(w) = self.window {
            // and j > position − w
            let first_seen = (&pos - (w as f64 - 1.0))?;
            visible = visible.mul(&keys.broadcast_ge(&first_seen)?)?;
        }
        let shape = (lead * rows / self.q, self.q, k);
        let visible = match &self.starts {
            // and j ≥ the start of the query's example: [b, 1, q, k] over [b, rest, q, k].
            Some(st) => {
                let b = st.dim(0)?;
                let own = keys.broadcast_ge(st)?.to_dtype(visible.dtype())?;
                let v = own.broadcast_mul(&visible.unsqueeze(0)?)?.unsqueeze(1)?;
                v.broadcast_as((b, shape.0 / b, self.q, k))?
                    .reshape(shape)?
            }
            None => visible.broadcast_as(shape)?,
        };
        let scaled = (f32(s)?.reshape(shape)? * self.scale)?;
        let hidden = Tensor::new(f32::NEG_INFINITY, dev)?.broadcast_as(shape)?;
        let masked = visible.where_cond(&scaled, &hidden)?;
        candle_nn::ops::softmax_last_dim(&masked)?
            .reshape(dims)?
            .to_dtype(s.dtype())
    }

    fn backward(
        &self,
        xs: &[Tensor],
        _want: &[bool],
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        // dx = scale · y ⊙ (g − Σ_j g ⊙ y)
        let (y, g) = (f32(y)?, f32(dy)?);
        let dot = (&g * &y)?.sum_keepdim(D::Minus1)?;
        let dx = ((y * g.broadcast_sub(&dot)?)? * self.scale)?;
        Ok(vec![Some(dx.to_dtype(xs[0].dtype())?)])
    }
}

/// The causal softmax of `causal_softmax_windowed` (scores `[.., groups·q, k]`, an optional
/// sliding window); any device.
pub fn causal_softmax_grouped(
    scores: &Tensor,
    scale: f64,
    offset: usize,
    q: usize,
    window: Option<usize>,
) -> Result<Tensor> {
    causal_softmax_packed(scores, scale, offset, q, window, None)
}

/// [`causal_softmax_grouped`] over packed rows (`segments`: the block-diagonal causal mask of
/// `ops::causal_softmax_packed_with`); any device.
pub fn causal_softmax_packed(
    scores: &Tensor,
    scale: f64,
    offset: usize,
    q: usize,
    window: Option<usize>,
    segments: Option<&super::segments::Segments>,
) -> Result<Tensor> {
    let starts = match segments {
        Some(seg) => {
            let st: Vec<f32> = seg.starts().iter().map(|&v| v as f32).collect();
            Some(Tensor::from_vec(st, (seg.batch(), q, 1), scores.device())?)
        }
        None => None,
    };
    apply(
        CausalSoftmax {
            scale,
            offset,
            q,
            window,
            starts,
        },
        &[scores],
    )
}
