//! `--bf16-compute` (`TrainConfig::bf16_compute`): LoRA's frozen base stored in bf16 and multiplied in bf16
//! with f32 sums, on AMX tiles where the CPU has them and emulated elsewhere (the same numbers;
//! `ops::bf16_gemm` checks both kernels against an f64 reference).
//!
//! - the op: the base product equals the f32 product of the bf16-rounded activations and
//!   weight, `dx` the f32 product of the rounded upstream gradient and the weight; the
//!   adapter's part (value, `dA`, `dB`) is the f32 op's, bit for bit;
//! - a layer routes through it only when the forward context asks for bf16 products;
//! - a training run with `bf16` stores its base in bf16, follows the f32 run's loss curve
//!   within 2 % at every step, is not the f32 run (its losses differ), and learns;
//! - QLoRA: the op over NF4 and Q4_1 rows rounded to bf16 tile by tile equals the bf16 op over
//!   the dequantized weight in bf16, and a QLoRA run follows its f32 curve the same way;
//! - full and selective fine-tuning refuse the setting, naming it.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Tensor, Var};
use common::{bundled, text_dataset, STORIES};
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::linear::{Base, Linear};
use peft_engine::model::lora::Lora;
use peft_engine::ops::{lora_linear, lora_linear_bf16, lora_linear_rows_bf16, FrozenRows};
use peft_engine::peft::method::{LoraSettings, Method};
use peft_engine::quant::ggml::GgmlWeight;
use peft_engine::quant::nf4::Nf4Tensor;
use peft_engine::test_support::{max_abs, max_diff, uniform};
use peft_engine::train::{train, TrainConfig};
use std::sync::Arc;

