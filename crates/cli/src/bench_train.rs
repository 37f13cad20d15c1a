//! `peft bench train`: steady-state training throughput and peak memory per configuration.
//! Each configuration runs in a fresh child process so peak RSS is its own.

use peft_engine::memory::{format_bytes, peak_rss_bytes};
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::method::{LoraSettings, Method};
use peft_engine::train::{train, TrainConfig, TrainEvent};
use std::time::Instant;

fn method_of(config: &str) -> peft_engine::Result<(Method, bool)> {
    let lora = LoraSettings {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        ..Default::default()
    };
    Ok(match config {
        "lora" => (Method::Lora(lora), false),
        "lora-ckpt" => (Method::Lora(lora), true),
        "qlora" => (Method::Qlora(lora), false),
        "qlora-ckpt" => (Method::Qlora(lora), true),
        "full" => (Method::Full, false),
        "full-ckpt" => (Method::Full, true),
        other => {
            return Err(peft_engine::Error::invalid(
                "configs",
                format!("unknown configuration `{other}`"),
            ))
        }
    })
}

pub fn parent(model: &str, seq_len: usize, steps: usize, configs: &str) -> peft_engine::Result<()> {
    println!("model: {model}, seq {seq_len}, batch 1, LoRA r8 on all 7 projections, {steps} steps (first untimed)");
    println!("| configuration | tokens/s (mean) | tokens/s (median step) | peak RSS | load s | peak RSS loading |");
    println!("|---|---:|---:|---:|---:|---:|");
    let exe = std::env::current_exe().map_err(|e| peft_engine::Error::io("peft", e))?;
    for c in configs.split(',') {
        let out = std::process::Command::new(&exe)
            .args(["bench", "train", "--model", model, "--child", c])
            .args([
                "--seq-len",
                &seq_len.to_string(),
                "--steps",
                &steps.to_string(),
            ])
            .output()
            .map_err(|e| peft_engine::Error::io("peft", e))?;
        match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Ok(v) => println!(
                "| {c} | {:.1} | {:.1} | {} | {:.1} | {} |",
                v["tokens_per_s"].as_f64().unwrap_or(0.0),
                v["median_tokens_per_s"].as_f64().unwrap_or(0.0),
                format_bytes(v["peak_rss"].as_u64().unwrap_or(0)),
                v["load_s"].as_f64().unwrap_or(0.0),
                format_bytes(v["load_peak_rss"].as_u64().unwrap_or(0)),
            ),
            Err(_) => println!(
                "| {c} | failed: {} |",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }
    Ok(())
}

pub fn child(model: &str, seq_len: usize, steps: usize, config: &str) -> peft_engine::Result<()> {
    let (method, ckpt) = method_of(config)?;
    let t0 = Instant::now();
    let m = LoadedModel::load(
        &ModelSource::parse(model)?,
        OpenOptions::default(),
        &method.base_storage(Default::default()),
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    // Peak RSS is monotonic, so read now it is the peak while loading (QLoRA quantizes tensor
    // by tensor, so this stays near the quantized size rather than the f32 one).
    let load_peak = peak_rss_bytes().unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("peft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| peft_engine::Error::io(&dir, e))?;
    // Long plain-text rows so every example fills seq_len after truncation.
    let text =
        "The quick brown fox jumps over the lazy dog while the farmer counts 12 sheep and 7 cows. "
            .repeat(seq_len / 8 + 8);
    let data = dir.join("bench.jsonl");
    let rows: String = (0..8)
        .map(|i| serde_json::json!({ "text": format!("{i} {text}") }).to_string() + "\n")
        .collect();
    std::fs::write(&data, rows).map_err(|e| peft_engine::Error::io(&data, e))?;
    let cfg = TrainConfig {
        method,
        seq_len,
        batch_size: 1,
        max_steps: Some(steps),
        grad_checkpointing: ckpt,
        val_fraction: 0.0,
        lr: 1e-4,
        ..Default::default()
    };
    // Step durations after the first (which pays one-time allocation costs); the median is
    // reported beside the mean because a shared machine's neighbours inflate single steps.
    let mut last: Option<Instant> = None;
    let mut durations: Vec<f64> = Vec::new();
    let mut on_event = |e: &TrainEvent, _: &peft_engine::train::RunRecord| {
        if let TrainEvent::Step(_) = e {
            let now = Instant::now();
            if let Some(t) = last {
                durations.push(now.duration_since(t).as_secs_f64());
            }
            last = Some(now);
        }
    };
    train(&m, &data, &dir.join("out"), &cfg, None, None, &mut on_event)?;
    let secs: f64 = durations.iter().sum::<f64>().max(1e-9);
    let tokens = durations.len() * seq_len;
    durations.sort_by(|a, b| a.total_cmp(b));
    let median = durations.get(durations.len() / 2).copied().unwrap_or(secs);
    let _ = std::fs::remove_dir_all(&dir);
    let v = serde_json::json!({
        "tokens_per_s": tokens as f64 / secs,
        "median_tokens_per_s": seq_len as f64 / median,
        "peak_rss": peak_rss_bytes().unwrap_or(0),
        "load_s": load_s,
        "load_peak_rss": load_peak,
    });
    println!("{v}");
    Ok(())
}
