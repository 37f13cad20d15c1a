//! Model configuration: a raw serde mirror of Hugging Face `config.json` ([`RawConfig`]) and the
//! validated [`Config`] the decoder is built from.
//!
//! Supported (`model_type`): `llama` (Llama 2/3.x, TinyLlama, SmolLM/SmolLM2; Llama 3's
//! `llama3` RoPE scaling), `mistral`, `qwen2` (biases on q/k/v), `qwen3` (per-head q/k norms,
//! explicit `head_dim`), `gemma3_text` (Gemma 3 text models: `(1 + w)` norms, √hidden embedding
//! scale, GeGLU, q/k norms, `query_pre_attn_scalar`, sandwich norms, interleaved sliding-window
//! and full layers with their own RoPE bases, optional final logit soft-capping), `phi3`
//! (Phi-3/3.5/4-mini: fused `qkv_proj`/`gate_up_proj`, partial rotary, sliding window,
//! longrope up to the original context). What each family fixes is data in
//! [`crate::model::family`]; RoPE scaling in [`crate::model::rope_scaling`].
//!
//! Not supported, refused with an error naming the field: other `model_type`s, MoE variants,
//! attention-logit soft-capping (Gemma 2), Qwen's `use_sliding_window`, RoPE types other than
//! those [`crate::model::rope_scaling`] lists. Mistral's and Qwen2's windows are recorded, not
//! applied (they only matter past 4096 tokens).

use crate::error::{Error, Result};
pub use crate::model::family::Arch;
use crate::model::family::{self, Activation, Family};
use crate::model::rope_scaling::{self, RopeScaling};
use serde::Deserialize;
use std::path::Path;

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
    /// transformers ≥ 4.56: `{rope_theta, rope_type, …}`, or per layer type
    /// (`{"full_attention": {…}, "sliding_attention": {…}}`, Gemma 3).
    pub rope_parameters: Option<serde_json::Value>,
    pub rope_scaling: Option<serde_json::Value>,
    pub max_position_embeddings: Option<usize>,
    pub original_max_position_embeddings: Option<usize>,
    pub partial_rotary_factor: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    /// Gemma's name for the activation.
    pub hidden_activation: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<OneOrMany>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    /// Gemma 3: `sliding_attention` / `full_attention` per layer (newer configs).
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3 (older configs): every n-th layer is full attention.
    pub sliding_window_pattern: Option<usize>,
    pub rope_local_base_freq: Option<f64>,
    pub query_pre_attn_scalar: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub use_bidirectional_attention: Option<bool>,
    pub torch_dtype: Option<String>,
}

/// Validated configuration of a decoder of one of the supported families.
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
    /// Biases on q/k/v (Qwen2 always; Llama, Qwen3 and Gemma 3 with `attention_bias`). o_proj
    /// has one only with `attention_bias`.
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub sliding_window: Option<usize>,
    /// Storage dtype named by the file (`float32`, `bfloat16`, …), informational.
    pub torch_dtype: Option<String>,
    /// The MLP's gate activation (SwiGLU or Gemma's GeGLU).
    #[serde(default = "silu")]
    pub hidden_act: Activation,
    /// Fraction of each head that is rotated (Phi-3/4: `partial_rotary_factor`); `None` = all.
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// Scaling of the (global) RoPE frequencies.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Gemma 3: RoPE base of the sliding-window layers (`rope_local_base_freq`, unscaled).
    #[serde(default)]
    pub rope_local_theta: Option<f64>,
    /// Per layer: `Some(window)` where attention sees only the last `window` positions
    /// (the query's own included), `None` for full causal attention. Empty = all full.
    #[serde(default)]
    pub layer_windows: Vec<Option<usize>>,
    /// Gemma 3: attention scores are scaled by `query_pre_attn_scalar^-½` (else `head_dim^-½`).
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    /// `cap · tanh(logits / cap)` on the output logits when set.
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
}

