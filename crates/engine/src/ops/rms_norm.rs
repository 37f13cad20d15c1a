//! RMS normalisation without the weight: `y = x / √(mean(x²) + ε)` over the last dimension.
//!
//! candle's fused `rms_norm` has no backward (gradients silently stop there). The weight is
//! applied by the caller as an ordinary broadcast multiply, so a trainable norm weight
//! (selective "norm" tuning) gets its gradient from candle, and this op supplies
//! `dx = r · (g − y · mean(g ⊙ y))` with `r = 1/√(mean(x²)+ε)`.

use super::bridge::cpu_to_tensor;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct RmsNorm {
    eps: f32,
}

fn rms_rows(x: &[f32], d: usize, eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(yr, xr)| {
            let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let r = 1.0 / (ms + eps).sqrt();
            for (o, v) in yr.iter_mut().zip(xr) {
                *o = v * r;
            }
        });
    y
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = layout.shape().dims().last().copied().unwrap_or(1);
        let x = cpu_to_tensor(storage, layout)?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        Ok((
            CpuStorage::F32(rms_rows(&xv, d, self.eps)),
            layout.shape().clone(),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = arg.dim(candle_core::D::Minus1)?;
        let x = arg.detach().contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let g = grad
            .detach()
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut dx = vec![0f32; x.len()];
        let eps = self.eps;
        dx.par_chunks_mut(d)
            .zip(x.par_chunks(d).zip(g.par_chunks(d)))
            .for_each(|(dr, (xr, gr))| {
                let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
                let r = 1.0 / (ms + eps).sqrt();
                let gy: f32 = xr.iter().zip(gr).map(|(xv, gv)| xv * r * gv).sum::<f32>() / d as f32;
                for ((o, xv), gv) in dr.iter_mut().zip(xr).zip(gr) {
                    *o = r * (gv - xv * r * gy);
                }
            });
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// RMS-normalises `x` over its last dimension and scales by `weight` (`[d]`).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return candle_nn::ops::rms_norm_slow(x, weight, eps as f32);
    }
    let normed = x.apply_op1(RmsNorm { eps: eps as f32 })?;
    normed.broadcast_mul(weight)
}
