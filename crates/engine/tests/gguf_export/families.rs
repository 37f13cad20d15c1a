//! Merged and LoRA GGUF export of the families beyond Llama 2 (Qwen3, Llama 3.x RoPE scaling,
//! Gemma 3, Phi-3): a tiny random model of each family is written (f32 and Q8_0), opened again
//! with the engine's GGUF importer (`open_gguf`, checked against transformers per family in
//! `tests/families/gguf.rs`), and must give the same logits at every position; the metadata
//! keys the importer relies on must be there. Settings llama.cpp cannot be told about are
//! refused by name.

use crate::helpers::{attach_random_lora, bundled, parts, read_raw, rel_err};
use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use peft_engine::export::gguf::write_merged_gguf;
use peft_engine::export::gguf_quant::GgufQuant;
use peft_engine::export::lora_gguf::{attach_lora_gguf, write_lora_gguf};
use peft_engine::model::config::Config;
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::decoder::{Decoder, LoadOptions};
use peft_engine::model::gguf::open_gguf;
use peft_engine::model::rope_scaling::RopeScaling;
use peft_engine::model::tensors::{MemorySource, TensorSource};
use std::collections::BTreeMap;

/// Sizes shared by every family's tiny config: rows of 64 and 128 so Q8_0 (blocks of 32) is
/// really used, and the bundled tokenizer's 512 tokens.
const SIZES: &str = r#""vocab_size":512,"hidden_size":64,"intermediate_size":128,
    "num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":256,
    "bos_token_id":1,"eos_token_id":2"#;

fn qwen3() -> String {
    format!(
        r#"{{"model_type":"qwen3",{SIZES},"num_hidden_layers":2,"head_dim":32,
        "rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":true,
        "hidden_act":"silu"}}"#
    )
}

fn llama3() -> String {
    format!(
        r#"{{"model_type":"llama",{SIZES},"num_hidden_layers":2,"rms_norm_eps":1e-5,
        "rope_theta":500000.0,"tie_word_embeddings":false,
        "rope_scaling":{{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
        "high_freq_factor":4.0,"original_max_position_embeddings":16}}}}"#
    )
}

/// Seven layers with a window of 4 and Gemma's default period 6: layer 5 is global.
fn gemma3(pattern: usize, extra: &str) -> String {
    format!(
        r#"{{"model_type":"gemma3_text",{SIZES},"num_hidden_layers":7,"head_dim":16,
        "rms_norm_eps":1e-6,"rope_theta":1000000.0,"rope_local_base_freq":10000.0,
        "hidden_activation":"gelu_pytorch_tanh","query_pre_attn_scalar":16,
        "sliding_window":4,"sliding_window_pattern":{pattern}{extra}}}"#
    )
}

fn phi3() -> String {
    let short: Vec<String> = (0..4)
        .map(|i| format!("{}", 1.0 + 0.25 * i as f64))
        .collect();
    let long: Vec<String> = (0..4)
        .map(|i| format!("{}", 2.0 + 0.5 * i as f64))
        .collect();
    format!(
        r#"{{"model_type":"phi3",{SIZES},"num_hidden_layers":2,"rms_norm_eps":1e-5,
        "rope_theta":10000.0,"hidden_act":"silu","partial_rotary_factor":0.5,
        "sliding_window":5,"tie_word_embeddings":false,"original_max_position_embeddings":128,
        "rope_scaling":{{"type":"longrope","short_factor":[{}],"long_factor":[{}]}}}}"#,
        short.join(","),
        long.join(",")
    )
}

