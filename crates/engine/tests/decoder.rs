//! Parity of our decoder with candle-transformers' reference models on the same weights,
//! KV-cache decoding against the full forward, and the bundled model's known output.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use peft_engine::model::config::Config;
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::decoder::{Decoder, KvCache, LoadOptions};
use peft_engine::model::tensors::{MemorySource, SafetensorsSource, TensorSource};
use peft_engine::test_support::max_diff;
use std::collections::{BTreeMap, HashMap};

fn stories_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260K")
}

/// Random weights with Hugging Face names for `c` (seeded, N(0, 0.5²) so logits are not flat).
fn random_weights(c: &Config, seed: u64) -> BTreeMap<String, Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = |shape: &[usize], scale: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| (rng.random::<f32>() - 0.5) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut m = BTreeMap::new();
    m.insert(
        "model.embed_tokens.weight".into(),
        t(&[c.vocab_size, h], 1.0),
    );
    for n in 0..c.num_hidden_layers {
        let p = format!("model.layers.{n}");
        m.insert(
            format!("{p}.input_layernorm.weight"),
            (t(&[h], 0.2) + 1.0).unwrap(),
        );
        m.insert(
            format!("{p}.post_attention_layernorm.weight"),
            (t(&[h], 0.2) + 1.0).unwrap(),
        );
        let s = 2.0 / (h as f32).sqrt();
        m.insert(
            format!("{p}.self_attn.q_proj.weight"),
            t(&[c.q_dim(), h], s),
        );
        m.insert(
            format!("{p}.self_attn.k_proj.weight"),
            t(&[c.kv_dim(), h], s),
        );
        m.insert(
            format!("{p}.self_attn.v_proj.weight"),
            t(&[c.kv_dim(), h], s),
        );
        m.insert(
            format!("{p}.self_attn.o_proj.weight"),
            t(&[h, c.q_dim()], s),
        );
        if c.qkv_bias {
            m.insert(format!("{p}.self_attn.q_proj.bias"), t(&[c.q_dim()], 0.5));
            m.insert(format!("{p}.self_attn.k_proj.bias"), t(&[c.kv_dim()], 0.5));
            m.insert(format!("{p}.self_attn.v_proj.bias"), t(&[c.kv_dim()], 0.5));
        }
        m.insert(format!("{p}.mlp.gate_proj.weight"), t(&[i, h], s));
        m.insert(format!("{p}.mlp.up_proj.weight"), t(&[i, h], s));
        m.insert(
            format!("{p}.mlp.down_proj.weight"),
            t(&[h, i], 2.0 / (i as f32).sqrt()),
        );
    }
    m.insert("model.norm.weight".into(), (t(&[h], 0.2) + 1.0).unwrap());
    if !c.tie_word_embeddings {
        m.insert("lm_head.weight".into(), t(&[c.vocab_size, h], 0.5));
    }
    m
}

fn tiny_json(model_type: &str, tie: bool) -> String {
    format!(
        r#"{{"model_type":"{model_type}","vocab_size":97,"hidden_size":48,"intermediate_size":80,
        "num_hidden_layers":2,"num_attention_heads":6,"num_key_value_heads":2,"head_dim":8,
        "rms_norm_eps":1e-5,"rope_theta":10000.0,"max_position_embeddings":64,
        "tie_word_embeddings":{tie},"sliding_window":4096,"max_window_layers":2,
        "use_sliding_window":false,"hidden_act":"silu"}}"#
    )
}

fn ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % vocab) as u32).collect()
}

fn ours(c: &Config, w: &BTreeMap<String, Tensor>) -> Decoder {
    let src = MemorySource {
        tensors: w.clone(),
        label: "memory".into(),
    };
    Decoder::load(c, &src, &LoadOptions::default()).unwrap()
}

