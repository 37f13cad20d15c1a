//! Training: the recipe, its settings, optimizer, schedule, checkpoints and gradient
//! checkpointing.

pub mod checkpoint;
pub mod config;
pub mod grad_ckpt;
pub mod optim;
pub mod recipe;
pub mod schedule;

pub use config::TrainConfig;
pub use recipe::{train, StepStats, TrainEvent, TrainStatus, TrainSummary};
