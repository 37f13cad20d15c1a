//! The fused LoRA linear over a quantized base widened tile by tile (QLoRA on the same op as
//! LoRA): against the dense fused op on the same (dequantized) weight, value and the gradients
//! of x, A and B, across partial tiles, with dropout and strided inputs; and `Linear::forward`
//! over NF4 and a GGUF block type against the composite it replaces (the format's own frozen
//! op plus the separate delta).

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, Var};
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::linear::{Base, Linear};
use peft_engine::model::lora::Lora;
use peft_engine::ops::{lora_linear, lora_linear_rows, DropoutMask, FrozenRows};
use peft_engine::quant::ggml::GgmlWeight;
use peft_engine::quant::nf4::Nf4Tensor;
use peft_engine::quant::nf4_op::Nf4Linear;
use peft_engine::test_support::{max_diff, uniform};
use std::sync::Arc;

/// A dense weight behind the trait, in tiles of `tile` rows (so a 9-row weight in tiles of 2
/// has a partial last tile), counting the rows it widened.
struct Tiled {
    w: Vec<f32>,
    dims: (usize, usize),
    tile: usize,
    widened: std::sync::atomic::AtomicUsize,
}

impl FrozenRows for Tiled {
    fn dims(&self) -> (usize, usize) {
        self.dims
    }

