//! The GGUF writer's view of an architecture: which families it writes, the settings it can
//! express (refusing the rest by name), the RoPE layout (whether llama.cpp's converter permutes
//! q/k rows), and the hyper-parameter keys and extra RoPE tensors llama.cpp's converter writes.
//! (Pre-tokenizer names are `model::gguf_pretok`.)
//!
//! Tensor names are not listed here: both directions read
//! [`crate::model::family::Family::gguf_block`] through [`crate::model::gguf_family`], so the
//! importer and the writer share one table. The hyper-parameter keys written here are the ones
//! `gguf_family::config_from_meta` reads back.
//!
//! Written today: Llama and Mistral (both as `llama`, interleaved RoPE, q/k rows permuted;
//! Llama 3.x RoPE scaling as `rope_freqs.weight`), Qwen2 (`qwen2`, NEOX), Qwen3 (`qwen3`,
//! q/k norms), Gemma 3 (`gemma3`, norms stored as `1 + w`), Phi-3 (`phi3`, fused projections,
//! partial rotary, longrope factors). Refused by [`for_config`]: any other RoPE scaling or a
//! family's scaling it has no GGUF form for, partial rotary outside Phi-3, sliding windows
//! llama.cpp would not apply the same way.
//!
//! Not here: how tensors are stored (`export::gguf_quant`), tokenizer vocabularies
//! (`model::gguf_tokenizer`, `export::gguf_vocab`).

use crate::error::{Error, Result};
use crate::model::config::{Arch, Config};
use crate::model::family::{self, Family};
use crate::model::gguf_family;
use crate::model::rope_scaling::RopeScaling;
use candle_core::quantized::gguf_file::Value;

/// How llama.cpp rotates q/k for an architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// llama.cpp's "normal" RoPE rotates adjacent pairs `(2i, 2i+1)`; its converter permutes
    /// the rows of q/k so that this equals Hugging Face's rotate-half on the original rows.
    /// GGUF files hold permuted rows (see `model::gguf::permute_rope_rows`).
    Interleaved,
    /// NEOX RoPE is rotate-half, like Hugging Face: rows are stored as they are.
    Neox,
}

/// One architecture the writer knows: a family of [`crate::model::family`].
#[derive(Debug)]
pub struct GgufArch {
    pub family: &'static Family,
}

/// Every family the writer writes.
pub static ARCHS: [GgufArch; 6] = [
    GgufArch {
        family: &family::LLAMA,
    },
    GgufArch {
        family: &family::MISTRAL,
    },
    GgufArch {
        family: &family::QWEN2,
    },
    GgufArch {
        family: &family::QWEN3,
    },
    GgufArch {
        family: &family::GEMMA3,
    },
    GgufArch {
        family: &family::PHI3,
    },
];

/// The row for a model being written to GGUF.
///
/// # Errors
/// [`Error::Unsupported`] naming the model type or the setting when the writer has no row for
/// the family or the config uses something the file cannot express the way llama.cpp reads it
/// (see the module docs): writing it anyway would give a file that loads and then computes a
/// different model.
pub fn for_config(c: &Config) -> Result<&'static GgufArch> {
    let refuse = |found: String, supported: &str| Error::Unsupported {
        what: format!("GGUF export of a {} model", c.arch.as_str()),
        found,
        supported: supported.into(),
    };
    let row = ARCHS
        .iter()
        .find(|a| a.family.arch == c.arch)
        .ok_or_else(|| {
            refuse(
                format!("model type `{}`", c.arch.as_str()),
                &supported_archs(),
            )
        })?;
    let windowed = (0..c.num_hidden_layers).any(|l| c.layer_window(l).is_some());
    match (c.arch, &c.rope_scaling) {
        (_, None)
        | (Arch::Llama, Some(RopeScaling::Llama3 { .. } | RopeScaling::Frequencies { .. }))
        | (Arch::Phi3, Some(RopeScaling::LongRope { .. }))
        | (Arch::Gemma3, Some(RopeScaling::Linear { .. })) => {}
        (a, Some(s)) => {
            return Err(refuse(
                format!("RoPE scaling `{}` on {}", scaling_name(s), a.as_str()),
                "llama3 scaling on llama, longrope on phi3, linear on gemma3_text, or none",
            ))
        }
    }
    if c.rotary_dim() != c.head_dim && c.arch != Arch::Phi3 {
        return Err(refuse(
            format!("partial rotary ({} of {} dims)", c.rotary_dim(), c.head_dim),
            "rotary over the whole head (partial only for phi3)",
        ));
    }
    match c.arch {
        Arch::Gemma3 => gemma3_settings(c).map_err(|f| refuse(f, GEMMA3_AS_LLAMA_CPP))?,
        // llama.cpp's phi3 applies `sliding_window` in every layer, as our decoder does.
        Arch::Phi3 => {}
        _ if windowed => {
            return Err(refuse(
                "sliding-window attention".into(),
                "full attention in every layer (windows only for gemma3_text and phi3)",
            ))
        }
        _ => {}
    }
    Ok(row)
}

