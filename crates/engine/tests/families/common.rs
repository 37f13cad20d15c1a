//! Shared helpers: tiny configs per family, random weights named from the planner's own tensor
//! list (so the list is checked against what the decoder loads), ids, comparisons.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use peft_engine::model::config::Config;
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::decoder::{Decoder, LoadOptions};
use peft_engine::model::tensors::MemorySource;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Tiny configs in each family's own `config.json` layout. `candle` variants stay inside
/// what candle-transformers implements (see each parity test).
pub fn qwen3_json() -> String {
    r#"{"model_type":"qwen3","vocab_size":61,"hidden_size":16,"intermediate_size":40,
    "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,
    "rms_norm_eps":1e-6,"rope_theta":1000000.0,"max_position_embeddings":64,
    "tie_word_embeddings":true,"attention_bias":false,"sliding_window":null,
    "max_window_layers":2,"use_sliding_window":false,"hidden_act":"silu"}"#
        .into()
}

pub fn gemma3_json(qpas: usize, softcap: &str) -> String {
    format!(
        r#"{{"model_type":"gemma3_text","vocab_size":61,"hidden_size":16,"intermediate_size":40,
    "num_hidden_layers":3,"num_attention_heads":2,"num_key_value_heads":1,"head_dim":8,
    "rms_norm_eps":1e-6,"rope_theta":1000000.0,"rope_local_base_freq":10000.0,
    "max_position_embeddings":64,"attention_bias":false,"hidden_activation":"gelu_pytorch_tanh",
    "query_pre_attn_scalar":{qpas},"sliding_window":4,"sliding_window_pattern":3,
    "final_logit_softcapping":{softcap},"attn_logit_softcapping":null}}"#
    )
}

pub fn phi3_json(partial: f64) -> String {
    format!(
        r#"{{"model_type":"phi3","vocab_size":61,"hidden_size":16,"intermediate_size":40,
    "num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":1,"rms_norm_eps":1e-5,
    "rope_theta":10000.0,"max_position_embeddings":64,"hidden_act":"silu","bos_token_id":1,
    "eos_token_id":3,"rope_scaling":null,"partial_rotary_factor":{partial},
    "tie_word_embeddings":false}}"#
    )
}

pub fn llama3_json(tie: bool) -> String {
    format!(
        r#"{{"model_type":"llama","vocab_size":61,"hidden_size":16,"intermediate_size":40,
    "num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":1,"rms_norm_eps":1e-5,
    "rope_theta":10000.0,"max_position_embeddings":64,"tie_word_embeddings":{tie},
    "bos_token_id":1,"eos_token_id":[2,3],
    "rope_scaling":{{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
    "high_freq_factor":8.0,"original_max_position_embeddings":256}}}}"#
    )
}

pub fn config(json: &str) -> Config {
    Config::from_json(json, "tiny").unwrap()
}

/// Seeded weights for every tensor the planner lists for `c` (norm weights near the family's
/// identity: 1 for `w`, 0 for Gemma's `1 + w`).
pub fn random_weights(c: &Config, seed: u64) -> BTreeMap<String, Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let norm_base = if c.family().norm_plus_one { 0.0 } else { 1.0 };
    let mut out = BTreeMap::new();
    for t in peft_engine::plan::params::tensors(c) {
        let (shape, scale, base) = match t.dims {
            Some((i, o)) if t.name.contains("embed_tokens") || t.name == "lm_head.weight" => {
                (vec![o, i], 1.0, 0.0)
            }
            Some((i, o)) => (vec![o, i], 2.0 / (i as f32).sqrt(), 0.0),
            None if t.name.ends_with(".bias") => (vec![t.numel], 0.5, 0.0),
            None => (vec![t.numel], 0.4, norm_base),
        };
        let v: Vec<f32> = (0..t.numel)
            .map(|_| base + (rng.random::<f32>() - 0.5) * scale)
            .collect();
        out.insert(t.name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
    }
    out
}

pub fn decoder(c: &Config, w: &BTreeMap<String, Tensor>, opts: &LoadOptions) -> Decoder {
    let src = MemorySource {
        tensors: w.clone(),
        label: "memory".into(),
    };
    Decoder::load(c, &src, opts).unwrap()
}

pub fn ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % vocab) as u32).collect()
}

pub fn row(tokens: &[u32]) -> Tensor {
    Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// Logits at every position, `[s, vocab]`.
pub fn full_logits(m: &Decoder, tokens: &[u32]) -> Tensor {
    m.forward(&row(tokens), &ForwardCtx::default())
        .unwrap()
        .squeeze(0)
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Runs a reference model one token at a time; each step's output is that position's logits.
pub fn stepwise(mut step: impl FnMut(&Tensor, usize) -> Tensor, tokens: &[u32]) -> Tensor {
    let rows: Vec<Tensor> = tokens
        .iter()
        .enumerate()
        .map(|(pos, &t)| step(&row(&[t]), pos).flatten_all().unwrap())
        .collect();
    Tensor::stack(&rows, 0).unwrap()
}
