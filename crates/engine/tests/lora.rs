//! LoRA's maths on tiny decoders generated here: autograd gradients of A and B against central
//! finite differences (plain, rsLoRA, restricted layers, with dropout), the rsLoRA scale, and
//! merge equivalence (merged = unmerged, unmerge restores the base, no double merge, and a
//! written merged folder that our loader reads back with the same logits).

mod common;

use candle_core::{Device, Tensor, Var};
use peft_engine::export::merge::{merge_adapters, unmerge_adapters, write_merged, ExportDtype};
use peft_engine::model::config::Config;
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::decoder::{masked_cross_entropy, Decoder, LoadOptions};
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use peft_engine::model::tensors::MemorySource;
use peft_engine::peft::lora::lora_scale;
use peft_engine::peft::method::{apply_method, LoraSettings, Method, Trainable};
use peft_engine::test_support::max_diff;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// A 2-layer Llama with GQA (6 query heads, 2 kv heads) and an untied `lm_head`.
fn tiny_config() -> Config {
    let json = r#"{"model_type":"llama","vocab_size":97,"hidden_size":48,"intermediate_size":80,
        "num_hidden_layers":2,"num_attention_heads":6,"num_key_value_heads":2,"head_dim":8,
        "rms_norm_eps":1e-5,"rope_theta":10000.0,"max_position_embeddings":64,
        "tie_word_embeddings":false,"hidden_act":"silu"}"#;
    Config::from_json(json, "tiny").unwrap()
}

fn uniform(rng: &mut rand::rngs::StdRng, shape: &[usize], half_width: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-half_width..half_width))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Seeded random weights with Hugging Face names; linear weights ~ U(±1/√in) like PyTorch's
/// default init, so activations stay O(1) and the loss surface is smooth at the FD scale.
fn tiny_decoder(seed: u64) -> Decoder {
    let c = tiny_config();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut m = BTreeMap::new();
    let mut lin = |m: &mut BTreeMap<String, Tensor>, name: String, o: usize, inp: usize| {
        let w = uniform(&mut rng, &[o, inp], 1.0 / (inp as f32).sqrt());
        m.insert(name, w);
    };
    lin(&mut m, "model.embed_tokens.weight".into(), c.vocab_size, h);
    for n in 0..c.num_hidden_layers {
        let p = format!("model.layers.{n}");
        lin(&mut m, format!("{p}.self_attn.q_proj.weight"), c.q_dim(), h);
        lin(
            &mut m,
            format!("{p}.self_attn.k_proj.weight"),
            c.kv_dim(),
            h,
        );
        lin(
            &mut m,
            format!("{p}.self_attn.v_proj.weight"),
            c.kv_dim(),
            h,
        );
        lin(&mut m, format!("{p}.self_attn.o_proj.weight"), h, c.q_dim());
        lin(&mut m, format!("{p}.mlp.gate_proj.weight"), i, h);
        lin(&mut m, format!("{p}.mlp.up_proj.weight"), i, h);
        lin(&mut m, format!("{p}.mlp.down_proj.weight"), h, i);
    }
    lin(&mut m, "lm_head.weight".into(), c.vocab_size, h);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xABCD);
    for n in 0..c.num_hidden_layers {
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            let w = (uniform(&mut rng, &[h], 0.2) + 1.0).unwrap();
            m.insert(format!("model.layers.{n}.{norm}.weight"), w);
        }
    }
    m.insert(
        "model.norm.weight".into(),
        (uniform(&mut rng, &[h], 0.2) + 1.0).unwrap(),
    );
    let src = MemorySource {
        tensors: m,
        label: "tiny".into(),
    };
    Decoder::load(&c, &src, &LoadOptions::default()).unwrap()
}

