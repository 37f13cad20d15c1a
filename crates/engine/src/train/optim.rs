//! AdamW (Loshchilov & Hutter 2019) with state we can save and restore exactly, plus global
//! gradient-norm clipping. candle's `AdamW` keeps its moments private, so a resumed run would
//! restart them from zero; this one exposes them as named tensors for the checkpoint.
//!
//! Update, per parameter `p` with gradient `g` at step `t` (PyTorch's formulation):
//! `p ← p − lr·wd·p`; `m ← β1·m + (1−β1)·g`; `v ← β2·v + (1−β2)·g²`;
//! `p ← p − lr · (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε)`.

use crate::error::Result;
use candle_core::{Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
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
    /// `(name, parameter, m, v)`; the moments as plain buffers, updated in place.
    slots: Vec<(String, Var, Vec<f32>, Vec<f32>)>,
    pub t: u64,
}

/// A tensor's values as f32, in logical order.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

impl AdamW {
    pub fn new(params: &[(String, Var)], settings: AdamWSettings) -> Result<Self> {
        let slots = params
            .iter()
            .map(|(n, v)| {
                let z = vec![0f32; v.elem_count()];
                (n.clone(), v.clone(), z.clone(), z)
            })
            .collect();
        Ok(Self {
            settings,
            slots,
            t: 0,
        })
    }

    /// One update of every parameter. A single fused pass per tensor (parallel over chunks):
    /// written as tensor ops this was ~13 full passes with an allocation each, seconds per
    /// step for full fine-tuning of a 135M model.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let s = &self.settings;
        let (b1, b2) = (s.beta1 as f32, s.beta2 as f32);
        let bc1 = (1.0 - s.beta1.powi(self.t as i32)) as f32;
        let bc2 = (1.0 - s.beta2.powi(self.t as i32)) as f32;
        let (lr32, eps) = (lr as f32, s.eps as f32);
        let decay = (1.0 - lr * s.weight_decay) as f32;
        for ((name, p, m, v), g) in self.slots.iter_mut().zip(grads) {
            let gs = values(g)?;
            let mut theta = values(p.as_tensor())?;
            if gs.len() != theta.len() {
                return Err(crate::Error::invalid(
                    "optimizer",
                    format!(
                        "gradient of {name} has {} values, expected {}",
                        gs.len(),
                        theta.len()
                    ),
                ));
            }
            const CHUNK: usize = 1 << 14;
            theta
                .par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(gs.par_chunks(CHUNK))
                .for_each(|(((th, m), v), g)| {
                    for i in 0..th.len() {
                        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                        let update = (m[i] / bc1) / ((v[i] / bc2).sqrt() + eps);
                        th[i] = th[i] * decay - lr32 * update;
                    }
                });
            let t = Tensor::from_vec(theta, p.shape(), p.device())?.to_dtype(p.dtype())?;
            p.set(&t)?;
        }
        Ok(())
    }

    /// The moments under PyTorch's names (`exp_avg` / `exp_avg_sq`), borrowed, for checkpoints.
    pub fn state_slices(&self) -> Vec<(String, crate::fsutil::F32Slice<'_>)> {
        let mut out = Vec::with_capacity(self.slots.len() * 2);
        for (n, p, m, v) in &self.slots {
            let shape = p.dims().to_vec();
            out.push((
                format!("exp_avg.{n}"),
                crate::fsutil::F32Slice {
                    data: m,
                    shape: shape.clone(),
                },
            ));
            out.push((
                format!("exp_avg_sq.{n}"),
                crate::fsutil::F32Slice { data: v, shape },
            ));
        }
        out
    }

    /// The moments as named tensors (PyTorch's `exp_avg` / `exp_avg_sq`); copies them.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(self.slots.len() * 2);
        for (n, p, m, v) in &self.slots {
            let t = |x: &Vec<f32>| Tensor::from_slice(x, p.shape(), &candle_core::Device::Cpu);
            out.push((format!("exp_avg.{n}"), t(m)?));
            out.push((format!("exp_avg_sq.{n}"), t(v)?));
        }
        Ok(out)
    }

    pub fn load_state(&mut self, t: u64, get: &dyn Fn(&str) -> Result<Tensor>) -> Result<()> {
        for (n, p, m, v) in self.slots.iter_mut() {
            for (key, slot) in [
                (format!("exp_avg.{n}"), &mut *m),
                (format!("exp_avg_sq.{n}"), &mut *v),
            ] {
                let vals = values(&get(&key)?)?;
                if vals.len() != p.elem_count() {
                    return Err(crate::Error::invalid(
                        "optimizer",
                        format!(
                            "{key} has {} values, expected {}",
                            vals.len(),
                            p.elem_count()
                        ),
                    ));
                }
                *slot = vals;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Three steps on a few values equal PyTorch's formula evaluated in f64, and the saved
    /// moments restore into a fresh optimizer that then takes the identical fourth step.
    #[test]
    fn matches_the_formula_in_f64_and_restores_exactly() {
        let init = [0.5f32, -1.25, 2.0, 0.0, 3.5];
        let grads = [[0.1f32, -0.2, 0.3, 0.0, 1.5], [0.05, 0.4, -0.3, 0.2, -1.0]];
        let s = AdamWSettings {
            weight_decay: 0.01,
            ..Default::default()
        };
        let p = Var::from_slice(&init, 5, &candle_core::Device::Cpu).unwrap();
        let mut opt = AdamW::new(&[("w".into(), p.clone())], s.clone()).unwrap();
        let (mut pr, mut m, mut v) = ([0f64; 5], [0f64; 5], [0f64; 5]);
        for (i, x) in init.iter().enumerate() {
            pr[i] = *x as f64;
        }
        let lr = 0.01;
        for t in 1..=3 {
            let g = grads[t % 2];
            let gt = Tensor::from_slice(&g, 5, &candle_core::Device::Cpu).unwrap();
            opt.step(&[gt], lr).unwrap();
            for i in 0..5 {
                let gi = g[i] as f64;
                pr[i] *= 1.0 - lr * s.weight_decay;
                m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * gi;
                v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * gi * gi;
                let mh = m[i] / (1.0 - s.beta1.powi(t as i32));
                let vh = v[i] / (1.0 - s.beta2.powi(t as i32));
                pr[i] -= lr * mh / (vh.sqrt() + s.eps);
            }
            let got = p.as_tensor().to_vec1::<f32>().unwrap();
            for i in 0..5 {
                assert!(
                    (got[i] as f64 - pr[i]).abs() < 1e-6,
                    "step {t}: {} vs {}",
                    got[i],
                    pr[i]
                );
            }
        }
        let saved: std::collections::HashMap<String, Tensor> =
            opt.state_tensors().unwrap().into_iter().collect();
        let q = Var::from_tensor(p.as_tensor()).unwrap();
        let mut fresh = AdamW::new(&[("w".into(), q.clone())], s).unwrap();
        fresh.load_state(opt.t, &|n| Ok(saved[n].clone())).unwrap();
        let g = Tensor::from_slice(&grads[0], 5, &candle_core::Device::Cpu).unwrap();
        opt.step(std::slice::from_ref(&g), lr).unwrap();
        fresh.step(&[g], lr).unwrap();
        assert_eq!(
            p.as_tensor().to_vec1::<f32>().unwrap(),
            q.as_tensor().to_vec1::<f32>().unwrap()
        );
    }
}
