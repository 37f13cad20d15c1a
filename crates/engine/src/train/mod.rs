//! Training: the recipe, its settings, run records, optimizer, schedule, checkpoints and
//! gradient checkpointing.

pub mod checkpoint;
pub mod checksum;
pub mod config;
pub mod events;
pub mod grad_ckpt;
pub mod history;
pub mod import;
pub mod optim;
pub mod prepare;
pub mod recipe;
pub mod run_lock;
pub mod schedule;
pub mod step;
pub mod tuned;

pub use config::TrainConfig;
pub use events::{StepStats, TrainEvent, TrainStatus, TrainSummary};
pub use history::{RunOrigin, RunRecord, RunStatus, WhichAdapter};
pub use recipe::train;
