//! LoRA adapters on disk in Hugging Face PEFT's format: our save → load round trip, PEFT's
//! names, shapes and config keys, adapters written by Python `peft` itself (fixtures under
//! `tests/fixtures/`, produced as their README says) giving PEFT's logits, and loading errors
//! that name what is wrong.

mod common;

use candle_core::{DType, Device, Tensor};
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::decoder::Decoder;
use peft_engine::peft::adapter_io::{
    apply_adapter, load_lora_adapter, save_lora_adapter, AdapterDtype,
};
use peft_engine::peft::method::{apply_method, LoraSettings, Method, Trainable};
use peft_engine::test_support::max_diff;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

/// The ids the fixtures' reference logits were computed on (see their README).
const TOKENS: [u32; 8] = [1, 403, 407, 261, 378, 432, 383, 286];

fn logits(m: &Decoder) -> Tensor {
    let ids = Tensor::new(&TOKENS, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&ids, &ForwardCtx::default())
        .unwrap()
        .squeeze(0)
        .unwrap()
}

fn settings(targets: &[&str], layers: Option<Vec<usize>>, rslora: bool) -> LoraSettings {
    LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.05,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        layers,
        rslora,
    }
}

/// The bundled model with a trained-looking adapter (seeded non-zero B).
fn adapted(s: &LoraSettings) -> (Decoder, Trainable) {
    let mut m = common::decoder();
    let t = apply_method(&mut m, &Method::Lora(s.clone()), 3).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    for (name, v) in &t.params {
        if name.ends_with("lora_B.weight") {
            let vals: Vec<f32> = (0..v.elem_count())
                .map(|_| rng.random_range(-0.2f32..0.2))
                .collect();
            v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    (m, t)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn save_then_load_gives_identical_logits() {
    let s = settings(&["all-linear"], None, true);
    let (m, t) = adapted(&s);
    let want = logits(&m);
    assert!(
        max_diff(&want, &logits(&common::decoder())) > 0.1,
        "adapter has no effect"
    );
    let dir = tempfile::tempdir().unwrap();
    save_lora_adapter(dir.path(), &t, &s, "demo", AdapterDtype::F32).unwrap();

    let mut fresh = common::decoder();
    let (cfg, none) = load_lora_adapter(&mut fresh, dir.path(), false).unwrap();
    assert!(
        none.params.is_empty(),
        "a frozen load has no trainable tensors"
    );
    assert!(cfg.use_rslora && cfg.r == 4 && cfg.lora_alpha == 8.0);
    assert_eq!(
        max_diff(&logits(&fresh), &want),
        0.0,
        "f32 round trip must be exact"
    );
    // Loading for further training gives back Vars with the same values.
    let mut again = common::decoder();
    let (_, tr) = load_lora_adapter(&mut again, dir.path(), true).unwrap();
    assert_eq!(tr.params.len(), t.params.len());
    assert_eq!(max_diff(&logits(&again), &want), 0.0);
    // `apply_adapter` (what `--adapter DIR` uses) picks the LoRA path.
    let mut applied = common::decoder();
    apply_adapter(&mut applied, dir.path()).unwrap();
    assert_eq!(max_diff(&logits(&applied), &want), 0.0);
}

#[test]
fn bf16_adapter_is_half_the_size_and_within_bf16_rounding() {
    let s = settings(&["all-linear"], None, false);
    let (m, t) = adapted(&s);
    let want = logits(&m);
    let base = logits(&common::decoder());
    let dir = tempfile::tempdir().unwrap();
    let (d32, d16) = (dir.path().join("f32"), dir.path().join("bf16"));
    save_lora_adapter(&d32, &t, &s, "demo", AdapterDtype::F32).unwrap();
    save_lora_adapter(&d16, &t, &s, "demo", AdapterDtype::Bf16).unwrap();
    let size = |d: &Path| {
        std::fs::metadata(d.join("adapter_model.safetensors"))
            .unwrap()
            .len() as f64
    };
    let ratio = size(&d16) / size(&d32);
    // Data halves exactly; the JSON header (70 names) is the same in both.
    assert!((0.45..0.56).contains(&ratio), "bf16/f32 size ratio {ratio}");
    let st = candle_core::safetensors::load(d16.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    assert!(st.values().all(|t| t.dtype() == DType::BF16));

    let mut m16 = common::decoder();
    load_lora_adapter(&mut m16, &d16, false).unwrap();
    let got = logits(&m16);
    let (d, effect) = (max_diff(&got, &want), max_diff(&want, &base));
    eprintln!("bf16 adapter: max |Δlogit| {d:.2e}, adapter effect {effect:.3}");
    // bf16 rounds each A and B entry by at most 2^-9 relative, so the delta moves by
    // about 2·2^-9 ≈ 0.4 % of itself; allow 2 % of the adapter's effect on the logits.
    assert!(
        d > 0.0 && d < 0.02 * effect,
        "bf16 adapter moved logits by {d} (effect {effect})"
    );
}

#[test]
fn saved_adapter_uses_peft_names_shapes_and_config_keys() {
    let s = settings(&["q_proj", "v_proj", "down_proj"], Some(vec![0, 3]), false);
    let (_, t) = adapted(&s);
    let dir = tempfile::tempdir().unwrap();
    save_lora_adapter(dir.path(), &t, &s, "demo", AdapterDtype::F32).unwrap();
    let st =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = st.keys().collect();
    names.sort();
    let mut want = Vec::new();
    // stories260K: hidden 64, kv_dim 4·8 = 32, intermediate 172.
    for l in [0, 3] {
        for (module, out, inp) in [
            ("self_attn.q_proj", 64, 64),
            ("self_attn.v_proj", 32, 64),
            ("mlp.down_proj", 64, 172),
        ] {
            let p = format!("base_model.model.model.layers.{l}.{module}");
            assert_eq!(
                st[&format!("{p}.lora_A.weight")].dims(),
                [4, inp],
                "{p} A is [r, in]"
            );
            assert_eq!(
                st[&format!("{p}.lora_B.weight")].dims(),
                [out, 4],
                "{p} B is [out, r]"
            );
            want.push(format!("{p}.lora_A.weight"));
            want.push(format!("{p}.lora_B.weight"));
        }
    }
    want.sort();
    assert_eq!(names, want.iter().collect::<Vec<_>>());
    assert!(st.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));

    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert!((cfg["lora_dropout"].as_f64().unwrap() - 0.05).abs() < 1e-7);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["down_proj", "q_proj", "v_proj"])
    );
    assert_eq!(cfg["layers_to_transform"], serde_json::json!([0, 3]));
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["use_rslora"], false);
    assert_eq!(cfg["use_dora"], false);
    assert_eq!(cfg["fan_in_fan_out"], false);
    assert_eq!(cfg["base_model_name_or_path"], "demo");
    assert_eq!(cfg["inference_mode"], true);
    for key in [
        "modules_to_save",
        "init_lora_weights",
        "revision",
        "rank_pattern",
        "alpha_pattern",
    ] {
        assert!(cfg.get(key).is_some(), "adapter_config.json lacks `{key}`");
    }
}

