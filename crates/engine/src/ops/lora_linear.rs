//! A LoRA-adapted linear layer over a frozen base, `y = x·Wᵀ + scale·B·(A·dropout(x))`, as one
//! autograd op over `(x, A, B)` that holds `W` itself. The base is dense (f32/bf16) or a
//! quantized weight widened tile by tile ([`FrozenRows`]: NF4 for QLoRA, a GGUF block type):
//! forward writes each tile's product straight into its columns of `y`, backward accumulates
//! `g[:, tile]·W_tile` onto `dx`, so QLoRA runs the same op as LoRA with one transient tile.
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

use super::bf16_gemm::{gemm_bf16, BfRhs};
use super::dropout::DropoutMask;
use super::frozen_rows::{with_bf16_tile, with_f32_tile, FrozenRows};
use super::gemm::{gemm_into, gemm_raw, product, MatRef};
use super::generic::OpPath;
use super::logical_f32;
use super::narrow_gemm::x_at;
use super::profile::{span, Kind};
use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
};
use half::bf16;
use std::borrow::Cow;
use std::sync::Arc;

/// The frozen base of a LoRA linear, `[out, in]`.
#[derive(Clone)]
pub enum FrozenBase {
    /// f32 or bf16 (widened per call, like `frozen_linear`).
    Dense(Tensor),
    /// Widened to f32 tile by tile, never whole (NF4, GGUF block types).
    Rows(Arc<dyn FrozenRows>),
    /// bf16, multiplied in bf16 with f32 sums ([`super::bf16_gemm`]): the `--bf16-compute` products.
    Bf16(Tensor),
    /// Rounded to bf16 tile by tile and multiplied like [`FrozenBase::Bf16`] (QLoRA with a bf16
    /// compute dtype, as the paper trains).
    RowsBf16(Arc<dyn FrozenRows>),
}

impl FrozenBase {
    fn dims(&self) -> Result<(usize, usize)> {
        match self {
            FrozenBase::Dense(w) | FrozenBase::Bf16(w) => w.dims2(),
            FrozenBase::Rows(r) | FrozenBase::RowsBf16(r) => Ok(r.dims()),
        }
    }
}

struct LoraLinear {
    w: FrozenBase,
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

/// Runs `f` on a bf16 `W` as a row-major slice borrowed from its storage.
fn with_bf16<R>(w: &Tensor, f: impl FnOnce(&[bf16]) -> Result<R>) -> Result<R> {
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::BF16(v)), Some((a, b))) => f(&v[a..b]),
        _ => bail!("lora linear: the bf16 products need a bf16 weight on the CPU"),
    }
}

fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Result<Cow<'a, [f32]>> {
    match storage {
        Storage::Cpu(cpu) => logical_f32(cpu, layout),
        _ => bail!("lora linear: expected a CPU tensor"),
    }
}

/// `x·Wᵀ`, row-major `[m, out]`. The f32 products write every element of a buffer that is
/// never zero-filled; the bf16 ones fill it first (their kernels take slices).
fn base_forward(w: &FrozenBase, x: &[f32], m: usize) -> Result<Vec<f32>> {
    let (out, k) = w.dims()?;
    match w {
        FrozenBase::Dense(w) => with_weight(w, |w| {
            let _gemm = span(Kind::Gemm);
            product(
                MatRef::row_major(x, m, k),
                MatRef::row_major(w, out, k).t(),
                1.0,
            )
        }),
        FrozenBase::Rows(rows) => rows_forward(rows.as_ref(), x, m),
        FrozenBase::Bf16(w) => with_bf16(w, |w| {
            let _gemm = span(Kind::Gemm);
            let mut y = vec![0f32; m * out];
            gemm_bf16(&mut y, out, x, m, k, BfRhs::Transposed(w), out, false)?;
            Ok(y)
        }),
        FrozenBase::RowsBf16(rows) => {
            let mut y = vec![0f32; m * out];
            let step = rows.tile_rows();
            with_bf16_tile(step.min(out) * k, |tile| -> Result<()> {
                for r0 in (0..out).step_by(step) {
                    let r1 = (r0 + step).min(out);
                    let t = &mut tile[..(r1 - r0) * k];
                    {
                        let _dequant = span(Kind::Dequant);
                        rows.widen_rows_bf16_into(r0, r1, t)?;
                    }
                    let _gemm = span(Kind::Gemm);
                    gemm_bf16(
                        &mut y[r0..],
                        out,
                        x,
                        m,
                        k,
                        BfRhs::Transposed(t),
                        r1 - r0,
                        false,
                    )?;
                }
                Ok(())
            })?;
            Ok(y)
        }
    }
}