fn silu() -> Activation {
    Activation::Silu
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

    /// The family's fixed structure.
    pub fn family(&self) -> &'static Family {
        self.arch.family()
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

    /// Rotated dimensions per head (all of them unless `partial_rotary_factor` < 1).
    pub fn rotary_dim(&self) -> usize {
        match self.partial_rotary_factor {
            Some(f) => (self.head_dim as f64 * f) as usize,
            None => self.head_dim,
        }
    }

    /// Layer `n`'s attention window (`None`: full causal attention).
    pub fn layer_window(&self, n: usize) -> Option<usize> {
        self.layer_windows.get(n).copied().flatten()
    }

    /// The factor attention scores are multiplied by before the softmax.
    pub fn attention_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }

    /// The `config.json` a Hugging Face loader expects for this configuration, in the family's
    /// own layout (used when writing merged models and bundling GGUF imports as folders).
    pub fn to_hf_json(&self) -> serde_json::Value {
        use serde_json::json;
        let fam = self.family();
        let mut v = json!({
            "architectures": [fam.hf_class],
            "model_type": fam.model_type,
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
                [one] => json!(one),
                many => json!(many),
            },
        });
        if let Some(s) = &self.rope_scaling {
            v["rope_scaling"] = s
                .to_hf_json(self.rope_theta, self.rotary_dim())
                .unwrap_or(serde_json::Value::Null);
        }
        match self.arch {
            Arch::Llama => {
                v["attention_bias"] = json!(self.qkv_bias);
                v["mlp_bias"] = json!(self.mlp_bias);
            }
            Arch::Qwen3 => {
                v["attention_bias"] = json!(self.qkv_bias);
                v["use_sliding_window"] = json!(false);
                v["max_window_layers"] = json!(self.num_hidden_layers);
            }
            Arch::Gemma3 => {
                let obj = v.as_object_mut().expect("object");
                obj.remove("hidden_act");
                v["hidden_activation"] = json!("gelu_pytorch_tanh");
                v["attention_bias"] = json!(self.qkv_bias);
                v["query_pre_attn_scalar"] = json!(self.query_pre_attn_scalar);
                v["rope_local_base_freq"] = json!(self.rope_local_theta);
                v["final_logit_softcapping"] = json!(self.final_logit_softcapping);
                v["attn_logit_softcapping"] = serde_json::Value::Null;
                let types: Vec<&str> = (0..self.num_hidden_layers)
                    .map(|n| match self.layer_window(n) {
                        Some(_) => "sliding_attention",
                        None => "full_attention",
                    })
                    .collect();
                v["layer_types"] = json!(types);
            }
            Arch::Phi3 => {
                if let Some(f) = self.partial_rotary_factor {
                    v["partial_rotary_factor"] = json!(f);
                }
                if let Some(RopeScaling::LongRope {
                    original_max_position_embeddings: o,
                    ..
                }) = &self.rope_scaling
                {
                    v["original_max_position_embeddings"] = json!(o);
                }
            }
            Arch::Mistral | Arch::Qwen2 => {}
        }
        if let Some(w) = self.sliding_window {
            v["sliding_window"] = json!(w);
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

fn config_err(file: &str, field: &str, message: impl Into<String>) -> Error {
    Error::Config {
        file: file.into(),
        field: field.into(),
        message: message.into(),
    }
}

/// Theta and scaling from `rope_parameters` (flat, or the block for `layer_type`) or the
/// older top-level `rope_theta` + `rope_scaling`.
fn rope_block<'a>(raw: &'a RawConfig, layer_type: &str) -> Option<&'a serde_json::Value> {
    let p = raw.rope_parameters.as_ref()?;
    match p.get(layer_type) {
        Some(inner) if inner.is_object() => Some(inner),
        _ if p.get("full_attention").is_some() => None,
        _ => Some(p),
    }
}

