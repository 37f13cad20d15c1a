//! The frozen NF4 linear op of QLoRA: `y = x · Wᵀ` with `W` stored in NF4 ([`Nf4Tensor`]).
//!
//! Shapes: `x: [..., in]` (f32, CPU, any strides/offset) → `y: [..., out]` (f32, contiguous),
//! `W: [out, in]`. Bias is not part of the op (the caller adds it).
//!
//! # How
//! A [`candle_core::CustomOp1`] whose forward flattens `x` to `[m, in]` and walks `W` in tiles of
//! `tile_rows` output rows: each tile is dequantized into a transient f32 buffer
//! (`tile_rows · in · 4` bytes) and multiplied with candle's CPU GEMM, `y[:, r0..r1] = x · W_tileᵀ`.
//! The full f32 `W` never exists.
//!
//! Backward returns only the input gradient `dx = dy · W` (`[..., out] → [..., in]`), computed
//! the same way over tiles of `W`'s *columns* (`dx[:, c0..c1] = dy · W[:, c0..c1]`, so every output
//! column is written once and nothing is accumulated), with a column width chosen so the tile has
//! at most as many elements as a forward tile. `W` gets no gradient and nothing is kept between
//! forward and backward beyond what candle's graph already holds (`x` and `y`).
//!
//! Candle records the op only when `x` is tracked (derived from a `Var`); otherwise it is a plain
//! forward. The result equals `x.matmul(W_deq.t())` up to GEMM summation order (≈ 1e-7 relative).
//!
//! # What this is not
//! A GPU kernel: off the CPU (or on the generic path) [`Nf4Linear::forward_with`] runs
//! [`super::nf4_device::nf4_linear`]. The fused op takes f32 input only; no second-order
//! gradients.

use super::nf4::Nf4Tensor;
use crate::ops::{logical_f32, FrozenRows, OpPath};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Module, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Bound on one dequantized tile: 4 MiB of f32. Small models' projections fit whole (one GEMM
/// per call, which runs ~1.5× faster than 128-row tiles on AVX-512); a 7B model's 4096-wide
/// rows come in tiles of 256 rows, so the transient buffer stays bounded whatever the size.
pub const DEFAULT_TILE_BYTES: usize = 4 << 20;

/// Output rows per forward tile for a weight with `inp` input features (at least 1).
pub fn default_tile_rows(out: usize, inp: usize) -> usize {
    (DEFAULT_TILE_BYTES / (4 * inp.max(1))).clamp(1, out.max(1))
}

/// A frozen linear layer whose weight is NF4; see the module docs.
#[derive(Debug, Clone)]
pub struct Nf4Linear {
    weight: Arc<Nf4Tensor>,
    tile_rows: usize,
}

impl Nf4Linear {
    pub fn new(weight: Arc<Nf4Tensor>) -> Self {
        let (out, inp) = weight.shape();
        Self {
            weight,
            tile_rows: default_tile_rows(out, inp),
        }
    }

    /// Sets the rows per forward tile (values below 1 are raised to 1). Smaller tiles bound the
    /// transient buffer more tightly; larger ones give the GEMM more work per call.
    pub fn with_tile_rows(mut self, tile_rows: usize) -> Self {
        self.tile_rows = tile_rows.max(1);
        self
    }

    pub fn weight(&self) -> &Arc<Nf4Tensor> {
        &self.weight
    }

    pub fn tile_rows(&self) -> usize {
        self.tile_rows
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape().1
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape().0
    }

    /// Columns per backward tile: as many as keep `out · cols ≤ tile_rows · in`, at least 1.
    pub fn tile_cols(&self) -> usize {
        let (out, inp) = self.weight.shape();
        (self.tile_rows.min(out) * inp / out).clamp(1, inp)
    }

    /// The largest transient dequantized-weight buffer forward or backward allocates, in bytes.
    pub fn tile_bytes(&self) -> usize {
        let (out, inp) = self.weight.shape();
        4 * (self.tile_rows.min(out) * inp).max(out * self.tile_cols())
    }

