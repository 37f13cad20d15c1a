//! Flags shared by `peft train`, `peft plan` and `peft bench`: the method and the sizes that set
//! memory, and the compute device (`train`, `generate`, `chat`). They translate into the engine's types and nothing more.

use clap::Args;
use peft_engine::device::DeviceChoice;
use peft_engine::peft::method::{LoraSettings, Method, MethodKind, Selective};

/// Which parameters train, and how.
#[derive(Args, Clone, Debug)]
pub struct MethodArgs {
    /// lora: small adapters on a frozen base. qlora: LoRA over a 4-bit NF4 base (least
    /// memory). selective: a chosen subset of existing weights. full: every weight.
    /// `peft train` defaults to lora; `peft plan` without it ranks LoRA and QLoRA.
    #[arg(long, value_enum)]
    pub method: Option<MethodKind>,
    /// LoRA rank r: more capacity, more adapter memory.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA alpha: the update is scaled by alpha/r (alpha/√r with --rslora).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Dropout on the adapter input while training.
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f32,
    /// Projections to adapt (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) or all-linear.
    #[arg(long, value_delimiter = ',', default_value = "all-linear")]
    pub targets: Vec<String>,
    /// Only adapt these block indices, e.g. 20,21,22.
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<usize>>,
    /// Scale by alpha/√r (rank-stabilised LoRA).
    #[arg(long)]
    pub rslora: bool,
    /// For --method selective: bias | norm | last:N | modules:PATTERN.
    #[arg(long, default_value = "norm")]
    pub selective: String,
}

impl MethodArgs {
    /// The LoRA settings of these flags (used by LoRA, QLoRA and automatic plans).
    pub fn lora(&self) -> LoraSettings {
        LoraSettings {
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            targets: self.targets.iter().map(|s| s.trim().to_string()).collect(),
            layers: self.layers.clone(),
            rslora: self.rslora,
        }
    }

    /// The method `kind` with these flags' settings.
    ///
    /// # Errors
    /// A malformed `--selective`.
    pub fn method_of(&self, kind: MethodKind) -> peft_engine::Result<Method> {
        let what = match kind {
            MethodKind::Selective => Selective::parse(&self.selective)?,
            _ => Selective::Norm,
        };
        Ok(Method::of_kind(kind, self.lora(), what))
    }
}

/// Flags that set memory use (unset: the engine's defaults for training; the planner's choice
/// for `peft plan`).
#[derive(Args, Clone, Debug)]
pub struct SizeArgs {
    /// Longest example in tokens (longer ones are cut): memory grows with it. [default: 256]
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Examples per forward pass: memory grows linearly with it. [default: 1]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step: a larger effective batch at no extra memory.
    /// [default: 1]
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Recompute each block in backward: far less memory, about a third more time.
    #[arg(long)]
    pub grad_checkpointing: bool,
    /// Sample packing (true/false): short examples end to end in rows of --seq-len, each with
    /// its own positions and attending only to itself. Unset: the planner packs where its
    /// epoch estimate is shorter with it (`peft plan`, `--plan auto`); off otherwise.
    #[arg(long)]
    pub packing: Option<bool>,
}

/// Where to compute.
#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// auto (the planner's device: a GPU this build supports, else the CPU), cpu, cuda,
    /// cuda:N or metal. A GPU computes in bf16; adapters, gradients and optimizer state stay f32.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse().map_err(|e: peft_engine::Error| e.to_string())
}
