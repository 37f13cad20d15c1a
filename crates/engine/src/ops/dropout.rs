//! LoRA dropout as the fused ops and their generic versions apply it: a counter-based hash of
//! (seed, element index), so forward, backward and a checkpointed recomputation all see the same
//! mask without storing it, on every device.

use crate::seed::mix;
use candle_core::{DType, Result, Shape, Tensor};

/// Dropout as the op applies it: each element kept with probability `1 − p` and scaled by
/// `1 / (1 − p)`, decided by 16 bits of `mix(seed, i / 4)`.
#[derive(Clone, Copy, Debug)]
pub struct DropoutMask {
    pub p: f32,
    pub seed: u64,
}

impl DropoutMask {
    /// Multiplies `x` (flattened, element order) by the mask in place.
    pub fn apply(&self, x: &mut [f32]) {
        let threshold = (self.p as f64 * 65536.0).round() as u64;
        let keep = 1.0 / (1.0 - self.p);
        for (j, quad) in x.chunks_mut(4).enumerate() {
            let bits = mix(self.seed, j as u64);
            for (k, v) in quad.iter_mut().enumerate() {
                let r = (bits >> (16 * k)) & 0xFFFF;
                *v = if r < threshold { 0.0 } else { *v * keep };
            }
        }
    }

    /// `x` times the mask, through a plain copy (inside the op: nothing is tracked).
    pub(crate) fn on(&self, x: &Tensor) -> Result<Tensor> {
        let mut v = x.flatten_all()?.to_vec1::<f32>()?;
        self.apply(&mut v);
        Tensor::from_vec(v, x.shape(), x.device())
    }

    /// The mask as a tensor of `0` and `1/(1−p)`, for the untracked (inference) path.
    pub(crate) fn tensor(&self, shape: &Shape, device: &candle_core::Device) -> Result<Tensor> {
        let mut v = vec![1f32; shape.elem_count()];
        self.apply(&mut v);
        Tensor::from_vec(v, shape, device)
    }

    /// A dropout mask's keep factors as an f32 tensor of `shape` on `device`: `0` or `1/(1−p)`.
    pub(crate) fn keep_tensor(
        &self,
        shape: &Shape,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        let mut ones = vec![1f32; shape.elem_count()];
        self.apply(&mut ones);
        // The fused op's factor, computed in f32 as it does.
        let keep = (1.0f32 / (1.0 - self.p)) as f64;
        // One byte per element crosses to the device, not four.
        let bits: Vec<u8> = ones.iter().map(|&v| (v != 0.0) as u8).collect();
        Tensor::from_vec(bits, shape, device)?.to_dtype(DType::F32)? * keep
    }
}