impl RawConfig {
    /// Checks every field the decoder needs and fills documented defaults.
    pub fn validate(self, file: &str) -> Result<Config> {
        crate::limits::check_model(
            file,
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("intermediate_size", self.intermediate_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("num_attention_heads", self.num_attention_heads),
                ("num_key_value_heads", self.num_key_value_heads),
                ("head_dim", self.head_dim),
                ("max_position_embeddings", self.max_position_embeddings),
            ],
            &[
                ("rms_norm_eps", self.rms_norm_eps, true),
                ("rope_theta", self.rope_theta, false),
                (
                    "rope_parameters.rope_theta",
                    rope_block(&self, "full_attention")
                        .and_then(|p| p.get("rope_theta"))
                        .and_then(|v| v.as_f64()),
                    false,
                ),
                (
                    "rope_parameters.sliding_attention.rope_theta",
                    rope_block(&self, "sliding_attention")
                        .and_then(|p| p.get("rope_theta"))
                        .and_then(|v| v.as_f64()),
                    false,
                ),
            ],
        )?;
        let model_type = self
            .model_type
            .clone()
            .ok_or_else(|| missing(file, "model_type"))?;
        let arch = Arch::from_model_type(&model_type).ok_or_else(|| Error::Unsupported {
            what: format!("{file}: model_type"),
            found: model_type.clone(),
            supported: family::supported_model_types(),
        })?;
        let need = |v: Option<usize>, field: &str| -> Result<usize> {
            match v {
                None => Err(missing(file, field)),
                Some(0) => Err(config_err(file, field, "must be greater than 0")),
                Some(x) => Ok(x),
            }
        };
        let hidden_size = need(self.hidden_size, "hidden_size")?;
        let num_attention_heads = need(self.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = need(
            self.num_key_value_heads.or(Some(num_attention_heads)),
            "num_key_value_heads",
        )?;
        let num_hidden_layers = need(self.num_hidden_layers, "num_hidden_layers")?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(config_err(
                file,
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"
                ),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => need(Some(d), "head_dim")?,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(config_err(file, "hidden_size", format!(
                        "{hidden_size} is not divisible by num_attention_heads {num_attention_heads} and no head_dim is given"
                    )));
                }
                hidden_size / num_attention_heads
            }
        };
        crate::limits::check_max(file, "head_dim", head_dim, crate::limits::MAX_HEAD_DIM)?;
        if head_dim % 2 != 0 {
            return Err(config_err(
                file,
                "head_dim",
                format!("{head_dim} must be even for rotary embeddings"),
            ));
        }
        let hidden_act = self.activation(arch, file)?;
        let partial_rotary_factor = match self.partial_rotary_factor {
            None => None,
            Some(1.0) => None,
            Some(f) => {
                let rot = (head_dim as f64 * f) as usize;
                if !(f > 0.0 && f < 1.0) || rot == 0 || !rot.is_multiple_of(2) {
                    return Err(config_err(
                        file,
                        "partial_rotary_factor",
                        format!(
                        "{f} gives {rot} rotary dimensions of {head_dim}; need an even number > 0"
                    ),
                    ));
                }
                Some(f)
            }
        };
        let rotary_dim = partial_rotary_factor.map_or(head_dim, |f| (head_dim as f64 * f) as usize);
        let max_position_embeddings = self.max_position_embeddings.unwrap_or(4096);
        let global = rope_block(&self, "full_attention");
        let rope_theta = global
            .and_then(|p| p.get("rope_theta"))
            .and_then(|t| t.as_f64())
            .or(self.rope_theta)
            .unwrap_or(10_000.0);
        let scaling_json = match (&self.rope_scaling, global) {
            (Some(s), _) if s.is_object() => Some(s),
            (_, Some(p)) => Some(p),
            _ => None,
        };
        let rope_scaling = match scaling_json {
            Some(v) => rope_scaling::parse(
                v,
                self.original_max_position_embeddings,
                max_position_embeddings,
                rotary_dim,
                file,
            )?,
            None => None,
        };
        if let Some(RopeScaling::LongRope { .. }) = rope_scaling {
            if arch != Arch::Phi3 {
                return Err(Error::Unsupported {
                    what: format!("{file}: rope scaling"),
                    found: format!("longrope on {model_type}"),
                    supported: "longrope on phi3 only".into(),
                });
            }
        }
        let rms_norm_eps = self.rms_norm_eps.unwrap_or(match arch {
            Arch::Phi3 => 1e-5,
            _ => 1e-6,
        });
        let attention_bias = self.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Llama | Arch::Qwen3 | Arch::Gemma3 => (attention_bias, attention_bias),
            Arch::Mistral => (attention_bias, false),
            Arch::Phi3 => (false, false),
        };
        if arch == Arch::Qwen3 && self.use_sliding_window == Some(true) {
            return Err(Error::Unsupported {
                what: format!("{file}: use_sliding_window"),
                found: "true".into(),
                supported: "false (Qwen3's released models do not use it)".into(),
            });
        }
        if let Some(cap) = self.attn_logit_softcapping {
            return Err(Error::Unsupported {
                what: format!("{file}: attn_logit_softcapping"),
                found: cap.to_string(),
                supported: "null (Gemma 3 does not soft-cap attention)".into(),
            });
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err(Error::Unsupported {
                what: format!("{file}: use_bidirectional_attention"),
                found: "true (an embedding model)".into(),
                supported: "causal decoders".into(),
            });
        }
        let (layer_windows, rope_local_theta, query_pre_attn_scalar) = match arch {
            Arch::Gemma3 => {
                let window = self.sliding_window.unwrap_or(4096);
                let local = rope_block(&self, "sliding_attention")
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|t| t.as_f64())
                    .or(self.rope_local_base_freq)
                    .unwrap_or(10_000.0);
                let windows = self.gemma_windows(num_hidden_layers, window, file)?;
                let qpas = self.query_pre_attn_scalar.unwrap_or(256.0);
                (windows, Some(local), Some(qpas))
            }
            // Phi-3 applies its window in every layer (2047 for Phi-3-mini).
            Arch::Phi3 => match self.sliding_window {
                Some(w) => (vec![Some(w); num_hidden_layers], None, None),
                None => (vec![], None, None),
            },
            _ => (vec![], None, None),
        };
        Ok(Config {
            arch,
            vocab_size: need(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(arch == Arch::Gemma3),
            qkv_bias,
            o_bias,
            mlp_bias: arch == Arch::Llama && self.mlp_bias.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_ids: self.eos_token_id.map(|e| e.to_vec()).unwrap_or_default(),
            sliding_window: self.sliding_window,
            torch_dtype: self.torch_dtype,
            hidden_act,
            partial_rotary_factor,
            rope_scaling,
            rope_local_theta,
            layer_windows,
            query_pre_attn_scalar,
            final_logit_softcapping: self.final_logit_softcapping.filter(|c| *c > 0.0),
        })
    }

    fn activation(&self, arch: Arch, file: &str) -> Result<Activation> {
        let (field, act) = match (&self.hidden_activation, &self.hidden_act) {
            (Some(a), _) if arch == Arch::Gemma3 => ("hidden_activation", a.as_str()),
            (_, Some(a)) => ("hidden_act", a.as_str()),
            (Some(a), None) => ("hidden_activation", a.as_str()),
            (None, None) if arch == Arch::Gemma3 => return Ok(Activation::GeluTanh),
            (None, None) => return Ok(Activation::Silu),
        };
        match (arch, act) {
            (Arch::Gemma3, "gelu_pytorch_tanh") => Ok(Activation::GeluTanh),
            (Arch::Gemma3, _) => Err(Error::Unsupported {
                what: format!("{file}: {field}"),
                found: act.into(),
                supported: "gelu_pytorch_tanh".into(),
            }),
            (_, "silu" | "swish") => Ok(Activation::Silu),
            _ => Err(Error::Unsupported {
                what: format!("{file}: {field}"),
                found: act.into(),
                supported: "silu".into(),
            }),
        }
    }

    /// Gemma 3's per-layer windows from `layer_types`, else from `sliding_window_pattern`
    /// (every n-th layer full, default 6, as transformers derives them).
    fn gemma_windows(
        &self,
        layers: usize,
        window: usize,
        file: &str,
    ) -> Result<Vec<Option<usize>>> {
        if let Some(types) = &self.layer_types {
            if types.len() != layers {
                return Err(config_err(
                    file,
                    "layer_types",
                    format!("{} entries for {layers} layers", types.len()),
                ));
            }
            return types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(Some(window)),
                    "full_attention" => Ok(None),
                    other => Err(config_err(
                        file,
                        "layer_types",
                        format!("`{other}`: expected sliding_attention or full_attention"),
                    )),
                })
                .collect();
        }
        let pattern = self.sliding_window_pattern.unwrap_or(6).max(1);
        Ok((0..layers)
            .map(|n| ((n + 1) % pattern != 0).then_some(window))
            .collect())
    }
}
