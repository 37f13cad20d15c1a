//! `y = x · Wᵀ` for a frozen `W`, whose backward returns only `dx = dy · W`.
//!
//! Candle's generic matmul backward also computes (and keeps) the full-size gradient of `W`
//! even when `W` is not trainable: on a 135M model that is ~700 MB of useless memory and a
//! 1.7× slower backward. This op owns `W`, so the graph never sees it as an input.
//! `W` may be stored as f32 or bf16 (widened per call: candle has no bf16 CPU GEMM).

use super::bridge::{cpu_to_tensor, tensor_to_cpu};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

struct FrozenLinear {
    /// `[out, in]`
    w: Tensor,
}

fn matmul_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let w = if w.dtype() == DType::F32 {
        w.clone()
    } else {
        w.to_dtype(DType::F32)?
    };
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&0);
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, k))?.matmul(&w.t()?)?;
    let mut out = dims;
    *out.last_mut().unwrap() = w.dim(0)?;
    y.reshape(out)
}

fn matmul_w(g: &Tensor, w: &Tensor) -> Result<Tensor> {
    let w = if w.dtype() == DType::F32 {
        w.clone()
    } else {
        w.to_dtype(DType::F32)?
    };
    let dims = g.dims().to_vec();
    let n = *dims.last().unwrap_or(&0);
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let dx = g.contiguous()?.reshape((rows, n))?.matmul(&w)?;
    let mut out = dims;
    *out.last_mut().unwrap() = w.dim(1)?;
    dx.reshape(out)
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_to_tensor(storage, layout)?;
        let y = matmul_wt(&x, &self.w)?;
        Ok((tensor_to_cpu(&y)?, y.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // The gradient itself may be tracked only under double backward, which we never do.
        Ok(Some(matmul_w(&grad.detach(), &self.w)?))
    }
}

/// `x · Wᵀ` with `x: [..., in]`, `W: [out, in]` frozen. Untracked inputs skip the custom op
/// (no graph to record) and go straight to the GEMM.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !x.track_op() || !x.device().is_cpu() {
        return matmul_wt(x, w);
    }
    x.apply_op1(FrozenLinear { w: w.clone() })
}
