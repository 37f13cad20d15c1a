//! Adapters on disk in Hugging Face PEFT's format, so Python `peft`, vLLM and llama.cpp's
//! converters load ours and we load theirs.
//!
//! A LoRA adapter is a folder with `adapter_config.json` and `adapter_model.safetensors`
//! holding `base_model.model.<module path>.lora_A.weight` (`[r, in]`) and `.lora_B.weight`
//! (`[out, r]`). Selective and full runs write the changed tensors under their own names in
//! `model_delta.safetensors` plus `peft_studio_run.json`.

use crate::error::{Error, Result};
use crate::fsutil::{load_safetensors, save_safetensors_atomic, write_json_atomic};
use crate::model::decoder::Decoder;
use crate::model::lora::Lora;
use crate::peft::lora::lora_scale;
use crate::peft::method::{LoraSettings, Trainable};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

use crate::peft::adapter_config::is_set;
pub use crate::peft::adapter_config::{
    read_adapter_config, AdapterConfig, ADAPTER_CONFIG, ADAPTER_WEIGHTS, DELTA_WEIGHTS,
    FORWARD_CHANGING, RUN_FILE,
};
const PREFIX: &str = "base_model.model.";

/// Precision of the adapter file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum AdapterDtype {
    #[default]
    F32,
    /// Half the file size; loading widens back to f32.
    Bf16,
}

/// The module names the adapter covers (`q_proj`, …; Phi-3's `qkv_proj`, …), as PEFT writes
/// them in `target_modules`: read off the trained tensors, so every family's own names appear.
fn adapted_modules(trainable: &Trainable, settings: &LoraSettings) -> Result<Vec<String>> {
    let mut names: Vec<String> = trainable
        .params
        .iter()
        .filter_map(|(n, _)| n.strip_suffix(".lora_A.weight"))
        .filter_map(|p| p.rsplit('.').next())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return settings.resolved_targets();
    }
    Ok(names)
}

/// Writes a LoRA adapter in PEFT format.
pub fn save_lora_adapter(
    dir: &Path,
    trainable: &Trainable,
    settings: &LoraSettings,
    base_model: &str,
    dtype: AdapterDtype,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tensors = HashMap::new();
    for (name, var) in &trainable.params {
        let t = var.as_tensor().detach();
        let t = match dtype {
            AdapterDtype::F32 => t,
            AdapterDtype::Bf16 => t.to_dtype(DType::BF16)?,
        };
        tensors.insert(format!("{PREFIX}{name}"), t);
    }
    let cfg = AdapterConfig {
        peft_type: "LORA".into(),
        task_type: Some("CAUSAL_LM".into()),
        r: settings.rank,
        lora_alpha: settings.alpha,
        lora_dropout: settings.dropout,
        target_modules: serde_json::json!(adapted_modules(trainable, settings)?),
        bias: "none".into(),
        use_rslora: settings.rslora,
        use_dora: false,
        fan_in_fan_out: false,
        base_model_name_or_path: Some(base_model.to_string()),
        modules_to_save: None,
        layers_to_transform: settings.layers.as_ref().map(|l| serde_json::json!(l)),
        init_lora_weights: serde_json::json!(true),
        inference_mode: true,
        revision: None,
        rank_pattern: serde_json::json!({}),
        alpha_pattern: serde_json::json!({}),
        other: serde_json::Map::new(),
    };
    save_safetensors_atomic(&dir.join(ADAPTER_WEIGHTS), &tensors)?;
    write_json_atomic(&dir.join(ADAPTER_CONFIG), &cfg)
}