fn rounded(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// Shapes with whole 32-wide tiles (the kernel's weight-rows path) and ragged ones.
const SHAPES: [(usize, usize, usize); 3] = [(37, 64, 96), (40, 172, 64), (9, 50, 70)];

#[test]
fn the_bf16_op_is_the_f32_product_of_rounded_operands_plus_the_f32_adapter() {
    for (m, inp, out) in SHAPES {
        let x = Var::from_tensor(&uniform(&[m, inp], 1)).unwrap();
        let w = uniform(&[out, inp], 2).to_dtype(DType::BF16).unwrap();
        let w32 = w.to_dtype(DType::F32).unwrap();
        let a = Var::from_tensor(&uniform(&[4, inp], 3)).unwrap();
        let b = Var::from_tensor(&uniform(&[out, 4], 4)).unwrap();
        let g = uniform(&[m, out], 5);
        let zero = Tensor::zeros((out, inp), DType::F32, &candle_core::Device::Cpu).unwrap();

        let y = lora_linear_bf16(&x, &w, &a, &b, 1.5, None).unwrap();
        let adapter = lora_linear(&x, &zero, &a, &b, 1.5, None).unwrap();
        let base = rounded(&x).matmul(&w32.t().unwrap()).unwrap();
        let want = (&base + &adapter).unwrap();
        let scale = max_abs(&want);
        assert!(
            max_diff(&y, &want) <= 1e-5 * scale,
            "[{m}, {inp}]→{out}: value off by {}",
            max_diff(&y, &want)
        );

        let got = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let refs = (adapter * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let dx_want = (rounded(&g).matmul(&w32).unwrap() + refs.get(&x).unwrap()).unwrap();
        let dx = got.get(&x).unwrap();
        assert!(
            max_diff(dx, &dx_want) <= 1e-5 * max_abs(&dx_want),
            "[{m}, {inp}]→{out}: dx off by {}",
            max_diff(dx, &dx_want)
        );
        for (name, v) in [("dA", &a), ("dB", &b)] {
            assert_eq!(
                max_diff(got.get(v).unwrap(), refs.get(v).unwrap()),
                0.0,
                "{name}: the adapter's gradient is the f32 op's"
            );
        }
        // And it is not the f32 product: the rounding is real.
        let f32_base = x.matmul(&w32.t().unwrap()).unwrap();
        assert!(max_diff(&base, &f32_base) > 0.0);
    }
}

#[test]
fn a_layer_multiplies_in_bf16_only_when_the_context_asks() {
    let (m, inp, out) = (12, 64, 32);
    let x = uniform(&[m, inp], 7);
    let w = uniform(&[out, inp], 8).to_dtype(DType::BF16).unwrap();
    let lora = Lora {
        a: uniform(&[4, inp], 9),
        b: uniform(&[out, 4], 10),
        scale: 2.0,
        dropout: 0.0,
        stream: 1,
    };
    let layer = Linear {
        base: Base::Dense(w.clone()),
        bias: None,
        lora: Some(lora.clone()),
        merged: false,
    };
    let plain = layer.forward(&x, &ForwardCtx::default()).unwrap();
    let ctx = ForwardCtx {
        bf16_products: true,
        ..Default::default()
    };
    let bf = layer.forward(&x, &ctx).unwrap();
    let want_plain = lora_linear(&x, &w, &lora.a, &lora.b, 2.0, None).unwrap();
    let want_bf = lora_linear_bf16(&x, &w, &lora.a, &lora.b, 2.0, None).unwrap();
    assert_eq!(max_diff(&plain, &want_plain), 0.0);
    assert_eq!(max_diff(&bf, &want_bf), 0.0);
    assert!(
        max_diff(&plain, &bf) > 0.0,
        "the bf16 products changed nothing"
    );
}

#[test]
fn the_bf16_op_refuses_what_it_cannot_multiply() {
    let x = uniform(&[3, 8], 1);
    let (a, b) = (uniform(&[2, 8], 2), uniform(&[4, 2], 3));
    let w32 = uniform(&[4, 8], 4);
    assert!(lora_linear_bf16(&x, &w32, &a, &b, 1.0, None).is_err());
    let w = w32.to_dtype(DType::BF16).unwrap();
    let xb = x.to_dtype(DType::BF16).unwrap();
    assert!(lora_linear_bf16(&xb, &w, &a, &b, 1.0, None).is_err());
    let short = uniform(&[3, 7], 5);
    assert!(lora_linear_bf16(&short, &w, &a, &b, 1.0, None).is_err());
}

fn lora_cfg(bf16: bool) -> TrainConfig {
    TrainConfig {
        method: Method::Lora(LoraSettings {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            ..Default::default()
        }),
        seq_len: 64,
        batch_size: 2,
        max_steps: Some(12),
        lr: 5e-3,
        val_fraction: 0.0,
        bf16_compute: bf16,
        ..Default::default()
    }
}

#[test]
fn a_bf16_run_follows_the_f32_loss_curve_and_keeps_its_base_in_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_dataset(dir.path(), &STORIES);
    let (mut runs, mut base_bytes) = (Vec::new(), Vec::new());
    for bf16 in [false, true] {
        let out = dir.path().join(format!("run-{bf16}"));
        let s = train(
            &bundled(),
            &data,
            &out,
            &lora_cfg(bf16),
            None,
            None,
            &mut |_, _| {},
        )
        .unwrap();
        let how = s.storage.compute_dtype.clone().unwrap_or_default();
        assert_eq!(
            how.contains("bf16 products"),
            bf16,
            "bf16 {bf16}: computing in {how}"
        );
        runs.push(s.losses);
        base_bytes.push(s.storage.base_bytes as f64);
    }
    // Every matrix in bf16 (the norms stay f32): about half the f32 base.
    let ratio = base_bytes[1] / base_bytes[0];
    assert!(
        (0.5..0.55).contains(&ratio),
        "bf16 base is {ratio:.3} of f32's"
    );
    let (f32_run, bf16_run) = (&runs[0], &runs[1]);
    assert_eq!(f32_run.len(), bf16_run.len());
    let mut differs = false;
    for ((step, want), (_, got)) in f32_run.iter().zip(bf16_run) {
        let gap = (got - want).abs() / want;
        eprintln!(
            "step {step}: f32 {want:.5}  bf16 {got:.5}  ({:.3} %)",
            100.0 * gap
        );
        assert!(
            gap <= 0.02,
            "step {step}: bf16 loss {got} is {gap:.4} from f32's {want}"
        );
        differs |= got != want;
    }
    assert!(
        differs,
        "the bf16 run computed exactly the f32 run's losses"
    );
    let (first, last) = (bf16_run[0].1, bf16_run.last().unwrap().1);
    assert!(last < first, "bf16 run: loss {first} → {last}");
}

#[test]
fn bf16_is_refused_where_the_weights_train() {
    let selective = Method::Selective {
        what: peft_engine::peft::method::Selective::Norm,
    };
    for method in [Method::Full, selective] {
        let cfg = TrainConfig {
            method,
            ..lora_cfg(true)
        };
        let err = peft_engine::train::prepare::validate(&cfg)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bf16_compute"), "{err}");
    }
    assert!(peft_engine::train::prepare::validate(&lora_cfg(true)).is_ok());
    let qlora = TrainConfig {
        method: Method::Qlora(LoraSettings::default()),
        ..lora_cfg(true)
    };
    assert!(peft_engine::train::prepare::validate(&qlora).is_ok());
}

#[test]
fn qlora_rows_in_bf16_equal_the_bf16_op_over_the_dequantized_weight() {
    let (m, inp, out) = (21, 64, 96);
    let w = uniform(&[out, inp], 30);
    let nf4 = Nf4Tensor::quantize(
        &w.flatten_all().unwrap().to_vec1().unwrap(),
        (out, inp),
        true,
    )
    .unwrap();
    let q41 = Arc::new(GgmlWeight::quantize(&w, GgmlDType::Q4_1).unwrap());
    let cases: Vec<(Arc<dyn FrozenRows>, Tensor)> = vec![
        (Arc::new(nf4.clone()), nf4.dequantize().unwrap()),
        (q41.clone(), q41.dequantize().unwrap()),
    ];
    for (rows, dense) in cases {
        let x = Var::from_tensor(&uniform(&[m, inp], 1)).unwrap();
        let a = Var::from_tensor(&uniform(&[4, inp], 3)).unwrap();
        let b = Var::from_tensor(&uniform(&[out, 4], 4)).unwrap();
        let g = uniform(&[m, out], 5);
        let wb = dense.to_dtype(DType::BF16).unwrap();
        let y = lora_linear_rows_bf16(&x, rows, &a, &b, 0.5, None).unwrap();
        let want = lora_linear_bf16(&x, &wb, &a, &b, 0.5, None).unwrap();
        assert!(max_diff(&y, &want) <= 1e-5 * max_abs(&want));
        let got = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let refs = (want * &g).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &a, &b] {
            let (p, q) = (got.get(v).unwrap(), refs.get(v).unwrap());
            assert!(
                max_diff(p, q) <= 1e-5 * max_abs(q),
                "gradient off by {}",
                max_diff(p, q)
            );
        }
    }
}

