//! `peft bench plan`: checks the planner against reality. For a grid of configurations
//! (methods × models × two sequence lengths × checkpointing off/on) it trains 3 real steps in a
//! child process each — the same `train` call `peft train` makes — and prints predicted vs
//! measured peak RSS (the child's `VmHWM`, what `/usr/bin/time -v` calls maximum resident set
//! size) and tokens/s, with the error in percent.

use crate::load::{load_model_with, ModelArgs};
use clap::Args;
use peft_engine::memory::format_bytes;
use peft_engine::model::load::{open_model, ModelSource, OpenOptions};
use peft_engine::peft::method::{LoraSettings, Method, Selective};
use peft_engine::plan::{estimate, measure_throughput, PlanRequest, Throughput};
use peft_engine::train::{train, TrainConfig, TrainEvent};
use peft_engine::Error;
use std::path::Path;
use std::time::{Duration, Instant};

const SMOLLM: &str = "../shared/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Args)]
pub struct BenchPlanArgs {
    /// Models (default: the bundled demo model and the SmolLM2-135M GGUF in ../shared).
    #[arg(long)]
    pub model: Vec<String>,
    /// Methods: lora, qlora, full, selective (norm).
    #[arg(long, value_delimiter = ',', default_value = "lora,full")]
    pub methods: Vec<String>,
    /// Two (or more) sequence lengths.
    #[arg(long, value_delimiter = ',', default_value = "128,384")]
    pub seq_lens: Vec<usize>,
    /// Optimizer steps per configuration (tokens/s is the median step after the first).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Internal: run one configuration in this process and print one JSON line.
    #[arg(long, hide = true)]
    pub child: bool,
    #[arg(long, hide = true, default_value = "lora")]
    pub method: String,
    #[arg(long, hide = true, default_value_t = 128)]
    pub seq_len: usize,
    #[arg(long, hide = true)]
    pub ckpt: bool,
    #[arg(long, hide = true)]
    pub data: Option<std::path::PathBuf>,
}

fn method(name: &str) -> peft_engine::Result<Method> {
    Ok(match name {
        "lora" => Method::Lora(LoraSettings::default()),
        "qlora" => Method::Qlora(LoraSettings::default()),
        "full" => Method::Full,
        "selective" => Method::Selective {
            what: Selective::Norm,
        },
        other => {
            return Err(Error::invalid(
                "methods",
                format!("`{other}`: use lora, qlora, full or selective"),
            ))
        }
    })
}

/// What the run trains on: every row longer than any benchmarked sequence, so each batch is
/// exactly `seq_len` tokens.
fn write_data(path: &Path) -> peft_engine::Result<()> {
    let story = "Once upon a time, there was a little girl named Lily. She loved to play in the park with her big red ball. \
One day, she saw a small dog who was sad and alone. Lily said, \"Do you want to play with me?\" The dog wagged its tail and they ran together. ";
    let mut out = String::new();
    for i in 0..24 {
        let text = format!("{} {}", i, story.repeat(12));
        out.push_str(&serde_json::json!({ "text": text }).to_string());
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}

fn config_for(m: &Method, seq: usize, ckpt: bool, steps: usize) -> TrainConfig {
    TrainConfig {
        method: m.clone(),
        seq_len: seq,
        batch_size: 1,
        grad_accum: 1,
        max_steps: Some(steps),
        val_fraction: 0.0,
        grad_checkpointing: ckpt,
        ..TrainConfig::default()
    }
}

fn child(a: &BenchPlanArgs) -> peft_engine::Result<()> {
    let m = method(&a.method)?;
    let model = load_model_with(
        &ModelArgs {
            model: a.model[0].clone(),
            bf16: false,
        },
        &m,
    )?;
    let out = tempfile_dir()?;
    let data = a
        .data
        .clone()
        .ok_or_else(|| Error::invalid("data", "missing"))?;
    let mut last: Option<Instant> = None;
    let mut durations: Vec<f64> = Vec::new();
    let s = train(
        model,
        &data,
        &out,
        &config_for(&m, a.seq_len, a.ckpt, a.steps),
        None,
        None,
        &mut |e| {
            if let TrainEvent::Step(_) = e {
                let now = Instant::now();
                if let Some(t) = last {
                    durations.push(now.duration_since(t).as_secs_f64());
                }
                last = Some(now);
            }
        },
    )?;
    let _ = std::fs::remove_dir_all(&out);
    // The probe runs here, right after the steps it predicts (on a shared machine the speed of
    // the next minute is best told by the speed of this one), and after the peak was read: its
    // buffers must not count.
    let tp = measure_throughput(Duration::from_millis(300))?;
    // Steady state: the median step after the first, which pays one-time page faults and
    // allocations that a run of hundreds of steps amortises.
    durations.sort_by(|x, y| x.total_cmp(y));
    let step_s = durations
        .get(durations.len() / 2)
        .copied()
        .unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({
            "peak_rss": s.peak_rss_bytes,
            "tokens_per_s": a.seq_len as f64 / step_s,
            "throughput": tp,
        })
    );
    Ok(())
}

