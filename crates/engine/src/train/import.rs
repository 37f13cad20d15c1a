//! Bringing back an adapter trained elsewhere (Axolotl, LLaMA-Factory, TRL, a plain PEFT
//! script): its folder becomes a run of the history, marked as trained elsewhere
//! ([`RunOrigin::Imported`]), with its method and LoRA settings read from `adapter_config.json`
//! — and the whole run's settings when it came back to a `peft recipe export` folder, whose
//! manifest holds them. From then on it serves chat, side-by-side comparison and every export
//! like a run trained here (`tuned::with_adapter` reads the base storage from its record: NF4
//! for an adapter trained over a 4-bit base, dense otherwise).
//!
//! The adapter is checked against the opened model before anything is written (every tensor
//! must find its module with the right shape), then copied into the run folder (the source may
//! be a removable drive), normalised to PEFT's file names. The trainer's loss log
//! (`trainer_state.json` of Hugging Face's `Trainer`, which all three engines use) becomes the
//! record's curves when the folder has one.
//!
//! What this is not: no training, no conversion of pickled `.bin` weights (refused with the
//! command that converts them), no download of the base model the adapter names.

use crate::error::{Error, Result};
use crate::fsutil::{copy_atomic, read_json, replace_dir};
use crate::model::loaded::LoadedModel;
use crate::peft::adapter_config::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::peft::adapter_import::weights_path;
use crate::peft::adapter_io::apply_adapter;
use crate::peft::adapter_summary::{summarize_adapter, AdapterSummary};
use crate::peft::method::{LoraSettings, Method};
use crate::train::config::TrainConfig;
use crate::train::history::{now, RunOrigin, RunRecord, RunStatus};
use std::path::Path;

/// Hugging Face `Trainer`'s state file (loss log, steps).
pub const TRAINER_STATE: &str = "trainer_state.json";

/// Imports the adapter folder `src` as a completed run in `out` (a new or empty folder) over
/// `model`, and returns its record (also saved as `out/run.json`).
///
/// # Errors
/// `out` holding other files; the adapter's config or weights missing, pickled, or of a kind
/// we cannot apply; a tensor that does not fit `model` (naming the file and tensor); I/O
/// failures naming the path. Nothing is written when the adapter does not apply.
pub fn import_adapter(model: &LoadedModel, src: &Path, out: &Path) -> Result<RunRecord> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some()
    {
        return Err(Error::invalid(
            "out",
            format!(
                "{} already holds files; import into a new or empty folder",
                out.display()
            ),
        ));
    }
    let summary = summarize_adapter(src)?;
    let weights = weights_path(src)?;
    let (config, data) = settings(&summary);
    // Applies it once over the base it will be used with, so a mismatch is reported now.
    let base = model.weights(&config.method.base_storage(config.base_weight_dtype()))?;
    apply_adapter(&mut (*base).clone(), src)?;
    drop(base);

    replace_dir(out, |dir| {
        copy_atomic(&src.join(ADAPTER_CONFIG), &dir.join(ADAPTER_CONFIG))?;
        copy_atomic(&weights, &dir.join(ADAPTER_WEIGHTS))
    })?;
    let mut r = RunRecord::new(out, &model.source.spec(), Path::new(&data), &config);
    r.status = RunStatus::Completed;
    r.finished_at = Some(now());
    if let Some(state) = trainer_state(src) {
        r.step = state.global_step;
        r.total_steps = state.max_steps.max(state.global_step);
        for e in &state.log_history {
            let Some(step) = e.step else { continue };
            if let Some(l) = e.loss {
                r.losses.push((step, l));
            }
            if let Some(l) = e.eval_loss {
                r.eval_losses.push((step, l));
            }
        }
    }
    r.origin = RunOrigin::Imported {
        engine: summary.engine.clone(),
        evidence: summary.engine_evidence.clone(),
        source: src.display().to_string(),
        base_model: summary.base_model.clone(),
        settings: describe(&summary),
        from_recipe: summary.recipe.is_some(),
    };
    r.save()?;
    Ok(r)
}

/// The run's settings and data path: the export manifest's when the adapter came back to one
/// (with the adapter's own LoRA settings, which are what was trained), else defaults with the
/// adapter's method.
fn settings(s: &AdapterSummary) -> (TrainConfig, String) {
    let lora = LoraSettings {
        rank: s.rank,
        alpha: s.alpha,
        dropout: s.dropout,
        targets: s.targets.clone(),
        layers: s.layers.clone(),
        rslora: s.rslora,
    };
    let method = if s.method == "qlora" {
        Method::Qlora(lora)
    } else {
        Method::Lora(lora)
    };
    let manifest = s
        .recipe
        .as_deref()
        .and_then(|p| read_json::<serde_json::Value>(p).ok());
    let from_manifest = manifest.as_ref().and_then(|m| {
        let cfg = serde_json::from_value::<TrainConfig>(m.get("train_config")?.clone()).ok()?;
        let data = m.get("data").and_then(|d| d.as_str()).unwrap_or_default();
        Some((cfg, data.to_string()))
    });
    let (mut config, data) = from_manifest.unwrap_or_default();
    config.method = method;
    (config, data)
}

/// "LoRA r=16 alpha=32 dropout=0.05 rsLoRA on q_proj, v_proj; fully trained: lm_head".
fn describe(s: &AdapterSummary) -> String {
    let mut out = format!(
        "{} r={} alpha={} dropout={}{} on {}",
        if s.method == "qlora" { "QLoRA" } else { "LoRA" },
        s.rank,
        s.alpha,
        s.dropout,
        if s.rslora { " rsLoRA" } else { "" },
        s.targets.join(", ")
    );
    if let Some(l) = &s.layers {
        out.push_str(&format!(" (layers {l:?})"));
    }
    if !s.modules_to_save.is_empty() {
        out.push_str(&format!(
            "; fully trained: {}",
            s.modules_to_save.join(", ")
        ));
    }
    out
}

#[derive(serde::Deserialize)]
struct TrainerState {
    #[serde(default)]
    global_step: usize,
    #[serde(default)]
    max_steps: usize,
    #[serde(default)]
    log_history: Vec<LogEntry>,
}

#[derive(serde::Deserialize)]
struct LogEntry {
    step: Option<usize>,
    loss: Option<f64>,
    eval_loss: Option<f64>,
}

/// The loss log next to the adapter: `src/trainer_state.json` (written by `save_state()`), else
/// that of the last `checkpoint-N/` below it (the Trainer's periodic saves). A malformed file is
/// ignored: the log is a nicety, the adapter is what is imported.
fn trainer_state(src: &Path) -> Option<TrainerState> {
    let here = src.join(TRAINER_STATE);
    if here.is_file() {
        return read_json(&here).ok();
    }
    let last = std::fs::read_dir(src)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: usize = name.strip_prefix("checkpoint-")?.parse().ok()?;
            Some((n, e.path().join(TRAINER_STATE)))
        })
        .filter(|(_, p)| p.is_file())
        .max_by_key(|(n, _)| *n)?;
    read_json(&last.1).ok()
}
