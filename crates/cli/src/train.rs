//! `peft train`: fine-tune with LoRA, QLoRA, selective PEFT or full fine-tuning.
//! The method and size flags are shared with `peft plan` so a plan can be checked against
//! the real run; `--plan auto` takes the planner's top recommendation.

use crate::args::{DeviceArgs, MethodArgs, SizeArgs};
use crate::load::{open_model, ModelArgs};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use peft_engine::data::render::TrainOn;
use peft_engine::device::DeviceChoice;
use peft_engine::memory::format_bytes;
use peft_engine::peft::adapter_io::AdapterDtype;
use peft_engine::peft::method::MethodKind;
use peft_engine::train::schedule::Scheduler;
use peft_engine::train::{train, RunRecord, TrainConfig, TrainEvent, TrainStatus};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What `--plan` may say.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PlanChoice {
    /// Method, sequence length, batch and checkpointing from `peft plan`'s top recommendation.
    Auto,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Training data: JSONL, JSON array or CSV (alpaca, chat messages, ShareGPT, prompt/completion, text).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: the adapter (PEFT format) or changed tensors, checkpoints, `best/` and
    /// the run record `run.json`. Must be new or empty unless --resume.
    #[arg(long, default_value = "peft-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub method: MethodArgs,
    #[command(flatten)]
    pub size: SizeArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Learning-rate schedule after warmup.
    #[arg(long, value_enum, default_value_t = Scheduler::Cosine)]
    pub scheduler: Scheduler,
    /// Steps of linear warmup.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Passes over the training data.
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    /// Stop after this many optimizer steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Validation loss every N steps (0: only at the end); the best is kept in OUT/best.
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
    /// assistant: learn only the replies. all: every token.
    #[arg(long, value_enum, default_value_t = TrainOn::Assistant)]
    pub train_on: TrainOn,
    /// Skip malformed rows (and report how many) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Precision of the saved adapter: f32, or bf16 for a file half the size.
    #[arg(long, value_enum, default_value_t = AdapterDtype::F32)]
    pub adapter_dtype: AdapterDtype,
    /// LoRA's or QLoRA's frozen base multiplied in bf16 with f32 sums (like PyTorch's CPU
    /// autocast; LoRA's base is stored in bf16): fast on CPUs with AMX (`peft hardware` says),
    /// the same numbers but slower than f32 elsewhere. Adapters, gradients and optimizer state
    /// stay f32. `--bf16-compute false` turns it off; unset, `--plan auto` turns it on where
    /// the CPU has AMX (off otherwise).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub bf16_compute: Option<bool>,
    /// Continue the run in --out exactly where it stopped (same flags required).
    #[arg(long)]
    pub resume: bool,
    /// Train with `peft plan`'s top recommendation for this machine, model and data (method,
    /// sequence length, batch, checkpointing), overriding those flags.
    #[arg(long, value_enum)]
    pub plan: Option<PlanChoice>,
}

impl TrainArgs {
    /// The engine's settings for these flags.
    ///
    /// # Errors
    /// A malformed `--selective`.
    pub fn config(&self) -> peft_engine::Result<TrainConfig> {
        let d = TrainConfig::default();
        let mut c = TrainConfig {
            method: self
                .method
                .method_of(self.method.method.unwrap_or(MethodKind::Lora))?,
            seq_len: self.size.seq_len.unwrap_or(d.seq_len),
            batch_size: self.size.batch_size.unwrap_or(d.batch_size),
            grad_accum: self.size.grad_accum.unwrap_or(d.grad_accum),
            lr: self.lr,
            scheduler: self.scheduler,
            warmup_steps: self.warmup_steps,
            epochs: self.epochs,
            max_steps: self.max_steps,
            eval_every: self.eval_every,
            save_every: self.save_every,
            seed: self.seed,
            grad_checkpointing: self.size.grad_checkpointing,
            max_grad_norm: self.max_grad_norm,
            val_fraction: self.val_fraction,
            train_on: self.train_on,
            skip_bad_rows: self.skip_bad_rows,
            adapter_dtype: self.adapter_dtype,
            weight_dtype: self.model.weight_dtype(),
            // Unset for auto, so runs started before the flag existed resume with it.
            device: (self.device.device != DeviceChoice::Auto).then_some(self.device.device),
            packing: self.size.packing.unwrap_or(d.packing),
            bf16_compute: self.bf16_compute.unwrap_or(false),
            ..d
        };
        c.adamw.weight_decay = self.weight_decay;
        Ok(c)
    }
}

/// Progress lines for a run: a bar on a terminal, one line per step otherwise.
fn progress() -> impl FnMut(&TrainEvent, &RunRecord) {
    // Without a terminal (logs, CI) the bar is hidden: print one line per step instead.
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    move |e: &TrainEvent, _r: &RunRecord| {
        let say = |line: String| bar.suspend(|| eprintln!("{line}"));
        match e {
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
                storage,
                memory,
            } => {
                say(format!(
                    "{train_examples} train / {val_examples} validation examples ({truncated} truncated, {dropped_untrained} without trained tokens dropped, {skipped_rows} bad rows skipped)"
                ));
                say(format!(
                    "trainable parameters: {trainable_params} of {total_params} ({:.3} %)",
                    100.0 * *trainable_params as f64 / *total_params as f64
                ));
                if let (Some(dev), Some(dt)) = (&storage.device, &storage.compute_dtype) {
                    say(format!("device: {dev} ({dt} compute)"));
                }
                say(format!(
                    "base: {} NF4, {} GGUF-typed and {} dense frozen linears, {} trainable, {} adapted ({} of weights); planned peak {}",
                    storage.nf4_linears,
                    storage.gguf_linears,
                    storage.dense_linears,
                    storage.trainable_linears,
                    storage.adapted_linears,
                    format_bytes(storage.base_bytes),
                    format_bytes(memory.planned_peak_bytes)
                ));
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
            TrainEvent::Eval { step, loss, best } => say(format!(
                "step {step}: eval loss {loss:.4}{}",
                if *best {
                    " (best so far: saved to best/)"
                } else {
                    ""
                }
            )),
            TrainEvent::Checkpoint { .. } => {}
        }
    }
}

pub fn run(a: TrainArgs) -> peft_engine::Result<()> {
    let mut cfg = a.config()?;
    let model = open_model(&a.model)?;
    if a.plan.is_some() {
        cfg = crate::plan::auto_train_config(&model, &a.data, cfg, a.size.packing, a.bf16_compute)?;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || {
            eprintln!("\nstopping after this micro-step and writing a checkpoint…");
            c.store(true, Ordering::SeqCst)
        });
    }
    let mut on_event = progress();
    let resume = a.resume.then_some(a.out.as_path());
    let s = train(
        &model,
        &a.data,
        &a.out,
        &cfg,
        resume,
        Some(&cancel),
        &mut on_event,
    )?;
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
        "peak memory {} ({} bytes), {} bytes before training",
        format_bytes(s.peak_rss_bytes),
        s.peak_rss_bytes,
        s.baseline_rss_bytes
    );
    Ok(())
}
