//! The SwiGLU gate `y = silu(g) · u` as one op.
//!
//! As two candle ops it allocates `silu(g)` and keeps it for backward, and the backward of
//! the product and of silu each take their own passes and buffers. Here the forward is one
//! pass and the backward one pass producing both gradients:
//! `dg = grad · u · σ(g) · (1 + g·(1 − σ(g)))`, `du = grad · silu(g)`.

use super::bridge::{logical_f32, tensor_f32};
use super::generic::OpPath;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task: large enough that scheduling is negligible.
const CHUNK: usize = 1 << 14;

struct SwiGlu;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// d(silu(g)·u)/dg times the incoming gradient `d`, given `s = σ(g)`.
fn d_gate(g: f32, u: f32, d: f32, s: f32) -> f32 {
    d * u * s * (1.0 + g * (1.0 - s))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if gl.shape() != ul.shape() {
            bail!(
                "swiglu: gate {:?} and up {:?} differ",
                gl.shape(),
                ul.shape()
            );
        }
        let (g, u) = (logical_f32(gs, gl)?, logical_f32(us, ul)?);
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(yc, (gc, uc))| {
                for ((o, &g), &u) in yc.iter_mut().zip(gc).zip(uc) {
                    *o = g * sigmoid(g) * u;
                }
            });
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_dg, want_du) = (gate.track_op(), up.track_op());
        let (gs, gl) = gate.storage_and_layout();
        let (us, ul) = up.storage_and_layout();
        let (ds, dl) = grad.storage_and_layout();
        let (g, u, d) = (
            tensor_f32(&gs, gl)?,
            tensor_f32(&us, ul)?,
            tensor_f32(&ds, dl)?,
        );
        let n = g.len();
        let mut dg = vec![0f32; if want_dg { n } else { 0 }];
        let mut du = vec![0f32; if want_du { n } else { 0 }];
        let inputs = g
            .par_chunks(CHUNK)
            .zip(u.par_chunks(CHUNK))
            .zip(d.par_chunks(CHUNK));
        match (want_dg, want_du) {
            (true, true) => dg
                .par_chunks_mut(CHUNK)
                .zip(du.par_chunks_mut(CHUNK))
                .zip(inputs)
                .for_each(|((dgc, duc), ((gc, uc), dc))| {
                    let outs = dgc.iter_mut().zip(duc.iter_mut());
                    for ((og, ou), ((&g, &u), &d)) in outs.zip(gc.iter().zip(uc).zip(dc)) {
                        let s = sigmoid(g);
                        *og = d_gate(g, u, d, s);
                        *ou = d * g * s;
                    }
                }),
            (true, false) => {
                dg.par_chunks_mut(CHUNK)
                    .zip(inputs)
                    .for_each(|(o, ((gc, uc), dc))| {
                        for (o, ((&g, &u), &d)) in o.iter_mut().zip(gc.iter().zip(uc).zip(dc)) {
                            *o = d_gate(g, u, d, sigmoid(g));
                        }
                    })
            }
            (false, true) => du
                .par_chunks_mut(CHUNK)
                .zip(inputs)
                .for_each(|(o, ((gc, _), dc))| {
                    for (o, (&g, &d)) in o.iter_mut().zip(gc.iter().zip(dc)) {
                        *o = d * g * sigmoid(g);
                    }
                }),
            (false, false) => {}
        }
        let out = |v: Vec<f32>, t: &Tensor, want: bool| -> Result<Option<Tensor>> {
            match want {
                true => Ok(Some(Tensor::from_vec(v, t.shape(), t.device())?)),
                false => Ok(None),
            }
        };
        Ok((out(dg, gate, want_dg)?, out(du, up, want_du)?))
    }
}

/// `silu(gate) · up` for two f32 tensors of the same shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    swiglu_with(OpPath::Auto, gate, up)
}

/// [`swiglu`] through the kernel `path` picks for the device (the generic op, which also
/// takes bf16, off the CPU).
pub fn swiglu_with(path: OpPath, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !path.fused_on(gate.device()) || gate.dtype() != DType::F32 {
        return super::generic_rowwise::swiglu(gate, up);
    }
    if gate.shape() != up.shape() {
        bail!(
            "swiglu: gate {:?} and up {:?} differ",
            gate.shape(),
            up.shape()
        );
    }
    if gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
        bail!(
            "swiglu: expects f32, got {:?} and {:?}",
            gate.dtype(),
            up.dtype()
        );
    }
    gate.apply_op2(up, SwiGlu)
}
