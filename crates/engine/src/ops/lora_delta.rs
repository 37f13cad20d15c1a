//! The LoRA delta `scale · B·(A·dropout(x))` as one autograd op.
//!
//! Written as candle ops, one adapter records about eight graph nodes (mask, mul, two
//! transposes, two matmuls, scale, add), each with its own allocation, and keeps the dropped-out
//! copy of `x` alive until backward: ~5 MB per SmolLM2 block, 150 MB per step. This op keeps
//! only its inputs (which the base matmul keeps anyway), regenerates the dropout mask from its
//! seed in backward, and recomputes the tiny `[n, r]` intermediate instead of storing it.
//!
//! The mask is a counter-based hash of (seed, element index), so forward, backward and a
//! checkpointed recomputation all see the same mask without storing it.

use super::dropout::DropoutMask;
use super::generic::OpPath;
use super::{cpu_to_tensor, tensor_to_cpu};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

struct LoraDelta {
    scale: f64,
    dropout: Option<DropoutMask>,
}

/// `[..., k] → [rows, k]`
fn rows(t: &Tensor) -> Result<Tensor> {
    let k = t.dim(candle_core::D::Minus1)?;
    t.reshape((t.elem_count() / k.max(1), k))
}

impl LoraDelta {
    fn dropped(&self, x: &Tensor) -> Result<Tensor> {
        match &self.dropout {
            Some(m) => m.on(x),
            None => Ok(x.clone()),
        }
    }

    /// `(x_dropped [n, in], h = x_dropped·Aᵀ [n, r])`
    fn inner(&self, x: &Tensor, a: &Tensor) -> Result<(Tensor, Tensor)> {
        let xd = rows(&self.dropped(x)?)?;
        let h = xd.matmul(&a.t()?)?;
        Ok((xd, h))
    }
}

impl CustomOp3 for LoraDelta {
    fn name(&self) -> &'static str {
        "lora-delta"
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
        let (x, a, b) = (
            cpu_to_tensor(xs, xl)?,
            cpu_to_tensor(as_, al)?,
            cpu_to_tensor(bs, bl)?,
        );
        let (_, h) = self.inner(&x, &a)?;
        let y = (h * self.scale)?.matmul(&b.t()?)?;
        let mut dims = x.dims().to_vec();
        *dims.last_mut().unwrap_or(&mut 0) = b.dim(0)?;
        Ok((tensor_to_cpu(&y)?, Shape::from(dims)))
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
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let g = rows(&grad.detach().contiguous()?)?;
        let (xd, h) = self.inner(&x, &a)?;
        let db = (g.t()?.matmul(&h)? * self.scale)?;
        let dh = (g.matmul(&b)? * self.scale)?;
        let da = dh.t()?.matmul(&xd)?;
        let dx = self.dropped(&dh.matmul(&a)?)?.reshape(x.shape())?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// `scale · B·(A·dropout(x))` for `x: [..., in]`, `a: [r, in]`, `b: [out, r]`, all f32.
/// `dropout` is `None` outside training.
pub fn lora_delta(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    lora_delta_with(OpPath::Auto, x, a, b, scale, dropout)
}

/// [`lora_delta`] through the kernel `path` picks for `x`'s device (the generic op off the
/// CPU or for non-f32 activations).
pub fn lora_delta_with(
    path: OpPath,
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<DropoutMask>,
) -> Result<Tensor> {
    if !path.fused_on(x.device()) || x.dtype() != candle_core::DType::F32 {
        return super::generic_linear::lora_delta(x, a, b, scale, dropout);
    }
    let tracked = x.track_op() || a.track_op() || b.track_op();
    let op = LoraDelta { scale, dropout };
    if tracked {
        return x.apply_op3(a, b, op);
    }
    // Untracked (inference): the same arithmetic from plain ops, no graph.
    let shape = x.dims().to_vec();
    let xd = match &op.dropout {
        Some(m) => x.mul(&m.tensor(x.shape(), x.device())?)?,
        None => x.clone(),
    };
    let h = rows(&xd)?.matmul(&a.t()?)?;
    let y = (h * scale)?.matmul(&b.t()?)?;
    let mut out = shape;
    *out.last_mut().unwrap_or(&mut 0) = b.dim(0)?;
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_diff, uniform};
    use candle_core::{Device, Var};

    /// The fused op and the same arithmetic written as candle ops agree in value and in all
    /// three gradients, with and without dropout, for a batched `x`.
    #[test]
    fn matches_composite_ops_and_their_gradients() {
        for dropout in [None, Some(DropoutMask { p: 0.3, seed: 7 })] {
            let x = Var::from_tensor(&uniform(&[2, 5, 12], 1)).unwrap();
            let a = Var::from_tensor(&uniform(&[4, 12], 2)).unwrap();
            let b = Var::from_tensor(&uniform(&[9, 4], 3)).unwrap();
            let r = uniform(&[2, 5, 9], 4);
            let scale = 1.75;

            let y = lora_delta(&x, &a, &b, scale, dropout).unwrap();
            let xd = match dropout {
                Some(m) => x.mul(&m.tensor(x.shape(), &Device::Cpu).unwrap()).unwrap(),
                None => x.as_tensor().clone(),
            };
            let want = (xd.broadcast_matmul(&a.t().unwrap()).unwrap() * scale)
                .unwrap()
                .broadcast_matmul(&b.t().unwrap())
                .unwrap();
            assert!(max_diff(&y, &want) < 1e-5);

            let g1 = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (want * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &a, &b] {
                let (p, q) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert_eq!(p.dims(), q.dims());
                assert!(
                    max_diff(p, q) < 1e-5,
                    "gradient differs: {}",
                    max_diff(p, q)
                );
            }
        }
    }

    #[test]
    fn dropout_keeps_about_one_minus_p_and_rescales() {
        let m = DropoutMask { p: 0.25, seed: 11 };
        let mut v = vec![1f32; 40_000];
        m.apply(&mut v);
        let kept = v.iter().filter(|&&x| x != 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        assert!(v.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.75).abs() < 1e-6));
        // Same seed, same mask; another seed, another mask.
        let mut w = vec![1f32; 40_000];
        m.apply(&mut w);
        assert_eq!(v, w);
        DropoutMask { p: 0.25, seed: 12 }.apply(&mut w);
        assert_ne!(v, w);
    }

    #[test]
    fn untracked_inputs_give_the_same_value() {
        let (x, a, b) = (
            uniform(&[6, 8], 5),
            uniform(&[2, 8], 6),
            uniform(&[3, 2], 7),
        );
        let m = Some(DropoutMask { p: 0.5, seed: 3 });
        let plain = lora_delta(&x, &a, &b, 2.0, m).unwrap();
        let av = Var::from_tensor(&a).unwrap();
        let fused = lora_delta(&x, &av, &b, 2.0, m).unwrap();
        assert!(max_diff(&plain, &fused) < 1e-6);
    }
}
