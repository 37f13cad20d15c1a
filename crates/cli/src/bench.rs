//! `peft bench …`: speed and memory tables. Figures are for comparison on one machine;
//! nothing here asserts a time.

use clap::Subcommand;
use peft_engine::infer::generate::{generate, GenerateOptions};
use peft_engine::memory::{format_bytes, peak_rss_bytes};
use peft_engine::model::decoder::LoadOptions;
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Planner check: predicted vs measured peak RSS and tokens/s over a grid of real runs.
    Plan(crate::bench_plan::BenchPlanArgs),
    /// Prompt-processing and generation tokens/s with peak RSS, one model per child process.
    Generate {
        /// Models to measure (default: the bundled model and the SmolLM2 GGUF in ../shared).
        #[arg(long)]
        model: Vec<String>,
        /// Prompt length in tokens.
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        /// Tokens to generate.
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// Run a single measurement in this process and print one JSON line (used internally).
        #[arg(long, hide = true)]
        child: bool,
    },
    /// Training tokens/s and peak RSS for LoRA (with and without gradient checkpointing) and
    /// full fine-tuning, each in its own child process.
    Train {
        /// Model to train (default: SmolLM2-135M-Instruct from ../shared, dequantized to f32).
        #[arg(long, default_value = SMOLLM2)]
        model: String,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        /// Optimizer steps per configuration (the first is not timed).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Only these configurations (comma list of lora, lora-ckpt, qlora, qlora-ckpt, full;
        /// `+packed` after one adds sample packing, e.g. `lora,lora+packed`).
        #[arg(long, default_value = "lora,lora-ckpt,full")]
        configs: String,
        /// A real dataset (JSONL): each configuration trains one epoch of its first
        /// --examples rows instead of --steps synthetic full-length rows.
        #[arg(long)]
        data: Option<String>,
        #[arg(long, default_value_t = 200)]
        examples: usize,
        /// Also break each step down by kind of op (GEMM, elementwise, attention, loss,
        /// optimizer, the rest) and compare the GEMM rate with the machine's.
        #[arg(long)]
        profile: bool,
        #[arg(long, hide = true)]
        child: Option<String>,
    },
}

const SMOLLM2: &str = "../shared/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf";

pub fn run(cmd: BenchCommand) -> peft_engine::Result<()> {
    match cmd {
        BenchCommand::Plan(a) => crate::bench_plan::run(a),
        BenchCommand::Train {
            model,
            seq_len,
            steps,
            configs,
            data,
            examples,
            profile,
            child,
        } => {
            let data = crate::bench_train::BenchData {
                data,
                examples,
                profile,
            };
            match child {
                Some(c) => crate::bench_train::child(&model, seq_len, steps, &c, &data),
                None => crate::bench_train::parent(&model, seq_len, steps, &configs, &data),
            }
        }
        BenchCommand::Generate {
            model,
            prompt_tokens,
            new_tokens,
            child,
        } => {
            if child {
                return child_generate(&model[0], prompt_tokens, new_tokens);
            }
            let models = if model.is_empty() {
                vec![
                    "demo".to_string(),
                    "../shared/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"
                        .to_string(),
                ]
            } else {
                model
            };
            println!(
                "| model | prompt tokens | prompt tok/s | generated | gen tok/s | load s | peak RSS |"
            );
            println!("|---|---:|---:|---:|---:|---:|---:|");
            for m in models {
                let exe = std::env::current_exe().map_err(|e| peft_engine::Error::io("peft", e))?;
                let out = std::process::Command::new(exe)
                    .args(["bench", "generate", "--child", "--model", &m])
                    .args(["--prompt-tokens", &prompt_tokens.to_string()])
                    .args(["--new-tokens", &new_tokens.to_string()])
                    .output()
                    .map_err(|e| peft_engine::Error::io("peft", e))?;
                let line = String::from_utf8_lossy(&out.stdout);
                match serde_json::from_str::<serde_json::Value>(line.trim()) {
                    Ok(v) => println!(
                        "| {} | {} | {:.0} | {} | {:.1} | {:.2} | {} |",
                        m,
                        v["prompt_tokens"],
                        v["prompt_tokens_per_s"].as_f64().unwrap_or(0.0),
                        v["generated"],
                        v["tokens_per_s"].as_f64().unwrap_or(0.0),
                        v["load_s"].as_f64().unwrap_or(0.0),
                        format_bytes(v["peak_rss"].as_u64().unwrap_or(0)),
                    ),
                    Err(_) => println!(
                        "| {m} | failed: {} |",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                }
            }
            Ok(())
        }
    }
}

fn child_generate(model: &str, prompt_tokens: usize, new_tokens: usize) -> peft_engine::Result<()> {
    let t0 = Instant::now();
    let m = LoadedModel::load(
        &ModelSource::parse(model)?,
        OpenOptions::default(),
        &LoadOptions::default(),
    )?;
    let d = m.weights(&LoadOptions::default())?;
    let load_s = t0.elapsed().as_secs_f64();
    // A fixed, model-independent prompt: ids cycling over the vocabulary's middle.
    let vocab = m.info.vocab_size as u32;
    let ids: Vec<u32> = (0..prompt_tokens as u32)
        .map(|i| 10 + (i * 7919) % (vocab - 20))
        .collect();
    let mut opts = GenerateOptions::greedy(new_tokens);
    opts.max_new_tokens = new_tokens;
    // No stop ids: always generate the full count so runs are comparable.
    let g = generate(&d, &m.tokenizer, &ids, &opts, &[], None, &mut |_| {})?;
    let v = serde_json::json!({
        "prompt_tokens": g.prompt_tokens,
        "prompt_tokens_per_s": g.prompt_tokens_per_s,
        "generated": g.token_ids.len(),
        "tokens_per_s": g.tokens_per_s,
        "load_s": load_s,
        "peak_rss": peak_rss_bytes().unwrap_or(0),
    });
    println!("{v}");
    Ok(())
}
