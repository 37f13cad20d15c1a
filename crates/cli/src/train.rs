//! `peft train`: fine-tune with LoRA, QLoRA, selective PEFT or full fine-tuning.
//! The method and size flags are shared with `peft plan` so a plan can be checked against
//! the real run.

use crate::load::{load_model_with, ModelArgs};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use peft_engine::data::render::TrainOn;
use peft_engine::memory::format_bytes;
use peft_engine::peft::method::{LoraSettings, Method, Selective};
use peft_engine::train::{train, TrainConfig, TrainEvent, TrainStatus};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Which parameters train, and how.
#[derive(Args, Clone, Debug)]
pub struct MethodArgs {
    /// lora: small adapters on a frozen base. qlora: LoRA over a 4-bit NF4 base (least memory).
    /// selective: train a chosen subset of existing weights. full: every weight (most memory).
    #[arg(long, default_value = "lora", value_parser = ["lora", "qlora", "selective", "full"])]
    pub method: String,
    /// LoRA rank r: more capacity, more adapter memory.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA alpha: the update is scaled by alpha/r (alpha/√r with --rslora).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Dropout on the adapter input while training.
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f32,
    /// Comma list of projections (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) or all-linear.
    #[arg(long, default_value = "all-linear")]
    pub targets: String,
    /// Only adapt these block indices (comma list), e.g. 20,21,22.
    #[arg(long)]
    pub layers: Option<String>,
    /// Scale by alpha/√r (rank-stabilised LoRA).
    #[arg(long)]
    pub rslora: bool,
    /// For --method selective: bias | norm | last:N | modules:PATTERN.
    #[arg(long, default_value = "norm")]
    pub selective: String,
}

impl MethodArgs {
    pub fn method(&self) -> peft_engine::Result<Method> {
        let layers = match &self.layers {
            None => None,
            Some(s) => Some(
                s.split(',')
                    .map(|x| {
                        x.trim().parse::<usize>().map_err(|_| {
                            peft_engine::Error::invalid(
                                "layers",
                                format!("`{x}` is not a layer index"),
                            )
                        })
                    })
                    .collect::<peft_engine::Result<Vec<_>>>()?,
            ),
        };
        let lora = LoraSettings {
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            targets: self
                .targets
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
            layers,
            rslora: self.rslora,
        };
        Ok(match self.method.as_str() {
            "lora" => Method::Lora(lora),
            "qlora" => Method::Qlora(lora),
            "selective" => Method::Selective {
                what: Selective::parse(&self.selective)?,
            },
            _ => Method::Full,
        })
    }
}

/// Flags that set memory use.
#[derive(Args, Clone, Debug)]
pub struct SizeArgs {
    /// Longest example in tokens (longer ones are cut): memory grows with it.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Examples per forward pass: memory grows linearly with it.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step: a larger effective batch at no extra memory.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Recompute each block in backward: far less memory, about a third more time.
    #[arg(long)]
    pub grad_checkpointing: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Training data: JSONL, JSON array or CSV (alpaca, chat messages, ShareGPT, prompt/completion, text).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: the adapter (PEFT format) or changed tensors, and checkpoints.
    #[arg(long, default_value = "peft-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub method: MethodArgs,
    #[command(flatten)]
    pub size: SizeArgs,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// cosine | linear | constant (after warmup).
    #[arg(long, default_value = "cosine")]
    pub scheduler: String,
    /// Steps of linear warmup.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Passes over the training data.
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    /// Stop after this many optimizer steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Validation loss every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Checkpoint every N steps (0: only at the end and on Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Share of examples held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// assistant: learn only the replies (default). all: every token.
    #[arg(long, default_value = "assistant", value_parser = ["assistant", "all"])]
    pub train_on: String,
    /// Skip malformed rows (and report how many) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Precision of the saved adapter: f32, or bf16 for a file half the size.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub adapter_dtype: String,
    /// Continue the run in --out exactly where it stopped (same flags required).
    #[arg(long)]
    pub resume: bool,
    /// `auto`: train with `peft plan`'s top recommendation (method, sequence length, batch,
    /// checkpointing) for this machine, model and data, overriding those flags.
    #[arg(long)]
    pub plan: Option<String>,
}

