//! What a run needs before its first step: checked settings, the tokenised and split data, and
//! the model as the method trains it — the base in the storage the method needs
//! (`Method::base_storage`), taken from the opened model, with the trainable parameters made.

use crate::data::batch::split;
use crate::data::formats::{load, LoadOptions};
use crate::data::render::{RenderOptions, Renderer, TokenizedExample};
use crate::error::{Error, Result};
use crate::model::decoder::{Decoder, StorageReport};
use crate::model::loaded::LoadedModel;
use crate::peft::method::{apply_method, Method, Trainable};
use crate::train::config::TrainConfig;
use std::path::Path;
use std::sync::Arc;

/// Refuses settings no run can use, naming the field.
///
/// # Errors
/// [`Error::Invalid`] naming the setting.
pub fn validate(cfg: &TrainConfig) -> Result<()> {
    let positive = [
        ("seq_len", cfg.seq_len),
        ("batch_size", cfg.batch_size),
        ("grad_accum", cfg.grad_accum),
    ];
    for (name, v) in positive {
        if v == 0 {
            return Err(Error::invalid(name, "must be at least 1"));
        }
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return Err(Error::invalid(
            "lr",
            format!("{} must be a positive number", cfg.lr),
        ));
    }
    if cfg.max_steps.is_none() && !(cfg.epochs > 0.0 && cfg.epochs.is_finite()) {
        return Err(Error::invalid(
            "epochs",
            "must be positive (or give max_steps)",
        ));
    }
    let frozen_base = matches!(
        cfg.method,
        crate::peft::method::Method::Lora(_) | crate::peft::method::Method::Qlora(_)
    );
    if cfg.bf16_compute && !frozen_base {
        return Err(Error::invalid(
            "bf16_compute",
            format!(
                "applies to the frozen base of LoRA and QLoRA; {} trains its weights in f32",
                cfg.method.name()
            ),
        ));
    }
    Ok(())
}

/// The dataset, tokenised with the model's template and split.
pub struct PreparedData {
    pub train: Vec<TokenizedExample>,
    pub val: Vec<TokenizedExample>,
    pub truncated: usize,
    pub dropped: usize,
    pub skipped: usize,
}

/// Loads, renders and splits `data` as `cfg` says.
///
/// # Errors
/// Data problems ([`Error::Data`] with file and line), or no example with trained tokens.
pub fn prepare_data(model: &LoadedModel, data: &Path, cfg: &TrainConfig) -> Result<PreparedData> {
    let ds = load(
        data,
        &LoadOptions {
            skip_bad_rows: cfg.skip_bad_rows,
        },
    )?;
    let renderer = Renderer::new(
        &model.tokenizer,
        &model.template,
        RenderOptions {
            max_len: cfg.seq_len,
            train_on: cfg.train_on,
        },
    )?;
    let mut all = Vec::with_capacity(ds.examples.len());
    let (mut truncated, mut dropped) = (0, 0);
    for ex in &ds.examples {
        let t = renderer.tokenize(ex)?;
        truncated += t.truncated() as usize;
        // An example whose trained part was cut off entirely teaches nothing.
        if t.trained_tokens() == 0 || t.input_ids.len() < 2 {
            dropped += 1;
            continue;
        }
        all.push(t);
    }
    if all.is_empty() {
        return Err(Error::Data {
            file: data.display().to_string(),
            line: 0,
            field: "(all rows)".into(),
            message: format!(
                "no example has trained tokens within seq_len {}",
                cfg.seq_len
            ),
        });
    }
    let (tr, va) = split(all.len(), cfg.val_fraction, cfg.seed)?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| all[i].clone()).collect::<Vec<_>>();
    Ok(PreparedData {
        train: pick(&tr),
        val: pick(&va),
        truncated,
        dropped,
        skipped: ds.skipped,
    })
}

/// The decoder a run trains, and what it trains.
pub struct RunModel {
    pub decoder: Arc<Decoder>,
    pub trainable: Trainable,
    pub storage: StorageReport,
    /// Bytes of base weights the run shares with the opened model (already in memory before
    /// the run when that storage was built earlier).
    pub shared_base_bytes: u64,
}

/// The run's decoder: the opened model's weights in the storage `cfg.method` needs, with the
/// method applied to a copy of the handles (the opened model's tensors are never changed, so
/// the app can chat with the base after training). Full fine-tuning takes the weights over,
/// so each original is freed as its trainable copy is made when nothing else holds them.
///
/// # Errors
/// Those of building the weights and of [`apply_method`].
pub fn prepare_model(model: &LoadedModel, cfg: &TrainConfig) -> Result<RunModel> {
    let device = cfg.open_device()?;
    let storage = cfg
        .method
        .base_storage_for(model, cfg.base_weight_dtype(), device.is_cpu());
    let already_built = model.kept_storage() == Some(storage);
    let decoder = match cfg.method {
        Method::Full => model.take_weights(&storage)?,
        _ => (*model.weights(&storage)?).clone(),
    };
    let shared_base_bytes = match (&cfg.method, already_built) {
        (Method::Full, _) | (_, false) => 0,
        _ => decoder.storage_report().base_bytes,
    };
    // Placed before the method so trainable copies and adapters are made on the device.
    let mut decoder = decoder.on_device(&device)?;
    let trainable = apply_method(&mut decoder, &cfg.method, cfg.seed)?;
    let mut storage = decoder.placement_report();
    if cfg.bf16_compute && device.is_cpu() {
        // The activations stay f32; the frozen base's products are bf16 (`ops::bf16_gemm`).
        let how = match crate::ops::Bf16Backend::detect() {
            crate::ops::Bf16Backend::Amx => "bf16 products on AMX",
            crate::ops::Bf16Backend::Dot => "bf16 products on AVX512-BF16",
            crate::ops::Bf16Backend::Emulated => "bf16 products, emulated",
        };
        storage.compute_dtype = Some(format!("f32 with {how}"));
    }
    Ok(RunModel {
        decoder: Arc::new(decoder),
        trainable,
        storage,
        shared_base_bytes,
    })
}