/// Seeded weights for every tensor the planner lists (norms near the family's identity).
fn random_decoder(c: &Config, seed: u64) -> Decoder {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let norm_base = if c.family().norm_plus_one { 0.0 } else { 1.0 };
    let mut tensors = BTreeMap::new();
    for t in peft_engine::plan::params::tensors(c) {
        let (shape, scale, base) = match t.dims {
            Some((i, o)) if t.name.contains("embed_tokens") || t.name == "lm_head.weight" => {
                (vec![o, i], 1.0, 0.0)
            }
            Some((i, o)) => (vec![o, i], 2.0 / (i as f32).sqrt(), 0.0),
            None => (vec![t.numel], 0.4, norm_base),
        };
        let v: Vec<f32> = (0..t.numel)
            .map(|_| base + (rng.random::<f32>() - 0.5) * scale)
            .collect();
        tensors.insert(t.name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
    }
    let src = MemorySource {
        tensors,
        label: "memory".into(),
    };
    Decoder::load(c, &src, &LoadOptions::default()).unwrap()
}

fn logits(m: &Decoder) -> Tensor {
    let ids: Vec<u32> = (0..12).map(|i| ((i * 37 + 11) % 512) as u32).collect();
    let row = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&row, &ForwardCtx::default())
        .unwrap()
        .squeeze(0)
        .unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
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

/// Exports `d` as f32 and Q8_0, reopens each with `open_gguf` and compares logits (f32: max
/// |Δ| < 1e-4; Q8_0: relative error < 2e-2). Returns the f32 file's header and the config the
/// importer read from it.
fn round_trip(d: &Decoder, key_prefix: &str) -> (Content, Config) {
    let base = bundled();
    let want = logits(d);
    let dir = tempfile::tempdir().unwrap();
    let mut out = None;
    for quant in [GgufQuant::F32, GgufQuant::Q8_0] {
        let path = dir.path().join(format!("{}.gguf", quant.label()));
        write_merged_gguf(&parts(&base, d), quant, &path, None, &mut |_| {}).unwrap();
        let g = open_gguf(&path).unwrap();
        assert_eq!(g.config.arch, d.config.arch);
        assert_eq!(g.config.layer_windows, d.config.layer_windows);
        assert_eq!(g.config.rotary_dim(), d.config.rotary_dim());
        assert_eq!(g.config.head_dim, d.config.head_dim);
        assert_eq!(g.config.tie_word_embeddings, d.config.tie_word_embeddings);
        let m = Decoder::load(&g.config, &g.source, &LoadOptions::default()).unwrap();
        let got = logits(&m);
        let what = format!("{} {}", d.config.arch.as_str(), quant.label());
        if quant == GgufQuant::F32 {
            let diff = max_abs(&got, &want);
            assert!(diff < 1e-4, "{what}: max |Δlogit| = {diff}");
            let (content, _) = read_raw(&path);
            assert_eq!(
                content.metadata["general.architecture"]
                    .to_string()
                    .unwrap(),
                key_prefix
            );
            out = Some((content, g.config.clone()));
        } else {
            let types: Vec<_> = g
                .source
                .names()
                .iter()
                .map(|n| g.source.tensor_type(n))
                .collect();
            assert!(
                types.contains(&Some("Q8_0")),
                "{what}: no Q8_0 tensor: {types:?}"
            );
            let err = rel_err(&got, &want);
            assert!(err < 2e-2, "{what}: relative logit error {err}");
        }
    }
    out.unwrap()
}

fn has_keys(c: &Content, keys: &[&str]) {
    for k in keys {
        assert!(c.metadata.contains_key(*k), "missing metadata key {k}");
    }
}

fn config(json: &str) -> Config {
    Config::from_json(json, "tiny").unwrap()
}

fn refusal(json: &str) -> String {
    let d = random_decoder(&config(json), 1);
    let base = bundled();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let err =
        write_merged_gguf(&parts(&base, &d), GgufQuant::F32, &path, None, &mut |_| {}).unwrap_err();
    assert!(!path.exists(), "a refused export left a file");
    assert!(
        matches!(err, peft_engine::Error::Unsupported { .. }),
        "{err}"
    );
    err.to_string()
}

#[test]
fn qwen3_exports_with_q_k_norms_and_head_size() {
    let d = random_decoder(&config(&qwen3()), 3);
    let (c, _) = round_trip(&d, "qwen3");
    has_keys(
        &c,
        &[
            "qwen3.attention.key_length",
            "qwen3.attention.value_length",
            "qwen3.rope.freq_base",
        ],
    );
    assert_eq!(
        c.metadata["qwen3.attention.key_length"].to_u32().unwrap(),
        32
    );
    assert!(c.tensor_infos.contains_key("blk.1.attn_q_norm.weight"));
    assert!(c.tensor_infos.contains_key("blk.1.attn_k_norm.weight"));
}

#[test]
fn lora_gguf_round_trips_for_every_family() {
    for (json, arch, linears) in [
        (qwen3(), "qwen3", 7),
        (llama3(), "llama", 7),
        (gemma3(6, ""), "gemma3", 7),
        (phi3(), "phi3", 4),
    ] {
        let base_d = random_decoder(&config(&json), 4);
        let mut d = base_d.clone();
        attach_random_lora(&mut d, 4, 2.0, 21);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.gguf");
        let s = write_lora_gguf(&d, GgufQuant::F32, "t", &path, None, &mut |_| {}).unwrap();
        assert_eq!(s.layers, d.layers.len() * linears, "{arch}");
        let (c, _) = read_raw(&path);
        assert_eq!(
            c.metadata["general.architecture"].to_string().unwrap(),
            arch
        );
        let back = attach_lora_gguf(&base_d, &path).unwrap();
        let diff = max_abs(&logits(&back), &logits(&d));
        assert!(diff < 1e-4, "{arch} LoRA GGUF: max |Δlogit| = {diff}");
        // The adapter changes the logits, so the comparison above could fail.
        assert!(max_abs(&logits(&base_d), &logits(&d)) > 1e-2, "{arch}");
    }
}

#[test]
fn llama3_rope_scaling_exports_as_rope_freqs() {
    let c = config(&llama3());
    assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { .. })));
    let d = random_decoder(&c, 5);
    let (content, back) = round_trip(&d, "llama");
    assert!(content.tensor_infos.contains_key("rope_freqs.weight"));
    // One divisor per frequency: θ_i / θ'_i of transformers' llama3 scaling (the lowest
    // frequency divided by the factor 8, the highest on the ramp between).
    let Some(RopeScaling::Frequencies { divisors }) = back.rope_scaling else {
        panic!("imported scaling: {:?}", back.rope_scaling);
    };
    let plain = RopeScaling::inv_freq(None, c.rope_theta, 16);
    let scaled = RopeScaling::inv_freq(c.rope_scaling.as_ref(), c.rope_theta, 16);
    assert_eq!(divisors.len(), 8);
    for i in 0..8 {
        let want = plain[i] / scaled[i];
        assert!(
            (divisors[i] - want).abs() < 1e-5 * want,
            "{i}: {divisors:?}"
        );
    }
    assert!((divisors[7] - 8.0).abs() < 1e-5 && divisors[0] < 8.0 && divisors[0] > 1.0);
    // Without the tensor the RoPE (and so the logits) would differ: the check can fail.
    let mut plain = c.clone();
    plain.rope_scaling = None;
    let d_plain = Decoder::from_parts(
        plain,
        d.embed_tokens.clone(),
        d.layers.clone(),
        d.norm.clone(),
        d.lm_head.clone(),
    )
    .unwrap();
    assert!(max_abs(&logits(&d_plain), &logits(&d)) > 1e-3);
}

