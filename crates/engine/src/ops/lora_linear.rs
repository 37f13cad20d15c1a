//! A LoRA-adapted linear layer over a frozen dense base, `y = x·Wᵀ + scale·B·(A·dropout(x))`,
//! as one autograd op over `(x, A, B)` that holds `W` itself.
//!
//! Written as [`crate::ops::frozen_linear`] + [`super::lora_delta::lora_delta`] + an add, every
//! adapted projection (210 per SmolLM2 step) costs a second `[n, out]` buffer and an add pass in
//! forward, three graph nodes, and in backward two separately zero-filled and accumulated
//! gradients for `x` plus one for the sum. Here the low-rank product is accumulated straight into
//! the base GEMM's output (the `gemm` crate computes `dst = α·dst + β·lhs·rhs`), and backward
//! writes the LoRA part of `dx` first and accumulates `g·W` onto it, so each direction allocates
//! one full-size buffer. The `[n, r]` intermediates are recomputed, never kept.
//!
//! Dropout is [`DropoutMask`] over `x` in logical element order, exactly as in `lora_delta`, so
//! masks are identical and results match the composite path up to float summation order.

use super::dropout::DropoutMask;
use super::gemm::{gemm_into, MatRef};
use super::generic::OpPath;
use super::logical_f32;
use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
};
use std::borrow::Cow;

struct LoraLinear {
    /// Frozen `[out, in]`, f32 or bf16 (widened per call, like `frozen_linear`).
    w: Tensor,
    scale: f64,
    dropout: Option<DropoutMask>,
}

/// Runs `f` on `W` as a row-major f32 slice (borrowed from its storage when it is f32).
fn with_weight<R>(w: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let w = if w.dtype() == DType::F32 {
        w.clone()
    } else {
        w.to_dtype(DType::F32)?
    };
    let (storage, layout) = w.storage_and_layout();
    f(&cpu_f32(&storage, layout)?)
}

fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Result<Cow<'a, [f32]>> {
    match storage {
        Storage::Cpu(cpu) => logical_f32(cpu, layout),
        _ => bail!("lora linear: expected a CPU tensor"),
    }
}

impl LoraLinear {
    /// `(out, in, r)`, checking that A `[r, in]`, B `[out, r]` and x `[..., in]` agree with W.
    fn dims(&self, x: &[usize], a: &[usize], b: &[usize]) -> Result<(usize, usize, usize)> {
        let (out, k) = self.w.dims2()?;
        let ok = matches!((a, b), ([r, ka], [ob, rb]) if *ka == k && *ob == out && rb == r)
            && x.last() == Some(&k);
        if !ok {
            bail!("lora linear: x {x:?}, A {a:?}, B {b:?} do not fit W [{out}, {k}]");
        }
        Ok((out, k, a[0]))
    }

