//! AdamW (Loshchilov & Hutter 2019) with state we can save and restore exactly, plus global
//! gradient-norm clipping. candle's `AdamW` keeps its moments private, so a resumed run would
//! restart them from zero; this one exposes them as named tensors for the checkpoint.
//!
//! Update, per parameter `p` with gradient `g` at step `t` (PyTorch's formulation):
//! `p ← p − lr·wd·p`; `m ← β1·m + (1−β1)·g`; `v ← β2·v + (1−β2)·g²`;
//! `p ← p − lr · (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε)`.

use crate::error::Result;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay; pulls weights towards zero (0 for LoRA is common).
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

pub struct AdamW {
    pub settings: AdamWSettings,
    /// `(name, param, m, v)`
    slots: Vec<(String, Var, Tensor, Tensor)>,
    /// Steps taken so far.
    pub t: u64,
}

impl AdamW {
    pub fn new(params: &[(String, Var)], settings: AdamWSettings) -> Result<Self> {
        let slots = params
            .iter()
            .map(|(n, v)| {
                let z = v.as_tensor().zeros_like()?;
                Ok((n.clone(), v.clone(), z.clone(), z))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            settings,
            slots,
            t: 0,
        })
    }

    /// Applies one update with learning rate `lr`; `grads[i]` belongs to the i-th parameter.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let s = &self.settings;
        let bc1 = 1.0 - s.beta1.powi(self.t as i32);
        let bc2 = 1.0 - s.beta2.powi(self.t as i32);
        for ((_, p, m, v), g) in self.slots.iter_mut().zip(grads) {
            let mut theta = p.as_tensor().detach();
            if s.weight_decay > 0.0 {
                theta = (&theta * (1.0 - lr * s.weight_decay))?;
            }
            *m = ((&*m * s.beta1)? + (g * (1.0 - s.beta1))?)?;
            *v = ((&*v * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
            let m_hat = (&*m / bc1)?;
            let v_hat = (&*v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + s.eps)?)?;
            p.set(&(theta - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Moments as named tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`) for the checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.slots.len() * 2);
        for (n, _, m, v) in &self.slots {
            out.push((format!("exp_avg.{n}"), m.clone()));
            out.push((format!("exp_avg_sq.{n}"), v.clone()));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, t: u64, get: &dyn Fn(&str) -> Result<Tensor>) -> Result<()> {
        for (n, _, m, v) in self.slots.iter_mut() {
            *m = get(&format!("exp_avg.{n}"))?;
            *v = get(&format!("exp_avg_sq.{n}"))?;
        }
        self.t = t;
        Ok(())
    }
}

/// Scales gradients in place so their global L2 norm is at most `max_norm`; returns the
/// norm before clipping. `max_norm <= 0` disables clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter() {
        total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}
