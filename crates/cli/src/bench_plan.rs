//! `peft bench plan`: checks the planner against reality. For a grid of configurations
//! (methods × models × two sequence lengths × checkpointing off/on) it trains real steps in a
//! child process each — the same `train` call `peft train` makes — and prints predicted vs
//! measured peak RSS (the child's `VmHWM`, what `/usr/bin/time -v` calls maximum resident set
//! size) and tokens/s, with the error in percent.
//!
//! On a shared machine one short run of a cell moves by ±20 % with the neighbours, so each
//! cell is timed over at least `--seconds` of steps and the grid is run `--rounds` times,
//! round after round (a slow minute then hits one run of every cell, not every run of one);
//! the table gives the median of the rounds. The prediction uses the median of the speed probes
//! every child ran, as `peft plan` uses one calibration of the machine.

use clap::Args;
use peft_engine::memory::format_bytes;
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::peft::method::{LoraSettings, Method, Selective};
use peft_engine::plan::fit::{fit_time, TimeSample};
use peft_engine::plan::time::step_work;
use peft_engine::plan::{estimate, estimate_with, Calibration, PlanRequest, Throughput};
use peft_engine::train::{train, TrainConfig, TrainEvent};
use peft_engine::Error;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Least timed optimizer steps per run (tokens/s is the median step after the first).
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Least seconds of timed steps per run: short steps run many more than `--steps`.
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Runs of the whole grid; each cell reports the median of its runs.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Also refit the planner's time constants to this run's medians and print them with the
    /// in-sample error (the defaults in `Calibration` come from such a fit).
    #[arg(long)]
    pub fit: bool,
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

fn config_for(m: &Method, seq: usize, ckpt: bool) -> TrainConfig {
    TrainConfig {
        method: m.clone(),
        seq_len: seq,
        batch_size: 1,
        grad_accum: 1,
        // Stopped by the child once it has timed enough steps.
        max_steps: Some(100_000),
        val_fraction: 0.0,
        grad_checkpointing: ckpt,
        ..TrainConfig::default()
    }
}

