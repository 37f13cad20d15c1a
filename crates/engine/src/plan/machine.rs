//! What this machine can train, in one sentence: where training runs and the top
//! recommendation for a model (the Hardware step's headline and `peft hardware`'s last line).

use super::recommend::{recommend, DataStats, RecommendOptions};
use super::request::ComputeDevice;
use crate::hardware::Hardware;
use crate::memory::format_bytes;
use crate::model::config::Config;
use serde::Serialize;

/// The machine's verdict for one model.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct MachineSummary {
    /// Where training runs.
    pub device: ComputeDevice,
    pub summary: String,
}

/// Where `model_name` (with `config`) trains on `hw` for data like `data`, and how.
pub fn machine_summary(
    hw: &Hardware,
    config: &Config,
    model_name: &str,
    data: &DataStats,
) -> MachineSummary {
    let rec = recommend(config, hw, data, &RecommendOptions::default());
    let place = match rec.device {
        ComputeDevice::Cpu => format!(
            "Training runs on the CPU ({} cores, {} of RAM free)",
            hw.cpu.logical_cores,
            format_bytes(rec.available_bytes)
        ),
        _ => format!(
            "Training runs on the GPU ({} free)",
            format_bytes(rec.available_bytes)
        ),
    };
    let summary = match rec.best() {
        Some(best) => format!(
            "{place}: {} at {} tokens fits {model_name} in {}, at about {:.0} tokens/s.",
            best.label,
            best.request.seq_len,
            format_bytes(best.estimate.peak_bytes),
            best.tokens_per_s
        ),
        None => format!("{place}: {}", rec.summary),
    };
    MachineSummary {
        device: rec.device,
        summary,
    }
}
