//! A trained result put to use: the opened model with an adapter folder attached (a PEFT LoRA
//! adapter, or the changed tensors of a selective/full run), over the base storage the adapter
//! was trained against — NF4 for a QLoRA run of ours (what it learned to correct), dense f32
//! for anything else. Chat and export of every front end go through here.

use crate::error::Result;
use crate::model::decoder::{Decoder, LoadOptions};
use crate::model::loaded::LoadedModel;
use crate::peft::adapter_io::apply_adapter;
use crate::train::history::{RunRecord, RECORD_FILE};
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
        Some(r) => r.config.method.base_storage(r.config.weight_dtype),
        None => LoadOptions::default(),
    }
}

/// The model's base (in [`adapter_base_storage`]) with the adapter in `dir` attached, frozen.
/// The opened model's own weights are not changed.
///
/// # Errors
/// A missing or malformed adapter, naming the file; an adapter that does not fit the model.
pub fn with_adapter(model: &LoadedModel, dir: &Path) -> Result<Decoder> {
    let storage = adapter_base_storage(dir);
    let mut d = (*model.weights(&storage)?).clone();
    apply_adapter(&mut d, dir)?;
    Ok(d)
}

/// The weights an export of `model` writes: the base with the adapter in `dir` attached, as
/// [`with_adapter`] (so the export is the model the app chats with, and the self-check can ask
/// for identical tokens), or the dense f32 base when there is no adapter (the kept weights when
/// they are that; never a 4-bit base re-exported).
///
/// # Errors
/// Those of [`with_adapter`] and [`LoadedModel::build_weights`].
pub fn export_weights(model: &LoadedModel, dir: Option<&Path>) -> Result<Decoder> {
    let dense = LoadOptions::default();
    match dir {
        Some(dir) => with_adapter(model, dir),
        None if model.kept_storage() == Some(dense) => Ok((*model.weights(&dense)?).clone()),
        None => model.build_weights(&dense),
    }
}
