//! Learning-rate schedules: linear warmup from 0, then cosine, linear or constant.
//! A pure function of the step, so a resumed run needs no scheduler state beyond the step.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Half a cosine from the peak down to 10 % of it (the usual LLM choice).
    #[default]
    Cosine,
    /// Straight line from the peak down to 0.
    Linear,
    /// The peak for the whole run after warmup.
    Constant,
}

impl std::str::FromStr for Scheduler {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cosine" => Ok(Scheduler::Cosine),
            "linear" => Ok(Scheduler::Linear),
            "constant" => Ok(Scheduler::Constant),
            _ => Err(crate::error::Error::invalid(
                "scheduler",
                format!("`{s}`: choose cosine, linear or constant"),
            )),
        }
    }
}

/// Learning rate for optimizer step `step` (0-based) of `total`.
pub fn lr_at(kind: Scheduler, peak: f64, warmup: usize, total: usize, step: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    match kind {
        Scheduler::Constant => peak,
        Scheduler::Linear => peak * (1.0 - progress),
        Scheduler::Cosine => {
            let floor = 0.1 * peak;
            floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}
