//! The training knobs as the wizard edits them: one flat struct the Plan step shows and the
//! Train step sends, translated here into the engine's `TrainConfig` (for training) and
//! `PlanRequest` (for the estimate). Defaults are the engine's.

use peft_engine::peft::method::{LoraSettings, Method};
use peft_engine::plan::{PlanRequest, Throughput};
use peft_engine::train::schedule::Scheduler;
use peft_engine::train::TrainConfig;
use serde::{Deserialize, Serialize};
use ts_rs::TS;

/// Fine-tuning method offered in the app.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, TS, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    Lora,
    Qlora,
    Full,
}

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, TS, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    Cosine,
    Linear,
    Constant,
}

/// Every knob of a run the app lets the user edit.
#[derive(Clone, Debug, Serialize, Deserialize, TS, PartialEq)]
pub struct TrainSettings {
    pub method: MethodKind,
    pub rank: u32,
    pub alpha: f64,
    pub dropout: f64,
    /// Projection names (`q_proj`…); empty means all seven.
    pub targets: Vec<String>,
    pub seq_len: u32,
    pub batch_size: u32,
    pub grad_accum: u32,
    pub lr: f64,
    pub epochs: f64,
    /// Stop after this many optimizer steps (overrides epochs).
    pub max_steps: Option<u32>,
    pub warmup_steps: u32,
    pub eval_every: u32,
    pub save_every: u32,
    pub grad_checkpointing: bool,
    pub scheduler: SchedulerKind,
    pub seed: u32,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self::from_config(&TrainConfig::default())
    }
}

impl TrainSettings {
    /// The app's knobs of an engine config.
    pub fn from_config(c: &TrainConfig) -> Self {
        let lora = c.method.lora().cloned().unwrap_or_default();
        let method = match c.method {
            Method::Qlora(_) => MethodKind::Qlora,
            Method::Full | Method::Selective { .. } => MethodKind::Full,
            Method::Lora(_) => MethodKind::Lora,
        };
        Self {
            method,
            rank: lora.rank as u32,
            alpha: lora.alpha,
            dropout: lora.dropout as f64,
            targets: lora.targets,
            seq_len: c.seq_len as u32,
            batch_size: c.batch_size as u32,
            grad_accum: c.grad_accum as u32,
            lr: c.lr,
            epochs: c.epochs,
            max_steps: c.max_steps.map(|s| s as u32),
            warmup_steps: c.warmup_steps as u32,
            eval_every: c.eval_every as u32,
            save_every: c.save_every as u32,
            grad_checkpointing: c.grad_checkpointing,
            scheduler: match c.scheduler {
                Scheduler::Cosine => SchedulerKind::Cosine,
                Scheduler::Linear => SchedulerKind::Linear,
                Scheduler::Constant => SchedulerKind::Constant,
            },
            seed: c.seed as u32,
        }
    }

    /// The same knobs taken from a planner request (the rest stay as in `self`).
    pub fn with_request(&self, r: &PlanRequest) -> Self {
        let mut s = self.clone();
        s.method = match r.method {
            Method::Qlora(_) => MethodKind::Qlora,
            Method::Lora(_) => MethodKind::Lora,
            _ => MethodKind::Full,
        };
        if let Some(l) = r.method.lora() {
            s.rank = l.rank as u32;
            s.alpha = l.alpha;
        }
        s.seq_len = r.seq_len as u32;
        s.batch_size = r.batch_size as u32;
        s.grad_accum = r.grad_accum as u32;
        s.grad_checkpointing = r.grad_checkpointing;
        s
    }

    pub fn method(&self) -> Method {
        let lora = LoraSettings {
            rank: self.rank as usize,
            alpha: self.alpha,
            dropout: self.dropout as f32,
            targets: if self.targets.is_empty() {
                LoraSettings::default().targets
            } else {
                self.targets.clone()
            },
            ..LoraSettings::default()
        };
        match self.method {
            MethodKind::Lora => Method::Lora(lora),
            MethodKind::Qlora => Method::Qlora(lora),
            MethodKind::Full => Method::Full,
        }
    }

    /// The engine's config for these knobs (validated by the engine when training starts).
    pub fn to_config(&self) -> TrainConfig {
        TrainConfig {
            method: self.method(),
            seq_len: self.seq_len as usize,
            batch_size: self.batch_size as usize,
            grad_accum: self.grad_accum as usize,
            lr: self.lr,
            epochs: self.epochs,
            max_steps: self.max_steps.map(|s| s as usize),
            warmup_steps: self.warmup_steps as usize,
            eval_every: self.eval_every as usize,
            save_every: self.save_every as usize,
            grad_checkpointing: self.grad_checkpointing,
            scheduler: match self.scheduler {
                SchedulerKind::Cosine => Scheduler::Cosine,
                SchedulerKind::Linear => Scheduler::Linear,
                SchedulerKind::Constant => Scheduler::Constant,
            },
            seed: self.seed as u64,
            ..TrainConfig::default()
        }
    }

    /// The planner's request for these knobs on this machine.
    pub fn to_request(&self, base: &PlanRequest, throughput: Throughput) -> PlanRequest {
        PlanRequest {
            method: self.method(),
            seq_len: self.seq_len as usize,
            batch_size: self.batch_size as usize,
            grad_accum: self.grad_accum as usize,
            grad_checkpointing: self.grad_checkpointing,
            throughput,
            ..base.clone()
        }
    }

    /// What the demo needs to be visible in about a minute on a laptop CPU: the bundled Bolt
    /// stories are 97–127 tokens, so seq 128; a high LoRA learning rate and 8 epochs (~104
    /// steps) make the 260K-parameter model pick up the style. Measured in the e2e run (debug
    /// build, 2 cores, 150 steps): train loss 3.1 → 0.3 in ~45 s, eval loss lowest (~1.25)
    /// around step 25 and ~1.6 at the end (it memorises), and "Tell me a story." is answered
    /// with Bolt and apples while the base model never mentions either.
    pub fn demo() -> Self {
        Self {
            seq_len: 128,
            batch_size: 4,
            grad_accum: 1,
            lr: 3e-3,
            epochs: 8.0,
            rank: 16,
            alpha: 32.0,
            dropout: 0.0,
            eval_every: 10,
            warmup_steps: 5,
            ..Self::default()
        }
    }
}
