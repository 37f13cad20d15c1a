//! Shared pieces of the export tests: small random decoders of each architecture (with the
//! bundled model's SentencePiece tokenizer and template), random LoRA adapters, raw GGUF reads.
#![allow(dead_code)]

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use peft_engine::export::gguf::ExportModel;
use peft_engine::model::config::{Config, RawConfig};
use peft_engine::model::decoder::{
    Attention, Block, Decoder, GateUpProj, LoadOptions, Mlp, QkvProj,
};
use peft_engine::model::linear::Linear;
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use peft_engine::model::lora::Lora;
use std::path::{Path, PathBuf};

pub fn bundled() -> LoadedModel {
    LoadedModel::load(
        &ModelSource::Bundled,
        OpenOptions::default(),
        &LoadOptions::default(),
    )
    .unwrap()
}

/// The opened model's dense f32 weights as an owned decoder (tensors shared).
pub fn dense(m: &LoadedModel) -> Decoder {
    (*m.weights(&LoadOptions::default()).unwrap()).clone()
}

pub fn smollm_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/models/smollm2-135m-instruct-q4_1/"
    ))
}

pub fn smollm_gguf() -> PathBuf {
    let p = smollm_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "missing test model {} (see shared/models)",
        p.display()
    );
    p
}

/// Deterministic values in [-scale, scale) (a 64-bit LCG).
pub fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Shape of a test decoder.
#[derive(Clone, Copy)]
pub struct Dims {
    pub arch: &'static str,
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub tied: bool,
}

pub fn config(d: Dims) -> Config {
    RawConfig {
        model_type: Some(d.arch.into()),
        vocab_size: Some(d.vocab),
        hidden_size: Some(d.hidden),
        intermediate_size: Some(d.inter),
        num_hidden_layers: Some(d.layers),
        num_attention_heads: Some(d.heads),
        num_key_value_heads: Some(d.kv_heads),
        rms_norm_eps: Some(1e-5),
        rope_theta: Some(10000.0),
        max_position_embeddings: Some(512),
        tie_word_embeddings: Some(d.tied),
        bos_token_id: Some(1),
        ..RawConfig::default()
    }
    .validate("test config")
    .unwrap()
}

/// A random decoder (weights ~U(±0.1), norms ~1 ± 0.1, biases where the architecture has them).
pub fn random_decoder(d: Dims, seed: u64) -> Decoder {
    let c = config(d);
    let k = std::cell::Cell::new(seed * 1000);
    let next = |shape: &[usize]| {
        k.set(k.get() + 1);
        random(shape, k.get(), 0.1)
    };
    let norm = |t: Tensor| (t + 1.0).unwrap();
    let lin = |o: usize, i: usize, bias: bool| {
        let w = next(&[o, i]);
        let b = bias.then(|| next(&[o]));
        Linear::dense(w, b)
    };
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let layers = (0..c.num_hidden_layers)
        .map(|_| Block {
            input_layernorm: norm(next(&[h])),
            self_attn: Attention {
                qkv: QkvProj::Split {
                    q_proj: lin(c.q_dim(), h, c.qkv_bias),
                    k_proj: lin(c.kv_dim(), h, c.qkv_bias),
                    v_proj: lin(c.kv_dim(), h, c.qkv_bias),
                },
                o_proj: lin(h, c.q_dim(), c.o_bias),
                q_norm: None,
                k_norm: None,
            },
            post_attention_layernorm: norm(next(&[h])),
            pre_feedforward_layernorm: None,
            post_feedforward_layernorm: None,
            mlp: Mlp {
                gate_up: GateUpProj::Split {
                    gate_proj: lin(i, h, false),
                    up_proj: lin(i, h, false),
                },
                down_proj: lin(h, i, false),
            },
        })
        .collect();
    let embed = random(&[c.vocab_size, h], seed + 1, 0.5);
    let lm_head = (!c.tie_word_embeddings).then(|| lin(c.vocab_size, h, false));
    Decoder::from_parts(c, embed, layers, norm(random(&[h], seed + 2, 0.1)), lm_head).unwrap()
}

/// Attaches a random LoRA (rank `r`, B ≠ 0) to every block linear.
pub fn attach_random_lora(d: &mut Decoder, r: usize, scale: f64, seed: u64) {
    for (n, (_, lin)) in d.linears_mut().into_iter().enumerate() {
        let (o, i) = lin.dims();
        lin.lora = Some(Lora {
            a: random(&[r, i], seed + 2 * n as u64, 0.2),
            b: random(&[o, r], seed + 2 * n as u64 + 1, 0.2),
            scale,
            dropout: 0.0,
            stream: n as u64,
        });
    }
}

/// The bundled model's tokenizer and template around another decoder.
pub fn parts<'a>(base: &'a LoadedModel, d: &'a Decoder) -> ExportModel<'a> {
    ExportModel {
        decoder: d,
        tokenizer: &base.tokenizer,
        template: &base.template,
        name: "test-model",
    }
}

/// Llama dims that fit the bundled tokenizer (512 tokens).
pub fn llama_dims() -> Dims {
    Dims {
        arch: "llama",
        hidden: 64,
        inter: 96,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 512,
        tied: false,
    }
}

/// Reads a GGUF header and every tensor as f32 in file (llama.cpp) row order.
pub fn read_raw(path: &Path) -> (Content, std::collections::HashMap<String, Tensor>) {
    let mut f = std::fs::File::open(path).unwrap();
    let content = Content::read(&mut f).unwrap();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    let mut map = std::collections::HashMap::new();
    for n in names {
        let q = content.tensor(&mut f, &n, &Device::Cpu).unwrap();
        map.insert(n, q.dequantize(&Device::Cpu).unwrap());
    }
    (content, map)
}

pub fn meta_u32(c: &Content, key: &str) -> u32 {
    c.metadata
        .get(key)
        .unwrap_or_else(|| panic!("missing {key}"))
        .to_u32()
        .unwrap()
}

pub fn meta_str<'a>(c: &'a Content, key: &str) -> &'a str {
    c.metadata
        .get(key)
        .unwrap_or_else(|| panic!("missing {key}"))
        .to_string()
        .unwrap()
}

pub fn strings(v: &Value) -> Vec<String> {
    v.to_vec()
        .unwrap()
        .iter()
        .map(|x| x.to_string().unwrap().clone())
        .collect()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let num = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap();
    (num.to_scalar::<f32>().unwrap() / den.to_scalar::<f32>().unwrap()).sqrt()
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
        .to_scalar()
        .unwrap()
}