#[test]
fn bf16_rows_of_quantized_bases_are_their_f32_rows_rounded_chunk_by_chunk() {
    // 600 rows of 256: the bf16 widening's 64 KiB tasks hold 64 rows each, so a range of
    // 553 rows spans nine tasks and a tail.
    let (n, k) = (600, 256);
    let w = uniform(&[n, k], 31);
    let nf4 =
        Nf4Tensor::quantize(&w.flatten_all().unwrap().to_vec1().unwrap(), (n, k), true).unwrap();
    let bases: Vec<(&str, Arc<dyn FrozenRows>)> = vec![
        ("nf4", Arc::new(nf4)),
        (
            "q4_1",
            Arc::new(GgmlWeight::quantize(&w, GgmlDType::Q4_1).unwrap()),
        ),
        (
            "q4k",
            Arc::new(GgmlWeight::quantize(&w, GgmlDType::Q4K).unwrap()),
        ),
    ];
    for (name, rows) in bases {
        for (r0, r1) in [(37, 590), (0, n), (5, 6), (9, 9)] {
            let len = (r1 - r0) * k;
            let (mut wide, mut serial) = (vec![0f32; len], vec![0f32; len]);
            rows.widen_rows_into(r0, r1, &mut wide).unwrap();
            rows.widen_rows_serial(r0, r1, &mut serial).unwrap();
            assert_eq!(wide, serial, "{name} {r0}..{r1}: serial widening differs");
            let mut got = vec![half::bf16::ZERO; len];
            rows.widen_rows_bf16_into(r0, r1, &mut got).unwrap();
            for (i, (g, &x)) in got.iter().zip(&wide).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    half::bf16::from_f32(x).to_bits(),
                    "{name} {r0}..{r1} at {i}"
                );
            }
        }
        let mut short = vec![half::bf16::ZERO; 3];
        assert!(
            rows.widen_rows_bf16_into(0, 1, &mut short).is_err(),
            "{name}"
        );
    }
}

