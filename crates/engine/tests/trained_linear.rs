//! The trained linear of full and selective fine-tuning (`x·Wᵀ` whose backward writes `dW`
//! into the trainer's buffer): value, `dx` and `dW` against candle's matmul on the same
//! operands, `dW` accumulating over micro-batches in place, and central finite differences.

use candle_core::{Device, Tensor, Var};
use peft_engine::ops::{trained_linear, WeightGrads};
use peft_engine::test_support::{max_diff, uniform};

fn dw(grads: &WeightGrads, w: &Var) -> Tensor {
    let v = grads.take(w.as_tensor().id()).expect("a weight gradient");
    Tensor::from_vec(v, w.shape(), &Device::Cpu).unwrap()
}

#[test]
fn equals_candles_matmul_and_accumulates_over_micro_batches() {
    let (out, inp) = (9, 12);
    let w = Var::from_tensor(&uniform(&[out, inp], 1)).unwrap();
    let grads = WeightGrads::default();
    let mut want_dw: Option<Tensor> = None;
    for (i, dims) in [[2usize, 5, inp], [1, 3, inp]].iter().enumerate() {
        let x = Var::from_tensor(&uniform(dims, 10 + i as u64)).unwrap();
        let y = trained_linear(&x, &w, &grads).unwrap();
        let reference = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        assert!(max_diff(&y, &reference) < 1e-5);
        let r = uniform(y.dims(), 20 + i as u64);
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&w).is_none(), "dW goes to the buffer, not the store");
        let g2 = (reference * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(max_diff(g.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-5);
        let step = g2.get(&w).unwrap().clone();
        want_dw = Some(match want_dw {
            Some(acc) => (acc + step).unwrap(),
            None => step,
        });
    }
    // Two micro-batches summed in the buffer, then taken: the next step starts empty.
    let got = dw(&grads, &w);
    assert!(max_diff(&got, want_dw.as_ref().unwrap()) < 1e-5);
    assert!(grads.take(w.as_tensor().id()).is_none());
}

#[test]
fn an_untracked_input_still_gives_the_weight_its_gradient() {
    let w = Var::from_tensor(&uniform(&[4, 6], 2)).unwrap();
    let x = uniform(&[3, 6], 3);
    let grads = WeightGrads::default();
    let y = trained_linear(&x, &w, &grads).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_none());
    // d(Σ x·Wᵀ)/dW[o, i] = Σ_rows x[row, i].
    let want = x
        .sum_keepdim(0)
        .unwrap()
        .broadcast_as((4, 6))
        .unwrap()
        .contiguous()
        .unwrap();
    assert!(max_diff(&dw(&grads, &w), &want) < 1e-5);
}

#[test]
fn weight_gradient_matches_central_finite_differences() {
    let (n, inp, out) = (3, 5, 4);
    let x = uniform(&[n, inp], 4);
    let r = uniform(&[n, out], 5);
    let w0 = uniform(&[out, inp], 6);
    let w = Var::from_tensor(&w0).unwrap();
    let grads = WeightGrads::default();
    let y = trained_linear(&x, &w, &grads).unwrap();
    (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let analytic = dw(&grads, &w)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let loss = |wt: &Tensor| -> f64 {
        let y = trained_linear(&x, wt, &WeightGrads::default()).unwrap();
        let v = (y * &r).unwrap().sum_all().unwrap().to_scalar::<f32>();
        v.unwrap() as f64
    };
    let base = w0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let eps = 1e-2f32;
    for (i, &g) in analytic.iter().enumerate() {
        let at = |d: f32| {
            let mut v = base.clone();
            v[i] += d;
            loss(&Tensor::from_vec(v, (out, inp), &Device::Cpu).unwrap())
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        assert!(
            (fd - g as f64).abs() < 1e-3 * (1.0 + fd.abs()),
            "{i}: {g} vs {fd}"
        );
    }
}