    fn dropped<'a>(&self, x: Cow<'a, [f32]>) -> Cow<'a, [f32]> {
        match &self.dropout {
            Some(mask) => {
                let mut v = x.into_owned();
                mask.apply(&mut v);
                Cow::Owned(v)
            }
            None => x,
        }
    }

    /// `beta · dropout(x)·Aᵀ`, `[m, r]`.
    fn h(
        &self,
        xd: &[f32],
        a: &[f32],
        m: usize,
        k: usize,
        r: usize,
        beta: f32,
    ) -> Result<Vec<f32>> {
        let mut h = vec![0f32; m * r];
        gemm_into(
            &mut h,
            MatRef::row_major(xd, m, k),
            MatRef::row_major(a, r, k).t(),
            beta,
            false,
        )?;
        Ok(h)
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _profile = super::profile::span(super::profile::Kind::Gemm);
        let (out, k, r) = self.dims(xl.dims(), al.dims(), bl.dims())?;
        let x = logical_f32(xs, xl)?;
        let (a, b) = (logical_f32(as_, al)?, logical_f32(bs, bl)?);
        let m = x.len() / k.max(1);
        super::profile::add_gemm_flops(2.0 * (m * (k * out + r * (k + out))) as f64);
        let mut y = vec![0f32; m * out];
        with_weight(&self.w, |w| {
            gemm_into(
                &mut y,
                MatRef::row_major(&x, m, k),
                MatRef::row_major(w, out, k).t(),
                1.0,
                false,
            )
        })?;
        let h = self.h(&self.dropped(x), &a, m, k, r, 1.0)?;
        gemm_into(
            &mut y,
            MatRef::row_major(&h, m, r),
            MatRef::row_major(&b, out, r).t(),
            self.scale as f32,
            true,
        )?;
        let mut dims = xl.dims().to_vec();
        if let Some(d) = dims.last_mut() {
            *d = out;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _profile = super::profile::span(super::profile::Kind::Gemm);
        let (want_x, want_a, want_b) = (x.track_op(), a.track_op(), b.track_op());
        let (out, k, r) = self.dims(x.dims(), a.dims(), b.dims())?;
        let scale = self.scale as f32;
        // The gradient itself is tracked only under double backward, which we never do.
        let grad = grad.detach();
        let (gs, gl) = grad.storage_and_layout();
        let g = cpu_f32(&gs, gl)?;
        let m = g.len() / out.max(1);
        // dx through the base, and dh, dA, dB, dx through the adapter.
        super::profile::add_gemm_flops(2.0 * (m * (k * out + 2 * r * (k + out))) as f64);
        let (ast, al) = a.storage_and_layout();
        let av = cpu_f32(&ast, al)?;

        // dh = scale · g·B, [m, r]: feeds both dA and the LoRA part of dx.
        let dh = if want_x || want_a {
            let (bst, bl) = b.storage_and_layout();
            let bv = cpu_f32(&bst, bl)?;
            let mut dh = vec![0f32; m * r];
            gemm_into(
                &mut dh,
                MatRef::row_major(&g, m, out),
                MatRef::row_major(&bv, out, r),
                scale,
                false,
            )?;
            dh
        } else {
            Vec::new()
        };

        let (mut da, mut db) = (None, None);
        if want_a || want_b {
            let (xst, xl) = x.storage_and_layout();
            let xd = self.dropped(cpu_f32(&xst, xl)?);
            if want_a {
                let mut v = vec![0f32; r * k];
                gemm_into(
                    &mut v,
                    MatRef::row_major(&dh, m, r).t(),
                    MatRef::row_major(&xd, m, k),
                    1.0,
                    false,
                )?;
                da = Some(Tensor::from_vec(v, (r, k), &Device::Cpu)?);
            }
            if want_b {
                let h = self.h(&xd, &av, m, k, r, scale)?;
                let mut v = vec![0f32; out * r];
                gemm_into(
                    &mut v,
                    MatRef::row_major(&g, m, out).t(),
                    MatRef::row_major(&h, m, r),
                    1.0,
                    false,
                )?;
                db = Some(Tensor::from_vec(v, (out, r), &Device::Cpu)?);
            }
        }

        let dx = if want_x {
            // The masked LoRA part first, so the mask touches only it; then g·W on top.
            let mut v = vec![0f32; m * k];
            gemm_into(
                &mut v,
                MatRef::row_major(&dh, m, r),
                MatRef::row_major(&av, r, k),
                1.0,
                false,
            )?;
            if let Some(mask) = &self.dropout {
                mask.apply(&mut v);
            }
            with_weight(&self.w, |w| {
                gemm_into(
                    &mut v,
                    MatRef::row_major(&g, m, out),
                    MatRef::row_major(w, out, k),
                    1.0,
                    true,
                )
            })?;
            Some(Tensor::from_vec(v, x.shape(), &Device::Cpu)?)
        } else {
            None
        };
        Ok((dx, da, db))
    }
}

/// `x·Wᵀ + scale·B·(A·dropout(x))` for `x: [..., in]` f32, a frozen (untracked) `w: [out, in]`
/// (f32 or bf16), `a: [r, in]`, `b: [out, r]` f32. `dropout` is `None` outside training.
///
/// Off the CPU, or for a non-f32 `x`, this is the generic op (`super::generic_linear`).
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    lora_linear_with(OpPath::Auto, x, w, a, b, scale, dropout)
}

/// [`lora_linear`] through the kernel `path` picks for `x`'s device (the generic op off the
/// CPU or for non-f32 activations).
pub fn lora_linear_with(
    path: OpPath,
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    if w.track_op() {
        bail!("lora linear: the base weight must be frozen (it would get no gradient)");
    }
    if !path.fused_on(x.device()) || x.dtype() != DType::F32 {
        return super::generic_linear::lora_linear(x, w, a, b, scale, dropout);
    }
    let op = LoraLinear {
        w: w.clone(),
        scale,
        dropout,
    };
    if x.track_op() || a.track_op() || b.track_op() {
        x.apply_op3(a, b, op)
    } else {
        x.apply_op3_no_bwd(a, b, &op)
    }
}