    fn widen_rows_into(&self, r0: usize, r1: usize, out: &mut [f32]) -> candle_core::Result<()> {
        let k = self.dims.1;
        out.copy_from_slice(&self.w[r0 * k..r1 * k]);
        self.widened
            .fetch_add(r1 - r0, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn tile_rows(&self) -> usize {
        self.tile
    }
}

fn grads_of(y: &Tensor, r: &Tensor) -> candle_core::backprop::GradStore {
    (y * r).unwrap().sum_all().unwrap().backward().unwrap()
}

/// Value and gradients of x, A and B through `rows` against the dense op on `w`.
fn compare(w: &Tensor, rows: Arc<dyn FrozenRows>, x: &Tensor, vars: [&Var; 3], drop: bool) {
    let dropout = drop.then_some(DropoutMask { p: 0.3, seed: 5 });
    let (a, b) = (vars[1].as_tensor(), vars[2].as_tensor());
    let got = lora_linear_rows(x, rows, a, b, 1.25, dropout).unwrap();
    let want = lora_linear(x, w, a, b, 1.25, dropout).unwrap();
    assert_eq!(got.dims(), want.dims());
    assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
    let r = uniform(got.dims(), 40);
    let (g1, g2) = (grads_of(&got, &r), grads_of(&want, &r));
    for v in vars {
        let (p, q) = (g1.get(v).unwrap(), g2.get(v).unwrap());
        assert!(
            max_diff(p, q) < 1e-5,
            "gradient differs by {}",
            max_diff(p, q)
        );
    }
}

#[test]
fn tiles_of_rows_equal_the_dense_op_forward_and_backward() {
    let (out, inp) = (9, 12);
    let w = uniform(&[out, inp], 1);
    for tile in [1, 2, 4, 9, 64] {
        let rows = Arc::new(Tiled {
            w: w.flatten_all().unwrap().to_vec1().unwrap(),
            dims: (out, inp),
            tile,
            widened: Default::default(),
        });
        for drop in [false, true] {
            let xv = Var::from_tensor(&uniform(&[2, 5, inp], 2)).unwrap();
            let a = Var::from_tensor(&uniform(&[4, inp], 3)).unwrap();
            let b = Var::from_tensor(&uniform(&[out, 4], 4)).unwrap();
            compare(&w, rows.clone(), xv.as_tensor(), [&xv, &a, &b], drop);
            // A strided view: [2, 12, 5] seen as [2, 5, 12].
            let xt = Var::from_tensor(&uniform(&[2, inp, 5], 5)).unwrap();
            let view = xt.as_tensor().transpose(1, 2).unwrap();
            compare(&w, rows.clone(), &view, [&xt, &a, &b], drop);
        }
        // Each forward and each backward widens every row exactly once.
        let n = rows.widened.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(n, 2 * 2 * 2 * out, "tile {tile}: {n} rows widened");
    }
}

#[test]
fn refuses_other_dtypes_with_an_error() {
    let rows: Arc<dyn FrozenRows> = Arc::new(Tiled {
        w: vec![0.0; 6],
        dims: (2, 3),
        tile: 1,
        widened: Default::default(),
    });
    let x = uniform(&[1, 3], 1).to_dtype(DType::BF16).unwrap();
    let (a, b) = (uniform(&[1, 3], 2), uniform(&[2, 1], 3));
    let err = lora_linear_rows(&x, rows, &a, &b, 1.0, None).unwrap_err();
    assert!(err.to_string().contains("f32 input"), "{err}");
}

fn adapter(out: usize, inp: usize) -> (Lora, Var, Var) {
    let a = Var::from_tensor(&uniform(&[4, inp], 23)).unwrap();
    let b = Var::from_tensor(&uniform(&[out, 4], 24)).unwrap();
    let lora = Lora {
        a: a.as_tensor().clone(),
        b: b.as_tensor().clone(),
        scale: 1.5,
        dropout: 0.25,
        stream: 17,
    };
    (lora, a, b)
}

/// `Linear::forward` over `base` with an adapter against `frozen(x) + bias + delta`.
fn layer_equals_composite(base: Base, frozen: impl Fn(&Tensor) -> Tensor, out: usize, inp: usize) {
    let (lora, a, b) = adapter(out, inp);
    let bias = uniform(&[out], 21);
    let x = Var::from_tensor(&uniform(&[2, 7, inp], 22)).unwrap();
    let ctx = ForwardCtx {
        train: true,
        step_seed: 99,
        ..Default::default()
    };
    let layer = Linear {
        base,
        bias: Some(bias.clone()),
        lora: Some(lora.clone()),
        merged: false,
    };
    let y = layer.forward(&x, &ctx).unwrap();
    let want = (frozen(x.as_tensor()).broadcast_add(&bias).unwrap()
        + lora.forward(&x, &ctx).unwrap())
    .unwrap();
    assert!(max_diff(&y, &want) < 1e-4, "{}", max_diff(&y, &want));
    let r = uniform(y.dims(), 25);
    let (g1, g2) = (grads_of(&y, &r), grads_of(&want, &r));
    for v in [&x, &a, &b] {
        let (p, q) = (g1.get(v).unwrap(), g2.get(v).unwrap());
        assert!(
            max_diff(p, q) < 1e-4,
            "gradient differs by {}",
            max_diff(p, q)
        );
    }
}

#[test]
fn an_nf4_layer_with_an_adapter_equals_the_nf4_op_plus_the_delta() {
    let (out, inp) = (48, 128);
    let w = uniform(&[out, inp], 30)
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for dq in [false, true] {
        let q = Arc::new(Nf4Tensor::quantize(&w, (out, inp), dq).unwrap());
        let op = Nf4Linear::new(q.clone()).with_tile_rows(5);
        layer_equals_composite(Base::Nf4(q), |x| op.forward(x).unwrap(), out, inp);
    }
}

#[test]
fn a_gguf_layer_with_an_adapter_equals_the_tiled_op_plus_the_delta() {
    let (out, inp) = (40, 256);
    let w = uniform(&[out, inp], 31);
    for dtype in [GgmlDType::Q4_1, GgmlDType::Q4K, GgmlDType::Q8_0] {
        let q = Arc::new(GgmlWeight::quantize(&w, dtype).unwrap());
        let q2 = q.clone();
        layer_equals_composite(Base::Ggml(q), |x| q2.forward_train(x).unwrap(), out, inp);
    }
    // The widened rows are the dequantized weight's, bit for bit.
    let q = GgmlWeight::quantize(&w, GgmlDType::Q4_1).unwrap();
    let mut rows = vec![0f32; 3 * inp];
    q.widen_rows_into(5, 8, &mut rows).unwrap();
    let want = q.dequantize().unwrap().narrow(0, 5, 3).unwrap();
    let got = Tensor::from_vec(rows, (3, inp), &Device::Cpu).unwrap();
    assert_eq!(max_diff(&got, &want), 0.0);
    let err = q
        .widen_rows_into(39, 41, &mut vec![0f32; 2 * inp])
        .unwrap_err();
    assert!(err.to_string().contains("rows 39..41 of 40"), "{err}");
}
