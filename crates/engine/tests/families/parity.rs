//! Our decoder against candle-transformers' implementation of each family, on the same random
//! weights, at every position; and KV-cache decoding against the full forward.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use peft_engine::model::config::Config;
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::decoder::{KvCache, LoadOptions};
use std::collections::{BTreeMap, HashMap};

fn vb(w: &BTreeMap<String, Tensor>) -> VarBuilder<'static> {
    let map: HashMap<String, Tensor> = w.clone().into_iter().collect();
    VarBuilder::from_tensors(map, DType::F32, &Device::Cpu)
}

fn check(name: &str, got: &Tensor, want: &Tensor) {
    let d = max_abs_diff(got, want);
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(scale > 0.5, "{name}: logits are flat ({scale})");
    assert!(
        d < 1e-4,
        "{name}: max |Δlogit| = {d} (logits up to {scale})"
    );
}

#[test]
fn qwen3_matches_candle_transformers_at_every_position() {
    let json = qwen3_json();
    let c = config(&json);
    assert_eq!((c.head_dim, c.q_dim(), c.hidden_size), (8, 32, 16));
    let w = random_weights(&c, 1);
    let tokens = ids(20, c.vocab_size);
    let got = full_logits(&decoder(&c, &w, &LoadOptions::default()), &tokens);
    use candle_transformers::models::qwen3;
    let cfg: qwen3::Config = serde_json::from_str(&json).unwrap();
    let mut reference = qwen3::ModelForCausalLM::new(&cfg, vb(&w)).unwrap();
    let want = stepwise(|x, pos| reference.forward(x, pos).unwrap(), &tokens);
    check("qwen3", &got, &want);
}

#[test]
fn gemma3_matches_candle_transformers_at_every_position() {
    // candle scales scores by head_dim^-½ and has no RoPE scaling, so here
    // query_pre_attn_scalar = head_dim; the transformers fixture covers the rest. 20 tokens
    // cross the window of 4 in the two sliding layers; logits are soft-capped at 3 so the cap
    // bites.
    let json = gemma3_json(8, "3.0");
    let c = config(&json);
    assert_eq!(c.layer_windows, vec![Some(4), Some(4), None]);
    let w = random_weights(&c, 2);
    let tokens = ids(20, c.vocab_size);
    let got = full_logits(&decoder(&c, &w, &LoadOptions::default()), &tokens);
    use candle_transformers::models::gemma3;
    let cfg: gemma3::Config = serde_json::from_str(&json).unwrap();
    let mut reference = gemma3::Model::new(false, &cfg, vb(&w)).unwrap();
    // One token at a time: candle's rotating cache then keeps exactly the last 4 keys.
    let want = stepwise(|x, pos| reference.forward(x, pos).unwrap(), &tokens);
    check("gemma3", &got, &want);
    let max = got
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max < 3.0, "soft-capping keeps |logits| < 3, got {max}");
}

#[test]
fn phi3_with_partial_rotary_matches_candle_transformers_at_every_position() {
    let json = phi3_json(0.5);
    let c = config(&json);
    assert_eq!((c.rotary_dim(), c.head_dim), (4, 8));
    let w = random_weights(&c, 3);
    assert!(w.contains_key("model.layers.0.self_attn.qkv_proj.weight"));
    assert!(w.contains_key("model.layers.1.mlp.gate_up_proj.weight"));
    let tokens = ids(20, c.vocab_size);
    let got = full_logits(&decoder(&c, &w, &LoadOptions::default()), &tokens);
    use candle_transformers::models::phi3;
    let cfg: phi3::Config = serde_json::from_str(&json).unwrap();
    let mut reference = phi3::Model::new(&cfg, vb(&w)).unwrap();
    let want = stepwise(|x, pos| reference.forward(x, pos).unwrap(), &tokens);
    check("phi3", &got, &want);
}

#[test]
fn llama3_rope_scaling_matches_candle_transformers_at_every_position() {
    for tie in [true, false] {
        let json = llama3_json(tie);
        let c = config(&json);
        assert_eq!(c.eos_token_ids, vec![2, 3]);
        let w = random_weights(&c, 4);
        assert_eq!(w.contains_key("lm_head.weight"), !tie);
        let tokens = ids(20, c.vocab_size);
        let got = full_logits(&decoder(&c, &w, &LoadOptions::default()), &tokens);
        use candle_transformers::models::llama;
        let cfg: llama::LlamaConfig = serde_json::from_str(&json).unwrap();
        let cfg = cfg.into_config(false);
        let reference = llama::Llama::load(vb(&w), &cfg).unwrap();
        let mut cache = llama::Cache::new(true, DType::F32, &cfg, &Device::Cpu).unwrap();
        let want = stepwise(
            |x, pos| reference.forward(x, pos, &mut cache).unwrap(),
            &tokens,
        );
        check(&format!("llama3 tie={tie}"), &got, &want);
        // The scaling changes the result: without it the logits differ.
        let plain = json.replace("\"llama3\"", "\"default\"");
        let p = full_logits(
            &decoder(&config(&plain), &w, &LoadOptions::default()),
            &tokens,
        );
        assert!(
            max_abs_diff(&p, &got) > 1e-3,
            "llama3 scaling had no effect"
        );
    }
}

fn kv_cache_equals_full(c: &Config, seed: u64) {
    let model = decoder(c, &random_weights(c, seed), &LoadOptions::default());
    let tokens = ids(14, c.vocab_size);
    let full = full_logits(&model, &tokens);
    let mut cache = KvCache::new(c.num_hidden_layers);
    let ctx = ForwardCtx::default();
    let h = model
        .forward_hidden(&row(&tokens[..5]), Some(&mut cache), &ctx)
        .unwrap();
    let mut rows = vec![model.logits(&h, &ctx).unwrap().squeeze(0).unwrap()];
    for &t in &tokens[5..] {
        rows.push(model.forward_step(&row(&[t]), &mut cache).unwrap());
    }
    assert_eq!(cache.len(), tokens.len());
    let stepped = Tensor::cat(&rows, 0).unwrap();
    let d = max_abs_diff(&full, &stepped);
    assert!(d < 1e-5, "{:?}: max |Δlogit| = {d}", c.arch);
}

#[test]
fn kv_cache_decoding_equals_full_forward_for_every_family() {
    kv_cache_equals_full(&config(&qwen3_json()), 5);
    kv_cache_equals_full(&config(&gemma3_json(12, "30.0")), 6);
    kv_cache_equals_full(&config(&llama3_json(false)), 7);
    // Phi-3 with its window applied in every layer (14 tokens cross a window of 5).
    let phi = phi3_json(0.5).replace(
        "\"tie_word_embeddings\"",
        "\"sliding_window\":5,\"tie_word_embeddings\"",
    );
    let c = config(&phi);
    assert_eq!(c.layer_windows, vec![Some(5); 2]);
    kv_cache_equals_full(&c, 8);
}