/// `x·Wᵀ` for a base widened tile by tile, into a buffer that is never zero-filled: the tiles'
/// column blocks cover every column of `y`.
fn rows_forward(rows: &dyn FrozenRows, x: &[f32], m: usize) -> Result<Vec<f32>> {
    let (out, k) = rows.dims();
    let xm = MatRef::row_major(x, m, k);
    if !xm.fits() {
        bail!(
            "lora linear: x holds {} values, not {m} rows of {k}",
            x.len()
        );
    }
    let step = rows.tile_rows().max(1);
    let mut y: Vec<f32> = Vec::with_capacity(m * out);
    let threads = candle_core::utils::get_num_threads();
    with_f32_tile(step.min(out) * k, |tile| -> Result<()> {
        for r0 in (0..out).step_by(step) {
            let r1 = (r0 + step).min(out);
            let t = &mut tile[..(r1 - r0) * k];
            {
                let _dequant = span(Kind::Dequant);
                rows.widen_rows_into(r0, r1, t)?;
            }
            let _gemm = span(Kind::Gemm);
            // SAFETY: `x` and the tile fit their shapes (checked above; the tile is sliced to
            // `(r1 − r0)·k`), and `y` has room for m rows of `out` of which this call writes
            // columns r0..r1 of each (rows at stride `out`), without reading them.
            unsafe {
                gemm_raw(
                    y.as_mut_ptr().add(r0),
                    out,
                    xm,
                    MatRef::row_major(t, r1 - r0, k).t(),
                    1.0,
                    false,
                    threads,
                );
            }
        }
        Ok(())
    })?;
    // SAFETY: the column blocks r0..r1 above cover 0..out in every one of the m rows (an
    // error above returned before this line, leaving `y` empty).
    unsafe { y.set_len(m * out) };
    Ok(y)
}

/// `dx += g·W`, `g` row-major `[m, out]`, `dx` `[m, in]`: a tile of rows of `W` meets the
/// matching columns of `g`, accumulated in place.
fn base_backward(w: &FrozenBase, g: &[f32], m: usize, dx: &mut [f32]) -> Result<()> {
    let (out, k) = w.dims()?;
    match w {
        FrozenBase::Dense(w) => with_weight(w, |w| {
            let _gemm = span(Kind::Gemm);
            gemm_into(
                dx,
                MatRef::row_major(g, m, out),
                MatRef::row_major(w, out, k),
                1.0,
                true,
            )
        }),
        FrozenBase::Bf16(w) => with_bf16(w, |w| {
            let _gemm = span(Kind::Gemm);
            gemm_bf16(dx, k, g, m, out, BfRhs::Plain(w), k, true)
        }),
        FrozenBase::RowsBf16(rows) => {
            let step = rows.tile_rows();
            let mut g_cols = Vec::new();
            with_bf16_tile(step.min(out) * k, |tile| {
                for r0 in (0..out).step_by(step) {
                    let r1 = (r0 + step).min(out);
                    let t = &mut tile[..(r1 - r0) * k];
                    {
                        let _dequant = span(Kind::Dequant);
                        rows.widen_rows_bf16_into(r0, r1, t)?;
                    }
                    let _gemm = span(Kind::Gemm);
                    // The tile's columns of g, contiguous (all of g when one tile covers W).
                    let g_tile: &[f32] = if r0 == 0 && r1 == out {
                        g
                    } else {
                        g_cols.clear();
                        g_cols.extend(g.chunks(out).flat_map(|row| &row[r0..r1]));
                        &g_cols
                    };
                    gemm_bf16(dx, k, g_tile, m, r1 - r0, BfRhs::Plain(t), k, true)?;
                }
                Ok(())
            })
        }
        FrozenBase::Rows(rows) => {
            let step = rows.tile_rows();
            with_f32_tile(step.min(out) * k, |tile| {
                for r0 in (0..out).step_by(step) {
                    let r1 = (r0 + step).min(out);
                    let t = &mut tile[..(r1 - r0) * k];
                    {
                        let _dequant = span(Kind::Dequant);
                        rows.widen_rows_into(r0, r1, t)?;
                    }
                    let _gemm = span(Kind::Gemm);
                    let g_tile = MatRef {
                        data: &g[r0..],
                        rows: m,
                        cols: r1 - r0,
                        rs: out,
                        cs: 1,
                    };
                    gemm_into(dx, g_tile, MatRef::row_major(t, r1 - r0, k), 1.0, true)?;
                }
                Ok(())
            })
        }
    }
}

