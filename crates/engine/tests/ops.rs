//! Our fused ops against candle's composite (autodiff-able) versions and finite differences:
//! forward values and input gradients must agree.

use candle_core::{DType, Device, Tensor, Var, D};
use peft_engine::ops::{
    causal_softmax, causal_softmax_grouped, causal_softmax_windowed, frozen_linear, geglu,
    rms_norm, rope, swiglu, RopeTables,
};
use peft_engine::test_support::{max_diff, uniform};

/// Compares value and d(Σ f(x)·r)/dx of two implementations.
fn check(
    shape: &[usize],
    ours: impl Fn(&Tensor) -> Tensor,
    reference: impl Fn(&Tensor) -> Tensor,
    tol: f32,
) {
    let x0 = uniform(shape, 7);
    let r = uniform(shape, 8);
    let grad = |f: &dyn Fn(&Tensor) -> Tensor| {
        let x = Var::from_tensor(&x0).unwrap();
        let y = f(x.as_tensor());
        let r = if y.dims() == r.dims() {
            r.clone()
        } else {
            uniform(y.dims(), 8)
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
    let x0 = uniform(shape, 3);
    let r = uniform(f(&x0).dims(), 4);
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
    let w = uniform(&[12, 16], 1);
    check(
        &[2, 5, 16],
        |x| frozen_linear(x, &w).unwrap(),
        |x| x.broadcast_matmul(&w.t().unwrap()).unwrap(),
        1e-5,
    );
    finite_difference(&[3, 16], |x| frozen_linear(x, &w).unwrap());
    // The frozen weight never appears in the gradient store.
    let x = Var::from_tensor(&uniform(&[3, 16], 2)).unwrap();
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
    let wt = (uniform(&[16], 5) + 1.0).unwrap();
    check(
        &[2, 3, 16],
        |x| rms_norm(x, &wt, 1e-5).unwrap(),
        |x| candle_nn::ops::rms_norm_slow(x, &wt, 1e-5).unwrap(),
        1e-5,
    );
    finite_difference(&[4, 16], |x| rms_norm(x, &wt, 1e-5).unwrap());
}

/// Value and the gradients of both operands of Σ f(a, b)·r, both operands `Var`s.
fn grads2(
    a0: &Tensor,
    b0: &Tensor,
    f: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> (Tensor, Tensor, Tensor) {
    let (a, b) = (Var::from_tensor(a0).unwrap(), Var::from_tensor(b0).unwrap());
    let y = f(a.as_tensor(), b.as_tensor());
    let r = uniform(y.dims(), 9);
    let g = (y.clone() * r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let ga = g.get(a.as_tensor()).expect("no gradient reached a").clone();
    let gb = g.get(b.as_tensor()).expect("no gradient reached b").clone();
    (y, ga, gb)
}

#[test]
fn rms_norm_trains_its_weight_like_composite() {
    let x0 = uniform(&[2, 3, 16], 11);
    let w0 = (uniform(&[16], 12) + 1.0).unwrap();
    let (y, dx, dw) = grads2(&x0, &w0, |x, w| rms_norm(x, w, 1e-5).unwrap());
    let (ye, dxe, dwe) = grads2(&x0, &w0, |x, w| {
        candle_nn::ops::rms_norm_slow(x, w, 1e-5).unwrap()
    });
    assert!(max_diff(&y, &ye) < 1e-5);
    assert!(max_diff(&dx, &dxe) < 1e-5, "dx {}", max_diff(&dx, &dxe));
    assert!(max_diff(&dw, &dwe) < 1e-4, "dw {}", max_diff(&dw, &dwe));
    // The weight gradient against finite differences, with x fixed.
    finite_difference(&[16], |w| rms_norm(&x0, &(w + 1.0).unwrap(), 1e-5).unwrap());
}

#[test]
fn rms_norm_with_a_frozen_weight_returns_only_dx() {
    let x0 = uniform(&[4, 16], 13);
    let w = (uniform(&[16], 14) + 1.0).unwrap();
    let (_, dx_trained, _) = grads2(&x0, &w, |x, w| rms_norm(x, w, 1e-5).unwrap());
    let x = Var::from_tensor(&x0).unwrap();
    let y = rms_norm(x.as_tensor(), &w, 1e-5).unwrap();
    let r = uniform(y.dims(), 9);
    let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(&w).is_none(), "a frozen weight got a gradient");
    assert_eq!(max_diff(g.get(x.as_tensor()).unwrap(), &dx_trained), 0.0);
}

#[test]
fn rms_norm_reads_strided_and_offset_inputs() {
    let w = (uniform(&[16], 15) + 1.0).unwrap();
    let base = uniform(&[16, 6], 16);
    let wide = uniform(&[5, 20], 17);
    for x in [
        base.t().unwrap(),              // transposed
        wide.narrow(1, 2, 16).unwrap(), // row stride 20
        wide.narrow(0, 1, 3).unwrap().narrow(1, 4, 16).unwrap(),
        uniform(&[5, 16], 18).narrow(0, 2, 3).unwrap(), // contiguous, start offset
    ] {
        let dense = x.contiguous().unwrap();
        let got = rms_norm(&x, &w, 1e-5).unwrap();
        assert_eq!(max_diff(&got, &rms_norm(&dense, &w, 1e-5).unwrap()), 0.0);
    }
    // Gradients through a transposed view.
    check(
        &[16, 6],
        |x| rms_norm(&x.t().unwrap(), &w, 1e-5).unwrap(),
        |x| candle_nn::ops::rms_norm_slow(&x.t().unwrap(), &w, 1e-5).unwrap(),
        1e-5,
    );
}

fn swiglu_composite(g: &Tensor, u: &Tensor) -> Tensor {
    (candle_nn::ops::silu(g).unwrap() * u).unwrap()
}

#[test]
fn swiglu_matches_composite() {
    // 27 321 values: several parallel chunks and vectorised σ blocks, each with a tail.
    let (g0, u0) = (
        (uniform(&[3, 7, 1301], 21) * 4.0).unwrap(),
        uniform(&[3, 7, 1301], 22),
    );
    let (y, dg, du) = grads2(&g0, &u0, |g, u| swiglu(g, u).unwrap());
    let (ye, dge, due) = grads2(&g0, &u0, swiglu_composite);
    assert!(max_diff(&y, &ye) < 1e-5);
    assert!(max_diff(&dg, &dge) < 1e-5, "dg {}", max_diff(&dg, &dge));
    assert!(max_diff(&du, &due) < 1e-5, "du {}", max_diff(&du, &due));
    // One operand tracked at a time.
    check(
        &[3, 7, 1301],
        |g| swiglu(g, &u0).unwrap(),
        |g| swiglu_composite(g, &u0),
        1e-5,
    );
    check(
        &[3, 7, 1301],
        |u| swiglu(&g0, u).unwrap(),
        |u| swiglu_composite(&g0, u),
        1e-5,
    );
    let (gs, us) = ((uniform(&[3, 8], 23) * 3.0).unwrap(), uniform(&[3, 8], 24));
    finite_difference(&[3, 8], |g| swiglu(&(g * 3.0).unwrap(), &us).unwrap());
    finite_difference(&[3, 8], |u| swiglu(&gs, u).unwrap());
    // A strided operand reads the same values as its contiguous copy.
    let gt = g0.transpose(1, 2).unwrap();
    let ut = u0.transpose(1, 2).unwrap().contiguous().unwrap();
    assert_eq!(
        max_diff(
            &swiglu(&gt, &ut).unwrap(),
            &swiglu(&gt.contiguous().unwrap(), &ut).unwrap()
        ),
        0.0
    );
}

#[test]
fn swiglu_rejects_mismatched_shapes_and_non_f32() {
    let g = uniform(&[2, 8], 1);
    let err = swiglu(&g, &uniform(&[2, 9], 2)).unwrap_err();
    assert!(err.to_string().contains("differ"), "{err}");
    let err = swiglu(&g, &g.to_dtype(DType::BF16).unwrap()).unwrap_err();
    assert!(err.to_string().contains("f32"), "{err}");
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

/// Grouped-query rows `[b, kv_heads, groups·q, k]` are masked by their position within the
/// group: the same as each group's `[q, k]` block on its own, values and gradients.
#[test]
fn grouped_causal_softmax_equals_per_group() {
    let (groups, q, k, offset) = (3usize, 4usize, 6usize, 2usize);
    let x =
        Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 2, groups * q, k), &Device::Cpu).unwrap())
            .unwrap();
    let g = Tensor::randn(0f32, 1.0, (2, 2, groups * q, k), &Device::Cpu).unwrap();
    let grouped = causal_softmax_grouped(x.as_tensor(), 0.5, offset, q).unwrap();
    let split = causal_softmax(
        &x.as_tensor().reshape((2, 2 * groups, q, k)).unwrap(),
        0.5,
        offset,
    )
    .unwrap()
    .reshape((2, 2, groups * q, k))
    .unwrap();
    let diff = (&grouped - &split)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    let ga = (&grouped * &g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gb = (&split * &g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let (da, db) = (ga.get(&x).unwrap(), gb.get(&x).unwrap());
    let diff = (da - db).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    assert!(causal_softmax_grouped(x.as_tensor(), 0.5, 0, 5).is_err());
}

fn geglu_composite(g: &Tensor, u: &Tensor) -> Tensor {
    // candle's `gelu` is the tanh approximation (`gelu_pytorch_tanh`) and has a backward.
    (g.gelu().unwrap() * u).unwrap()
}

#[test]
fn geglu_matches_composite_and_finite_differences() {
    let (g0, u0) = (
        (uniform(&[2, 5, 40], 31) * 4.0).unwrap(),
        uniform(&[2, 5, 40], 32),
    );
    let (y, dg, du) = grads2(&g0, &u0, |g, u| geglu(g, u).unwrap());
    let (ye, dge, due) = grads2(&g0, &u0, geglu_composite);
    assert!(max_diff(&y, &ye) < 1e-5, "y {}", max_diff(&y, &ye));
    assert!(max_diff(&dg, &dge) < 1e-5, "dg {}", max_diff(&dg, &dge));
    assert!(max_diff(&du, &due) < 1e-5, "du {}", max_diff(&du, &due));
    check(
        &[2, 5, 40],
        |g| geglu(g, &u0).unwrap(),
        |g| geglu_composite(g, &u0),
        1e-5,
    );
    let (gs, us) = ((uniform(&[3, 8], 33) * 3.0).unwrap(), uniform(&[3, 8], 34));
    finite_difference(&[3, 8], |g| geglu(&(g * 3.0).unwrap(), &us).unwrap());
    finite_difference(&[3, 8], |u| geglu(&gs, u).unwrap());
    // Not SwiGLU: the activation differs.
    assert!(max_diff(&geglu(&g0, &u0).unwrap(), &swiglu(&g0, &u0).unwrap()) > 1e-2);
}

#[test]
fn windowed_causal_softmax_matches_masked_softmax() {
    let scale = 0.35;
    // Query at position p sees keys p-w+1 ..= p (transformers' sliding_window_overlay).
    for (q, k, w) in [(7usize, 7usize, 3usize), (3, 9, 4), (5, 5, 1)] {
        let offset = k - q;
        let mask: Vec<f32> = (0..q * k)
            .map(|i| {
                let (row, key) = (i / k + offset, i % k);
                if key <= row && key + w > row {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (q, k), &Device::Cpu).unwrap();
        check(
            &[2, 3, q, k],
            |x| causal_softmax_windowed(x, scale, offset, q, Some(w)).unwrap(),
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
    finite_difference(&[1, 2, 6, 6], |x| {
        causal_softmax_windowed(x, scale, 0, 6, Some(2)).unwrap()
    });
    let x = uniform(&[1, 1, 4, 4], 1);
    assert!(causal_softmax_windowed(&x, scale, 0, 4, Some(0)).is_err());
}

#[test]
fn partial_and_scaled_rope_match_composite() {
    // Tables for 4 of 8 dims (partial rotary 0.5), cos/sin scaled by 1.3 (longrope's
    // attention factor): the first 4 dims rotate-half among themselves, the rest pass through.
    let inv: Vec<f64> = (0..2)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / 2.0))
        .collect();
    let tables = RopeTables::from_inv_freq(&inv, 32, 1.3, &Device::Cpu).unwrap();
    assert_eq!(tables.rotary_dim(), 4);
    for offset in [0usize, 5] {
        let cos = tables.cos.narrow(0, offset, 6).unwrap();
        let sin = tables.sin.narrow(0, offset, 6).unwrap();
        check(
            &[2, 3, 6, 8],
            |x| rope(x, &tables, offset).unwrap(),
            |x| {
                let rot = candle_nn::rotary_emb::rope_slow(&x.narrow(3, 0, 4).unwrap(), &cos, &sin)
                    .unwrap();
                Tensor::cat(&[&rot, &x.narrow(3, 4, 4).unwrap()], 3).unwrap()
            },
            1e-5,
        );
    }
    finite_difference(&[1, 2, 6, 8], |x| rope(x, &tables, 3).unwrap());
}
