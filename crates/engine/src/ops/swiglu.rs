//! The gated MLP activations as one op: SwiGLU `y = silu(g) · u` (Llama, Qwen, Phi) and
//! GeGLU `y = gelu_tanh(g) · u` (Gemma's `gelu_pytorch_tanh`).
//!
//! As two candle ops it allocates `act(g)` and keeps it for backward, and the backward of
//! the product and of the activation each take their own passes and buffers. Here the forward
//! is one pass and the backward one pass producing both gradients:
//! `dg = grad · u · act'(g)`, `du = grad · act(g)`, with
//! `silu'(g) = σ(g) · (1 + g·(1 − σ(g)))` and, for `gelu_tanh(g) = ½g(1 + tanh(c(g + κg³)))`
//! (`c = √(2/π)`, `κ = 0.044715`), `gelu_tanh'(g) = ½(1 + t) + ½g(1 − t²)·c(1 + 3κg²)`.

use super::bridge::{logical_f32, tensor_f32};
use super::fast_exp;
use super::generic::OpPath;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task: large enough that scheduling is negligible.
const CHUNK: usize = 1 << 14;
/// Gate values whose σ is computed at once, vectorised ([`fast_exp::sigmoid`]), into a
/// buffer on the stack.
const BLOCK: usize = 512;

#[derive(Clone, Copy)]
enum Gate {
    Silu,
    GeluTanh,
}

struct GatedAct(Gate);

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_K: f32 = 0.044_715;

impl Gate {
    /// What [`Gate::eval`] and [`Gate::value`] take as `s` for a block of gate values: σ(g)
    /// for SiLU (vectorised); GeLU leaves `s` alone.
    fn prepare(self, g: &[f32], s: &mut [f32]) {
        if let Gate::Silu = self {
            fast_exp::sigmoid(g, s);
        }
    }

    /// `(act(g), act'(g))`; `s` from [`Gate::prepare`].
    #[inline]
    fn eval(self, g: f32, s: f32) -> (f32, f32) {
        match self {
            Gate::Silu => (g * s, s * (1.0 + g * (1.0 - s))),
            Gate::GeluTanh => {
                let t = (SQRT_2_OVER_PI * (g + GELU_K * g * g * g)).tanh();
                let d = 0.5 * (1.0 + t)
                    + 0.5 * g * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_K * g * g);
                (0.5 * g * (1.0 + t), d)
            }
        }
    }

    /// `act(g)`; `s` from [`Gate::prepare`].
    #[inline]
    fn value(self, g: f32, s: f32) -> f32 {
        match self {
            Gate::Silu => g * s,
            Gate::GeluTanh => 0.5 * g * (1.0 + (SQRT_2_OVER_PI * (g + GELU_K * g * g * g)).tanh()),
        }
    }
}

impl CustomOp2 for GatedAct {
    fn name(&self) -> &'static str {
        match self.0 {
            Gate::Silu => "swiglu",
            Gate::GeluTanh => "geglu",
        }
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _profile = super::profile::span(super::profile::Kind::Elementwise);
        if gl.shape() != ul.shape() {
            bail!(
                "swiglu: gate {:?} and up {:?} differ",
                gl.shape(),
                ul.shape()
            );
        }
        let (g, u) = (logical_f32(gs, gl)?, logical_f32(us, ul)?);
        let gate = self.0;
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(yc, (gc, uc))| {
                let mut s = [0f32; BLOCK];
                let blocks = yc
                    .chunks_mut(BLOCK)
                    .zip(gc.chunks(BLOCK))
                    .zip(uc.chunks(BLOCK));
                for ((yb, gb), ub) in blocks {
                    gate.prepare(gb, &mut s);
                    for (((o, &g), &u), &s) in yb.iter_mut().zip(gb).zip(ub).zip(&s) {
                        *o = gate.value(g, s) * u;
                    }
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
        let _profile = super::profile::span(super::profile::Kind::Elementwise);
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
        let kind = self.0;
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
                    let mut s = [0f32; BLOCK];
                    for (at, gb) in gc.chunks(BLOCK).enumerate() {
                        kind.prepare(gb, &mut s);
                        let r = at * BLOCK..at * BLOCK + gb.len();
                        let outs = dgc[r.clone()].iter_mut().zip(&mut duc[r.clone()]);
                        let ins = gb.iter().zip(&uc[r.clone()]).zip(&dc[r]).zip(&s);
                        for ((og, ou), (((&g, &u), &d), &s)) in outs.zip(ins) {
                            let (a, da) = kind.eval(g, s);
                            *og = d * u * da;
                            *ou = d * a;
                        }
                    }
                }),
            (true, false) => {
                dg.par_chunks_mut(CHUNK)
                    .zip(inputs)
                    .for_each(|(o, ((gc, uc), dc))| {
                        let mut s = [0f32; BLOCK];
                        for (at, gb) in gc.chunks(BLOCK).enumerate() {
                            kind.prepare(gb, &mut s);
                            let r = at * BLOCK..at * BLOCK + gb.len();
                            let ins = gb.iter().zip(&uc[r.clone()]).zip(&dc[r.clone()]).zip(&s);
                            for (o, (((&g, &u), &d), &s)) in o[r].iter_mut().zip(ins) {
                                *o = d * u * kind.eval(g, s).1;
                            }
                        }
                    })
            }
            (false, true) => du
                .par_chunks_mut(CHUNK)
                .zip(inputs)
                .for_each(|(o, ((gc, _), dc))| {
                    let mut s = [0f32; BLOCK];
                    for (at, gb) in gc.chunks(BLOCK).enumerate() {
                        kind.prepare(gb, &mut s);
                        let r = at * BLOCK..at * BLOCK + gb.len();
                        for ((o, (&g, &d)), &s) in
                            o[r.clone()].iter_mut().zip(gb.iter().zip(&dc[r])).zip(&s)
                        {
                            *o = d * kind.value(g, s);
                        }
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
    gated(path, gate, up, Gate::Silu)
}

/// `gelu_tanh(gate) · up` (GeGLU with `gelu_pytorch_tanh`) for two f32 tensors of one shape.
pub fn geglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    geglu_with(OpPath::Auto, gate, up)
}

/// [`geglu`] through the kernel `path` picks for the device.
pub fn geglu_with(path: OpPath, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gated(path, gate, up, Gate::GeluTanh)
}

fn gated(path: OpPath, gate: &Tensor, up: &Tensor, kind: Gate) -> Result<Tensor> {
    if !path.fused_on(gate.device()) || gate.dtype() != DType::F32 {
        return match kind {
            Gate::Silu => super::generic_rowwise::swiglu(gate, up),
            Gate::GeluTanh => super::generic_rowwise::geglu(gate, up),
        };
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
    gate.apply_op2(up, GatedAct(kind))
}
