//! Chat with a tuned model on a quantized base: a LoRA adapter runs unmerged over the GGUF's
//! own block types (`train::tuned::with_adapter`, what `peft chat|generate --adapter` and the
//! app's side-by-side chat call) and over QLoRA's NF4 base, and equals the adapter merged into
//! the dense dequantized weights.

use candle_core::{Device, Tensor};
use peft_engine::infer::generate::{generate, GenerateOptions};
use peft_engine::model::decoder::{Decoder, KvCache, LoadOptions, WeightDtype};
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::adapter_io::apply_adapter;
use peft_engine::train::tuned::with_adapter;
use std::path::Path;

#[path = "gguf/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;
use fixtures::*;

const TARGETS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// A PEFT LoRA folder (r = 4, alpha = 8) with random non-zero A and B on every projection of
/// the tiny llama (hidden 64, intermediate 256, kv dim 32).
fn write_adapter(dir: &Path) {
    let shapes = [
        (64, 64),
        (32, 64),
        (32, 64),
        (64, 64),
        (256, 64),
        (256, 64),
        (64, 256),
    ];
    let mut tensors = std::collections::HashMap::new();
    for l in 0..2 {
        for (i, (t, (out, inp))) in TARGETS.iter().zip(shapes).enumerate() {
            let p = format!("base_model.model.model.layers.{l}.{t}");
            let seed = 1000 + 10 * l as u64 + i as u64;
            let a = (random(&[4, inp], seed) * 0.3).unwrap();
            let b = (random(&[out, 4], seed + 500) * 0.3).unwrap();
            tensors.insert(format!("{p}.lora_A.weight"), a);
            tensors.insert(format!("{p}.lora_B.weight"), b);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
    let names: Vec<&str> = TARGETS
        .iter()
        .map(|t| t.rsplit('.').next().unwrap())
        .collect();
    let cfg = serde_json::json!({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8.0, "target_modules": names,
    });
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
}

fn logits(d: &Decoder, ids: &[u32]) -> Tensor {
    let ids = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    d.forward_step(&ids, &mut KvCache::new(2)).unwrap()
}

fn merged(mut d: Decoder) -> Decoder {
    for (_, lin) in d.linears_mut() {
        lin.merge().unwrap();
    }
    d
}

const IDS: [u32; 7] = [1, 5, 9, 30, 31, 7, 3];

/// Over the GGUF's block types: the engine picks them for a LoRA-only adapter on a GGUF
/// model; the result equals the adapter merged into the dequantized dense weights within the
/// 8-bit activation rounding of the quantized kernels (10% of the largest logit on this random
/// tiny model, as for its base alone in `tests/gguf_quantized.rs`; measured 5.3%), and the
/// adapter changes the output by far more than that.
#[test]
fn lora_on_gguf_types_equals_merged_dense() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &tiny_metadata("llama"), &tiny_weights());
    let adapter = dir.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    write_adapter(&adapter);
    let m = LoadedModel::open(&ModelSource::Gguf(path), OpenOptions::default()).unwrap();

    let tuned = with_adapter(&m, &adapter).unwrap();
    let r = tuned.storage_report();
    assert_eq!((r.gguf_linears, r.adapted_linears), (12, 14), "{r:?}");
    let mut probe = tuned.clone();
    assert!(
        probe
            .linears_mut()
            .iter()
            .all(|(_, l)| !l.merged && l.lora.is_some()),
        "the adapter stays unmerged"
    );

    let mut dense = m.build_weights(&LoadOptions::default()).unwrap();
    apply_adapter(&mut dense, &adapter).unwrap();
    let want = logits(&merged(dense), &IDS);
    let got = logits(&tuned, &IDS);
    let diff = max_abs(&(&got - &want).unwrap());
    assert!(
        diff < 0.1 * max_abs(&want),
        "differ by {diff} (scale {})",
        max_abs(&want)
    );

    let base = m
        .weights(&LoadOptions::gguf_types(WeightDtype::F32))
        .unwrap();
    let effect = max_abs(&(&logits(&base, &IDS) - &got).unwrap());
    eprintln!("LoRA on GGUF types: error {diff}, adapter effect {effect}");
    assert!(
        effect > 5.0 * diff,
        "adapter effect {effect} vs error {diff}"
    );
    // And generation runs on it (greedy, no stop ids).
    let g = generate(
        &tuned,
        &m.tokenizer,
        &IDS,
        &GenerateOptions::greedy(5),
        &[],
        None,
        &mut |_| {},
    );
    assert_eq!(g.unwrap().token_ids.len(), 5);
}

/// Over QLoRA's NF4 base: unmerged equals merged into the dequantized NF4 weights up to f32
/// summation order (the NF4 op multiplies by exactly those dequantized values).
#[test]
fn lora_on_nf4_equals_merged_dense_nf4_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &tiny_metadata("llama"), &tiny_weights());
    let adapter = dir.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    write_adapter(&adapter);
    let m = LoadedModel::open(&ModelSource::Gguf(path), OpenOptions::default()).unwrap();
    let nf4 = m
        .build_weights(&LoadOptions::nf4(WeightDtype::F32))
        .unwrap();
    assert_eq!(nf4.storage_report().nf4_linears, 14);
    let mut unmerged = nf4.clone();
    apply_adapter(&mut unmerged, &adapter).unwrap();
    let mut dense = nf4;
    dense.dequantize_all().unwrap();
    apply_adapter(&mut dense, &adapter).unwrap();
    let want = logits(&merged(dense), &IDS);
    let got = logits(&unmerged, &IDS);
    let diff = max_abs(&(&got - &want).unwrap());
    assert!(diff < 1e-4 * max_abs(&want), "differ by {diff}");
}
