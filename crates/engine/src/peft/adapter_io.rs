//! Adapters on disk in Hugging Face PEFT's format, so Python `peft`, vLLM and llama.cpp's
//! converters load ours and we load theirs.
//!
//! A LoRA adapter is a folder with `adapter_config.json` and `adapter_model.safetensors`
//! holding `base_model.model.<module path>.lora_A.weight` (`[r, in]`) and `.lora_B.weight`
//! (`[out, r]`). Selective and full runs write the changed tensors under their own names in
//! `model_delta.safetensors` plus `peft_studio_run.json`.

use crate::error::{Error, Result};
use crate::fsutil::{load_safetensors, read_json, save_safetensors_atomic, write_json_atomic};
use crate::model::decoder::Decoder;
use crate::model::lora::Lora;
use crate::peft::lora::lora_scale;
use crate::peft::method::{LoraSettings, Trainable};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const DELTA_WEIGHTS: &str = "model_delta.safetensors";
pub const RUN_FILE: &str = "peft_studio_run.json";
const PREFIX: &str = "base_model.model.";

/// `adapter_config.json`, with PEFT's field names.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdapterConfig {
    #[serde(default = "lora_type")]
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f32,
    pub target_modules: serde_json::Value,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    pub init_lora_weights: serde_json::Value,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub rank_pattern: serde_json::Value,
    #[serde(default)]
    pub alpha_pattern: serde_json::Value,
    /// Every other key (newer PEFT versions add many). Kept so a config reads back as written;
    /// [`read_adapter_config`] rejects those in [`FORWARD_CHANGING`] when set.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// PEFT options (as of peft 0.21) that change what the adapter computes or which tensors it
/// holds. Applying such an adapter as plain LoRA would silently give different outputs, so
/// each one, when set, is rejected by name.
pub const FORWARD_CHANGING: [(&str, &str); 7] = [
    ("lora_bias", "LoRA-B biases are not supported"),
    ("use_qalora", "QA-LoRA (pooled inputs) is not supported"),
    (
        "alora_invocation_tokens",
        "activated LoRA (aLoRA) is not supported",
    ),
    (
        "layer_replication",
        "layer replication changes the model's depth and is not supported",
    ),
    (
        "target_parameters",
        "LoRA on raw parameters (not linear modules) is not supported",
    ),
    (
        "trainable_token_indices",
        "trainable token embeddings are not supported",
    ),
    ("use_bdlora", "BD-LoRA is not supported"),
];

/// True for a JSON value that turns an option on (not null, false, 0 or empty).
fn is_set(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

fn lora_type() -> String {
    "LORA".into()
}
fn bias_none() -> String {
    "none".into()
}

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
        target_modules: serde_json::json!(settings.resolved_targets()?),
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

/// Reads `adapter_config.json`, rejecting what we cannot apply.
pub fn read_adapter_config(dir: &Path) -> Result<AdapterConfig> {
    let path = dir.join(ADAPTER_CONFIG);
    let cfg: AdapterConfig = read_json(&path)?;
    let field = |f: &str, m: String| Error::Config {
        file: path.display().to_string(),
        field: f.into(),
        message: m,
    };
    if cfg.peft_type != "LORA" {
        return Err(field(
            "peft_type",
            format!("`{}`: only LORA adapters are supported", cfg.peft_type),
        ));
    }
    if cfg.use_dora {
        return Err(field("use_dora", "DoRA adapters are not supported".into()));
    }
    if cfg.fan_in_fan_out {
        return Err(field(
            "fan_in_fan_out",
            "GPT-2-style Conv1D adapters are not supported".into(),
        ));
    }
    if cfg.bias != "none" {
        return Err(field(
            "bias",
            format!(
                "`{}`: adapters that train the base model's biases are not supported",
                cfg.bias
            ),
        ));
    }
    if cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(field(
            "modules_to_save",
            "adapters with fully trained extra modules are not supported".into(),
        ));
    }
    for (key, why) in FORWARD_CHANGING {
        if cfg.other.get(key).is_some_and(is_set) {
            return Err(field(key, why.into()));
        }
    }
    if cfg.r == 0 {
        return Err(field("r", "must be at least 1".into()));
    }
    if cfg.rank_pattern.as_object().is_some_and(|m| !m.is_empty())
        || cfg.alpha_pattern.as_object().is_some_and(|m| !m.is_empty())
    {
        return Err(field(
            "rank_pattern",
            "per-module ranks/alphas are not supported".into(),
        ));
    }
    Ok(cfg)
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
    let mut tensors = load_safetensors(&wpath)?;
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