/// Gives every lora_B seeded non-zero values (a "trained-looking" adapter: a fresh B = 0 would
/// make A's gradient zero and every merge trivial).
fn randomize_b(t: &Trainable, seed: u64, half_width: f32) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, v) in &t.params {
        if name.ends_with("lora_B.weight") {
            v.set(&uniform(&mut rng, v.dims(), half_width)).unwrap();
        }
    }
}

fn lora(rank: usize, alpha: f64, targets: &[&str]) -> LoraSettings {
    LoraSettings {
        rank,
        alpha,
        dropout: 0.0,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        layers: None,
        rslora: false,
    }
}

fn ids_tensor(rows: &[&[u32]]) -> Tensor {
    let flat: Vec<u32> = rows.concat();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

const TOKENS: [[u32; 7]; 2] = [[3, 17, 44, 90, 5, 61, 28], [72, 9, 33, 50, 14, 88, 2]];

/// Masked next-token cross-entropy of the batch `TOKENS` (the first target of each row is
/// masked out, so the mask is exercised).
fn loss(model: &Decoder, ctx: &ForwardCtx) -> Tensor {
    let (b, s) = (TOKENS.len(), TOKENS[0].len() - 1);
    let inputs: Vec<u32> = TOKENS.iter().flat_map(|r| r[..s].to_vec()).collect();
    let targets: Vec<u32> = TOKENS.iter().flat_map(|r| r[1..].to_vec()).collect();
    let weights: Vec<f32> = (0..b * s)
        .map(|k| if k % s == 0 { 0.0 } else { 1.0 })
        .collect();
    let ids = Tensor::from_vec(inputs, (b, s), &Device::Cpu).unwrap();
    let logits = model.forward(&ids, ctx).unwrap();
    let vocab = logits.dim(2).unwrap();
    let logits = logits.reshape((b * s, vocab)).unwrap();
    let targets = Tensor::from_vec(targets, b * s, &Device::Cpu).unwrap();
    let weights = Tensor::from_vec(weights, b * s, &Device::Cpu).unwrap();
    masked_cross_entropy(&logits, &targets, &weights).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

/// Sets coordinate `k` of `var` to `value` (the decoder holds the same storage, so the next
/// forward sees it).
fn set_coord(var: &Var, base: &[f32], k: usize, value: f32) {
    let mut v = base.to_vec();
    v[k] = value;
    var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
        .unwrap();
}

/// Central differences on 5 coordinates (the 3 largest-gradient ones plus 2 seeded random
/// ones) of each checked tensor vs candle autograd; returns the worst relative error among the
/// largest-gradient coordinates.
///
/// Step and tolerance: f32 loss values carry an absolute rounding noise of about 1e-6 (a few
/// ulps of a ~4.6 loss, accumulated through two blocks); with `eps = 1e-2` that is ~1e-4 in
/// the difference quotient, and the truncation error `eps²·f'''/6` is of the same order on
/// this smooth (softmax/SiLU/RMSNorm) function. So each coordinate must satisfy
/// `|fd − ag| ≤ 2e-2·|ag| + 2e-4·g_max` with `g_max` the tensor's largest gradient. A wrong
/// scale, a missing transpose, or a dropped gradient path misses this by 100 % or more.
fn check_fd(model: &Decoder, t: &Trainable, ctx: &ForwardCtx, names: &[String]) -> f64 {
    let l = loss(model, ctx);
    let grads = l.backward().unwrap();
    let eps = 1e-2f32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut worst = 0f64;
    for name in names {
        let (_, var) = t
            .params
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is not trainable"));
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let g_max = g.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        assert!(g_max > 1e-4, "{name}: gradient is (near) zero, max {g_max}");
        let mut order: Vec<usize> = (0..g.len()).collect();
        order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        let mut coords = order[..3].to_vec();
        coords.extend((0..2).map(|_| rng.random_range(0..g.len())));
        for (j, k) in coords.into_iter().enumerate() {
            set_coord(var, &base, k, base[k] + eps);
            let plus = scalar(&loss(model, ctx));
            set_coord(var, &base, k, base[k] - eps);
            let minus = scalar(&loss(model, ctx));
            var.set(&Tensor::from_vec(base.clone(), var.dims(), &Device::Cpu).unwrap())
                .unwrap();
            let fd = (plus - minus) / (2.0 * eps as f64);
            let ag = g[k] as f64;
            let err = (fd - ag).abs();
            assert!(
                err <= 2e-2 * ag.abs() + 2e-4 * g_max,
                "{name}[{k}]: finite difference {fd:.6e} vs autograd {ag:.6e} (max |g| {g_max:.3e})"
            );
            if j < 3 {
                worst = worst.max(err / ag.abs());
            }
        }
    }
    worst
}

/// A and B of `module` in `layer`, by their trainable names.
fn ab(layer: usize, module: &str) -> Vec<String> {
    let p = format!("model.layers.{layer}.{module}");
    vec![format!("{p}.lora_A.weight"), format!("{p}.lora_B.weight")]
}

#[test]
fn lora_gradients_match_finite_differences() {
    let mut m = tiny_decoder(1);
    let s = lora(4, 8.0, &["all-linear"]);
    let t = apply_method(&mut m, &Method::Lora(s), 5).unwrap();
    randomize_b(&t, 6, 0.3);
    let names: Vec<String> = [
        ab(0, "self_attn.q_proj"),
        ab(0, "self_attn.v_proj"),
        ab(1, "self_attn.o_proj"),
        ab(1, "mlp.down_proj"),
        ab(0, "mlp.gate_proj"),
    ]
    .concat();
    let worst = check_fd(&m, &t, &ForwardCtx::default(), &names);
    eprintln!("plain LoRA: worst relative FD error at the largest gradients {worst:.2e}");
}

#[test]
fn rslora_gradients_match_finite_differences() {
    let mut m = tiny_decoder(2);
    let s = LoraSettings {
        rslora: true,
        ..lora(4, 8.0, &["q_proj", "k_proj", "up_proj"])
    };
    let t = apply_method(&mut m, &Method::Lora(s), 7).unwrap();
    // rsLoRA r = 4: scale alpha/√r = 4, not alpha/r = 2.
    assert_eq!(
        m.layers[0].self_attn.q_proj.lora.as_ref().unwrap().scale,
        4.0
    );
    randomize_b(&t, 8, 0.3);
    let names: Vec<String> = [
        ab(0, "self_attn.k_proj"),
        ab(1, "self_attn.q_proj"),
        ab(1, "mlp.up_proj"),
    ]
    .concat();
    let worst = check_fd(&m, &t, &ForwardCtx::default(), &names);
    eprintln!("rsLoRA: worst relative FD error at the largest gradients {worst:.2e}");
}

#[test]
fn gradients_with_restricted_layers_and_dropout_match_finite_differences() {
    let mut m = tiny_decoder(3);
    let s = LoraSettings {
        layers: Some(vec![1]),
        dropout: 0.2,
        ..lora(2, 4.0, &["v_proj", "o_proj", "down_proj"])
    };
    let t = apply_method(&mut m, &Method::Lora(s), 9).unwrap();
    // Only layer 1 is adapted: 3 modules × (A, B).
    let names: Vec<&str> = t.params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("model.layers.1.")),
        "{names:?}"
    );
    assert!(m.layers[0].self_attn.v_proj.lora.is_none());
    randomize_b(&t, 10, 0.3);
    // Dropout masks are a pure function of (step_seed, stream), so the loss is a deterministic
    // function of the parameters and finite differences apply through the dropout path too.
    let ctx = ForwardCtx {
        train: true,
        step_seed: 77,
    };
    let all: Vec<String> = t.params.iter().map(|(n, _)| n.clone()).collect();
    let worst = check_fd(&m, &t, &ctx, &all);
    eprintln!("layers [1] + dropout: worst relative FD error at the largest gradients {worst:.2e}");
}

