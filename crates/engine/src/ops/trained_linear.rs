//! `y = x · Wᵀ` for a *trained* dense `W` (full and selective fine-tuning), whose backward
//! writes `dW = dyᵀ · x` straight into a per-weight buffer by one GEMM call, accumulating
//! across micro-batches in place, and returns only `dx` to candle's graph.
//!
//! Why: candle's matmul backward computes `dW` as a product of transposed views, and its
//! gradient store then adds every gradient to a freshly zeroed tensor of the same size. For a
//! 135M model that is a second 0.5 GB pass of zero-fill and add per step on top of the GEMMs,
//! plus a copy per transposed operand. Here `dW` is written once, row-major `[out, in]`, where
//! the trainer reads it ([`WeightGrads::take`]); the GEMM's `dst = dst + a·b` does the
//! accumulation of gradient accumulation for free.

use super::gemm::{gemm_into, product, MatRef};
use super::logical_f32;
use super::profile::{add_gemm_flops, span, Kind};
use candle_core::{
    bail, CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Storage, Tensor, TensorId,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Weight gradients written by [`trained_linear`] during backward, by the weight's tensor id;
/// the trainer takes them after the step's last micro-batch.
#[derive(Clone, Default, Debug)]
pub struct WeightGrads {
    inner: Arc<Mutex<HashMap<TensorId, Vec<f32>>>>,
}

impl WeightGrads {
    /// The accumulated `[out, in]` gradient of the weight with id `id`, leaving none behind
    /// (the next step starts from nothing).
    pub fn take(&self, id: TensorId) -> Option<Vec<f32>> {
        self.inner.lock().ok()?.remove(&id)
    }

    /// Runs `f` on the buffer of weight `id` (`len` values), zero-filled when it is new.
    pub(crate) fn with_buffer<R>(
        &self,
        id: TensorId,
        len: usize,
        f: impl FnOnce(&mut [f32]) -> Result<R>,
    ) -> Result<R> {
        let mut map = self
            .inner
            .lock()
            .map_err(|_| candle_core::Error::Msg("weight gradients poisoned".into()))?;
        let buf = map.entry(id).or_insert_with(|| vec![0f32; len]);
        if buf.len() != len {
            bail!("weight gradient of {} values, expected {len}", buf.len());
        }
        f(buf)
    }

    /// `dW (+)= gᵀ·x` into the buffer of weight `id`.
    fn accumulate(&self, id: TensorId, g: MatRef<'_>, x: MatRef<'_>) -> Result<()> {
        let mut map = self
            .inner
            .lock()
            .map_err(|_| candle_core::Error::Msg("weight gradients poisoned".into()))?;
        match map.get_mut(&id) {
            Some(buf) => gemm_into(buf, g.t(), x, 1.0, true),
            None => {
                map.insert(id, product(g.t(), x, 1.0)?);
                Ok(())
            }
        }
    }
}

struct TrainedLinear {
    grads: WeightGrads,
}

fn cpu_slice<'a>(s: &'a Storage, l: &Layout) -> Result<std::borrow::Cow<'a, [f32]>> {
    match s {
        Storage::Cpu(c) => logical_f32(c, l),
        _ => bail!("trained linear: expected a CPU tensor"),
    }
}

impl CustomOp2 for TrainedLinear {
    fn name(&self) -> &'static str {
        "trained-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _profile = span(Kind::Gemm);
        let (out, k) = wl.shape().dims2()?;
        if xl.dims().last() != Some(&k) {
            bail!(
                "trained linear: x {:?} does not fit W [{out}, {k}]",
                xl.dims()
            );
        }
        let (x, w) = (logical_f32(xs, xl)?, logical_f32(ws, wl)?);
        let m = x.len() / k.max(1);
        add_gemm_flops(2.0 * (m * k * out) as f64);
        let (xm, wm) = (MatRef::row_major(&x, m, k), MatRef::row_major(&w, out, k));
        let y = product(xm, wm.t(), 1.0)?;
        let mut dims = xl.dims().to_vec();
        if let Some(d) = dims.last_mut() {
            *d = out;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _profile = span(Kind::Gemm);
        let (out, k) = w.dims2()?;
        let grad = grad.detach();
        let (gs, gl) = grad.storage_and_layout();
        let g = cpu_slice(&gs, gl)?;
        let m = g.len() / out.max(1);
        let gm = MatRef::row_major(&g, m, out);
        let dx = if x.track_op() {
            let (ws, wl) = w.storage_and_layout();
            let wv = cpu_slice(&ws, wl)?;
            add_gemm_flops(2.0 * (m * k * out) as f64);
            let v = product(gm, MatRef::row_major(&wv, out, k), 1.0)?;
            Some(Tensor::from_vec(v, x.shape(), &Device::Cpu)?)
        } else {
            None
        };
        if w.track_op() {
            let (xs, xl) = x.storage_and_layout();
            let xv = cpu_slice(&xs, xl)?;
            add_gemm_flops(2.0 * (m * k * out) as f64);
            self.grads
                .accumulate(w.id(), gm, MatRef::row_major(&xv, m, k))?;
        }
        Ok((dx, None))
    }
}

/// `x · Wᵀ` for `x: [..., in]` and a trained f32 `w: [out, in]` on the CPU, with `W`'s
/// gradient going to `grads` instead of candle's gradient store.
///
/// # Errors
/// Non-f32 or non-CPU operands (the caller routes those through candle's matmul).
pub fn trained_linear(x: &Tensor, w: &Tensor, grads: &WeightGrads) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        bail!("trained linear: f32 on the CPU only");
    }
    let op = TrainedLinear {
        grads: grads.clone(),
    };
    if x.track_op() || w.track_op() {
        x.apply_op2(w, op)
    } else {
        x.apply_op2_no_bwd(w, &op)
    }
}
