//! Trains QLoRA through the app's commands (Tauri's mock runtime) in a process of its own and
//! prints the engine's memory figures as JSON, for `tests/methods.rs`, which compares them
//! with `peft train` on the same model and settings. Usage: `qlora_memory_probe MODEL DATA`.

#[path = "../tests/common/mod.rs"]
mod common;

use serde_json::{json, Value};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (model, data) = (&args[1], &args[2]);
    let a = common::app();
    a.open(model);
    let _: Value = a.ok(
        "data_inspect",
        json!({"path": data, "maxLen": 64, "skipBadRows": false}),
    );
    // `peft train --method qlora --max-steps 4 --seq-len 64 --val-fraction 0 --dropout 0`.
    let mut config = serde_json::to_value(peft_engine::train::TrainConfig::default()).unwrap();
    config["method"] = json!({"kind": "qlora", "rank": 8, "alpha": 16.0, "dropout": 0.0,
        "targets": ["all-linear"], "layers": null, "rslora": false});
    config["max_steps"] = json!(4);
    config["seq_len"] = json!(64);
    config["val_fraction"] = json!(0.0);
    let r = a.train(&config);
    println!(
        "{}",
        json!({
            "baseline_rss": r["memory"]["baseline_rss_bytes"],
            "peak_rss": peft_engine::memory::peak_rss_bytes().unwrap_or(0),
            "nf4_linears": r["storage"]["nf4_linears"],
        })
    );
}