#[test]
fn rslora_scales_the_output_delta_by_alpha_over_sqrt_r() {
    assert_eq!(lora_scale(16.0, 16, false), 1.0);
    assert_eq!(lora_scale(16.0, 16, true), 4.0);
    assert_eq!(lora_scale(8.0, 4, true), 4.0);
    let x = uniform(&mut rand::rngs::StdRng::seed_from_u64(4), &[2, 5, 48], 1.0);
    let ctx = ForwardCtx::default();
    let delta = |rslora: bool| {
        let mut m = tiny_decoder(4);
        let s = LoraSettings {
            rslora,
            ..lora(16, 16.0, &["q_proj"])
        };
        // Same seed ⇒ same A; same B values below ⇒ only the scale differs.
        let t = apply_method(&mut m, &Method::Lora(s), 3).unwrap();
        randomize_b(&t, 5, 0.3);
        let lin = &m.layers[0].self_attn.q_proj;
        let with = lin.forward(&x, &ctx).unwrap();
        let mut base = lin.clone();
        base.lora = None;
        (with - base.forward(&x, &ctx).unwrap()).unwrap()
    };
    let (plain, rs) = (delta(false), delta(true));
    let plain_max = plain
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        plain_max > 1e-2,
        "the delta is too small to compare: {plain_max}"
    );
    // alpha/√r ÷ alpha/r = √r = 4.
    let d = max_diff(&rs, &(plain * 4.0).unwrap());
    assert!(
        d <= 1e-5 * 4.0 * plain_max,
        "rsLoRA delta ≠ 4 × plain delta: max diff {d} (max delta {plain_max})"
    );
}

