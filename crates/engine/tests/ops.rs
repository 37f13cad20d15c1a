//! Our fused ops against candle's composite (autodiff-able) versions and finite differences:
//! forward values and input gradients must agree.

use candle_core::{DType, Device, Tensor, Var, D};
use peft_engine::ops::{causal_softmax, frozen_linear, rms_norm, rope, RopeTables};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Compares value and d(Σ f(x)·r)/dx of two implementations.
fn check(
    shape: &[usize],
    ours: impl Fn(&Tensor) -> Tensor,
    reference: impl Fn(&Tensor) -> Tensor,
    tol: f32,
) {
    let x0 = randn(shape, 7);
    let r = randn(shape, 8);
    let grad = |f: &dyn Fn(&Tensor) -> Tensor| {
        let x = Var::from_tensor(&x0).unwrap();
        let y = f(x.as_tensor());
        let r = if y.dims() == r.dims() {
            r.clone()
        } else {
            randn(y.dims(), 8)
        };
        let loss = (y.clone() * r).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        (
            y,
            g.get(x.as_tensor()).expect("no gradient reached x").clone(),
        )
    };
    let (ya, ga) = grad(&ours);
    let (yb, gb) = grad(&reference);
    assert!(
        max_diff(&ya, &yb) < tol,
        "forward differs: {}",
        max_diff(&ya, &yb)
    );
    assert!(
        max_diff(&ga, &gb) < tol,
        "gradient differs: {}",
        max_diff(&ga, &gb)
    );
}

/// Central finite differences of Σ f(x)·r at a few coordinates, in f64 from f32 evaluations.
fn finite_difference(shape: &[usize], f: impl Fn(&Tensor) -> Tensor) {
    let x0 = randn(shape, 3);
    let r = randn(f(&x0).dims(), 4);
    let loss = |x: &Tensor| -> f64 {
        (f(x) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let x = Var::from_tensor(&x0).unwrap();
    let g = (f(x.as_tensor()) * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let base = x0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let eps = 1e-2f32;
    for &i in &[0usize, 5, base.len() / 2, base.len() - 1] {
        let mut p = base.clone();
        p[i] += eps;
        let mut m = base.clone();
        m[i] -= eps;
        let tp = Tensor::from_vec(p, shape, &Device::Cpu).unwrap();
        let tm = Tensor::from_vec(m, shape, &Device::Cpu).unwrap();
        let fd = (loss(&tp) - loss(&tm)) / (2.0 * eps as f64);
        let err = (fd - g[i] as f64).abs();
        assert!(
            err < 2e-2 * (1.0 + fd.abs()),
            "coord {i}: fd {fd} vs autograd {}",
            g[i]
        );
    }
}

#[test]
fn frozen_linear_matches_matmul_and_keeps_no_weight_gradient() {
    let w = randn(&[12, 16], 1);
    check(
        &[2, 5, 16],
        |x| frozen_linear(x, &w).unwrap(),
        |x| x.broadcast_matmul(&w.t().unwrap()).unwrap(),
        1e-5,
    );
    finite_difference(&[3, 16], |x| frozen_linear(x, &w).unwrap());
    // The frozen weight never appears in the gradient store.
    let x = Var::from_tensor(&randn(&[3, 16], 2)).unwrap();
    let g = frozen_linear(x.as_tensor(), &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(&w).is_none());
}

#[test]
fn rms_norm_matches_composite() {
    let wt = (randn(&[16], 5) + 1.0).unwrap();
    check(
        &[2, 3, 16],
        |x| rms_norm(x, &wt, 1e-5).unwrap(),
        |x| candle_nn::ops::rms_norm_slow(x, &wt, 1e-5).unwrap(),
        1e-5,
    );
    finite_difference(&[4, 16], |x| rms_norm(x, &wt, 1e-5).unwrap());
}

#[test]
fn rope_matches_composite() {
    let tables = RopeTables::new(8, 10000.0, 32, &Device::Cpu).unwrap();
    for offset in [0usize, 5] {
        let cos = tables.cos.narrow(0, offset, 6).unwrap();
        let sin = tables.sin.narrow(0, offset, 6).unwrap();
        check(
            &[2, 3, 6, 8],
            |x| rope(x, &tables, offset).unwrap(),
            |x| candle_nn::rotary_emb::rope_slow(x, &cos, &sin).unwrap(),
            1e-5,
        );
    }
    finite_difference(&[1, 2, 6, 8], |x| rope(x, &tables, 0).unwrap());
}

#[test]
fn causal_softmax_matches_masked_softmax() {
    let scale = 0.35;
    for (q, k) in [(6usize, 6usize), (3, 7)] {
        let offset = k - q;
        let mask: Vec<f32> = (0..q * k)
            .map(|i| {
                if i % k <= i / k + offset {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (q, k), &Device::Cpu).unwrap();
        check(
            &[2, 3, q, k],
            |x| causal_softmax(x, scale, offset).unwrap(),
            |x| {
                candle_nn::ops::softmax(
                    &(x * scale).unwrap().broadcast_add(&mask).unwrap(),
                    D::Minus1,
                )
                .unwrap()
            },
            1e-5,
        );
    }
    finite_difference(&[1, 2, 5, 5], |x| causal_softmax(x, scale, 0).unwrap());
}
