//! Training checkpoints: trainable tensors, optimizer moments and the run state, written so a
//! crash mid-write never damages the previous checkpoint.
//!
//! Layout under `<out>/checkpoints/`: `step-000010/` holding `trainable.safetensors`,
//! `optimizer.safetensors` and `state.json`, and a `latest` file naming the newest complete
//! one. A checkpoint is written into `step-000010.partial/`, synced, renamed into place, and
//! only then does `latest` (itself written atomically) point at it; older ones are removed
//! afterwards. Each checkpoint carries `SHA256SUMS` (`train::checksum`), verified before a
//! resume uses it. The data position and dropout masks are pure functions of the step and seed,
//! so the step number is all the position state there is.

use crate::error::{Error, Result};
use crate::fsutil::{
    load_safetensors, read_json, save_f32_atomic, save_safetensors_atomic, write_atomic,
    write_json_atomic, F32Slice,
};
use crate::train::checksum::{verify_sums, write_sums};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Everything besides tensors that a resumed run needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps completed.
    pub step: usize,
    pub optimizer_t: u64,
    /// The settings the run was started with (a resume must use the same).
    pub config: serde_json::Value,
    /// `(step, loss)` of every completed step, for the chart.
    pub losses: Vec<(usize, f64)>,
    pub eval_losses: Vec<(usize, f64)>,
    /// Model and data the run used, to refuse resuming on different ones.
    pub model: String,
    pub data: String,
    pub train_examples: usize,
}

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

const TRAINABLE: &str = "trainable.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

/// Writes a checkpoint for `state.step` and makes it the latest.
pub fn save_checkpoint(
    out: &Path,
    state: &RunState,
    trainable: &HashMap<String, Tensor>,
    optimizer: &[(String, F32Slice<'_>)],
) -> Result<PathBuf> {
    let root = checkpoints_dir(out);
    let name = format!("step-{:06}", state.step);
    let partial = root.join(format!("{name}.partial"));
    let done = root.join(&name);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    let written = (|| {
        save_safetensors_atomic(&partial.join(TRAINABLE), trainable)?;
        save_f32_atomic(&partial.join(OPTIMIZER), optimizer)?;
        write_json_atomic(&partial.join(STATE), state)?;
        write_sums(&partial, &[TRAINABLE, OPTIMIZER, STATE])
    })();
    if let Err(e) = written {
        // A full disk (or any write failure) leaves no half-written folder behind; the
        // previous checkpoint, under its own name, is untouched.
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(|e| Error::io(&done, e))?;
    }
    std::fs::rename(&partial, &done).map_err(|e| Error::io(&done, e))?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    // Keep only the newest complete checkpoint.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("step-") && n != name {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(done)
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: RunState,
    pub trainable: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
}

/// Finds the latest checkpoint under `path`, which may be a run's output folder, its
/// `checkpoints/` folder, or one checkpoint folder.
///
/// # Errors
/// [`Error::Io`] naming what was looked for when there is no complete checkpoint.
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let dir = if path.join("state.json").exists() {
        path.to_path_buf()
    } else {
        let root = if path.join("latest").exists() {
            path.to_path_buf()
        } else {
            checkpoints_dir(path)
        };
        let latest = root.join("latest");
        let name = std::fs::read_to_string(&latest).map_err(|e| {
            Error::io(
                &latest,
                std::io::Error::new(
                    e.kind(),
                    "no checkpoint to resume from (expected checkpoints/latest)",
                ),
            )
        })?;
        let name = name.trim();
        if !name.starts_with("step-") || name.contains(['/', '\\']) || name.contains("..") {
            return Err(Error::Corrupt {
                file: latest.display().to_string(),
                message: format!("`{name}` is not a checkpoint name (step-NNNNNN)"),
            });
        }
        root.join(name)
    };
    // Refuse a damaged checkpoint before any of it is used.
    verify_sums(&dir)?;
    Ok(Checkpoint {
        state: read_json(&dir.join("state.json"))?,
        trainable: load_safetensors(&dir.join("trainable.safetensors"))?,
        optimizer: load_safetensors(&dir.join("optimizer.safetensors"))?,
        dir,
    })
}