/// Logits of `m` on a fixed batch.
fn logits(m: &Decoder) -> Tensor {
    m.forward(
        &ids_tensor(&[
            &[3, 17, 44, 90, 5, 61, 28, 11],
            &[72, 9, 33, 50, 14, 88, 2, 40],
        ]),
        &ForwardCtx::default(),
    )
    .unwrap()
}

fn weights(m: &mut Decoder) -> BTreeMap<String, Tensor> {
    m.named_tensors_mut()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy().unwrap()))
        .collect()
}

#[test]
fn merged_model_equals_unmerged_and_unmerge_restores_the_base() {
    let mut m = tiny_decoder(5);
    let s = LoraSettings {
        rslora: true,
        ..lora(8, 16.0, &["all-linear"])
    };
    let t = apply_method(&mut m, &Method::Lora(s), 1).unwrap();
    randomize_b(&t, 2, 0.2);
    let original = weights(&mut m);
    let base_logits = {
        let mut b = m.clone();
        b.linears_mut().into_iter().for_each(|(_, l)| l.lora = None);
        logits(&b)
    };
    let unmerged = logits(&m);
    let effect = max_diff(&unmerged, &base_logits);
    assert!(
        effect > 0.1,
        "the adapter barely changes the logits ({effect}); the test would prove nothing"
    );

    assert_eq!(merge_adapters(&mut m).unwrap(), 14);
    let merged = logits(&m);
    let d = max_diff(&merged, &unmerged);
    eprintln!("merge: max |Δlogit| {d:.2e} (adapter effect {effect:.3})");
    assert!(d < 1e-5, "merged logits differ from unmerged by {d}");
    // The weights really changed (the adapter is not just still applied on top).
    let after = weights(&mut m);
    let q = "model.layers.0.self_attn.q_proj.weight";
    assert!(max_diff(&after[q], &original[q]) > 1e-3);

    // Merging twice would add every delta twice: refused, at the model and at the layer.
    let err = merge_adapters(&mut m).unwrap_err().to_string();
    assert!(err.contains("already merged"), "{err}");
    let err = m.layers[0]
        .self_attn
        .q_proj
        .merge()
        .unwrap_err()
        .to_string();
    assert!(err.contains("already merged"), "{err}");
    assert_eq!(
        max_diff(&logits(&m), &merged),
        0.0,
        "a refused merge changed the model"
    );

    assert_eq!(unmerge_adapters(&mut m).unwrap(), 14);
    let restored = weights(&mut m);
    for (name, w) in &original {
        let d = max_diff(w, &restored[name]);
        assert!(d <= 1e-6, "{name}: unmerge leaves a difference of {d}");
    }
    let d = max_diff(&logits(&m), &unmerged);
    assert!(d < 1e-5, "after unmerge the adapter output differs by {d}");
    // Unmerging an unmerged model is a no-op at the model level and refused at the layer.
    assert_eq!(unmerge_adapters(&mut m).unwrap(), 0);
    assert!(m.layers[0].self_attn.q_proj.unmerge().is_err());
}

