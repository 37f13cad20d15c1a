//! QLoRA over a GGUF's own quantization (`quant::ggml_op`): the tiled op against the dense
//! product on the dequantized weight (forward, input gradient, a finite difference), for our
//! Q4_1 widening and candle's for the other block types; and a QLoRA run over the bundled
//! SmolLM2 GGUF that trains over its Q4_1 blocks (no NF4, no f32 copy) and lowers the loss.

mod common;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor, Var};
use peft_engine::model::decoder::{LoadOptions, WeightDtype};
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::method::{LoraSettings, Method};
use peft_engine::plan::{estimate, ComputeDevice};
use peft_engine::quant::ggml_op::GgmlMatMul;
use peft_engine::test_support::max_diff;
use peft_engine::train::tuned::adapter_base_storage;
use peft_engine::train::{train, TrainConfig};
use std::sync::Arc;

#[path = "gguf/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// 70 output rows in tiles of 16 (four whole tiles and a partial one), 256 inputs (one
/// k-quant super-block per row).
#[test]
fn tiled_op_equals_the_dense_product_forward_and_backward() {
    let (n, k, m) = (70, 256, 5);
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.05, (n, k), &dev).unwrap();
    let x0 = Tensor::randn(0f32, 1.0, (1, m, k), &dev).unwrap();
    let r = Tensor::randn(0f32, 1.0, (1, m, n), &dev).unwrap();
    for dtype in [
        GgmlDType::Q4_1,
        GgmlDType::Q4_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
        let deq = q.dequantize(&dev).unwrap();
        let op = || GgmlMatMul {
            w: q.clone(),
            tile_rows: 16,
        };
        let x = Var::from_tensor(&x0).unwrap();
        let y = x.as_tensor().apply_op1(op()).unwrap();
        let want = x0.broadcast_matmul(&deq.t().unwrap()).unwrap();
        let scale = max_abs(&want);
        assert!(
            max_diff(&y, &want) < 1e-5 * scale,
            "{dtype:?} forward: {}",
            max_diff(&y, &want)
        );
        // L = Σ r·y, so dL/dx = r · W.
        let loss = (&y * &r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let dx = grads.get(x.as_tensor()).expect("input gradient");
        let want_dx = r.broadcast_matmul(&deq).unwrap();
        assert!(
            max_diff(dx, &want_dx) < 1e-5 * max_abs(&want_dx),
            "{dtype:?} input gradient: {}",
            max_diff(dx, &want_dx)
        );
        // A central difference along a random direction, accumulated in f64.
        let v = Tensor::randn(0f32, 1.0, (1, m, k), &dev).unwrap();
        let eps = 1e-2;
        let at = |s: f64| -> f64 {
            let xs = (&x0 + (&v * s).unwrap()).unwrap();
            let y = xs.apply_op1_no_bwd(&op()).unwrap();
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            let r: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
            y.iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        let dv: Vec<f32> = (dx * &v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let analytic: f64 = dv.iter().map(|a| *a as f64).sum();
        assert!(
            (fd - analytic).abs() <= 1e-3 * analytic.abs().max(1.0),
            "{dtype:?}: finite difference {fd} vs gradient {analytic}"
        );
    }
}

/// The training loss over the file's block types (the tied Q8_0 head through the fused loss,
/// widened tile by tile; the Q4_1 projections through the tiled op) equals the dense decoder's
/// loss on the same file, and so does an adapter's gradient: the widened values are the same.
#[test]
fn training_loss_over_block_types_equals_the_dense_decoder() {
    use peft_engine::data::batch::Batch;
    use peft_engine::model::ctx::ForwardCtx;
    use peft_engine::peft::method::apply_method;
    use peft_engine::train::step::batch_loss;
    let source = ModelSource::Gguf(fixtures::smollm_gguf());
    let model = LoadedModel::open(&source, OpenOptions::default()).unwrap();
    let ids: Vec<u32> = (0..17u32).map(|i| 100 + i * 37).collect();
    let b = Batch {
        input_ids: ids[..16].to_vec(),
        targets: ids[1..].to_vec(),
        loss_mask: vec![1.0; 16],
        attention_mask: vec![1.0; 16],
        batch: 1,
        seq: 16,
        segment_starts: None,
    };
    let ctx = ForwardCtx {
        train: true,
        ..Default::default()
    };
    let mut results = Vec::new();
    for (storage, method) in [
        (
            LoadOptions::gguf_types(WeightDtype::F32),
            Method::Qlora(LoraSettings::default()),
        ),
        // The same fresh adapters (same seed) as plain LoRA over the dense decoder.
        (
            LoadOptions::default(),
            Method::Lora(LoraSettings::default()),
        ),
    ] {
        let mut d = (*model.weights(&storage).unwrap()).clone();
        let t = apply_method(&mut d, &method, 7).unwrap();
        let d = Arc::new(d);
        let loss = batch_loss(&d, &b, &ctx, None).unwrap();
        let grads = loss.backward().unwrap();
        // B starts at zero, so A's gradient is zero: B's is the informative one.
        let (name, a0) = t
            .params
            .iter()
            .find(|(n, _)| n.ends_with("lora_B.weight"))
            .expect("a LoRA B");
        let g: Vec<f32> = grads
            .get(a0.as_tensor())
            .unwrap_or_else(|| panic!("{name} has a gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        results.push((loss.to_scalar::<f32>().unwrap(), g));
    }
    let ((lq, gq), (ld, gd)) = (&results[0], &results[1]);
    assert!((lq - ld).abs() < 1e-4 * ld.abs(), "loss {lq} vs dense {ld}");
    let scale = gd.iter().fold(0f32, |a, v| a.max(v.abs()));
    let diff = gq
        .iter()
        .zip(gd)
        .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!(
        scale > 0.0 && diff < 1e-3 * scale,
        "gradient differs by {diff} of {scale}"
    );
}

#[test]
fn qlora_over_the_bundled_gguf_trains_over_its_own_block_types() {
    let dir = tempfile::tempdir().unwrap();
    let text = "The quick brown fox jumps over the lazy dog near the quiet river bank.";
    let data = common::text_dataset(dir.path(), &[text, text]);
    let out = dir.path().join("qlora-gguf");
    let cfg = TrainConfig {
        method: Method::Qlora(LoraSettings {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            ..Default::default()
        }),
        seq_len: 32,
        batch_size: 1,
        max_steps: Some(6),
        lr: 1e-2,
        val_fraction: 0.0,
        ..Default::default()
    };
    let source = ModelSource::Gguf(fixtures::smollm_gguf());
    let model = LoadedModel::open(&source, OpenOptions::default()).unwrap();
    let file = std::fs::metadata(fixtures::smollm_gguf()).unwrap().len();
    let linear_bytes = model.gguf_linear_bytes().expect("every linear is Q4_1");
    let s = train(&model, &data, &out, &cfg, None, None, &mut |_, _| {}).unwrap();
    // 30 blocks × 7 projections stay in Q4_1: none is NF4 or dense.
    assert_eq!(
        (
            s.storage.gguf_linears,
            s.storage.nf4_linears,
            s.storage.dense_linears
        ),
        (210, 0, 0)
    );
    // Weights held: the file's blocks (and the Q8_0 embedding), never an f32 copy (5.5×).
    assert!(
        s.storage.base_bytes < file,
        "{} bytes",
        s.storage.base_bytes
    );
    assert!(linear_bytes < s.storage.base_bytes);
    let (first, last) = (s.losses[0].1, s.losses.last().unwrap().1);
    assert!(last < 0.8 * first, "loss {first} → {last}");
    // The planner counts the same bytes the run held, by the file's own types (not NF4's).
    let est = estimate(
        &model.config,
        &cfg.plan_request(ComputeDevice::Cpu, Default::default())
            .for_model(&model),
    );
    assert_eq!(est.bytes_of(&["base_weights.nf4"]), 0);
    let planned = est.bytes_of(&["base_weights.gguf", "base_weights.frozen"]) as f64;
    let held = s.storage.base_bytes as f64;
    assert!(
        (planned - held).abs() < 0.01 * held,
        "planned {planned} bytes of base, held {held}"
    );
    // Chat afterwards runs the adapter over the same block types it trained against.
    assert_eq!(
        adapter_base_storage(&out),
        LoadOptions::gguf_types(WeightDtype::F32)
    );
}
