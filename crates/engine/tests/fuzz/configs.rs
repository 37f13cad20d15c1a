//! `config.json` and `adapter_config.json`: the bundled model's config and a Python-PEFT
//! adapter's config with fields set to extreme numbers, wrong types, nulls, or removed. A
//! config that validates is used the way `info` and `plan` use it (parameter count, memory
//! estimates at several sequence lengths up to the declared context, the HF JSON); an adapter
//! config that validates is applied to the bundled model.

use crate::harness::{run, Rng, Verdict};
use peft_engine::model::count::parameter_count;
use peft_engine::plan::estimate::estimate;
use peft_engine::plan::PlanRequest;
use peft_engine::train::tuned::with_adapter;
use peft_engine::Config;
use serde_json::{json, Value};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// An extreme or ill-typed JSON value.
fn wild(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => json!(null),
        1 => json!(-1),
        2 => json!(1e308),
        3 => json!(f64::MIN_POSITIVE),
        4 => json!("64"),
        5 => json!([1, 2]),
        6 => json!({"a": 1}),
        7 => json!(true),
        8 => json!(0.5),
        _ => json!(rng.size()),
    }
}

fn mutate(v: &mut Value, rng: &mut Rng) {
    let keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    for _ in 0..1 + rng.below(3) {
        let k = rng.pick(&keys).clone();
        match rng.below(5) {
            0 => {
                v.as_object_mut().unwrap().remove(&k);
            }
            1 | 2 => v[&k] = json!(rng.size()),
            _ => v[&k] = wild(rng),
        }
    }
}

/// What `peft info` and `peft plan` compute from a config.
fn use_config(c: &Config) {
    let _ = parameter_count(c);
    let _ = c.to_hf_json();
    for seq in [1, 64, 512, c.max_position_embeddings] {
        for method in ["lora", "qlora", "full"] {
            let mut req = PlanRequest {
                seq_len: seq,
                ..Default::default()
            };
            req.method = match method {
                "qlora" => peft_engine::peft::method::Method::Qlora(Default::default()),
                "full" => peft_engine::peft::method::Method::Full,
                _ => req.method,
            };
            let _ = estimate(c, &req);
        }
    }
}

#[test]
fn config_json() {
    let base: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/stories260K/config.json")).unwrap(),
    )
    .unwrap();
    run("config.json", 600, |rng, _| {
        let mut v = base.clone();
        mutate(&mut v, rng);
        if rng.one_in(10) {
            v["rope_scaling"] = json!({"rope_type": rng.pick(&["default", "llama3", "yarn", ""])});
        }
        let r = Config::from_json(&v.to_string(), "config.json").map(|c| use_config(&c));
        Verdict::of(r, &["config.json"])
    });
}

#[test]
fn adapter_config_json() {
    let fixture = root().join("crates/engine/tests/fixtures/peft_lora_stories");
    let base: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let model = peft_engine::model::loaded::LoadedModel::open(
        &peft_engine::model::load::ModelSource::Bundled,
        Default::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture.join("adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    run("adapter_config.json", 120, |rng, _| {
        let mut v = base.clone();
        mutate(&mut v, rng);
        match rng.below(6) {
            0 => v["target_modules"] = json!(rng.pick(&["all-linear", "q_proj", "", ".*"])),
            1 => v["layers_to_transform"] = json!([rng.size(), 0]),
            2 => v["r"] = json!(rng.size()),
            _ => {}
        }
        std::fs::write(dir.path().join("adapter_config.json"), v.to_string()).unwrap();
        Verdict::of(
            with_adapter(&model, dir.path()).map(|_| ()),
            &["adapter_config.json", "adapter_model.safetensors"],
        )
    });
}