/// What llama.cpp's `gemma3` assumes instead of reading it from the file.
const GEMMA3_AS_LLAMA_CPP: &str = "every 6th layer global, local RoPE base 10000, scores \
     scaled by head_dim^-½ (hidden/heads for the 62-layer 27B), no logit softcapping — what \
     llama.cpp's gemma3 assumes";

/// Gemma 3's settings that llama.cpp does not read from the file but fixes in code; a model
/// with others would load there and compute something else.
fn gemma3_settings(c: &Config) -> std::result::Result<(), String> {
    if (0..c.num_hidden_layers).any(|l| c.layer_window(l).is_some()) {
        match window_period(c) {
            Some(6) => {}
            Some(p) => return Err(format!("sliding-window pattern: every {p}th layer global")),
            None => return Err("sliding-window layers without a period".into()),
        }
        if c.rope_local_theta.is_some_and(|t| t != 10_000.0) {
            return Err(format!(
                "local RoPE base {} (rope_local_base_freq)",
                c.rope_local_theta.unwrap_or_default()
            ));
        }
    }
    let want = match c.num_hidden_layers {
        62 => (c.hidden_size / c.num_attention_heads) as f64,
        _ => c.head_dim as f64,
    };
    if let Some(q) = c.query_pre_attn_scalar.filter(|q| *q != want) {
        return Err(format!("query_pre_attn_scalar {q} (llama.cpp uses {want})"));
    }
    if let Some(cap) = c.final_logit_softcapping {
        return Err(format!("final_logit_softcapping {cap}"));
    }
    Ok(())
}

/// Gemma 3's period of sliding layers (every `p`-th layer full, as `sliding_window_pattern`
/// says), when `c.layer_windows` follows one; `None` otherwise or without windows.
pub fn window_period(c: &Config) -> Option<usize> {
    let w = (0..c.num_hidden_layers).find_map(|l| c.layer_window(l))?;
    (1..=c.num_hidden_layers + 1).find(|p| {
        (0..c.num_hidden_layers).all(|n| c.layer_window(n) == ((n + 1) % p != 0).then_some(w))
    })
}

/// The `rope_type` name of a scaling, for messages.
fn scaling_name(s: &RopeScaling) -> &'static str {
    match s {
        RopeScaling::Linear { .. } => "linear",
        RopeScaling::Llama3 { .. } => "llama3",
        RopeScaling::LongRope { .. } => "longrope",
        RopeScaling::Frequencies { .. } => "frequencies",
    }
}

/// The model types the GGUF writer has rows for.
fn supported_archs() -> String {
    ARCHS
        .iter()
        .map(|a| a.family.model_type)
        .collect::<Vec<_>>()
        .join(", ")
}