/// Attaches a PEFT LoRA adapter to `model`. With `trainable`, A and B become `Var`s (to train
/// further) and are returned; otherwise they are plain tensors.
///
/// # Errors
/// A config we cannot apply, a tensor for a module the model lacks, or a mis-shaped tensor —
/// each naming the file and tensor.
pub fn load_lora_adapter(
    model: &mut Decoder,
    dir: &Path,
    trainable: bool,
) -> Result<(AdapterConfig, Trainable)> {
    let cfg = read_adapter_config(dir)?;
    let wpath = dir.join(ADAPTER_WEIGHTS);
    // Other trainers' naming variants and `modules_to_save` tensors (`adapter_import`).
    let imported = crate::peft::adapter_import::read_adapter_tensors(dir, &cfg)?;
    let (mut tensors, full) = (imported.lora, imported.full);
    if trainable && !full.is_empty() {
        return Err(Error::Config {
            file: dir.join(ADAPTER_CONFIG).display().to_string(),
            field: "modules_to_save".into(),
            message: "continuing to train an adapter with fully trained extra modules is not supported (chat, compare and export are)".into(),
        });
    }
    let file = wpath.display().to_string();
    let scale = lora_scale(cfg.lora_alpha, cfg.r, cfg.use_rslora);
    let mut out = Trainable::default();
    let mut used = 0usize;
    for (stream, (path, lin)) in model.linears_mut().into_iter().enumerate() {
        let a_name = format!("{PREFIX}{path}.lora_A.weight");
        let b_name = format!("{PREFIX}{path}.lora_B.weight");
        let (a, b) = match (tensors.remove(&a_name), tensors.remove(&b_name)) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => continue,
            (Some(_), None) => {
                return Err(tensor_err(
                    &file,
                    &b_name,
                    "missing (its lora_A is present)",
                ))
            }
            (None, Some(_)) => {
                return Err(tensor_err(
                    &file,
                    &a_name,
                    "missing (its lora_B is present)",
                ))
            }
        };
        if lin.merged {
            // Replacing a merged adapter would leave its delta folded into the base for good.
            return Err(Error::invalid(
                "adapter",
                format!("{path} has a merged adapter; unmerge it before loading another"),
            ));
        }
        let (o, i) = lin.dims();
        if a.dims() != [cfg.r, i] {
            return Err(tensor_err(
                &file,
                &a_name,
                &format!("shape {:?}, expected [{}, {i}]", a.dims(), cfg.r),
            ));
        }
        if b.dims() != [o, cfg.r] {
            return Err(tensor_err(
                &file,
                &b_name,
                &format!("shape {:?}, expected [{o}, {}]", b.dims(), cfg.r),
            ));
        }
        let (a, b) = if trainable {
            let av = candle_core::Var::from_tensor(&a)?;
            let bv = candle_core::Var::from_tensor(&b)?;
            let pair = (av.as_tensor().clone(), bv.as_tensor().clone());
            out.params.push((format!("{path}.lora_A.weight"), av));
            out.params.push((format!("{path}.lora_B.weight"), bv));
            pair
        } else {
            (a, b)
        };
        lin.lora = Some(Lora {
            a,
            b,
            scale,
            dropout: cfg.lora_dropout,
            stream: stream as u64,
        });
        used += 1;
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(tensor_err(
            &file,
            extra,
            "does not match any linear layer of this model",
        ));
    }
    if used == 0 {
        return Err(tensor_err(&file, "(all)", "no LoRA tensors found"));
    }
    let tied = cfg.other.get("ensure_weight_tying").is_some_and(is_set);
    crate::peft::adapter_import::apply_full_tensors(model, full, &wpath, tied)?;
    Ok((cfg, out))
}

fn tensor_err(file: &str, tensor: &str, message: &str) -> Error {
    Error::Tensor {
        file: file.into(),
        tensor: tensor.into(),
        message: message.into(),
    }
}

/// Writes the tensors a selective or full run changed, under the model's own names.
pub fn save_delta(dir: &Path, trainable: &Trainable, run: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors: HashMap<String, Tensor> = trainable
        .params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    save_safetensors_atomic(&dir.join(DELTA_WEIGHTS), &tensors)?;
    write_json_atomic(&dir.join(RUN_FILE), run)
}

/// Replaces the model's tensors with those of a selective/full run.
pub fn load_delta(model: &mut Decoder, dir: &Path) -> Result<usize> {
    let path = dir.join(DELTA_WEIGHTS);
    let mut tensors = load_safetensors(&path)?;
    let mut n = 0;
    for (name, t) in model.named_tensors_mut() {
        if let Some(new) = tensors.remove(&name) {
            if new.dims() != t.dims() {
                return Err(tensor_err(
                    &path.display().to_string(),
                    &name,
                    &format!("shape {:?}, model has {:?}", new.dims(), t.dims()),
                ));
            }
            *t = new;
            n += 1;
        }
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(tensor_err(
            &path.display().to_string(),
            extra,
            "not a tensor of this model",
        ));
    }
    Ok(n)
}

/// Applies whatever adapter `dir` holds (LoRA or a selective/full delta), frozen.
pub fn apply_adapter(model: &mut Decoder, dir: &Path) -> Result<()> {
    if dir.join(ADAPTER_CONFIG).exists() {
        load_lora_adapter(model, dir, false).map(|_| ())
    } else if dir.join(DELTA_WEIGHTS).exists() {
        load_delta(model, dir).map(|_| ())
    } else {
        Err(Error::io(
            dir.join(ADAPTER_CONFIG),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no {ADAPTER_CONFIG} or {DELTA_WEIGHTS} in the adapter folder"),
            ),
        ))
    }
}