    fn op(&self) -> Nf4MatMul {
        Nf4MatMul {
            w: self.weight.clone(),
            tile_rows: self.tile_rows,
            tile_cols: self.tile_cols(),
        }
    }

    /// `x · Wᵀ`, `x: [..., in]` → `[..., out]`: the fused CPU op for f32 on the CPU, the
    /// generic op ([`super::nf4_device::nf4_linear`]) for other dtypes and on the device the
    /// codes live on.
    ///
    /// # Errors
    /// A candle error naming the weight if `x` is not a float tensor or its last dimension is
    /// not `in`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(OpPath::Auto, x)
    }

    /// [`Nf4Linear::forward`] through the kernel `path` picks for `x`'s device.
    ///
    /// # Errors
    /// As [`Nf4Linear::forward`]; codes on another device than `x`.
    pub fn forward_with(&self, path: OpPath, x: &Tensor) -> candle_core::Result<Tensor> {
        let name = self.weight.name();
        if !x.dtype().is_float() {
            bail!(
                "NF4 linear `{name}`: input must be a float tensor, got {:?}",
                x.dtype()
            );
        }
        let k = x.dims().last().copied().unwrap_or(0);
        if x.rank() == 0 || k != self.in_features() {
            bail!(
                "NF4 linear `{name}`: input shape {:?} does not end in in_features {}",
                x.dims(),
                self.in_features()
            );
        }
        let fused = path.fused_on(x.device()) && x.dtype() == DType::F32;
        if !fused || self.weight.device_codes().is_some() {
            let codes = self.weight.codes_on(x.device())?;
            return super::nf4_device::nf4_linear(x, codes, self.tile_rows);
        }
        x.apply_op1(self.op())
    }
}

impl Module for Nf4Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Nf4Linear::forward(self, xs)
    }
}

/// Forward op `x · Wᵀ`; its backward applies [`Nf4MatMulT`] to the output gradient.
struct Nf4MatMul {
    w: Arc<Nf4Tensor>,
    tile_rows: usize,
    tile_cols: usize,
}

/// Backward op `g · W`, never recorded (no second-order gradients).
struct Nf4MatMulT {
    w: Arc<Nf4Tensor>,
    tile_cols: usize,
}

/// Rows `r0..r0+t` of `w` as row-major f32, dequantized in parallel (the GEMM that follows
/// uses every core; a serial dequantization left all but one idle).
fn dequantize_rows(w: &Nf4Tensor, r0: usize, t: usize) -> Vec<f32> {
    let k = w.shape().1;
    let mut tile = vec![0.0f32; t * k];
    dequantize_rows_into(w, r0, t, &mut tile);
    tile
}

fn dequantize_rows_into(w: &Nf4Tensor, r0: usize, t: usize, tile: &mut [f32]) {
    let k = w.shape().1;
    // Chunks of whole rows, a few per thread, so each call covers many NF4 blocks.
    let rows_per = t.div_ceil(4 * rayon::current_num_threads().max(1)).max(1);
    tile.par_chunks_mut(rows_per * k)
        .enumerate()
        .for_each(|(i, dst)| w.dequantize_range_into((r0 + i * rows_per) * k, dst));
}

/// The fused LoRA linear's view of an NF4 base (QLoRA on the same op as LoRA).
impl FrozenRows for Nf4Tensor {
    fn dims(&self) -> (usize, usize) {
        self.shape()
    }

    fn widen_rows_into(&self, r0: usize, r1: usize, out: &mut [f32]) -> candle_core::Result<()> {
        let (n, k) = self.shape();
        if r0 > r1 || r1 > n || out.len() != (r1 - r0) * k {
            bail!(
                "NF4 `{}`: rows {r0}..{r1} of {n} into {} values",
                self.name(),
                out.len()
            );
        }
        if self.device_codes().is_some() {
            bail!("NF4 `{}`: codes live on a device", self.name());
        }
        dequantize_rows_into(self, r0, r1 - r0, out);
        Ok(())
    }

