//! `y = x · Wᵀ` for a frozen `W`, whose backward returns only `dx = dy · W`.
//!
//! Candle's generic matmul backward also computes (and keeps) the full-size gradient of `W`
//! even when `W` is not trainable: on a 135M model that is ~700 MB of useless memory and a
//! 1.7× slower backward. This op owns `W`, so the graph never sees it as an input.
//! `W` may be stored as f32 or bf16 (widened per call: candle has no bf16 CPU GEMM).
//! On the CPU both products run on the op's own buffers ([`super::gemm`]), with no copies.

use super::gemm::{matmul, MatRef};
use super::generic::OpPath;
use super::logical_f32;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Storage, Tensor};
use std::borrow::Cow;

struct FrozenLinear {
    /// `[out, in]`
    w: Tensor,
}

/// Runs `f` on `W` as a row-major f32 slice (borrowed from its storage when it is f32).
fn with_weight<R>(w: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let w = if w.dtype() == DType::F32 {
        w.clone()
    } else {
        w.to_dtype(DType::F32)?
    };
    let (storage, layout) = w.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let data: Cow<'_, [f32]> = logical_f32(cpu, layout)?;
            f(&data)
        }
        _ => candle_core::bail!("frozen linear: the weight is not on the CPU"),
    }
}

fn out_dims(dims: &[usize], last: usize) -> Vec<usize> {
    let mut out = dims.to_vec();
    if let Some(d) = out.last_mut() {
        *d = last;
    }
    out
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _profile = super::profile::span(super::profile::Kind::Gemm);
        let (out, k) = self.w.dims2()?;
        let x = logical_f32(storage, layout)?;
        let m = x.len() / k.max(1);
        super::profile::add_gemm_flops(2.0 * (m * k * out) as f64);
        let y = with_weight(&self.w, |w| {
            matmul(
                MatRef::row_major(&x, m, k),
                MatRef::row_major(w, out, k).t(),
            )
        })?;
        Ok((
            CpuStorage::F32(y),
            Shape::from(out_dims(layout.dims(), out)),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _profile = super::profile::span(super::profile::Kind::Gemm);
        // The gradient itself may be tracked only under double backward, which we never do.
        let g = grad.detach();
        let (out, k) = self.w.dims2()?;
        let (storage, layout) = g.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("frozen linear: gradient is not on the CPU");
        };
        let gs = logical_f32(cpu, layout)?;
        let m = gs.len() / out.max(1);
        super::profile::add_gemm_flops(2.0 * (m * k * out) as f64);
        let dx = with_weight(&self.w, |w| {
            matmul(MatRef::row_major(&gs, m, out), MatRef::row_major(w, out, k))
        })?;
        Ok(Some(Tensor::from_vec(
            dx,
            out_dims(g.dims(), k),
            &Device::Cpu,
        )?))
    }
}

/// `x · Wᵀ` with `x: [..., in]`, `W: [out, in]` frozen. Untracked inputs skip the custom op
/// (no graph to record).
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    frozen_linear_with(OpPath::Auto, x, w)
}

/// [`frozen_linear`] through the kernel `path` picks for `x`'s device (the generic op, which
/// also takes bf16 activations, off the CPU).
pub fn frozen_linear_with(path: OpPath, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !path.fused_on(x.device()) || x.dtype() != DType::F32 {
        return super::generic_linear::frozen_linear(x, w);
    }
    if !x.track_op() {
        return x.apply_op1_no_bwd(&FrozenLinear { w: w.clone() });
    }
    x.apply_op1(FrozenLinear { w: w.clone() })
}
