//! What a training run reports while it goes ([`TrainEvent`], each delivered with the run's
//! current [`crate::train::history::RunRecord`]) and when it ends ([`TrainSummary`]).

use crate::model::decoder::StorageReport;
use crate::train::history::RunMemory;
use serde::Serialize;
use std::path::PathBuf;

/// One optimizer step's numbers, as the progress bar and the app's chart show them.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct StepStats {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub eval_loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub eta_s: f64,
    /// Resident memory of the whole process now.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub rss_bytes: u64,
    /// What the run has added to the process so far: `rss − baseline` (see
    /// [`RunMemory`] for the planned figure to compare it with).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub rss_growth_bytes: u64,
    pub elapsed_s: f64,
}

/// What the recipe reports while it runs.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        total_steps: usize,
        start_step: usize,
        train_examples: usize,
        val_examples: usize,
        truncated: usize,
        dropped_untrained: usize,
        skipped_rows: usize,
        trainable_params: usize,
        total_params: usize,
        /// How the base is stored for this run (NF4 block linears for QLoRA).
        storage: StorageReport,
        memory: RunMemory,
    },
    Step(StepStats),
    Eval {
        step: usize,
        loss: f64,
        /// This evaluation is the best so far: its adapter was saved as the best checkpoint.
        best: bool,
    },
    Checkpoint {
        step: usize,
        #[cfg_attr(feature = "ts", ts(type = "string"))]
        path: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum TrainStatus {
    Completed,
    /// Stopped on request; a checkpoint holds the progress.
    Cancelled,
}

/// The end of a run.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub status: TrainStatus,
    pub steps: usize,
    pub losses: Vec<(usize, f64)>,
    pub eval_losses: Vec<(usize, f64)>,
    /// Real (non-padding) tokens per second over this session's steps.
    pub mean_tokens_per_s: f64,
    /// Peak resident memory of the process so far (the kernel's high-water mark).
    pub peak_rss_bytes: u64,
    /// Resident memory when the run began, so `peak − baseline` is what the run added.
    pub baseline_rss_bytes: u64,
    pub trainable_params: usize,
    pub storage: StorageReport,
    /// Where the adapter (or changed tensors) were written.
    pub output: PathBuf,
}
