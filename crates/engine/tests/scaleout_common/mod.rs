//! Shared by the scaleout tests: small datasets, runs, an export helper and YAML accessors.
#![allow(dead_code)]

use crate::common;
use peft_engine::model::load::ModelSource;
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::method::{LoraSettings, Method};
use peft_engine::scaleout::{export, Engine, ExportReport, ExportRequest};
use peft_engine::train::schedule::Scheduler;
use peft_engine::train::TrainConfig;
use serde_yaml::Value;
use std::path::{Path, PathBuf};

pub fn chat_file(dir: &Path) -> PathBuf {
    let rows = [
        r#"{"messages":[{"role":"system","content":"You tell short stories."},{"role":"user","content":"Tell me about a cat."},{"role":"assistant","content":"The cat sat in the sun and was happy."}]}"#,
        r#"{"messages":[{"role":"user","content":"Who is Tom?"},{"role":"assistant","content":"Tom is a boy with a red kite."},{"role":"user","content":"What did he do?"},{"role":"assistant","content":"He flew it high in the sky with his dad."}]}"#,
        r#"{"messages":[{"role":"user","content":"Say hi."},{"role":"assistant","content":"Hi! I am a little bird."}]}"#,
        r#"{"messages":[{"role":"user","content":"What did Sue find?"},{"role":"assistant","content":"Sue found a small cat under a tree."}]}"#,
        r#"{"messages":[{"role":"user","content":"Where did the dog run?"},{"role":"assistant","content":"The big dog ran to the park to play."},{"role":"user","content":"Then?"},{"role":"assistant","content":"It played with the ball all day."}]}"#,
        r#"{"messages":[{"role":"user","content":"What did Lily bake?"},{"role":"assistant","content":"Lily baked a cake with her mom."}]}"#,
        r#"{"messages":[{"role":"user","content":"Who built a tower?"},{"role":"assistant","content":"Ben and Mia built a tall tower of blocks."}]}"#,
        r#"{"messages":[{"role":"user","content":"Sing."},{"role":"assistant","content":"A little bird sang a happy song."}]}"#,
        r#"{"messages":[{"role":"user","content":"Tell me more."},{"role":"assistant","content":""}]}"#,
        r#"{"messages":[{"role":"user","content":"What is the sky?"},{"role":"assistant","content":"The sky is big and blue."}]}"#,
    ];
    // A prompt longer than any seq_len used here: its reply is cut off, so the example teaches
    // nothing and our trainer drops it.
    let long = serde_json::json!({"messages": [
        {"role": "user", "content": "tell me a story ".repeat(150)},
        {"role": "assistant", "content": "No."}
    ]})
    .to_string();
    let p = dir.join("chat.jsonl");
    std::fs::write(&p, rows.join("\n") + "\n" + &long + "\n").unwrap();
    p
}

pub fn alpaca_file(dir: &Path) -> PathBuf {
    let mut body = String::new();
    for (i, s) in common::STORIES.iter().enumerate() {
        let input = if i % 2 == 0 { "" } else { "Make it short." };
        body.push_str(
            &serde_json::json!({"instruction": format!("Tell story number {i}."), "input": input, "output": s})
                .to_string(),
        );
        body.push('\n');
    }
    let p = dir.join("alpaca.jsonl");
    std::fs::write(&p, body).unwrap();
    p
}

pub fn lora(
    rank: usize,
    alpha: f64,
    targets: &[&str],
    layers: Option<Vec<usize>>,
    rslora: bool,
) -> LoraSettings {
    LoraSettings {
        rank,
        alpha,
        dropout: 0.1,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        layers,
        rslora,
    }
}

/// Three runs: plain LoRA; QLoRA with rsLoRA on chosen blocks; full fine-tuning.
pub fn runs() -> Vec<(&'static str, TrainConfig)> {
    let mut a = TrainConfig {
        method: Method::Lora(lora(8, 16.0, &["q_proj", "v_proj"], None, false)),
        seq_len: 128,
        batch_size: 2,
        grad_accum: 3,
        lr: 2e-4,
        scheduler: Scheduler::Cosine,
        warmup_steps: 2,
        epochs: 3.0,
        eval_every: 4,
        seed: 7,
        grad_checkpointing: true,
        max_grad_norm: 0.5,
        val_fraction: 0.2,
        ..Default::default()
    };
    a.adamw.weight_decay = 0.01;
    let b = TrainConfig {
        method: Method::Qlora(lora(16, 32.0, &["all-linear"], Some(vec![3, 4]), true)),
        scheduler: Scheduler::Linear,
        max_steps: Some(11),
        lr: 1e-4,
        seed: 123,
        ..Default::default()
    };
    let c = TrainConfig {
        method: Method::Full,
        scheduler: Scheduler::Constant,
        lr: 2e-5,
        val_fraction: 0.0,
        ..Default::default()
    };
    vec![("lora", a), ("qlora", b), ("full", c)]
}

pub fn do_export(
    m: &LoadedModel,
    engine: Engine,
    data: &Path,
    cfg: &TrainConfig,
    out: &Path,
) -> ExportReport {
    let req = ExportRequest {
        engine,
        source: &ModelSource::Bundled,
        model_config: &m.info.config,
        tokenizer: &m.tokenizer,
        template: &m.template,
        data,
        train: cfg,
    };
    export(&req, out).unwrap_or_else(|e| panic!("{engine:?}: {e}"))
}

pub fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("`{k}` is not a number: {:?}", v[k]))
}
pub fn i(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("`{k}` is not an integer: {:?}", v[k]))
}
pub fn b(v: &Value, k: &str) -> bool {
    v[k].as_bool()
        .unwrap_or_else(|| panic!("`{k}` is not a boolean: {:?}", v[k]))
}
pub fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("`{k}` is not a string: {:?}", v[k]))
}
pub fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}
