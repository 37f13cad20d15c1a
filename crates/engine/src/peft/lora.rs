//! Fresh LoRA adapters and their scale. The adapter layer itself (its forward pass and merge
//! delta) is [`crate::model::lora::Lora`].
//!
//! `A` starts Kaiming-uniform (bound `1/√in`, PEFT's `a = √5`) and `B` at zero, so a fresh
//! adapter leaves the model's output unchanged.

use crate::model::lora::Lora;
use crate::seed::mix;
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

/// `alpha / r`, or `alpha / √r` for rsLoRA (Kalajdzievski 2023: keeps the update's scale
/// stable as the rank grows).
pub fn lora_scale(alpha: f64, rank: usize, rslora: bool) -> f64 {
    if rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    }
}

/// A fresh trainable adapter: `A ~ U(−1/√in, 1/√in)` from `(seed, stream)`, `B = 0`; returns
/// the layer's adapter and its two variables (`A`, `B`).
pub fn fresh_adapter(
    in_features: usize,
    out_features: usize,
    rank: usize,
    scale: f64,
    dropout: f32,
    seed: u64,
    stream: u64,
) -> Result<(Lora, Var, Var)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix(seed, stream));
    let bound = 1.0 / (in_features as f32).sqrt();
    let a: Vec<f32> = (0..rank * in_features)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    let a = Var::from_tensor(&Tensor::from_vec(a, (rank, in_features), &Device::Cpu)?)?;
    let b = Var::zeros((out_features, rank), DType::F32, &Device::Cpu)?;
    Ok((
        Lora {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale,
            dropout,
            stream,
        },
        a,
        b,
    ))
}
