//! Model configuration: a raw serde mirror of Hugging Face `config.json` ([`RawConfig`]) and the
//! validated [`Config`] the decoder is built from.
//!
//! Supported: the Llama family (`llama`: Llama 2/3, TinyLlama, SmolLM/SmolLM2; `mistral`;
//! `qwen2`, which adds biases to q/k/v). Not supported: rope scaling other than none/`default`,
//! sliding-window attention beyond the sequence (Mistral's window is recorded, not applied:
//! it only matters past 4096 tokens), MoE variants.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// Architectures the decoder implements, by `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2";

    pub fn from_model_type(model_type: &str) -> Option<Arch> {
        match model_type {
            "llama" => Some(Arch::Llama),
            "mistral" => Some(Arch::Mistral),
            "qwen2" => Some(Arch::Qwen2),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// `eos_token_id` may be one id or a list (Llama 3, generation_config.json).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![*x],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The newer `rope_parameters: {rope_theta, rope_type}` block (transformers ≥ 4.56).
#[derive(Debug, Clone, Deserialize)]
pub struct RawRopeParameters {
    pub rope_theta: Option<f64>,
    pub rope_type: Option<String>,
}

/// `config.json` exactly as Hugging Face writes it; every field optional so that a missing
/// one is reported by name during validation, not as a serde error.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RawConfig {
    pub model_type: Option<String>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_parameters: Option<RawRopeParameters>,
    pub rope_scaling: Option<serde_json::Value>,
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<OneOrMany>,
    pub sliding_window: Option<usize>,
    pub torch_dtype: Option<String>,
}

/// Validated configuration of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Config {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (Qwen2 always; Llama with `attention_bias`). o_proj has one only
    /// for Llama with `attention_bias`.
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub sliding_window: Option<usize>,
    /// Storage dtype named by the file (`float32`, `bfloat16`, …), informational.
    pub torch_dtype: Option<String>,
}

impl Config {
    /// Reads and validates a `config.json`.
    ///
    /// # Errors
    /// [`Error::Io`] if unreadable, [`Error::Json`] if not JSON, [`Error::Config`] naming the
    /// field that is missing or wrong, [`Error::Unsupported`] for an unknown `model_type`
    /// or rope scaling.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: RawConfig = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        raw.validate(&path.display().to_string())
    }

    /// Parses a `config.json` held in memory; `file` names it in errors.
    pub fn from_json(text: &str, file: &str) -> Result<Config> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| Error::Json {
            path: file.into(),
            message: e.to_string(),
        })?;
        raw.validate(file)
    }

    pub fn num_kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// The `config.json` a Hugging Face loader expects for this configuration (used when
    /// writing merged models and bundling GGUF imports as folders).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let arch_class = match self.arch {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        };
        let mut v = serde_json::json!({
            "architectures": [arch_class],
            "model_type": self.arch.as_str(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [one] => serde_json::json!(one),
                many => serde_json::json!(many),
            },
        });
        if self.arch == Arch::Llama {
            v["attention_bias"] = serde_json::json!(self.qkv_bias);
            v["mlp_bias"] = serde_json::json!(self.mlp_bias);
        }
        if let Some(w) = self.sliding_window {
            v["sliding_window"] = serde_json::json!(w);
        }
        v
    }
}

fn missing(file: &str, field: &str) -> Error {
    Error::Config {
        file: file.to_string(),
        field: field.to_string(),
        message: "missing".into(),
    }
}

impl RawConfig {
    /// Checks every field the decoder needs and fills documented defaults.
    pub fn validate(self, file: &str) -> Result<Config> {
        let model_type = self
            .model_type
            .clone()
            .ok_or_else(|| missing(file, "model_type"))?;
        let arch = Arch::from_model_type(&model_type).ok_or_else(|| Error::Unsupported {
            what: format!("{file}: model_type"),
            found: model_type.clone(),
            supported: Arch::SUPPORTED.into(),
        })?;
        let need = |v: Option<usize>, field: &str| -> Result<usize> {
            match v {
                None => Err(missing(file, field)),
                Some(0) => Err(Error::Config {
                    file: file.into(),
                    field: field.into(),
                    message: "must be greater than 0".into(),
                }),
                Some(x) => Ok(x),
            }
        };
        let hidden_size = need(self.hidden_size, "hidden_size")?;
        let num_attention_heads = need(self.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = need(
            self.num_key_value_heads.or(Some(num_attention_heads)),
            "num_key_value_heads",
        )?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::Config {
                file: file.into(),
                field: "num_key_value_heads".into(),
                message: format!(
                    "{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"
                ),
            });
        }
        let head_dim = match self.head_dim {
            Some(d) => need(Some(d), "head_dim")?,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(Error::Config {
                        file: file.into(),
                        field: "hidden_size".into(),
                        message: format!(
                            "{hidden_size} is not divisible by num_attention_heads {num_attention_heads} and no head_dim is given"
                        ),
                    });
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(Error::Config {
                file: file.into(),
                field: "head_dim".into(),
                message: format!("{head_dim} must be even for rotary embeddings"),
            });
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" && act != "swish" {
                return Err(Error::Unsupported {
                    what: format!("{file}: hidden_act"),
                    found: act.clone(),
                    supported: "silu".into(),
                });
            }
        }
        let rope_type = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_type.clone())
            .or_else(|| match &self.rope_scaling {
                Some(serde_json::Value::Object(m)) => m
                    .get("rope_type")
                    .or_else(|| m.get("type"))
                    .and_then(|t| t.as_str())
                    .map(String::from)
                    .or(Some("unknown".into())),
                _ => None,
            });
        if let Some(rt) = rope_type {
            if rt != "default" {
                return Err(Error::Unsupported {
                    what: format!("{file}: rope scaling"),
                    found: rt,
                    supported: "none (rope_type \"default\")".into(),
                });
            }
        }
        let rope_theta = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0);
        let rms_norm_eps = self.rms_norm_eps.unwrap_or(match arch {
            Arch::Llama => 1e-6,
            Arch::Mistral | Arch::Qwen2 => 1e-6,
        });
        let qkv_bias = match arch {
            Arch::Qwen2 => true,
            _ => self.attention_bias.unwrap_or(false),
        };
        let o_bias = arch == Arch::Llama && self.attention_bias.unwrap_or(false);
        Ok(Config {
            arch,
            vocab_size: need(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(self.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: arch == Arch::Llama && self.mlp_bias.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_ids: self.eos_token_id.map(|e| e.to_vec()).unwrap_or_default(),
            sliding_window: self.sliding_window,
            torch_dtype: self.torch_dtype,
        })
    }
}
