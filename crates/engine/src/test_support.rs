//! Helpers shared by this crate's unit tests, its integration tests (`tests/`) and the shell's
//! tests: seeded random tensors and the differences the numerical checks assert on. Compiled
//! only for tests (`cfg(test)` or the `test-support` feature that `[dev-dependencies]` turns on).

use crate::seed::{mix, SplitMix64};
use candle_core::{Device, Tensor};

/// Uniform values in `[-1, 1)` from `(seed, element index)`: the same tensor on every machine
/// and release.
pub fn uniform(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((mix(seed, i as u64) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches its values")
}

/// Normal values with standard deviation `std` (Box–Muller over SplitMix64).
pub fn normal(shape: &[usize], seed: u64, std: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut g = SplitMix64(seed);
    let mut unit = || ((g.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let (u1, u2) = (unit(), unit());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        v.push((r * t.cos()) as f32 * std);
        v.push((r * t.sin()) as f32 * std);
    }
    v.truncate(n);
    Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches its values")
}

/// Largest absolute element of `t` (any shape, f32).
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|a| a.flatten_all())
        .and_then(|a| a.max(0))
        .and_then(|a| a.to_scalar::<f32>())
        .expect("an f32 tensor")
}

/// Largest absolute difference of two same-shaped f32 tensors.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    max_abs(&(a - b).expect("same shape"))
}

/// Largest absolute difference of two slices of equal length.
pub fn max_diff_slices(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let sq = |t: &Tensor| {
        t.sqr()
            .and_then(|s| s.sum_all())
            .and_then(|s| s.to_scalar::<f32>())
            .expect("an f32 tensor")
    };
    (sq(&(a - b).expect("same shape")) / sq(b)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_has_the_asked_spread_and_uniform_its_range() {
        let x = normal(&[20_000], 3, 2.0).to_vec1::<f32>().unwrap();
        let mean = x.iter().sum::<f32>() / x.len() as f32;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / x.len() as f32;
        assert!(
            mean.abs() < 0.05 && (var.sqrt() - 2.0).abs() < 0.05,
            "{mean} {var}"
        );
        let u = uniform(&[5000], 1).to_vec1::<f32>().unwrap();
        assert!(u.iter().all(|v| (-1.0..1.0).contains(v)));
        assert_eq!(
            uniform(&[7], 9).to_vec1::<f32>().unwrap(),
            uniform(&[7], 9).to_vec1::<f32>().unwrap()
        );
    }
}
