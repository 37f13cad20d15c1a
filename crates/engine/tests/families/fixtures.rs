//! Against transformers + peft (fixtures from `scripts/make_family_fixtures.py`): the base
//! model's logits and base + a peft LoRA adapter's logits at every position, for a tiny model
//! of each family saved by transformers itself. These cover what candle-transformers does not
//! implement: Llama 3 scaling in transformers' own layout, Gemma 3's `query_pre_attn_scalar`
//! and linear-scaled global RoPE, Phi-3's longrope (short factors, attention factor) and
//! sliding window. Also: exact parameter counts, config export round trips.

use crate::common::*;
use candle_core::{Device, Tensor};
use peft_engine::model::config::Config;
use peft_engine::model::decoder::{Decoder, LoadOptions, QuantizeOptions};
use peft_engine::model::rope_scaling::RopeScaling;
use peft_engine::model::tensors::{SafetensorsSource, TensorSource};
use peft_engine::peft::adapter_io::load_lora_adapter;
use std::path::PathBuf;

pub const FAMILIES: [&str; 4] = ["llama3", "qwen3", "gemma3", "phi3"];

pub fn family_dir(name: &str) -> PathBuf {
    let dir = fixtures_dir().join(format!("family_{name}"));
    assert!(
        dir.join("reference.json").exists(),
        "missing fixture {} (run scripts/make_family_fixtures.py)",
        dir.display()
    );
    dir
}

pub struct Fixture {
    pub config: Config,
    pub source: SafetensorsSource,
    pub tokens: Vec<u32>,
    pub base: Tensor,
    pub lora: Tensor,
    pub dir: PathBuf,
}

fn matrix(v: &serde_json::Value) -> Tensor {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let (r, c) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (r, c), &Device::Cpu).unwrap()
}

pub fn load_fixture(name: &str) -> Fixture {
    let dir = family_dir(name);
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    Fixture {
        config: Config::from_file(&dir.join("base/config.json")).unwrap(),
        source: SafetensorsSource::open_dir(&dir.join("base")).unwrap(),
        tokens: serde_json::from_value(reference["token_ids"].clone()).unwrap(),
        base: matrix(&reference["base_logits"]),
        lora: matrix(&reference["lora_logits"]),
        dir,
    }
}

pub fn load(f: &Fixture, opts: &LoadOptions) -> Decoder {
    Decoder::load(&f.config, &f.source, opts).unwrap()
}

/// `LoadedModel::open` validates a model with `Decoder::check` (names and shapes, no weights
/// read): every family's real layout passes, and a mis-shaped MLP is named.
#[test]
fn opening_checks_each_familys_tensors() {
    for family in FAMILIES {
        let f = load_fixture(family);
        Decoder::check(&f.config, &f.source)
            .unwrap_or_else(|e| panic!("{family}: check refused its own fixture: {e}"));
        let mut wrong = f.config.clone();
        wrong.intermediate_size += 1;
        match Decoder::check(&wrong, &f.source) {
            Err(peft_engine::error::Error::Tensor { tensor, .. }) => {
                assert!(tensor.contains(".mlp."), "{family}: named {tensor}")
            }
            other => panic!("{family}: a mis-shaped MLP gave {other:?}"),
        }
    }
}

#[test]
fn fixture_configs_parse_into_each_familys_structure() {
    let l = load_fixture("llama3").config;
    assert!(matches!(
        l.rope_scaling,
        Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0
    ));
    assert!(!l.tie_word_embeddings);
    let q = load_fixture("qwen3").config;
    assert!(q.family().qk_norm && !q.qkv_bias && q.head_dim == 8 && q.tie_word_embeddings);
    let g = load_fixture("gemma3").config;
    assert_eq!(g.layer_windows, vec![Some(4), Some(4), None]);
    assert_eq!(
        (g.rope_theta, g.rope_local_theta, g.query_pre_attn_scalar),
        (1e6, Some(1e4), Some(12.0))
    );
    assert!(matches!(g.rope_scaling, Some(RopeScaling::Linear { factor }) if factor == 8.0));
    assert_eq!(g.final_logit_softcapping, Some(30.0));
    let p = load_fixture("phi3").config;
    assert_eq!(
        (p.rotary_dim(), p.layer_windows.clone()),
        (4, vec![Some(7); 2])
    );
    match &p.rope_scaling {
        Some(RopeScaling::LongRope {
            attention_factor,
            original_max_position_embeddings: 16,
            ..
        }) => assert!((attention_factor - 1.5f64.sqrt()).abs() < 1e-12),
        other => panic!("phi3 rope scaling {other:?}"),
    }
}

#[test]
fn base_logits_match_transformers_for_every_family() {
    for name in FAMILIES {
        let f = load_fixture(name);
        let got = full_logits(&load(&f, &LoadOptions::default()), &f.tokens);
        let d = max_abs_diff(&got, &f.base);
        assert!(d < 1e-4, "{name}: max |Δlogit| vs transformers = {d}");
    }
}