    fn widen_rows_serial(&self, r0: usize, r1: usize, out: &mut [f32]) -> candle_core::Result<()> {
        let (n, k) = self.shape();
        if r0 > r1 || r1 > n || out.len() != (r1 - r0) * k {
            bail!(
                "NF4 `{}`: rows {r0}..{r1} of {n} into {} values",
                self.name(),
                out.len()
            );
        }
        if self.device_codes().is_some() {
            bail!("NF4 `{}`: codes live on a device", self.name());
        }
        self.dequantize_range_into(r0 * k, out);
        Ok(())
    }
}

/// Splits `[..., k]` into `(m, k)` and checks `k`.
fn rows_of(layout: &Layout, k: usize, what: &str) -> candle_core::Result<usize> {
    let dims = layout.dims();
    match dims.last() {
        Some(&last) if last == k => Ok(layout.shape().elem_count() / k),
        _ => bail!("NF4 linear: {what} shape {dims:?} does not end in {k}"),
    }
}

fn out_shape(layout: &Layout, last: usize) -> Shape {
    let mut dims = layout.dims().to_vec();
    if let Some(d) = dims.last_mut() {
        *d = last;
    }
    Shape::from(dims)
}

impl CustomOp1 for Nf4MatMul {
    fn name(&self) -> &'static str {
        "nf4-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, k) = self.w.shape();
        let m = rows_of(layout, k, "input")?;
        if m == 0 {
            return Ok((CpuStorage::F32(Vec::new()), out_shape(layout, out)));
        }
        let x = Tensor::from_slice(&logical_f32(storage, layout)?, (m, k), &Device::Cpu)?;
        let mut y = Vec::new();
        for r0 in (0..out).step_by(self.tile_rows) {
            let t = self.tile_rows.min(out - r0);
            let tile = dequantize_rows(&self.w, r0, t);
            let tile = Tensor::from_vec(tile, (t, k), &Device::Cpu)?;
            let yt = x.matmul(&tile.t()?)?.flatten_all()?.to_vec1::<f32>()?; // [m, t]
            if t == out {
                y = yt;
                break;
            }
            if y.is_empty() {
                y = vec![0.0f32; m * out];
            }
            for (row, src) in y.chunks_exact_mut(out).zip(yt.chunks_exact(t)) {
                row[r0..r0 + t].copy_from_slice(src);
            }
        }
        Ok((CpuStorage::F32(y), out_shape(layout, out)))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = Nf4MatMulT {
            w: self.w.clone(),
            tile_cols: self.tile_cols,
        };
        Ok(Some(grad.detach().apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for Nf4MatMulT {
    fn name(&self) -> &'static str {
        "nf4-linear-bwd"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, k) = self.w.shape();
        let m = rows_of(layout, out, "gradient")?;
        if m == 0 {
            return Ok((CpuStorage::F32(Vec::new()), out_shape(layout, k)));
        }
        let g = Tensor::from_slice(&logical_f32(storage, layout)?, (m, out), &Device::Cpu)?;
        if self.tile_cols == k {
            // The whole matrix fits one tile: dequantize it row-parallel, one GEMM.
            let w = Tensor::from_vec(dequantize_rows(&self.w, 0, out), (out, k), &Device::Cpu)?;
            let dx = g.matmul(&w)?.flatten_all()?.to_vec1::<f32>()?;
            return Ok((CpuStorage::F32(dx), out_shape(layout, k)));
        }
        let mut dx = vec![0.0f32; m * k];
        for c0 in (0..k).step_by(self.tile_cols) {
            let c = self.tile_cols.min(k - c0);
            // W[:, c0..c0+c] as a row-major [out, c] tile: one contiguous run per row.
            let mut tile = vec![0.0f32; out * c];
            tile.par_chunks_mut(c)
                .enumerate()
                .for_each(|(r, dst)| self.w.dequantize_range_into(r * k + c0, dst));
            let tile = Tensor::from_vec(tile, (out, c), &Device::Cpu)?;
            let dxt = g.matmul(&tile)?.flatten_all()?.to_vec1::<f32>()?; // [m, c]
            for (row, src) in dx.chunks_exact_mut(k).zip(dxt.chunks_exact(c)) {
                row[c0..c0 + c].copy_from_slice(src);
            }
        }
        Ok((CpuStorage::F32(dx), out_shape(layout, k)))
    }
}