impl TrainArgs {
    pub fn config(&self) -> peft_engine::Result<TrainConfig> {
        let mut c = TrainConfig {
            method: self.method.method()?,
            seq_len: self.size.seq_len,
            batch_size: self.size.batch_size,
            grad_accum: self.size.grad_accum,
            lr: self.lr,
            scheduler: self.scheduler.parse()?,
            warmup_steps: self.warmup_steps,
            epochs: self.epochs,
            max_steps: self.max_steps,
            eval_every: self.eval_every,
            save_every: self.save_every,
            seed: self.seed,
            grad_checkpointing: self.size.grad_checkpointing,
            max_grad_norm: self.max_grad_norm,
            val_fraction: self.val_fraction,
            train_on: if self.train_on == "all" {
                TrainOn::All
            } else {
                TrainOn::Assistant
            },
            skip_bad_rows: self.skip_bad_rows,
            adapter_dtype: if self.adapter_dtype == "bf16" {
                peft_engine::peft::adapter_io::AdapterDtype::Bf16
            } else {
                peft_engine::peft::adapter_io::AdapterDtype::F32
            },
            ..Default::default()
        };
        c.adamw.weight_decay = self.weight_decay;
        Ok(c)
    }
}

pub fn run(a: TrainArgs) -> peft_engine::Result<()> {
    let mut cfg = a.config()?;
    if let Some(p) = &a.plan {
        cfg = crate::plan::auto_train_config(p, &a.model, &a.data, cfg)?;
    }
    let model = load_model_with(&a.model, &cfg.method)?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || {
            eprintln!("\nstopping after this micro-step and writing a checkpoint…");
            c.store(true, Ordering::SeqCst)
        });
    }
    // Without a terminal (logs, CI) the bar is hidden: print one line per step instead.
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = ProgressBar::new(0);
    let say = |bar: &ProgressBar, line: String| bar.suspend(|| eprintln!("{line}"));
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut on_event = |e: &TrainEvent| match e {
        TrainEvent::Started {
            total_steps,
            start_step,
            train_examples,
            val_examples,
            truncated,
            dropped_untrained,
            skipped_rows,
            trainable_params,
            total_params,
        } => {
            say(&bar, format!(
                "{} train / {} validation examples ({truncated} truncated, {dropped_untrained} without trained tokens dropped, {skipped_rows} bad rows skipped)",
                train_examples, val_examples
            ));
            say(
                &bar,
                format!(
                    "trainable parameters: {trainable_params} of {total_params} ({:.3} %)",
                    100.0 * *trainable_params as f64 / *total_params as f64
                ),
            );
            bar.set_length(*total_steps as u64);
            bar.set_position(*start_step as u64);
        }
        TrainEvent::Step(s) => {
            let msg = format!(
                "loss {:.4} lr {:.2e} |g| {:.2} {:.0} tok/s ETA {:.0}s RSS {}",
                s.loss,
                s.lr,
                s.grad_norm,
                s.tokens_per_s,
                s.eta_s,
                format_bytes(s.rss_bytes)
            );
            if plain {
                eprintln!("step {}/{} {msg}", s.step, s.total_steps);
            }
            bar.set_position(s.step as u64);
            bar.set_message(msg);
        }
        TrainEvent::Eval { step, loss } => say(&bar, format!("step {step}: eval loss {loss:.4}")),
        TrainEvent::Checkpoint { .. } => {}
    };
    let resume = a.resume.then_some(a.out.as_path());
    let s = train(
        model,
        &a.data,
        &a.out,
        &cfg,
        resume,
        Some(&cancel),
        &mut on_event,
    )?;
    bar.finish_and_clear();
    let first = s.losses.first().map(|l| l.1).unwrap_or(f64::NAN);
    let last = s.losses.last().map(|l| l.1).unwrap_or(f64::NAN);
    match s.status {
        TrainStatus::Completed => eprintln!(
            "done: {} steps, loss {first:.4} → {last:.4}; result in {}",
            s.steps,
            s.output.display()
        ),
        TrainStatus::Cancelled => eprintln!(
            "stopped at step {}; resume with the same flags plus --resume",
            s.steps
        ),
    }
    if let Some((step, l)) = s.eval_losses.last() {
        eprintln!("eval loss {l:.4} at step {step}");
    }
    println!("{:.1} tokens/s", s.mean_tokens_per_s);
    println!(
        "peak memory {} ({} bytes)",
        format_bytes(s.peak_rss_bytes),
        s.peak_rss_bytes
    );
    Ok(())
}