/// The bundled model and its decoder with a trained-looking LoRA adapter on all seven
/// projections.
fn bundled_with_adapter() -> (LoadedModel, Decoder) {
    let model = common::bundled();
    let mut d = common::decoder();
    let s = lora(4, 8.0, &["all-linear"]);
    let t = apply_method(&mut d, &Method::Lora(s), 21).unwrap();
    randomize_b(&t, 22, 0.2);
    (model, d)
}

fn bundled_logits(m: &Decoder) -> Tensor {
    m.forward(
        &ids_tensor(&[&[1, 403, 407, 261, 378, 432, 383, 286, 306, 270]]),
        &ForwardCtx::default(),
    )
    .unwrap()
}

#[test]
fn written_merged_folder_loads_back_with_the_same_logits() {
    let (model, mut adapted) = bundled_with_adapter();
    let before = bundled_logits(&adapted);
    let base = bundled_logits(&common::decoder());
    assert!(max_diff(&before, &base) > 0.1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    write_merged(&model, &mut adapted, &out, ExportDtype::F32).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing from the merged folder");
    }
    // The chat template the model was trained with travels with it (for the bundled model,
    // which has none of its own, that is our documented fallback).
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(tc["chat_template"].as_str(), Some(model.template.source()));
    assert_eq!(tc["eos_token"], "</s>");
    // No adapter tensors leak into a merged checkpoint.
    let st = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(st.keys().all(|k| !k.contains("lora")));
    assert!(
        !st.contains_key("lm_head.weight"),
        "tied embeddings are written once"
    );

    let back = LoadedModel::load(
        &ModelSource::Folder(out.clone()),
        OpenOptions::default(),
        &LoadOptions::default(),
    )
    .unwrap();
    let after = bundled_logits(&back.weights(&LoadOptions::default()).unwrap());
    let d = max_diff(&after, &before);
    let in_memory = bundled_logits(&adapted);
    let range = before
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("merged folder: max |Δlogit| {d:.2e} vs unmerged, max |logit| {range}");
    // The safetensors round trip itself is bit-exact …
    assert_eq!(
        max_diff(&after, &in_memory),
        0.0,
        "reloading changed the merged model"
    );
    // … and merged vs unmerged differ by f32 rounding only: `(W + s·B·A)·x` and
    // `W·x + s·B·(A·x)` round differently. Through 5 blocks that is ~1e-6 of the logit scale
    // (measured 2.4e-5 at max |logit| 14 with this strong adapter), so the bound is 1e-5
    // relative to the largest logit.
    assert!(
        d < 1e-5 * range.max(1.0),
        "reloaded merged model differs by {d}"
    );
    assert!(back.info.has_chat_template);
    assert_eq!(
        back.tokenizer.encode("Tom had a kite.", true).unwrap(),
        model.tokenizer.encode("Tom had a kite.", true).unwrap()
    );
    assert_eq!(back.stop_ids(), model.stop_ids());

    // bf16 export: half the weight bytes, logits within bf16 rounding of the weights.
    let (model, mut adapted) = bundled_with_adapter();
    let out16 = dir.path().join("merged-bf16");
    write_merged(&model, &mut adapted, &out16, ExportDtype::Bf16).unwrap();
    let (s32, s16) = (
        std::fs::metadata(out.join("model.safetensors"))
            .unwrap()
            .len(),
        std::fs::metadata(out16.join("model.safetensors"))
            .unwrap()
            .len(),
    );
    assert!(
        (s16 as f64) < 0.55 * s32 as f64,
        "bf16 file {s16} B vs f32 {s32} B"
    );
    let back16 = LoadedModel::load(
        &ModelSource::Folder(out16),
        OpenOptions::default(),
        &LoadOptions::default(),
    )
    .unwrap();
    let d16 = max_diff(
        &bundled_logits(&back16.weights(&LoadOptions::default()).unwrap()),
        &before,
    );
    eprintln!("merged bf16 folder: max |Δlogit| {d16:.2e} (max |logit| {range:.2})");
    // bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2 %); through 5 blocks the
    // logits move by a few times that.
    assert!(
        d16 > 0.0 && d16 < 0.05 * range,
        "bf16 merged logits differ by {d16}"
    );
}

