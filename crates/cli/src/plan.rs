//! `peft plan`: will this run fit, and what would? Prints the ranked configurations with
//! their itemised estimate; `--json` gives the whole recommendation (each estimate with its
//! `lines` and `peak_bytes`). Also `--plan auto` for `peft train` ([`auto_train_config`]).

use crate::args::{DeviceArgs, MethodArgs, SizeArgs};
use crate::load::{open_model, ModelArgs};
use clap::Args;
use peft_engine::data::formats::LoadOptions;
use peft_engine::data::inspect::inspect;
use peft_engine::hardware::{parse_size, Hardware};
use peft_engine::memory::format_bytes;
use peft_engine::model::loaded::LoadedModel;
use peft_engine::plan::recommend::{recommend, DataStats, RecommendOptions, Recommendation};
use peft_engine::plan::{measure_throughput, PlanRequest};
use peft_engine::train::TrainConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The training data (its token lengths choose the sequence length).
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub method: MethodArgs,
    #[command(flatten)]
    pub size: SizeArgs,
    /// The device the run will train on; the plan budgets its memory.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Plan for this much free RAM instead of measuring it (e.g. 8GiB).
    #[arg(long)]
    pub assume_ram: Option<String>,
    /// Plan for one GPU with this much free memory (e.g. 6GiB).
    #[arg(long)]
    pub assume_vram: Option<String>,
    /// Print the recommendation as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The dataset's token lengths with the model's tokenizer and template.
fn data_stats(model: &LoadedModel, data: &Path) -> peft_engine::Result<DataStats> {
    let report = inspect(
        data,
        &model.tokenizer,
        &model.template,
        model.config.max_position_embeddings,
        &LoadOptions::default(),
    )?;
    Ok(DataStats::from_report(&report))
}

fn options(a: &PlanArgs, model: &LoadedModel) -> peft_engine::Result<RecommendOptions> {
    let d = RecommendOptions::default();
    Ok(RecommendOptions {
        method: a.method.method.map(|k| a.method.method_of(k)).transpose()?,
        lora: a.method.lora(),
        seq_len: a.size.seq_len,
        batch_size: a.size.batch_size.unwrap_or(d.batch_size),
        grad_accum: a.size.grad_accum.unwrap_or(d.grad_accum),
        base: PlanRequest {
            weight_dtype: a.model.weight_dtype(),
            throughput: measure_throughput(Duration::from_millis(150))?,
            ..PlanRequest::default()
        }
        .for_model(model),
        device: a.device.device,
        // Without --packing the planner packs where it shortens the epoch.
        packing: a.size.packing,
        ..d
    })
}

fn hardware(ram: &Option<String>, vram: &Option<String>) -> peft_engine::Result<Hardware> {
    Ok(match (ram, vram) {
        (None, None) => Hardware::scan(),
        _ => {
            let scanned = Hardware::scan();
            let ram = match ram {
                Some(r) => parse_size("assume-ram", r)?,
                None => scanned.memory.available_bytes,
            };
            let vram = vram
                .as_ref()
                .map(|v| parse_size("assume-vram", v))
                .transpose()?;
            Hardware::assumed_with_cpu(scanned.cpu, ram, vram)
        }
    })
}

pub fn run(a: PlanArgs) -> peft_engine::Result<()> {
    let model = open_model(&a.model)?;
    let stats = data_stats(&model, &a.data)?;
    let hw = hardware(&a.assume_ram, &a.assume_vram)?;
    let r = recommend(&model.config, &hw, &stats, &options(&a, &model)?);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(());
    }
    print_recommendation(&r);
    Ok(())
}

fn print_recommendation(r: &Recommendation) {
    println!(
        "planned for: {} (train with the same --device)",
        r.device.as_str()
    );
    println!(
        "budget: {} free {} memory − {} safety margin = {} usable\n",
        format_bytes(r.available_bytes),
        r.device.as_str(),
        format_bytes(r.margin_bytes),
        format_bytes(r.usable_bytes)
    );
    println!("| # | configuration | seq | cut | batch×accum | peak | headroom | tok/s | epoch |");
    println!("|---:|---|---:|---:|---|---:|---:|---:|---:|");
    for (i, c) in r.candidates.iter().enumerate() {
        let head = if c.headroom_bytes >= 0 {
            format_bytes(c.headroom_bytes as u64)
        } else {
            format!("−{}", format_bytes(c.headroom_bytes.unsigned_abs()))
        };
        let tags = match (c.request.bf16_compute, c.request.packing) {
            (true, true) => " · bf16 · packed",
            (true, false) => " · bf16",
            (false, true) => " · packed",
            (false, false) => "",
        };
        println!(
            "| {} | {}{tags}{} | {} | {:.1} % | {}×{} | {} | {} | {:.0} | {:.0} min |",
            i + 1,
            c.label,
            if c.fits { "" } else { " (does not fit)" },
            c.request.seq_len,
            100.0 * c.truncated_share,
            c.request.batch_size,
            c.request.grad_accum,
            format_bytes(c.estimate.peak_bytes),
            head,
            c.tokens_per_s,
            c.epoch_seconds / 60.0
        );
    }
    if let Some(best) = r.best() {
        println!(
            "\nestimate for #1 ({}, peak during {}):",
            best.label, best.estimate.peak_phase
        );
        for l in &best.estimate.lines {
            println!(
                "  {:>10}  {:<32} {}",
                format_bytes(l.bytes),
                l.name,
                l.explanation
            );
        }
        println!("  {:>10}  total", format_bytes(best.estimate.peak_bytes));
        let t = &best.estimate.step_time;
        println!(
            "\ntime per optimizer step for #1: {:.2} s = GEMM {:.2} s ({:.1} GFLOP) + elementwise {:.2} s + optimizer {:.2} s + per-call overhead {:.3} s",
            t.total(),
            t.gemm_s,
            best.estimate.flops_per_token
                * (best.request.seq_len * best.request.batch_size * best.request.grad_accum) as f64
                / 1e9,
            t.memory_s,
            t.optimizer_s,
            t.fixed_s
        );
    }
    println!("\n{}", r.summary);
}

/// `peft train --plan auto`: `cfg` with the top recommendation's method and sizes (the
/// engine's `TrainConfig::with_plan`).
///
/// # Errors
/// [`peft_engine::Error::Invalid`] when nothing fits (with the recommender's reason).
/// `packing` and `bf16` are `--packing` and `--bf16-compute` as given: unset, the
/// recommendation decides.
pub fn auto_train_config(
    model: &LoadedModel,
    data: &Path,
    cfg: TrainConfig,
    packing: Option<bool>,
    bf16: Option<bool>,
) -> peft_engine::Result<TrainConfig> {
    let stats = data_stats(model, data)?;
    let o = RecommendOptions {
        base: cfg
            .plan_request(
                Default::default(),
                measure_throughput(Duration::from_millis(150))?,
            )
            .for_model(model),
        device: cfg.device.unwrap_or_default(),
        packing,
        // Without --bf16-compute the plan decides (on with AMX).
        bf16_compute: bf16,
        ..RecommendOptions::default()
    };
    let r = recommend(&model.config, &Hardware::scan(), &stats, &o);
    let best = r
        .best()
        .ok_or_else(|| peft_engine::Error::invalid("plan", r.summary.clone()))?;
    eprintln!("plan: {} — {}", best.label, r.summary);
    Ok(cfg.with_plan(&best.request))
}
