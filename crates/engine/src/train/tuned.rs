//! A trained result put to use: the opened model with an adapter folder attached (a PEFT LoRA
//! adapter, or the changed tensors of a selective/full run), over the base storage the adapter
//! was trained against — NF4 for a QLoRA run of ours (what it learned to correct), dense f32
//! for anything else. Chat and export of every front end go through here ([`export_tuned`] is
//! the one export call of `peft export` and the app's Export step).

use crate::error::Result;
use crate::export::gguf::{ExportModel, ExportProgress};
use crate::export::run::{
    default_name, export, export_hf, ExportFormat, ExportReport, ExportRequest,
};
use crate::model::decoder::{Decoder, LoadOptions};
use crate::model::loaded::LoadedModel;
use crate::peft::adapter_io::apply_adapter;
use crate::train::history::{RunRecord, BEST_DIR, RECORD_FILE};
use std::path::Path;

/// The storage the adapter in `dir` was trained over: from its run record (in `dir`, or in the
/// run folder above a `best/` checkpoint), dense f32 when it has none (an adapter from Python
/// `peft` or another tool).
pub fn adapter_base_storage(dir: &Path) -> LoadOptions {
    let record = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .find(|d| d.join(RECORD_FILE).is_file())
        .and_then(|d| RunRecord::load(d).ok());
    match record {
        // A QLoRA run over a GGUF's own block types recorded them in its storage report.
        Some(r) if r.storage.as_ref().is_some_and(|s| s.gguf_linears > 0) => {
            LoadOptions::gguf_types(r.config.base_weight_dtype())
        }
        Some(r) => r.config.method.base_storage(r.config.base_weight_dtype()),
        None => LoadOptions::default(),
    }
}

/// The model's base (in [`adapter_base_storage`]) with the adapter in `dir` attached, frozen.
/// A LoRA-only adapter over a GGUF model's dense base runs unmerged over the file's own block
/// types instead ([`LoadedModel::generation_storage`]; chat and generate, not export, which
/// dequantizes). The opened model's own weights are not changed.
///
/// # Errors
/// A missing or malformed adapter, naming the file; an adapter that does not fit the model.
pub fn with_adapter(model: &LoadedModel, dir: &Path) -> Result<Decoder> {
    let mut storage = adapter_base_storage(dir);
    if crate::peft::adapter_config::is_lora_only(dir) {
        storage = model.generation_storage(storage);
    }
    attach(model, dir, &storage)
}

/// The base in `storage` with the adapter in `dir` attached.
fn attach(model: &LoadedModel, dir: &Path, storage: &LoadOptions) -> Result<Decoder> {
    let mut d = (*model.weights(storage)?).clone();
    apply_adapter(&mut d, dir)?;
    Ok(d)
}

/// The weights an export of `model` writes: the base with the adapter in `dir` attached over
/// the storage it was trained against (the model the app chats with, up to a GGUF base's
/// block types, which an export dequantizes), or the dense f32 base when there is no adapter (the kept weights when
/// they are that; never a 4-bit base re-exported).
///
/// # Errors
/// Those of [`with_adapter`] and [`LoadedModel::build_weights`].
pub fn export_weights(model: &LoadedModel, dir: Option<&Path>) -> Result<Decoder> {
    let dense = LoadOptions::default();
    match dir {
        // Dense (or NF4) as trained: an export is never built from GGUF block types.
        Some(dir) => attach(model, dir, &adapter_base_storage(dir)),
        None if model.kept_storage() == Some(dense) => Ok((*model.weights(&dense)?).clone()),
        None => model.build_weights(&dense),
    }
}

/// The name an export of `model` with the adapter in `adapter` gets (`general.name`, file
/// names, the Ollama tag): the model's name, then the adapter folder's (a run's best
/// checkpoint: `<run>-best`), as [`default_name`].
pub fn export_name(model: &LoadedModel, adapter: Option<&Path>) -> String {
    let leaf = |p: &Path| p.file_name().map(|s| s.to_string_lossy().into_owned());
    let tag = adapter.and_then(|dir| {
        let run = dir
            .parent()
            .filter(|p| dir.ends_with(BEST_DIR) && p.join(RECORD_FILE).is_file());
        match run.and_then(leaf) {
            Some(run) => Some(format!("{run}-{BEST_DIR}")),
            None => leaf(dir),
        }
    });
    default_name(&model.source, tag.as_deref())
}

/// Exports `model` with the adapter in `adapter` (none: the base) as `req` says, then checks
/// the result by loading it back (`export::selfcheck`): the one call of every front end. The
/// weights are [`export_weights`]'; an empty `req.name` becomes [`export_name`]. A Hugging
/// Face folder is written in f32 (`req.quant` is for GGUF files).
///
/// # Errors
/// Those of [`export_weights`], `export::run::export` and `export::run::export_hf` (a format
/// that cannot carry the adapter, I/O naming the file, a failed self-check).
pub fn export_tuned(
    model: &LoadedModel,
    adapter: Option<&Path>,
    req: &ExportRequest,
    on_progress: &mut dyn FnMut(ExportProgress),
) -> Result<ExportReport> {
    let mut decoder = export_weights(model, adapter)?;
    let mut req = req.clone();
    if req.name.trim().is_empty() {
        req.name = export_name(model, adapter);
    }
    match req.format {
        ExportFormat::Hf => export_hf(
            model,
            &mut decoder,
            &req.out,
            &req.name,
            &req.check,
            req.cancel.as_deref(),
            on_progress,
        ),
        _ => export(
            &ExportModel::of(model, &decoder, &req.name),
            &req,
            on_progress,
        ),
    }
}