fn child(a: &BenchPlanArgs) -> peft_engine::Result<()> {
    let m = method(&a.method)?;
    // Built in the method's storage before the run, as `peft train` does, so the peak
    // includes loading.
    let model = peft_engine::model::loaded::LoadedModel::load(
        &ModelSource::parse(&a.model[0])?,
        OpenOptions::default(),
        &m.base_storage(Default::default()),
    )?;
    let out = tempfile_dir()?;
    let data = a
        .data
        .clone()
        .ok_or_else(|| Error::invalid("data", "missing"))?;
    let mut last: Option<Instant> = None;
    let mut durations: Vec<f64> = Vec::new();
    let stop = AtomicBool::new(false);
    let s = train(
        &model,
        &data,
        &out,
        &config_for(&m, a.seq_len, a.ckpt),
        None,
        Some(&stop),
        &mut |e, _| {
            if let TrainEvent::Step(_) = e {
                let now = Instant::now();
                if let Some(t) = last {
                    durations.push(now.duration_since(t).as_secs_f64());
                }
                last = Some(now);
                if durations.len() >= a.steps.max(1) && durations.iter().sum::<f64>() >= a.seconds {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        },
    )?;
    let _ = std::fs::remove_dir_all(&out);
    // The probe runs here, right after the steps it predicts (on a shared machine the speed of
    // the next minute is best told by the speed of this one), and after the peak was read: its
    // buffers must not count.
    let tp = peft_engine::plan::measure_throughput(Duration::from_millis(300))?;
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

/// One cell of the grid.
struct Cell {
    model: String,
    short: &'static str,
    config: peft_engine::Config,
    mname: String,
    method: Method,
    seq_len: usize,
    ckpt: bool,
    gguf_base: Option<peft_engine::plan::GgufBase>,
    runs: Vec<serde_json::Value>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

fn run_child(
    exe: &Path,
    c: &Cell,
    a: &BenchPlanArgs,
    data: &Path,
) -> Result<serde_json::Value, String> {
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "bench", "plan", "--child", "--model", &c.model, "--method", &c.mname,
    ])
    .args(["--seq-len", &c.seq_len.to_string()])
    .args(["--steps", &a.steps.to_string()])
    .args(["--seconds", &a.seconds.to_string()])
    .arg("--data")
    .arg(data);
    if c.ckpt {
        cmd.arg("--ckpt");
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str::<serde_json::Value>(line.trim())
        .map_err(|_| String::from_utf8_lossy(&out.stderr).trim().to_string())
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
    let mut cells = Vec::new();
    for model in &models {
        let opened = peft_engine::model::loaded::LoadedModel::open(
            &ModelSource::parse(model)?,
            OpenOptions::default(),
        )?;
        let config = opened.config.clone();
        // What `peft plan` asks for this model: QLoRA over a GGUF keeps the file's block types.
        let gguf_base = PlanRequest::default().for_model(&opened).gguf_base;
        let short = if model == "demo" {
            "demo (260K)"
        } else {
            "SmolLM2-135M"
        };
        for mname in &a.methods {
            let m = method(mname)?;
            for &seq in &a.seq_lens {
                for ckpt in [false, true] {
                    cells.push(Cell {
                        model: model.clone(),
                        short,
                        config: config.clone(),
                        mname: mname.clone(),
                        method: m.clone(),
                        seq_len: seq.min(config.max_position_embeddings),
                        ckpt,
                        gguf_base,
                        runs: Vec::new(),
                    });
                }
            }
        }
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("peft", e))?;
    let rounds = a.rounds.max(1);
    let n = cells.len();
    for round in 1..=rounds {
        for (i, c) in cells.iter_mut().enumerate() {
            eprint!("\rround {round}/{rounds}, run {}/{}   ", i + 1, n);
            match run_child(&exe, c, &a, &data) {
                Ok(v) => c.runs.push(v),
                Err(e) => eprintln!(
                    "\n{} {} {} ckpt={}: failed: {e}",
                    c.short, c.mname, c.seq_len, c.ckpt
                ),
            }
        }
    }
    eprintln!();
    let probes: Vec<Throughput> = cells
        .iter()
        .flat_map(|c| &c.runs)
        .filter_map(|v| serde_json::from_value(v["throughput"].clone()).ok())
        .collect();
    let tp = Throughput {
        gemm_gflops: median(probes.iter().map(|t| t.gemm_gflops).collect()),
        mem_gbps: median(probes.iter().map(|t| t.mem_gbps).collect()),
        bf16_gemm_gflops: None,
    };
    println!(
        "machine: {:.0} GFLOP/s f32 GEMM, {:.1} GB/s elementwise (median of {} probes); {rounds} round(s), each run ≥ {} steps and ≥ {} s\n",
        tp.gemm_gflops, tp.mem_gbps, probes.len(), a.steps, a.seconds
    );
    println!("| model | method | seq | ckpt | predicted peak | measured peak | error | predicted tok/s | measured tok/s | error | runs (tok/s) |");
    println!("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|");
    let mut samples = Vec::new();
    for c in &cells {
        let req = PlanRequest {
            method: c.method.clone(),
            seq_len: c.seq_len,
            grad_checkpointing: c.ckpt,
            evaluation: false,
            throughput: tp,
            gguf_base: c.gguf_base,
            ..PlanRequest::default()
        };
        let est = estimate(&c.config, &req);
        if std::env::var_os("PEFT_BENCH_PLAN_RAW").is_some() {
            for v in &c.runs {
                eprintln!(
                    "{}",
                    serde_json::json!({"model": c.short, "method": c.mname, "seq": c.seq_len, "ckpt": c.ckpt, "measured": v, "work": step_work(&c.config, &req)})
                );
            }
        }
        if c.runs.is_empty() {
            println!(
                "| {} | {} | {} | {} | failed |",
                c.short, c.mname, c.seq_len, c.ckpt
            );
            continue;
        }
        let each = |k: &str| -> Vec<f64> { c.runs.iter().filter_map(|v| v[k].as_f64()).collect() };
        let peak = median(each("peak_rss"));
        let tps = median(each("tokens_per_s"));
        let runs: Vec<String> = each("tokens_per_s")
            .iter()
            .map(|t| format!("{t:.0}"))
            .collect();
        samples.push((c, req.clone(), tps));
        println!(
            "| {} | {} | {} | {} | {} | {} | {:+.1} % | {:.0} | {:.0} | {:+.1} % | {} |",
            c.short,
            c.mname,
            c.seq_len,
            if c.ckpt { "on" } else { "off" },
            format_bytes(est.peak_bytes),
            format_bytes(peak as u64),
            pct(est.peak_bytes as f64, peak),
            est.tokens_per_s,
            tps,
            pct(est.tokens_per_s, tps),
            runs.join(", ")
        );
    }
    if a.fit {
        print_fit(&samples, tp);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn print_fit(cells: &[(&Cell, PlanRequest, f64)], tp: Throughput) {
    let k0 = Calibration::default();
    let samples: Vec<TimeSample> = cells
        .iter()
        .map(|(c, req, tps)| TimeSample {
            work: step_work(&c.config, req),
            throughput: tp,
            step_s: c.seq_len as f64 / tps,
        })
        .collect();
    let k = fit_time(&samples, &k0);
    println!("\nTime constants refitted to this run's medians (in-sample):\n");
    println!("| constant | current | refitted |\n|---|---:|---:|");
    for (name, a, b) in [
        ("memory_passes", k0.memory_passes, k.memory_passes),
        ("attention_passes", k0.attention_passes, k.attention_passes),
        ("recompute_passes", k0.recompute_passes, k.recompute_passes),
        ("dequant_passes", k0.dequant_passes, k.dequant_passes),
        ("weight_passes", k0.weight_passes, k.weight_passes),
        ("optimizer_passes", k0.optimizer_passes, k.optimizer_passes),
        ("gradient_passes", k0.gradient_passes, k.gradient_passes),
        ("adapter_pass_s", k0.adapter_pass_s, k.adapter_pass_s),
        ("step_overhead_s", k0.step_overhead_s, k.step_overhead_s),
    ] {
        println!("| {name} | {a:.4e} | {b:.4e} |");
    }
    let errs: Vec<f64> = cells
        .iter()
        .map(|(c, req, tps)| pct(estimate_with(&c.config, req, &k).tokens_per_s, *tps))
        .collect();
    let rms = (errs.iter().map(|e| e * e).sum::<f64>() / errs.len().max(1) as f64).sqrt();
    let within = errs.iter().filter(|e| e.abs() <= 10.0).count();
    println!(
        "\ntokens/s with the refitted constants: rms error {rms:.1} %, {within} of {} cells within ±10 %: {}",
        errs.len(),
        errs.iter().map(|e| format!("{e:+.1}")).collect::<Vec<_>>().join(", ")
    );
}