#[test]
fn gemma3_exports_with_plus_one_norms_and_windows() {
    let d = random_decoder(&config(&gemma3(6, "")), 6);
    assert_eq!(d.config.layer_window(5), None);
    assert_eq!(d.config.layer_window(4), Some(4));
    let (c, _) = round_trip(&d, "gemma3");
    has_keys(
        &c,
        &[
            "gemma3.attention.sliding_window",
            "gemma3.attention.sliding_window_pattern",
            "gemma3.rope.freq_base_swa",
            "gemma3.attention.key_length",
        ],
    );
    assert_eq!(
        c.metadata["gemma3.attention.sliding_window_pattern"]
            .to_u32()
            .unwrap(),
        6
    );
    // Norms are stored as 1 + w, as llama.cpp's converter stores them.
    let (_, raw) = read_raw_f32(&d);
    let w = d.layers[0].pre_feedforward_layernorm.clone().unwrap();
    assert!(max_abs(&raw["blk.0.ffn_norm.weight"], &(w + 1.0).unwrap()) < 1e-7);
    assert!(max_abs(&raw["output_norm.weight"], &(d.norm.clone() + 1.0).unwrap()) < 1e-7);
}

#[test]
fn gemma3_linear_rope_scaling_exports_as_its_keys() {
    // Gemma 3 4B+: linearly scaled global layers, unscaled local ones.
    let json = gemma3(6, r#","rope_scaling":{"rope_type":"linear","factor":8.0}"#);
    let d = random_decoder(&config(&json), 9);
    let (c, back) = round_trip(&d, "gemma3");
    assert_eq!(
        c.metadata["gemma3.rope.scaling.type"].to_string().unwrap(),
        "linear"
    );
    assert_eq!(back.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
}

#[test]
fn a_gguf_import_of_llama3_exports_the_same_rope_freqs() {
    // An imported Llama 3.x carries its scaling as the file's divisors: written back as they are.
    let d = random_decoder(&config(&llama3()), 10);
    let base = bundled();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a.gguf");
    write_merged_gguf(&parts(&base, &d), GgufQuant::F32, &first, None, &mut |_| {}).unwrap();
    let g = open_gguf(&first).unwrap();
    let m = Decoder::load(&g.config, &g.source, &LoadOptions::default()).unwrap();
    let second = dir.path().join("b.gguf");
    write_merged_gguf(
        &parts(&base, &m),
        GgufQuant::F32,
        &second,
        None,
        &mut |_| {},
    )
    .unwrap();
    let (_, a) = read_raw(&first);
    let (_, b) = read_raw(&second);
    assert_eq!(
        max_abs(&a["rope_freqs.weight"], &b["rope_freqs.weight"]),
        0.0
    );
    let again = open_gguf(&second).unwrap();
    let m2 = Decoder::load(&again.config, &again.source, &LoadOptions::default()).unwrap();
    let diff = max_abs(&logits(&m2), &logits(&d));
    assert!(diff < 1e-4, "max |Δlogit| after two exports = {diff}");
}

fn read_raw_f32(
    d: &Decoder,
) -> (
    Content,
    std::collections::HashMap<String, candle_core::Tensor>,
) {
    let base = bundled();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_merged_gguf(&parts(&base, d), GgufQuant::F32, &path, None, &mut |_| {}).unwrap();
    read_raw(&path)
}

#[test]
fn phi3_exports_fused_projections_partial_rotary_and_longrope() {
    let c = config(&phi3());
    assert!(matches!(c.rope_scaling, Some(RopeScaling::LongRope { .. })));
    let d = random_decoder(&c, 8);
    let (content, back) = round_trip(&d, "phi3");
    for k in [
        "blk.0.attn_qkv.weight",
        "blk.0.ffn_up.weight",
        "rope_factors_short.weight",
        "rope_factors_long.weight",
    ] {
        assert!(content.tensor_infos.contains_key(k), "missing tensor {k}");
    }
    has_keys(
        &content,
        &[
            "phi3.rope.dimension_count",
            "phi3.rope.scaling.original_context_length",
            "phi3.rope.scaling.attn_factor",
            "phi3.attention.sliding_window",
        ],
    );
    assert_eq!(
        content.metadata["phi3.rope.dimension_count"]
            .to_u32()
            .unwrap(),
        8
    );
    // The attention factor travels as f32.
    let (
        Some(RopeScaling::LongRope {
            attention_factor: got,
            short_factor: s1,
            long_factor: l1,
            ..
        }),
        Some(RopeScaling::LongRope {
            attention_factor: want,
            short_factor: s2,
            long_factor: l2,
            ..
        }),
    ) = (&back.rope_scaling, &d.config.rope_scaling)
    else {
        panic!("imported scaling: {:?}", back.rope_scaling);
    };
    assert!((got - want).abs() < 1e-6 && s1 == s2 && l1 == l2);
}

#[test]
fn settings_llama_cpp_cannot_read_are_refused_by_name() {
    // Gemma 3 with another window period, softcapping or another score scale: llama.cpp's
    // gemma3 fixes these in code.
    let err = refusal(&gemma3(3, ""));
    assert!(err.contains("pattern"), "{err}");
    let err = refusal(&gemma3(6, r#","final_logit_softcapping":30.0"#));
    assert!(err.contains("softcapping"), "{err}");
    let err = refusal(
        &gemma3(6, r#","query_pre_attn_scalar":64"#).replace(r#""query_pre_attn_scalar":16,"#, ""),
    );
    assert!(err.contains("query_pre_attn_scalar"), "{err}");
    // RoPE scaling with no GGUF form for that family.
    let err = refusal(&qwen3().replace(
        r#""hidden_act":"silu""#,
        r#""hidden_act":"silu","rope_scaling":{"rope_type":"linear","factor":2.0}"#,
    ));
    assert!(err.contains("RoPE scaling `linear` on qwen3"), "{err}");
}

#[test]
fn the_export_call_self_checks_every_new_family() {
    use peft_engine::export::run::{export, ExportFormat, ExportRequest};
    use peft_engine::export::selfcheck::CheckOptions;
    let base = bundled();
    for json in [qwen3(), llama3(), gemma3(6, ""), phi3()] {
        let mut d = random_decoder(&config(&json), 12);
        attach_random_lora(&mut d, 2, 1.0, 31);
        for format in [ExportFormat::Gguf, ExportFormat::GgufAdapter] {
            let dir = tempfile::tempdir().unwrap();
            let req = ExportRequest {
                format,
                quant: GgufQuant::F32,
                out: dir.path().to_path_buf(),
                name: "t".into(),
                publisher: String::new(),
                check: CheckOptions {
                    max_new_tokens: 4,
                    ..CheckOptions::default()
                },
                cancel: None,
            };
            let r = export(&parts(&base, &d), &req, &mut |_| {}).unwrap();
            assert!(
                r.self_check.passed(),
                "{} {format:?}: {}",
                d.config.arch.as_str(),
                r.self_check.summary()
            );
        }
    }
}