#[test]
fn a_bf16_qlora_run_follows_its_f32_curve() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_dataset(dir.path(), &STORIES);
    let mut runs = Vec::new();
    for bf16 in [false, true] {
        let cfg = TrainConfig {
            method: Method::Qlora(LoraSettings {
                rank: 8,
                alpha: 16.0,
                dropout: 0.0,
                ..Default::default()
            }),
            ..lora_cfg(bf16)
        };
        let out = dir.path().join(format!("qlora-{bf16}"));
        let s = train(&bundled(), &data, &out, &cfg, None, None, &mut |_, _| {}).unwrap();
        assert!(s.storage.nf4_linears > 0, "QLoRA ran over NF4");
        runs.push(s.losses);
    }
    let mut differs = false;
    for ((step, want), (_, got)) in runs[0].iter().zip(&runs[1]) {
        let gap = (got - want).abs() / want;
        assert!(
            gap <= 0.02,
            "step {step}: bf16 QLoRA loss {got} is {gap:.4} from f32's {want}"
        );
        differs |= got != want;
    }
    assert!(
        differs,
        "the bf16 QLoRA run computed exactly the f32 run's losses"
    );
}

/// Evaluation multiplies a bf16 base the way the run trains it: with the run's bf16 products
/// when asked (what a `--bf16-compute` run passes), which are not the f32 products of the same
/// bf16 weights, and equal the training loss function's over the same batches.
#[test]
fn evaluation_follows_the_runs_bf16_products() {
    use peft_engine::data::batch::make_batch;
    use peft_engine::data::render::TokenizedExample;
    use peft_engine::model::decoder::{LoadOptions, WeightDtype};
    use peft_engine::peft::method::apply_method;
    use peft_engine::train::step::{batch_loss, evaluate, EvalMode};

    let mut d = bundled()
        .build_weights(&LoadOptions {
            dtype: WeightDtype::Bf16,
            ..Default::default()
        })
        .unwrap();
    apply_method(&mut d, &lora_cfg(true).method, 7).unwrap();
    let val: Vec<TokenizedExample> = (0..3)
        .map(|i| TokenizedExample {
            input_ids: (0..20)
                .map(|t| ((t * 7 + i * 3) % 500 + 1) as u32)
                .collect(),
            loss_mask: vec![1; 20],
            full_len: 20,
        })
        .collect();
    let plain = evaluate(&d, &val, 2, 0, EvalMode::default())
        .unwrap()
        .unwrap();
    let mode = EvalMode {
        bf16_products: true,
        pack_to: None,
    };
    let bf16 = evaluate(&d, &val, 2, 0, mode).unwrap().unwrap();
    let ctx = ForwardCtx {
        bf16_products: true,
        ..Default::default()
    };
    let model = Arc::new(d.detached());
    let (mut total, mut weight) = (0.0, 0.0);
    for chunk in val.chunks(2) {
        let b = make_batch(&chunk.iter().collect::<Vec<_>>(), 0).unwrap();
        let n = b.trained_positions() as f64;
        let loss = batch_loss(&model, &b, &ctx, None).unwrap();
        total += loss.to_scalar::<f32>().unwrap() as f64 * n;
        weight += n;
    }
    assert_eq!(
        bf16,
        total / weight,
        "evaluation in bf16 is the training loss's"
    );
    assert_ne!(bf16, plain, "the bf16 products changed nothing");
    assert!(
        (bf16 - plain).abs() / plain < 0.02,
        "bf16 {bf16} vs f32 {plain}"
    );
}