/// Runs a reference model one token at a time; each step's output is that position's logits.
fn stepwise(mut step: impl FnMut(&Tensor, usize) -> Tensor, tokens: &[u32]) -> Tensor {
    let rows: Vec<Tensor> = tokens
        .iter()
        .enumerate()
        .map(|(pos, &t)| {
            let x = Tensor::new(&[t], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            step(&x, pos).flatten_all().unwrap()
        })
        .collect();
    Tensor::stack(&rows, 0).unwrap()
}

#[test]
fn llama_matches_candle_transformers_at_every_position() {
    let dir = stories_dir();
    let c = Config::from_file(&dir.join("config.json")).unwrap();
    let src = SafetensorsSource::open_dir(&dir).unwrap();
    let model = Decoder::load(&c, &src, &LoadOptions::default()).unwrap();
    let tokens = ids(40, c.vocab_size);
    let x = Tensor::new(tokens.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let got = model
        .forward(&x, &ForwardCtx::default())
        .unwrap()
        .squeeze(0)
        .unwrap();

    use candle_transformers::models::llama;
    let cfg: llama::LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = cfg.into_config(false);
    let tensors: HashMap<String, Tensor> = src
        .names()
        .into_iter()
        .map(|n| (n.clone(), src.load(&n).unwrap()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let reference = llama::Llama::load(vb, &cfg).unwrap();
    let mut cache = llama::Cache::new(true, DType::F32, &cfg, &Device::Cpu).unwrap();
    let want = stepwise(
        |x, pos| reference.forward(x, pos, &mut cache).unwrap(),
        &tokens,
    );
    let d = max_diff(&got, &want);
    assert!(d < 1e-4, "max |Δlogit| = {d}");
}

#[test]
fn mistral_matches_candle_transformers_at_every_position() {
    let json = tiny_json("mistral", false);
    let c = Config::from_json(&json, "tiny").unwrap();
    let w = random_weights(&c, 1);
    let tokens = ids(24, c.vocab_size);
    let x = Tensor::new(tokens.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let got = ours(&c, &w)
        .forward(&x, &ForwardCtx::default())
        .unwrap()
        .squeeze(0)
        .unwrap();

    use candle_transformers::models::mistral;
    let cfg: mistral::Config = serde_json::from_str(&json).unwrap();
    let vb = VarBuilder::from_tensors(w.into_iter().collect(), DType::F32, &Device::Cpu);
    let mut reference = mistral::Model::new(&cfg, vb).unwrap();
    let want = stepwise(|x, pos| reference.forward(x, pos).unwrap(), &tokens);
    let d = max_diff(&got, &want);
    assert!(d < 1e-4, "max |Δlogit| = {d}");
}

#[test]
fn qwen2_with_biases_matches_candle_transformers_at_every_position() {
    let json = tiny_json("qwen2", true);
    let c = Config::from_json(&json, "tiny").unwrap();
    assert!(c.qkv_bias);
    let w = random_weights(&c, 2);
    let tokens = ids(24, c.vocab_size);
    let x = Tensor::new(tokens.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let got = ours(&c, &w)
        .forward(&x, &ForwardCtx::default())
        .unwrap()
        .squeeze(0)
        .unwrap();

    use candle_transformers::models::qwen2;
    let cfg: qwen2::Config = serde_json::from_str(&json).unwrap();
    let embed = w["model.embed_tokens.weight"].clone();
    let vb = VarBuilder::from_tensors(w.into_iter().collect(), DType::F32, &Device::Cpu);
    let mut reference = qwen2::Model::new(&cfg, vb).unwrap();
    let hidden = reference.forward(&x, 0, None).unwrap().squeeze(0).unwrap();
    let want = hidden.matmul(&embed.t().unwrap()).unwrap();
    let d = max_diff(&got, &want);
    assert!(d < 1e-4, "max |Δlogit| = {d}");
}

#[test]
fn kv_cache_decoding_equals_full_forward() {
    let c = Config::from_json(&tiny_json("llama", false), "tiny").unwrap();
    let model = ours(&c, &random_weights(&c, 3));
    let tokens = ids(20, c.vocab_size);
    let x = Tensor::new(tokens.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let full = model
        .forward(&x, &ForwardCtx::default())
        .unwrap()
        .squeeze(0)
        .unwrap();
    // A 7-token prefill, then one token at a time.
    let mut cache = KvCache::new(c.num_hidden_layers);
    let mut rows = Vec::new();
    let prefill = Tensor::new(&tokens[..7], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let h = model
        .forward_hidden(&prefill, Some(&mut cache), &ForwardCtx::default())
        .unwrap();
    rows.push(
        model
            .logits(&h, &ForwardCtx::default())
            .unwrap()
            .squeeze(0)
            .unwrap(),
    );
    for &t in &tokens[7..] {
        let x = Tensor::new(&[t], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        rows.push(model.forward_step(&x, &mut cache).unwrap());
    }
    assert_eq!(cache.len(), tokens.len());
    let stepped = Tensor::cat(&rows, 0).unwrap();
    let d = max_diff(&full, &stepped);
    assert!(d < 1e-5, "max |Δlogit| = {d}");
}

#[test]
fn bf16_storage_stays_close_to_f32() {
    let dir = stories_dir();
    let c = Config::from_file(&dir.join("config.json")).unwrap();
    let src = SafetensorsSource::open_dir(&dir).unwrap();
    let f32m = Decoder::load(&c, &src, &LoadOptions::default()).unwrap();
    let opts = LoadOptions {
        dtype: peft_engine::model::decoder::WeightDtype::Bf16,
        ..Default::default()
    };
    let bf16m = Decoder::load(&c, &src, &opts).unwrap();
    assert_eq!(
        bf16m.layers[0]
            .self_attn
            .q_proj
            .dense_weight()
            .unwrap()
            .dims(),
        &[64, 64]
    );
    let x = Tensor::new(ids(16, 512).as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let a = f32m.forward(&x, &ForwardCtx::default()).unwrap();
    let b = bf16m.forward(&x, &ForwardCtx::default()).unwrap();
    let d = max_diff(&a, &b);
    assert!(d > 0.0 && d < 0.5, "bf16 vs f32 max |Δlogit| = {d}");
}

#[test]
fn parameter_count_is_exact() {
    let dir = stories_dir();
    let c = Config::from_file(&dir.join("config.json")).unwrap();
    // 260,032 per llama2.c's header (SOURCE.md): embeddings tied, no biases.
    assert_eq!(peft_engine::model::count::parameter_count(&c), 260_032);
}
