//! `adapter_config.json` in Hugging Face PEFT's format: its fields, the file names of an
//! adapter folder, and the checks that refuse options we cannot apply. Reading and writing
//! the weights is `adapter_io`; other trainers' naming variants are `adapter_import`.

use crate::error::{Error, Result};
use crate::fsutil::read_json;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const DELTA_WEIGHTS: &str = "model_delta.safetensors";
pub const RUN_FILE: &str = "peft_studio_run.json";

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
pub(crate) fn is_set(v: &serde_json::Value) -> bool {
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

/// Reads `adapter_config.json`, rejecting what we cannot apply.
/// Whether the adapter in `dir` only adds LoRA deltas to linear layers (a PEFT LoRA folder
/// without `modules_to_save`; not a selective/full delta): then it runs unmerged over any
/// frozen base, a quantized one included. A folder that cannot be read answers `false` (the
/// loader then reports what is wrong with it).
pub fn is_lora_only(dir: &Path) -> bool {
    read_adapter_config(dir).is_ok_and(|c| c.modules_to_save.as_ref().is_none_or(Vec::is_empty))
}

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