impl LoraLinear {
    /// `(out, in, r)`, checking that A `[r, in]`, B `[out, r]` and x `[..., in]` agree with W.
    fn dims(&self, x: &[usize], a: &[usize], b: &[usize]) -> Result<(usize, usize, usize)> {
        let (out, k) = self.w.dims()?;
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

    /// `beta · dropout(x)·Aᵀ`, `[m, r]` ([`super::narrow_gemm`]).
    fn h(
        &self,
        xd: &[f32],
        a: &[f32],
        m: usize,
        k: usize,
        r: usize,
        beta: f32,
    ) -> Result<Vec<f32>> {
        x_at(xd, m, k, a, r, beta)
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
        let (out, k, r) = self.dims(xl.dims(), al.dims(), bl.dims())?;
        let x = logical_f32(xs, xl)?;
        let (a, b) = (logical_f32(as_, al)?, logical_f32(bs, bl)?);
        let m = x.len() / k.max(1);
        super::profile::add_gemm_flops(2.0 * (m * (k * out + r * (k + out))) as f64);
        let mut y = base_forward(&self.w, &x, m)?;
        let _profile = span(Kind::Gemm);
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
        let profile = span(Kind::Gemm);
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
            // Bᵀ `[r, out]` (a few KB) so that the narrow kernel reads it along its rows.
            let bt: Vec<f32> = (0..r * out).map(|i| bv[(i % out) * r + i / out]).collect();
            x_at(&g, m, out, &bt, r, scale)?
        } else {
            Vec::new()
        };

        let (mut da, mut db) = (None, None);
        if want_a || want_b {
            let (xst, xl) = x.storage_and_layout();
            let xd = self.dropped(cpu_f32(&xst, xl)?);
            if want_a {
                let v = product(
                    MatRef::row_major(&dh, m, r).t(),
                    MatRef::row_major(&xd, m, k),
                    1.0,
                )?;
                da = Some(Tensor::from_vec(v, (r, k), &Device::Cpu)?);
            }
            if want_b {
                let h = self.h(&xd, &av, m, k, r, scale)?;
                // As dBᵀ `[r, out]`, turned back into `[out, r]` (a few KB): the GEMM's kernel
                // fills its vectors along the result's columns, out of them rather than r.
                let v_t = product(
                    MatRef::row_major(&h, m, r).t(),
                    MatRef::row_major(&g, m, out),
                    1.0,
                )?;
                let v: Vec<f32> = (0..out * r).map(|i| v_t[(i % r) * out + i / r]).collect();
                db = Some(Tensor::from_vec(v, (out, r), &Device::Cpu)?);
            }
        }

        let dx = if want_x {
            // The masked LoRA part first, so the mask touches only it; then g·W on top.
            let mut v = product(
                MatRef::row_major(&dh, m, r),
                MatRef::row_major(&av, r, k),
                1.0,
            )?;
            if let Some(mask) = &self.dropout {
                mask.apply(&mut v);
            }
            drop(profile); // spans are leaves: the base product times itself
            base_backward(&self.w, &g, m, &mut v)?;
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
    apply(x, a, b, FrozenBase::Dense(w.clone()), scale, dropout)
}

/// [`lora_linear`] with the base product in bf16 and f32 sums (`--bf16-compute`, [`super::bf16_gemm`]):
/// `x` is rounded to bf16 where it meets `w`; the adapter path stays f32. The fused CPU op
/// only: `x` f32 on the CPU, `w` a frozen bf16 `[out, in]`.
///
/// # Errors
/// Other dtypes or devices, or shapes that do not fit `w`.
pub fn lora_linear_bf16(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    if w.track_op() || w.dtype() != DType::BF16 || !w.device().is_cpu() {
        bail!("lora linear in bf16: the base must be a frozen bf16 weight on the CPU");
    }
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        bail!(
            "lora linear in bf16: f32 input on the CPU only, got {:?}",
            x.dtype()
        );
    }
    apply(x, a, b, FrozenBase::Bf16(w.clone()), scale, dropout)
}

/// [`lora_linear_rows`] with the base rounded to bf16 tile by tile and multiplied in bf16 with
/// f32 sums (`--bf16-compute` for QLoRA: the paper's bf16 compute dtype); the adapter stays f32.
///
/// # Errors
/// As [`lora_linear_rows`].
pub fn lora_linear_rows_bf16(
    x: &Tensor,
    w: Arc<dyn FrozenRows>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        bail!(
            "lora linear over a quantized base: f32 input on the CPU only, got {:?} on {:?}",
            x.dtype(),
            x.device().location()
        );
    }
    apply(x, a, b, FrozenBase::RowsBf16(w), scale, dropout)
}

/// `x·Wᵀ + scale·B·(A·dropout(x))` over a quantized frozen base widened tile by tile (QLoRA):
/// the fused CPU op only, for f32 `x` on the CPU; the caller routes other devices and dtypes
/// to the quantized format's own generic op.
///
/// # Errors
/// `x` not f32 on the CPU, or shapes that do not fit `w`.
pub fn lora_linear_rows(
    x: &Tensor,
    w: Arc<dyn FrozenRows>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        bail!(
            "lora linear over a quantized base: f32 input on the CPU only, got {:?} on {:?}",
            x.dtype(),
            x.device().location()
        );
    }
    apply(x, a, b, FrozenBase::Rows(w), scale, dropout)
}

fn apply(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    w: FrozenBase,
    scale: f64,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    let op = LoraLinear { w, scale, dropout };
    if x.track_op() || a.track_op() || b.track_op() {
        x.apply_op3(a, b, op)
    } else {
        x.apply_op3_no_bwd(a, b, &op)
    }
}
