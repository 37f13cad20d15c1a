//! `peft bench train`: steady-state training throughput and peak memory per configuration.
//! Each configuration runs in a fresh child process so peak RSS is its own.
//!
//! Without `--data` every row is a long synthetic text that fills `--seq-len`, and each
//! configuration runs `--steps` steps. With `--data` (a real dataset, first `--examples` rows)
//! each configuration trains one whole epoch, so a `+packed` configuration (sample packing)
//! and its unpacked twin train on the same tokens: the table then compares real (non-padding)
//! tokens/s and epoch seconds, like with like.

use peft_engine::memory::{format_bytes, peak_rss_bytes};
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use peft_engine::ops::profile::{self, Kind};
use peft_engine::peft::method::{LoraSettings, Method};
use peft_engine::train::{train, TrainConfig, TrainEvent};
use std::time::Instant;

/// What a bench run trains on: synthetic full rows for a number of steps, or one epoch of the
/// first `examples` rows of a real dataset.
#[derive(Clone)]
pub struct BenchData {
    pub data: Option<String>,
    pub examples: usize,
    /// Time each step by kind of op (`ops::profile`) and measure the machine's GEMM rate.
    pub profile: bool,
}

/// `(method, checkpointing, packing, bf16)` of a configuration name (`lora-ckpt+packed`,
/// `lora+bf16`; the suffixes in any order).
fn config_of(config: &str) -> peft_engine::Result<(Method, bool, bool, bool)> {
    let (mut base, mut packed, mut bf16) = (config, false, false);
    loop {
        if let Some(b) = base.strip_suffix("+packed") {
            (base, packed) = (b, true);
        } else if let Some(b) = base.strip_suffix("+bf16") {
            (base, bf16) = (b, true);
        } else {
            break;
        }
    }
    let (m, ckpt) = method_of(base)?;
    Ok((m, ckpt, packed, bf16))
}

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