/// Loads a fixture written by Python `peft` onto the bundled model and compares with the
/// logits PEFT computed (`reference_logits.json`, see the fixture README).
fn matches_peft_reference(name: &str) -> (f32, f32) {
    let dir = fixture(name);
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference_logits.json")).unwrap())
            .unwrap();
    let ids: Vec<u32> = reference["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, TOKENS);
    let rows: Vec<f32> = reference["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    let want = Tensor::from_vec(rows, (TOKENS.len(), 512), &Device::Cpu).unwrap();

    let mut m = common::decoder();
    let (cfg, _) = load_lora_adapter(&mut m, &dir, false).unwrap();
    assert_eq!(cfg.peft_type, "LORA");
    let got = logits(&m);
    let d = max_diff(&got, &want);
    let effect = max_diff(&logits(&common::decoder()), &want);
    eprintln!("{name}: max |Δlogit| vs peft {d:.2e} (adapter effect {effect:.3})");
    assert!(
        effect > 1.0,
        "{name}: the adapter barely changes the logits ({effect})"
    );
    // 1e-4: PyTorch and candle sum in different orders (f32, ~1e-6 relative at logits up to
    // ~20) and the reference is rounded to 6 decimals.
    assert!(d < 1e-4, "{name}: logits differ from PEFT's by {d}");
    (d, effect)
}

#[test]
fn adapter_written_by_python_peft_gives_peft_logits() {
    // r 4, alpha 8, q_proj + v_proj: scale alpha/r = 2.
    matches_peft_reference("peft_lora_stories");
    let mut m = common::decoder();
    load_lora_adapter(&mut m, &fixture("peft_lora_stories"), false).unwrap();
    assert_eq!(
        m.layers[2].self_attn.q_proj.lora.as_ref().unwrap().scale,
        2.0
    );
    assert!(m.layers[2].self_attn.k_proj.lora.is_none());
}

#[test]
fn rslora_adapter_written_by_python_peft_gives_peft_logits() {
    // r 4, alpha 8, all-linear, use_rslora: scale alpha/√r = 4.
    matches_peft_reference("peft_rslora_stories");
    let mut m = common::decoder();
    load_lora_adapter(&mut m, &fixture("peft_rslora_stories"), false).unwrap();
    assert_eq!(m.layers[4].mlp.down_proj.lora.as_ref().unwrap().scale, 4.0);
}

/// A copy of our own saved adapter that a test may then break.
fn saved_adapter(dir: &Path) -> PathBuf {
    let s = settings(&["q_proj", "v_proj"], None, false);
    let (_, t) = adapted(&s);
    let out = dir.join("adapter");
    save_lora_adapter(&out, &t, &s, "demo", AdapterDtype::F32).unwrap();
    out
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

fn edit_tensors(dir: &Path, f: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) {
    let path = dir.join("adapter_model.safetensors");
    let mut st = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    f(&mut st);
    candle_core::safetensors::save(&st, &path).unwrap();
}

fn load_err(dir: &Path) -> String {
    let mut m = common::decoder();
    match load_lora_adapter(&mut m, dir, false) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_config_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = saved_adapter(tmp.path());
    std::fs::remove_file(dir.join("adapter_config.json")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("adapter_config.json"), "{err}");
    // `apply_adapter` on a folder with neither an adapter nor a delta says what it looked for.
    std::fs::remove_file(dir.join("adapter_model.safetensors")).unwrap();
    let mut m = common::decoder();
    let err = apply_adapter(&mut m, &dir).unwrap_err().to_string();
    assert!(
        err.contains("adapter_config.json") && err.contains("model_delta.safetensors"),
        "{err}"
    );
    // A config without weights names the weights file.
    let dir = saved_adapter(&tmp.path().join("b"));
    std::fs::remove_file(dir.join("adapter_model.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("adapter_model.safetensors"), "{err}");
}

#[test]
fn unsupported_adapter_kinds_are_rejected_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, serde_json::Value, &str); 7] = [
        (
            "peft_type",
            serde_json::json!("PREFIX_TUNING"),
            "PREFIX_TUNING",
        ),
        ("peft_type", serde_json::json!("IA3"), "IA3"),
        ("use_dora", serde_json::json!(true), "DoRA"),
        ("fan_in_fan_out", serde_json::json!(true), "fan_in_fan_out"),
        ("lora_bias", serde_json::json!(true), "lora_bias"),
        (
            "alora_invocation_tokens",
            serde_json::json!([32, 45]),
            "aLoRA",
        ),
        (
            "modules_to_save",
            serde_json::json!(["lm_head"]),
            "modules_to_save",
        ),
    ];
    for (i, (key, value, expect)) in cases.into_iter().enumerate() {
        let dir = saved_adapter(&tmp.path().join(i.to_string()));
        edit_config(&dir, |c| c[key] = value.clone());
        let err = load_err(&dir);
        assert!(
            err.contains(expect) && err.contains(key),
            "{key}={value}: {err}"
        );
        assert!(err.contains("adapter_config.json"), "{err}");
    }
    // Keys newer PEFT versions write with their "off" values load fine (the fixtures have
    // them all); the same keys switched off in our own file are accepted too.
    let dir = saved_adapter(&tmp.path().join("off"));
    edit_config(&dir, |c| {
        c["lora_bias"] = serde_json::json!(false);
        c["alora_invocation_tokens"] = serde_json::Value::Null;
        c["peft_version"] = serde_json::json!("0.21.2");
    });
    load_lora_adapter(&mut common::decoder(), &dir, false).unwrap();
}

#[test]
fn tensor_for_a_missing_module_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = saved_adapter(tmp.path());
    // The bundled model has layers 0..4; layer 7 does not exist.
    let bad = "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight";
    edit_tensors(&dir, |st| {
        st.insert(
            bad.into(),
            Tensor::zeros((4, 64), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(&dir);
    assert!(
        err.contains(bad) && err.contains("adapter_model.safetensors"),
        "{err}"
    );

    // Half a pair: lora_A without its lora_B.
    let dir = saved_adapter(&tmp.path().join("half"));
    let b = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
    edit_tensors(&dir, |st| {
        st.remove(b);
    });
    let err = load_err(&dir);
    assert!(err.contains(b) && err.contains("missing"), "{err}");
}

#[test]
fn misshaped_tensor_is_an_error_with_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = saved_adapter(tmp.path());
    let a = "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight";
    edit_tensors(&dir, |st| {
        st.insert(
            a.into(),
            Tensor::zeros((4, 63), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(&dir);
    assert!(
        err.contains(a) && err.contains("[4, 63]") && err.contains("[4, 64]"),
        "{err}"
    );

    // A rank that disagrees with `r` in the config.
    let dir = saved_adapter(&tmp.path().join("rank"));
    edit_config(&dir, |c| c["r"] = serde_json::json!(8));
    let err = load_err(&dir);
    assert!(err.contains("[4, 64]") && err.contains("[8, 64]"), "{err}");
}

#[test]
fn loading_onto_a_merged_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = saved_adapter(tmp.path());
    let mut m = common::decoder();
    load_lora_adapter(&mut m, &dir, false).unwrap();
    peft_engine::export::merge::merge_adapters(&mut m).unwrap();
    let Err(err) = load_lora_adapter(&mut m, &dir, false) else {
        panic!("loading onto a merged model must fail");
    };
    let err = err.to_string();
    assert!(err.contains("merged"), "{err}");
}
