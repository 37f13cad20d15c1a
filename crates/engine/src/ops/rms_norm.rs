//! RMS normalisation with its weight, as one op: `y = x · r · w` with
//! `r = 1/√(mean(x²) + ε)` per row (the last dimension).
//!
//! candle's fused `rms_norm` has no backward (gradients silently stop there), and applying the
//! weight as a separate broadcast multiply made candle compute a full-size product and a
//! reduction for the frozen weight in every backward. Here the backward is
//! `dx = r · (g⊙w − x̂ · mean(g⊙w⊙x̂))` with `x̂ = x·r`, and `dw = Σ_rows g⊙x̂` only when the
//! weight is trainable (selective "norm" tuning).

use super::bridge::{logical_f32, tensor_f32};
use super::generic::OpPath;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel task in backward; the weight gradient is summed per block, then over
/// blocks in order, so it does not depend on how rayon schedules the blocks.
const BLOCK_ROWS: usize = 16;

struct RmsNorm {
    eps: f32,
}

fn inv_rms(xr: &[f32], eps: f32) -> f32 {
    let ms = xr.iter().map(|v| v * v).sum::<f32>() / xr.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _profile = super::profile::span(super::profile::Kind::Elementwise);
        let d = xl.shape().dims().last().copied().unwrap_or(1);
        if wl.shape().elem_count() != d {
            bail!(
                "rms_norm: weight {:?} does not match x {:?}",
                wl.shape(),
                xl.shape()
            );
        }
        let (x, w) = (logical_f32(xs, xl)?, logical_f32(ws, wl)?);
        let mut y = vec![0f32; x.len()];
        if d > 0 {
            y.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .for_each(|(yr, xr)| {
                    let r = inv_rms(xr, self.eps);
                    for ((o, v), wv) in yr.iter_mut().zip(xr).zip(w.iter()) {
                        *o = v * r * wv;
                    }
                });
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _profile = super::profile::span(super::profile::Kind::Elementwise);
        let d = x.dim(candle_core::D::Minus1)?;
        let (want_dx, want_dw) = (x.track_op(), w.track_op());
        if d == 0 || !(want_dx || want_dw) {
            return Ok((None, None));
        }
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (xv, wv, gv) = (
            tensor_f32(&xs, xl)?,
            tensor_f32(&ws, wl)?,
            tensor_f32(&gs, gl)?,
        );
        let mut dx = vec![0f32; if want_dx { xv.len() } else { 0 }];
        let eps = self.eps;
        let block = d * BLOCK_ROWS;
        // One pass per block of rows: dx, and the block's share of dw.
        let row_block = |(xb, gb): (&[f32], &[f32]), dxb: &mut [f32]| -> Vec<f32> {
            let mut dw = vec![0f32; if want_dw { d } else { 0 }];
            for (i, (xr, gr)) in xb.chunks(d).zip(gb.chunks(d)).enumerate() {
                let r = inv_rms(xr, eps);
                if want_dx {
                    let c = xr
                        .iter()
                        .zip(gr)
                        .zip(wv.iter())
                        .map(|((x, g), w)| g * w * x)
                        .sum::<f32>()
                        * r
                        * r
                        / d as f32;
                    let dr = &mut dxb[i * d..(i + 1) * d];
                    for (((o, x), g), w) in dr.iter_mut().zip(xr).zip(gr).zip(wv.iter()) {
                        *o = r * (g * w - x * c);
                    }
                }
                for ((acc, x), g) in dw.iter_mut().zip(xr).zip(gr) {
                    *acc += g * x * r;
                }
            }
            dw
        };
        let blocks = xv.par_chunks(block).zip(gv.par_chunks(block));
        let partials: Vec<Vec<f32>> = if want_dx {
            blocks
                .zip(dx.par_chunks_mut(block))
                .map(|(xg, dxb)| row_block(xg, dxb))
                .collect()
        } else {
            blocks.map(|xg| row_block(xg, &mut [])).collect()
        };
        let dx = match want_dx {
            true => Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            false => None,
        };
        let dw = match want_dw {
            true => {
                let mut sum = vec![0f32; d];
                for p in &partials {
                    sum.iter_mut().zip(p).for_each(|(s, v)| *s += v);
                }
                Some(Tensor::from_vec(sum, w.shape(), w.device())?)
            }
            false => None,
        };
        Ok((dx, dw))
    }
}

/// RMS-normalises `x` over its last dimension and scales by `weight` (`[d]`).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    rms_norm_with(OpPath::Auto, x, weight, eps)
}

/// [`rms_norm`] through the kernel `path` picks for `x`'s device (the generic op off the CPU).
pub fn rms_norm_with(path: OpPath, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !path.fused_on(x.device()) || x.dtype() != DType::F32 {
        return super::generic_rowwise::rms_norm(x, weight, eps);
    }
    // An f32 weight (the trainable case included) passes through as the same tensor.
    let weight = weight.to_dtype(DType::F32)?;
    x.apply_op2(&weight, RmsNorm { eps: eps as f32 })
}