fn tempfile_dir() -> peft_engine::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("peft-bench-plan-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    Ok(d)
}

fn pct(pred: f64, meas: f64) -> f64 {
    100.0 * (pred - meas) / meas.max(1e-9)
}

pub fn run(a: BenchPlanArgs) -> peft_engine::Result<()> {
    if a.child {
        return child(&a);
    }
    let models = if a.model.is_empty() {
        vec!["demo".to_string(), SMOLLM.to_string()]
    } else {
        a.model.clone()
    };
    let dir = tempfile_dir()?;
    let data = dir.join("bench.jsonl");
    write_data(&data)?;
    let tp: Throughput = measure_throughput(Duration::from_millis(300))?;
    println!(
        "machine: {:.0} GFLOP/s f32 GEMM, {:.1} GB/s elementwise\n",
        tp.gemm_gflops, tp.mem_gbps
    );
    println!("| model | method | seq | ckpt | predicted peak | measured peak | error | predicted tok/s | measured tok/s | error |");
    println!("|---|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let exe = std::env::current_exe().map_err(|e| Error::io("peft", e))?;
    for model in &models {
        let config = open_model(&ModelSource::parse(model)?, OpenOptions::default())?.config;
        let short = if model == "demo" {
            "demo (260K)"
        } else {
            "SmolLM2-135M"
        };
        for mname in &a.methods {
            let m = method(mname)?;
            for &seq in &a.seq_lens {
                for ckpt in [false, true] {
                    let seq_len = seq.min(config.max_position_embeddings);
                    let mut cmd = std::process::Command::new(&exe);
                    cmd.args([
                        "bench", "plan", "--child", "--model", model, "--method", mname,
                    ])
                    .args([
                        "--seq-len",
                        &seq_len.to_string(),
                        "--steps",
                        &a.steps.to_string(),
                    ])
                    .arg("--data")
                    .arg(&data);
                    if ckpt {
                        cmd.arg("--ckpt");
                    }
                    let out = cmd.output().map_err(|e| Error::io("peft", e))?;
                    let line = String::from_utf8_lossy(&out.stdout);
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
                        println!(
                            "| {short} | {mname} | {seq_len} | {ckpt} | failed: {} |",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                        continue;
                    };
                    // Predicted with the probe the child ran just before its steps.
                    let throughput = serde_json::from_value(v["throughput"].clone()).unwrap_or(tp);
                    let req = PlanRequest {
                        method: m.clone(),
                        seq_len,
                        grad_checkpointing: ckpt,
                        evaluation: false,
                        throughput,
                        ..PlanRequest::default()
                    };
                    let est = estimate(&config, &req);
                    if std::env::var_os("PEFT_BENCH_PLAN_RAW").is_some() {
                        eprintln!(
                            "{}",
                            serde_json::json!({"model": short, "method": mname, "seq": seq_len, "ckpt": ckpt, "measured": v, "work": peft_engine::plan::time::step_work(&config, &req)})
                        );
                    }
                    let peak = v["peak_rss"].as_u64().unwrap_or(0) as f64;
                    let tps = v["tokens_per_s"].as_f64().unwrap_or(0.0);
                    println!(
                        "| {short} | {mname} | {} | {} | {} | {} | {:+.1} % | {:.0} | {:.0} | {:+.1} % |",
                        seq_len,
                        if ckpt { "on" } else { "off" },
                        format_bytes(est.peak_bytes),
                        format_bytes(peak as u64),
                        pct(est.peak_bytes as f64, peak),
                        est.tokens_per_s,
                        tps,
                        pct(est.tokens_per_s, tps)
                    );
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
