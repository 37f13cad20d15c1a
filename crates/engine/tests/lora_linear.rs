//! The fused LoRA linear op (`x·Wᵀ + scale·B·(A·dropout(x))` with a frozen dense `W`) against
//! the composite path it replaces (`frozen_linear + lora_delta`): value and gradients of x, A and
//! B, with and without dropout, for batched, non-contiguous and bf16-weight cases; its gradients
//! against central finite differences; no gradient for frozen operands; and `Linear::forward`
//! choosing it without changing the result.

use candle_core::{DType, Device, Tensor, Var};
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::linear::{Base, Linear};
use peft_engine::model::lora::Lora;
use peft_engine::ops::frozen_linear;
use peft_engine::ops::lora_linear;
use peft_engine::ops::{lora_delta, DropoutMask};
use peft_engine::test_support::{max_diff, uniform};

const MASK: DropoutMask = DropoutMask { p: 0.3, seed: 7 };

/// Fused vs composite for `x = view(xv)`: the value and the gradients of `xv`, A and B under the
/// loss `Σ y⊙r`.
fn compare(xv: &Var, view: impl Fn(&Tensor) -> Tensor, w: &Tensor, dropout: Option<DropoutMask>) {
    let x = view(xv.as_tensor());
    let (out, inp) = w.dims2().unwrap();
    let a = Var::from_tensor(&uniform(&[4, inp], 2)).unwrap();
    let b = Var::from_tensor(&uniform(&[out, 4], 3)).unwrap();
    let scale = 1.75;
    let fused = lora_linear(&x, w, &a, &b, scale, dropout).unwrap();
    let old =
        (frozen_linear(&x, w).unwrap() + lora_delta(&x, &a, &b, scale, dropout).unwrap()).unwrap();
    assert_eq!(fused.dims(), old.dims());
    assert!(
        max_diff(&fused, &old) < 1e-5,
        "value differs: {}",
        max_diff(&fused, &old)
    );

    let r = uniform(fused.dims(), 4);
    let g1 = (fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = (old * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for v in [xv, &a, &b] {
        let (p, q) = (g1.get(v).unwrap(), g2.get(v).unwrap());
        assert_eq!(p.dims(), q.dims());
        assert!(
            max_diff(p, q) < 1e-5,
            "gradient differs: {}",
            max_diff(p, q)
        );
    }
    assert!(g1.get(w).is_none(), "the frozen base must get no gradient");
}

#[test]
fn matches_the_composite_path_batched_with_and_without_dropout() {
    let w = uniform(&[9, 12], 1);
    for dropout in [None, Some(MASK)] {
        let x = Var::from_tensor(&uniform(&[2, 5, 12], 5)).unwrap();
        compare(&x, |t| t.clone(), &w, dropout);
        let x2 = Var::from_tensor(&uniform(&[7, 12], 6)).unwrap();
        compare(&x2, |t| t.clone(), &w, dropout);
    }
}

#[test]
fn matches_the_composite_path_for_a_non_contiguous_input() {
    let w = uniform(&[9, 12], 1);
    for dropout in [None, Some(MASK)] {
        // [2, 12, 5] seen as [2, 5, 12]: the op reads x through its strides.
        let x = Var::from_tensor(&uniform(&[2, 12, 5], 8)).unwrap();
        compare(&x, |t| t.transpose(1, 2).unwrap(), &w, dropout);
        // A narrowed view with an offset.
        let x = Var::from_tensor(&uniform(&[3, 6, 12], 9)).unwrap();
        compare(&x, |t| t.narrow(1, 2, 3).unwrap(), &w, dropout);
    }
}

#[test]
fn matches_the_composite_path_with_a_bf16_base() {
    let w = uniform(&[9, 12], 1).to_dtype(DType::BF16).unwrap();
    for dropout in [None, Some(MASK)] {
        let x = Var::from_tensor(&uniform(&[2, 5, 12], 5)).unwrap();
        compare(&x, |t| t.clone(), &w, dropout);
    }
}

/// The loss `Σ y⊙r` summed in f64; it is linear in each of x, A and B separately (the dropout
/// mask is fixed by its seed), so central differences are exact up to the f32 rounding of `y`.
#[test]
fn gradients_match_central_finite_differences() {
    let (n, inp, out, rank) = (3, 5, 4, 2);
    let w = uniform(&[out, inp], 11);
    let r = uniform(&[n, out], 12).to_vec2::<f32>().unwrap();
    for dropout in [None, Some(DropoutMask { p: 0.4, seed: 3 })] {
        let x = Var::from_tensor(&uniform(&[n, inp], 13)).unwrap();
        let a = Var::from_tensor(&uniform(&[rank, inp], 14)).unwrap();
        let b = Var::from_tensor(&uniform(&[out, rank], 15)).unwrap();
        let scale = 0.8;
        let loss = |x: &Tensor, a: &Tensor, b: &Tensor| -> f64 {
            let y = lora_linear(x, &w, a, b, scale, dropout)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            y.iter()
                .flatten()
                .zip(r.iter().flatten())
                .map(|(&y, &r)| y as f64 * r as f64)
                .sum()
        };
        let rt = Tensor::from_vec(r.concat(), (n, out), &Device::Cpu).unwrap();
        let y = lora_linear(&x, &w, &a, &b, scale, dropout).unwrap();
        let grads = (y * &rt).unwrap().sum_all().unwrap().backward().unwrap();

        let eps = 1e-2f32;
        for which in 0..3 {
            let var = [&x, &a, &b][which];
            let base = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let analytic = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (i, &g) in analytic.iter().enumerate() {
                let at = |d: f32| {
                    let mut v = base.clone();
                    v[i] += d;
                    let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                    let (x, a, b) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
                    match which {
                        0 => loss(&t, a, b),
                        1 => loss(x, &t, b),
                        _ => loss(x, a, &t),
                    }
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                assert!(
                    (fd - g as f64).abs() < 1e-3 * (1.0 + fd.abs()),
                    "operand {which}, element {i}: analytic {g} vs finite difference {fd}"
                );
            }
        }
    }
}

#[test]
fn frozen_operands_get_no_gradient() {
    let w = uniform(&[9, 12], 1);
    let (xt, at, bt) = (
        uniform(&[2, 5, 12], 5),
        uniform(&[4, 12], 2),
        uniform(&[9, 4], 3),
    );
    let r = uniform(&[2, 5, 9], 4);
    let (xv, av, bv) = (
        Var::from_tensor(&xt).unwrap(),
        Var::from_tensor(&at).unwrap(),
        Var::from_tensor(&bt).unwrap(),
    );
    let (x, a, b) = (xv.as_tensor(), av.as_tensor(), bv.as_tensor());
    let full = lora_linear(x, &w, a, b, 2.0, Some(MASK)).unwrap();
    let all = (full * &r).unwrap().sum_all().unwrap().backward().unwrap();
    // Each operand frozen in turn: it gets nothing, the others get what they got before.
    for (x, a, b, frozen) in [
        (&xt, a, b, 0usize),
        (x, &at, b, 1),
        (x, a, &bt, 2),
        (x, &at, &bt, 3),
    ] {
        let y = lora_linear(x, &w, a, b, 2.0, Some(MASK)).unwrap();
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, (t, v)) in [(x, &xv), (a, &av), (b, &bv)].into_iter().enumerate() {
            match g.get(t) {
                Some(got) => {
                    assert!(i != frozen && t.is_variable());
                    assert!(max_diff(got, all.get(v).unwrap()) < 1e-6);
                }
                None => assert!(!t.is_variable(), "operand {i} lost its gradient"),
            }
        }
    }
    // Nothing tracked: a plain forward with the same value and no graph.
    let plain = lora_linear(&xt, &w, &at, &bt, 2.0, Some(MASK)).unwrap();
    assert!(!plain.track_op());
    let tracked = lora_linear(x, &w, a, b, 2.0, Some(MASK)).unwrap();
    assert!(max_diff(&plain, &tracked) < 1e-6);
}

/// `Linear::forward` takes the fused op for a frozen dense base and gives what the old sum
/// (`base + bias + delta`) gives, training dropout included; a trainable base keeps its gradient.
#[test]
fn linear_forward_uses_it_transparently() {
    let (out, inp, rank) = (9, 12, 4);
    let bias = uniform(&[out], 21);
    let x = Var::from_tensor(&uniform(&[2, 5, inp], 22)).unwrap();
    let a = Var::from_tensor(&uniform(&[rank, inp], 23)).unwrap();
    let b = Var::from_tensor(&uniform(&[out, rank], 24)).unwrap();
    let lora = Lora {
        a: a.as_tensor().clone(),
        b: b.as_tensor().clone(),
        scale: 1.5,
        dropout: 0.25,
        stream: 17,
    };
    let ctx = ForwardCtx {
        train: true,
        step_seed: 99,
    };
    for w in [
        uniform(&[out, inp], 20),
        uniform(&[out, inp], 20).to_dtype(DType::BF16).unwrap(),
    ] {
        let layer = Linear {
            base: Base::Dense(w.clone()),
            bias: Some(bias.clone()),
            lora: Some(lora.clone()),
            merged: false,
        };
        let y = layer.forward(&x, &ctx).unwrap();
        let want = ((frozen_linear(&x, &w).unwrap().broadcast_add(&bias).unwrap())
            + lora.forward(&x, &ctx).unwrap())
        .unwrap();
        assert!(max_diff(&y, &want) < 1e-5);
        let r = uniform(y.dims(), 25);
        let g1 = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (want * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &a, &b] {
            assert!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-5);
        }
    }

    // A trainable (Var) base still goes the unfused way and receives its gradient.
    let wv = Var::from_tensor(&uniform(&[out, inp], 20)).unwrap();
    let layer = Linear {
        base: Base::Dense(wv.as_tensor().clone()),
        bias: None,
        lora: Some(lora),
        merged: false,
    };
    let y = layer.forward(&x, &ctx).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&wv).is_some());
}