impl GgufArch {
    /// `general.architecture`, also the prefix of every hyper-parameter key.
    pub fn name(&self) -> &'static str {
        self.family.gguf_arch
    }

    pub fn rope(&self) -> RopeLayout {
        match self.family.gguf_permuted_qk {
            true => RopeLayout::Interleaved,
            false => RopeLayout::Neox,
        }
    }

    /// `{name}.{suffix}`: a hyper-parameter key.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.name())
    }

    /// Hugging Face name of a GGUF tensor name; `None` for names this architecture lacks.
    pub fn hf_name(&self, gguf: &str) -> Option<String> {
        gguf_family::hf_name(self.family, gguf)
    }

    /// GGUF name of a Hugging Face tensor name; `None` for names this architecture lacks.
    pub fn gguf_name(&self, hf: &str) -> Option<String> {
        gguf_family::gguf_name(self.family, hf)
    }

    /// Heads to permute a tensor's rows over when writing (q: heads, k: kv heads), or `None`
    /// when the tensor is stored as it is. `gguf` is the GGUF name.
    pub fn rope_heads(&self, gguf: &str, n_head: usize, n_head_kv: usize) -> Option<usize> {
        if self.rope() != RopeLayout::Interleaved {
            return None;
        }
        if gguf.contains(".attn_q.") {
            Some(n_head)
        } else if gguf.contains(".attn_k.") {
            Some(n_head_kv)
        } else {
            None
        }
    }

    /// Whether llama.cpp stores this (Hugging Face named) tensor as `1 + w` (Gemma's norms).
    pub fn plus_one(&self, hf: &str) -> bool {
        self.family.gguf_norm_plus_one && hf.ends_with("norm.weight")
    }

    /// The hyper-parameter keys llama.cpp reads for this architecture, from a config.
    pub fn hparams(&self, c: &Config) -> Vec<(String, Value)> {
        let u = |v: usize| Value::U32(v as u32);
        let mut kv = vec![
            (self.key("context_length"), u(c.max_position_embeddings)),
            (self.key("embedding_length"), u(c.hidden_size)),
            (self.key("block_count"), u(c.num_hidden_layers)),
            (self.key("feed_forward_length"), u(c.intermediate_size)),
            (self.key("attention.head_count"), u(c.num_attention_heads)),
            (
                self.key("attention.head_count_kv"),
                u(c.num_key_value_heads),
            ),
            (self.key("rope.freq_base"), Value::F32(c.rope_theta as f32)),
            (
                self.key("attention.layer_norm_rms_epsilon"),
                Value::F32(c.rms_norm_eps as f32),
            ),
            (self.key("rope.dimension_count"), u(c.rotary_dim())),
            (self.key("vocab_size"), u(c.vocab_size)),
        ];
        // llama.cpp's converter writes the head size for the families whose configs carry
        // `head_dim` (it need not be hidden / heads), and for the others when it differs.
        let own_head_dim = !matches!(c.arch, Arch::Llama | Arch::Mistral | Arch::Qwen2);
        if own_head_dim || c.head_dim * c.num_attention_heads != c.hidden_size {
            kv.push((self.key("attention.key_length"), u(c.head_dim)));
            kv.push((self.key("attention.value_length"), u(c.head_dim)));
        }
        let window = (0..c.num_hidden_layers).find_map(|l| c.layer_window(l));
        if let Some(w) = window {
            kv.push((self.key("attention.sliding_window"), u(w)));
        }
        if let (Arch::Gemma3, Some(p)) = (c.arch, window_period(c)) {
            kv.push((self.key("attention.sliding_window_pattern"), u(p)));
        }
        if let Some(t) = c.rope_local_theta {
            kv.push((self.key("rope.freq_base_swa"), Value::F32(t as f32)));
        }
        if let Some(cap) = c.final_logit_softcapping {
            kv.push((self.key("final_logit_softcapping"), Value::F32(cap as f32)));
        }
        match &c.rope_scaling {
            Some(RopeScaling::Linear { factor }) => {
                kv.push((
                    self.key("rope.scaling.type"),
                    Value::String("linear".into()),
                ));
                kv.push((self.key("rope.scaling.factor"), Value::F32(*factor as f32)));
            }
            Some(RopeScaling::LongRope {
                original_max_position_embeddings: o,
                attention_factor,
                ..
            }) => {
                kv.push((self.key("rope.scaling.original_context_length"), u(*o)));
                kv.push((
                    self.key("rope.scaling.attn_factor"),
                    Value::F32(*attention_factor as f32),
                ));
            }
            _ => {}
        }
        kv
    }

    /// RoPE scaling that llama.cpp keeps as f32 tensors: Llama 3's `rope_freqs.weight` (the
    /// divisor of each base frequency, as its converter computes it) and Phi-3's
    /// `rope_factors_short/long.weight`.
    pub fn rope_tensors(&self, c: &Config) -> Vec<(&'static str, Vec<f32>)> {
        let f32s = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<f32>>();
        match &c.rope_scaling {
            Some(s @ RopeScaling::Llama3 { .. }) => {
                let plain = RopeScaling::inv_freq(None, c.rope_theta, c.rotary_dim());
                let scaled = RopeScaling::inv_freq(Some(s), c.rope_theta, c.rotary_dim());
                let div: Vec<f64> = plain.iter().zip(&scaled).map(|(p, q)| p / q).collect();
                vec![("rope_freqs.weight", f32s(&div))]
            }
            Some(RopeScaling::Frequencies { divisors }) => {
                vec![("rope_freqs.weight", f32s(divisors))]
            }
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                ..
            }) => vec![
                ("rope_factors_long.weight", f32s(long_factor)),
                ("rope_factors_short.weight", f32s(short_factor)),
            ],
            _ => vec![],
        }
    }
}