#[test]
fn merged_qlora_model_is_written_whole_and_dense() {
    let model = common::bundled();
    let mut d = common::nf4_decoder();
    // Adapters on q_proj only: the other six NF4 projections per block have none and must
    // still be written (dequantized), or the folder would not load.
    let t = apply_method(&mut d, &Method::Qlora(lora(4, 8.0, &["q_proj"])), 31).unwrap();
    randomize_b(&t, 32, 0.2);
    let before = bundled_logits(&d);
    let dir = tempfile::tempdir().unwrap();
    write_merged(&model, &mut d, dir.path(), ExportDtype::F32).unwrap();
    let st =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let linears = st.keys().filter(|k| k.contains("_proj.weight")).count();
    assert_eq!(
        linears,
        7 * 5,
        "every projection of every block is in the merged file"
    );
    assert!(st.values().all(|t| t.dtype() == candle_core::DType::F32));
    let back = LoadedModel::load(
        &ModelSource::Folder(dir.path().to_path_buf()),
        OpenOptions::default(),
        &LoadOptions::default(),
    )
    .unwrap();
    let d = max_diff(
        &bundled_logits(&back.weights(&LoadOptions::default()).unwrap()),
        &before,
    );
    let range = before
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!(
        "merged QLoRA folder: max |Δlogit| {d:.2e} vs NF4 + adapter (max |logit| {range:.2})"
    );
    // The dense weights are exactly the NF4 values the NF4 op dequantizes, so only f32
    // summation order differs (same bound as the dense merge above).
    assert!(
        d < 1e-5 * range.max(1.0),
        "merged QLoRA model differs by {d}"
    );
}

/// Evaluation runs on `Decoder::detached`: same logits as the tracked model, but nothing is
/// recorded (so a validation pass keeps no activations), and the trained Vars are untouched.
#[test]
fn detached_decoder_gives_the_same_logits_without_a_graph() {
    let mut model = tiny_decoder(3);
    let t = apply_method(&mut model, &Method::Lora(lora(4, 8.0, &["all-linear"])), 1).unwrap();
    randomize_b(&t, 5, 0.1);
    let ids = ids_tensor(&[&TOKENS[0], &TOKENS[1]]);
    let ctx = ForwardCtx::default();
    let tracked = model.forward(&ids, &ctx).unwrap();
    assert!(tracked.track_op());
    let frozen = model.detached();
    let plain = frozen.forward(&ids, &ctx).unwrap();
    assert!(!plain.track_op(), "a detached forward must record no graph");
    assert!(max_diff(&tracked, &plain) < 1e-6);
    assert!(t.params.iter().all(|(_, v)| v.is_variable()));
}
