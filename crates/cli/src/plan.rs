//! `peft plan`: will this run fit, and what would? Prints the ranked configurations with
//! their itemised estimate; `--json` gives the whole recommendation (each estimate with its
//! `lines` and `peak_bytes`). Also `--plan auto` for `peft train` ([`auto_train_config`]).

use crate::load::ModelArgs;
use crate::train::{MethodArgs, SizeArgs};
use clap::Args;
use peft_engine::data::formats::LoadOptions;
use peft_engine::data::inspect::inspect;
use peft_engine::hardware::{parse_size, Hardware};
use peft_engine::infer::template::ChatTemplate;
use peft_engine::memory::format_bytes;
use peft_engine::model::decoder::WeightDtype;
use peft_engine::model::load::{open_model, ModelSource, OpenOptions};
use peft_engine::plan::recommend::{recommend, DataStats, RecommendOptions, Recommendation};
use peft_engine::plan::{measure_throughput, PlanRequest};
use peft_engine::train::TrainConfig;
use peft_engine::Config;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
#[command(mut_arg("method", |a| a
    .value_parser(["auto", "lora", "qlora", "selective", "full"])
    .default_value("auto")
    .help("auto: the best of LoRA/QLoRA that fits; or lora, qlora, selective, full")))]
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

/// Config, data statistics: reads the model's config, tokenizer and template only (no
/// weights), and tokenises the data once.
fn model_and_data(model: &ModelArgs, data: &Path) -> peft_engine::Result<(Config, DataStats)> {
    let files = open_model(&ModelSource::parse(&model.model)?, OpenOptions::default())?;
    let bos = files.bos_token.clone().unwrap_or_default();
    let eos = files.eos_token.clone().unwrap_or_default();
    let template = match &files.chat_template {
        Some(src) => ChatTemplate::new(src, &bos, &eos)?,
        None => ChatTemplate::fallback(&bos, &eos),
    };
    let report = inspect(
        data,
        &files.tokenizer,
        &template,
        files.config.max_position_embeddings,
        &LoadOptions::default(),
    )?;
    Ok((files.config, DataStats::from_report(&report)))
}

fn options(
    method: &MethodArgs,
    size: &SizeArgs,
    explicit_size: bool,
    bf16: bool,
) -> peft_engine::Result<RecommendOptions> {
    let mut o = RecommendOptions::default();
    if method.method != "auto" {
        o.method = Some(method.method()?);
    }
    if let Some(l) = method.method()?.lora() {
        o.lora = l.clone();
    }
    if explicit_size {
        o.seq_len = Some(size.seq_len);
        o.batch_size = size.batch_size;
        o.grad_accum = size.grad_accum;
    }
    o.base = PlanRequest {
        weight_dtype: if bf16 {
            WeightDtype::Bf16
        } else {
            WeightDtype::F32
        },
        throughput: measure_throughput(Duration::from_millis(150))?,
        ..PlanRequest::default()
    };
    Ok(o)
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
    let (config, stats) = model_and_data(&a.model, &a.data)?;
    let hw = hardware(&a.assume_ram, &a.assume_vram)?;
    let explicit =
        std::env::args().any(|x| x.starts_with("--seq-len") || x.starts_with("--batch-size"));
    let o = options(&a.method, &a.size, explicit, a.model.bf16)?;
    let r = recommend(&config, &hw, &stats, &o);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(());
    }
    print_recommendation(&r);
    Ok(())
}

fn print_recommendation(r: &Recommendation) {
    println!(
        "budget: {} free {:?} memory − {} safety margin = {} usable\n",
        format_bytes(r.available_bytes),
        r.device,
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
        println!(
            "| {} | {}{} | {} | {:.1} % | {}×{} | {} | {} | {:.0} | {:.0} min |",
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

/// `peft train --plan auto`: replaces method and size settings with the top recommendation.
///
/// # Errors
/// [`peft_engine::Error::Invalid`] when the plan is not `auto` or nothing fits (with the
/// recommender's reason).
pub fn auto_train_config(
    plan: &str,
    model: &ModelArgs,
    data: &Path,
    mut cfg: TrainConfig,
) -> peft_engine::Result<TrainConfig> {
    if plan != "auto" {
        return Err(peft_engine::Error::invalid(
            "plan",
            format!("`{plan}`: only `auto` is supported"),
        ));
    }
    let (config, stats) = model_and_data(model, data)?;
    let o = RecommendOptions {
        base: PlanRequest {
            evaluation: cfg.val_fraction > 0.0,
            weight_dtype: if model.bf16 {
                WeightDtype::Bf16
            } else {
                WeightDtype::F32
            },
            throughput: measure_throughput(Duration::from_millis(150))?,
            ..PlanRequest::default()
        },
        ..RecommendOptions::default()
    };
    let r = recommend(&config, &Hardware::scan(), &stats, &o);
    let best = r
        .best()
        .ok_or_else(|| peft_engine::Error::invalid("plan", r.summary.clone()))?;
    eprintln!("plan: {} — {}", best.label, r.summary);
    cfg.method = best.request.method.clone();
    cfg.seq_len = best.request.seq_len;
    cfg.batch_size = best.request.batch_size;
    cfg.grad_accum = best.request.grad_accum;
    cfg.grad_checkpointing = best.request.grad_checkpointing;
    Ok(cfg)
}