#[test]
fn peft_adapters_give_peft_logits_for_every_family() {
    for name in FAMILIES {
        let f = load_fixture(name);
        let mut m = load(&f, &LoadOptions::default());
        let (cfg, _) = load_lora_adapter(&mut m, &f.dir.join("adapter"), false).unwrap();
        let adapted = m
            .linears_mut()
            .iter()
            .filter(|(_, l)| l.lora.is_some())
            .count();
        assert_eq!(
            adapted,
            f.config.num_hidden_layers * f.config.family().linears.len(),
            "{name}: adapters on every linear ({})",
            cfg.target_modules
        );
        let got = full_logits(&m, &f.tokens);
        let d = max_abs_diff(&got, &f.lora);
        assert!(d < 1e-4, "{name}: max |Δlogit| vs peft = {d}");
    }
}

#[test]
fn phi3_adapter_targets_the_fused_projections_by_their_own_names() {
    let f = load_fixture("phi3");
    let st = candle_core::safetensors::load(
        f.dir.join("adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(st.contains_key("base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight"));
    assert!(st.contains_key("base_model.model.model.layers.1.mlp.gate_up_proj.lora_B.weight"));
    assert_eq!(
        f.config.family().module_names(),
        ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    );
}

#[test]
fn parameter_counts_are_exact_for_every_family() {
    for name in FAMILIES {
        let f = load_fixture(name);
        let on_disk: usize = f
            .source
            .names()
            .iter()
            .map(|n| f.source.shape(n).unwrap().iter().product::<usize>())
            .sum();
        assert_eq!(
            peft_engine::model::count::parameter_count(&f.config),
            on_disk,
            "{name}"
        );
        let planned: usize = peft_engine::plan::params::tensors(&f.config)
            .iter()
            .map(|t| t.numel)
            .sum();
        assert_eq!(planned, on_disk, "{name}: planner tensor list");
        let mut names: Vec<String> = peft_engine::plan::params::tensors(&f.config)
            .into_iter()
            .map(|t| t.name)
            .collect();
        names.sort();
        let mut disk = f.source.names();
        disk.sort();
        assert_eq!(names, disk, "{name}: planner names = file names");
    }
}

#[test]
fn exported_configs_round_trip_in_each_familys_layout() {
    for name in FAMILIES {
        let c = load_fixture(name).config;
        let json = c.to_hf_json();
        assert_eq!(json["model_type"], c.family().model_type, "{name}");
        let mut back = Config::from_json(&json.to_string(), "export").unwrap();
        // Exports are written in f32 whatever the source said.
        back.torch_dtype = c.torch_dtype.clone();
        assert_eq!(back, c, "{name}: {json}");
    }
    // Gemma's own keys, not Llama's.
    let g = load_fixture("gemma3").config.to_hf_json();
    assert_eq!(g["hidden_activation"], "gelu_pytorch_tanh");
    assert!(g.get("hidden_act").is_none());
    assert_eq!(g["architectures"][0], "Gemma3ForCausalLM");
}

#[test]
fn qlora_quantizes_every_familys_linears_including_fused_ones() {
    for name in FAMILIES {
        let f = load_fixture(name);
        let opts = LoadOptions {
            quantize: Some(QuantizeOptions::default()),
            ..Default::default()
        };
        let mut q = load(&f, &opts);
        for (path, lin) in q.linears_mut() {
            assert!(
                matches!(lin.base, peft_engine::model::linear::Base::Nf4(_)),
                "{name}: {path} not NF4"
            );
        }
        // The NF4 forward (dequantized tile by tile inside the op) equals a dense model holding
        // the dequantized weights, and differs from the original dense weights.
        let nf4_logits = full_logits(&q, &f.tokens);
        let mut dq = q.clone();
        assert_eq!(
            dq.dequantize_all().unwrap(),
            q.linears_mut().len(),
            "{name}"
        );
        let d = max_abs_diff(&nf4_logits, &full_logits(&dq, &f.tokens));
        assert!(
            d < 1e-4,
            "{name}: NF4 op vs dequantized dense max |Δlogit| = {d}"
        );
        assert!(
            max_abs_diff(&nf4_logits, &f.base) > 1e-3,
            "{name}: NF4 changed nothing"
        );
    }
}

#[test]
fn unknown_model_types_name_the_supported_list() {
    let e = Config::from_json(
        r#"{"model_type":"gemma2","vocab_size":8,"hidden_size":8,"intermediate_size":8,
        "num_hidden_layers":1,"num_attention_heads":1}"#,
        "cfg.json",
    )
    .unwrap_err()
    .to_string();
    for t in ["gemma2", "llama", "qwen3", "gemma3_text", "phi3"] {
        assert!(e.contains(t), "{e}");
    }
    let yarn = load_fixture("llama3")
        .config
        .to_hf_json()
        .to_string()
        .replace("\"llama3\"", "\"yarn\"");
    let e = Config::from_json(&yarn, "cfg.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("yarn") && e.contains("rope scaling"), "{e}");
}