pub fn parent(
    model: &str,
    seq_len: usize,
    steps: usize,
    configs: &str,
    data: &BenchData,
) -> peft_engine::Result<()> {
    match &data.data {
        None => println!("model: {model}, seq {seq_len}, batch 1, LoRA r8 on all 7 projections, {steps} steps (first untimed)"),
        Some(d) => println!("model: {model}, data: first {} rows of {d}, seq {seq_len}, batch 1, LoRA r8 on all 7 projections, one epoch (tokens/s: real tokens, padding excluded; mean over the epoch after the first step)", data.examples),
    }
    println!("| configuration | tokens/s (mean) | tokens/s (median step) | peak RSS | load s | peak RSS loading | steps | epoch s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut profiles: Vec<(String, serde_json::Value)> = Vec::new();
    let exe = std::env::current_exe().map_err(|e| peft_engine::Error::io("peft", e))?;
    for c in configs.split(',') {
        let out = std::process::Command::new(&exe)
            .args(["bench", "train", "--model", model, "--child", c])
            .args([
                "--seq-len",
                &seq_len.to_string(),
                "--steps",
                &steps.to_string(),
                "--examples",
                &data.examples.to_string(),
            ])
            .args(data.data.iter().flat_map(|d| ["--data", d.as_str()]))
            .args(data.profile.then_some("--profile"))
            .output()
            .map_err(|e| peft_engine::Error::io("peft", e))?;
        match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Ok(v) => println!(
                "| {c} | {:.1} | {:.1} | {} | {:.1} | {} | {} | {:.1} |",
                v["tokens_per_s"].as_f64().unwrap_or(0.0),
                v["median_tokens_per_s"].as_f64().unwrap_or(0.0),
                format_bytes(v["peak_rss"].as_u64().unwrap_or(0)),
                v["load_s"].as_f64().unwrap_or(0.0),
                format_bytes(v["load_peak_rss"].as_u64().unwrap_or(0)),
                v["steps"].as_u64().unwrap_or(0),
                v["epoch_s"].as_f64().unwrap_or(0.0),
            ),
            Err(_) => println!(
                "| {c} | failed: {} |",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            profiles.push((c.to_string(), v["profile"].clone()));
        }
    }
    for (c, p) in profiles.iter().filter(|(_, p)| !p.is_null()) {
        print_profile(c, p);
    }
    Ok(())
}

/// One configuration's step broken down by kind of op, and its GEMM rate against the
/// machine's (a plain matmul of the model's shapes, measured in the same process).
fn print_profile(config: &str, p: &serde_json::Value) {
    let step = p["step_s"].as_f64().unwrap_or(0.0).max(1e-12);
    println!(
        "\n{config}: one step, {:.3} s (mean of the timed steps)",
        step
    );
    println!("| kind | s / step | share |");
    println!("|---|---:|---:|");
    for k in p["kinds"].as_array().into_iter().flatten() {
        let s = k[1].as_f64().unwrap_or(0.0);
        println!(
            "| {} | {:.4} | {:.1} % |",
            k[0].as_str().unwrap_or("?"),
            s,
            100.0 * s / step
        );
    }
    let machine = p["machine_gflops"].as_f64().unwrap_or(0.0).max(1e-9);
    let gemm = p["gemm_gflops"].as_f64().unwrap_or(0.0);
    let step_rate = p["step_gemm_gflops"].as_f64().unwrap_or(0.0);
    println!(
        "GEMM rate: machine {machine:.1} GFLOP/s (plain matmul of the model's shapes); inside the linears {gemm:.1} GFLOP/s ({:.0} %); the linears' FLOPs over the whole step {step_rate:.1} GFLOP/s ({:.0} % of the machine)",
        100.0 * gemm / machine,
        100.0 * step_rate / machine,
    );
}

pub fn child(
    model: &str,
    seq_len: usize,
    steps: usize,
    config: &str,
    bench: &BenchData,
) -> peft_engine::Result<()> {
    let (method, ckpt, packing, bf16) = config_of(config)?;
    let t0 = Instant::now();
    // Stored as `peft train` stores it: bf16 compute loads the base in bf16 tensor by tensor
    // (loaded as f32 and narrowed by training, the load peak would be the f32 model's).
    let dtype = match bf16 {
        true => peft_engine::model::decoder::WeightDtype::Bf16,
        false => Default::default(),
    };
    let m = LoadedModel::load(
        &ModelSource::parse(model)?,
        OpenOptions::default(),
        &method.base_storage(dtype),
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
    let ext = bench
        .data
        .as_deref()
        .and_then(|d| std::path::Path::new(d).extension())
        .and_then(|e| e.to_str())
        .unwrap_or("jsonl");
    let data = dir.join(format!("bench.{ext}"));
    let rows: String = match &bench.data {
        None => (0..8)
            .map(|i| serde_json::json!({ "text": format!("{i} {text}") }).to_string() + "\n")
            .collect(),
        Some(d) => std::fs::read_to_string(d)
            .map_err(|e| peft_engine::Error::io(d, e))?
            .lines()
            .take(bench.examples)
            .map(|l| l.to_string() + "\n")
            .collect(),
    };
    std::fs::write(&data, rows).map_err(|e| peft_engine::Error::io(&data, e))?;
    let cfg = TrainConfig {
        method,
        seq_len,
        batch_size: 1,
        // A real dataset: one whole epoch, so packed and unpacked see the same tokens.
        max_steps: bench.data.is_none().then_some(steps),
        epochs: 1.0,
        grad_checkpointing: ckpt,
        val_fraction: 0.0,
        lr: 1e-4,
        packing,
        bf16_compute: bf16,
        ..Default::default()
    };
    // Step durations after the first (which pays one-time allocation costs); the median is
    // reported beside the mean because a shared machine's neighbours inflate single steps.
    // With real data, each step's real tokens come from the run's cumulative tokens/s.
    let mut last: Option<(Instant, f64)> = None;
    let mut durations: Vec<(f64, f64)> = Vec::new();
    let mut first_step = None;
    let started = Instant::now();
    let mut on_event = |e: &TrainEvent, _: &peft_engine::train::RunRecord| {
        if let TrainEvent::Step(s) = e {
            let now = Instant::now();
            let done = s.tokens_per_s * s.elapsed_s;
            if first_step.is_none() && bench.profile {
                // The first step pays one-time costs: count from the second.
                profile::set_enabled(true);
            }
            first_step.get_or_insert(now);
            if let Some((t, before)) = last {
                durations.push((now.duration_since(t).as_secs_f64(), done - before));
            }
            last = Some((now, done));
        }
    };
    let summary = train(&m, &data, &dir.join("out"), &cfg, None, None, &mut on_event)?;
    let (kinds, gemm_flops) = profile::totals();
    profile::set_enabled(false);
    let epoch_s = started.elapsed().as_secs_f64();
    let secs: f64 = durations.iter().map(|d| d.0).sum::<f64>().max(1e-9);
    let tokens = match bench.data {
        None => (durations.len() * seq_len) as f64,
        Some(_) => durations.iter().map(|d| d.1).sum(),
    };
    let mut per_step: Vec<f64> = durations
        .iter()
        .map(|&(t, n)| match bench.data {
            None => seq_len as f64 / t.max(1e-9),
            Some(_) => n / t.max(1e-9),
        })
        .collect();
    per_step.sort_by(|a, b| a.total_cmp(b));
    let median = per_step.get(per_step.len() / 2).copied().unwrap_or(0.0);
    let _ = std::fs::remove_dir_all(&dir);
    let profiled = if bench.profile && !durations.is_empty() {
        let n = durations.len() as f64;
        let step_s = secs / n;
        let per: Vec<f64> = kinds.iter().map(|s| s / n).collect();
        let mut rows: Vec<serde_json::Value> = Kind::ALL
            .iter()
            .zip(&per)
            .map(|(k, s)| serde_json::json!([k.name(), s]))
            .collect();
        let other = (step_s - per.iter().sum::<f64>()).max(0.0);
        rows.push(serde_json::json!([
            "framework and candle ops (the rest)",
            other
        ]));
        let c = &m.config;
        let machine = profile::machine_gemm_gflops(seq_len, c.hidden_size, c.intermediate_size)?;
        serde_json::json!({
            "step_s": step_s,
            "kinds": rows,
            "machine_gflops": machine,
            "gemm_gflops": gemm_flops / kinds[0].max(1e-12) / 1e9,
            "step_gemm_gflops": gemm_flops / n / step_s / 1e9,
        })
    } else {
        serde_json::Value::Null
    };
    let v = serde_json::json!({
        "profile": profiled,
        "tokens_per_s": tokens / secs,
        "median_tokens_per_s": median,
        "steps": summary.steps,
        "epoch_s": epoch_s,
        "peak_rss": peak_rss_bytes().unwrap_or(0),
        "load_s": load_s,
        "load_peak_rss": load_peak,
    });
    println!("{v}");
    Ok(())
}
