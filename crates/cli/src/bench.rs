//! `peft bench …`: speed and memory tables. Figures are for comparison on one machine;
//! nothing here asserts a time.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Planner check: predicted vs measured peak RSS and tokens/s over a grid of real runs.
    Plan(crate::bench_plan::BenchPlanArgs),
    /// Prefill and decode tokens/s, weights in memory and peak RSS, one model and storage per
    /// child process (a GGUF in its own block types and dequantized to f32).
    Generate(crate::bench_generate::BenchGenerateArgs),
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
        /// `+packed` after one adds sample packing, `+bf16` the bf16 products, e.g.
        /// `lora,lora+packed,lora+bf16`).
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
        BenchCommand::Generate(a) => crate::bench_generate::run(a),
    }
}
