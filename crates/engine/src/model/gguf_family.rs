//! What a GGUF file's architecture means for import: llama.cpp's tensor names and metadata keys
//! per family (`llama`, `qwen2`, `qwen3`, `gemma3`, `phi3`), both ways, and the [`Config`] its
//! metadata describes. Names come from [`crate::model::family::Family::gguf_block`]; the
//! converter's changes to the weights (q/k row permutation for `llama`, `1 + w` norms for
//! `gemma3`) are undone by [`crate::model::gguf::GgufSource::load`].
//!
//! RoPE scaling in GGUF: Llama 3.1/3.2 files carry `rope_freqs.weight` (one divisor per
//! frequency) → [`RopeScaling::Frequencies`]; Phi-3.5/4 files carry `rope_factors_short/long`
//! and `phi3.rope.scaling.original_context_length` → longrope; `{arch}.rope.scaling.type =
//! linear` with its factor → linear. Not here: Mistral files (they say `llama`), MoE.

use crate::error::{Error, Result};
use crate::model::config::{Config, OneOrMany, RawConfig};
use crate::model::family::{self, Family};
use crate::model::gguf_tokenizer::Meta;
use crate::model::rope_scaling::RopeScaling;
use crate::model::tensors::TensorSource;
use crate::tokenizer::Tokenizer;

/// The families GGUF import knows, by `general.architecture`.
pub static GGUF_FAMILIES: [&Family; 5] = [
    &family::LLAMA,
    &family::QWEN2,
    &family::QWEN3,
    &family::GEMMA3,
    &family::PHI3,
];

/// Architectures [`crate::model::gguf::open_gguf`] imports.
pub const SUPPORTED_ARCHS: &str = "llama, qwen2, qwen3, gemma3, phi3";

/// Extra tensors that are not decoder weights but describe RoPE scaling.
pub const ROPE_TENSORS: [&str; 3] = [
    "rope_freqs.weight",
    "rope_factors_short.weight",
    "rope_factors_long.weight",
];

pub fn family_of(arch: &str) -> Option<&'static Family> {
    GGUF_FAMILIES.iter().copied().find(|f| f.gguf_arch == arch)
}

/// llama.cpp tensor name → Hugging Face name for `fam`; `None` for names it does not import.
pub fn hf_name(fam: &Family, gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = rest.split_once('.')?;
    let (_, hf_part) = fam.gguf_block.iter().find(|(g, _)| *g == part)?;
    let is_norm = hf_part.ends_with("norm");
    match suffix {
        "weight" => Some(format!("model.layers.{layer}.{hf_part}.weight")),
        "bias" if !is_norm => Some(format!("model.layers.{layer}.{hf_part}.bias")),
        _ => None,
    }
}

/// Hugging Face name → llama.cpp tensor name for `fam` (the inverse of [`hf_name`]).
pub fn gguf_name(fam: &Family, hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (path, suffix) = rest.rsplit_once('.')?;
    let (g, _) = fam.gguf_block.iter().find(|(_, h)| *h == path)?;
    matches!(suffix, "weight" | "bias").then(|| format!("blk.{layer}.{g}.{suffix}"))
}

/// `{arch}.*` metadata → the same [`RawConfig`] a `config.json` gives, validated the same way,
/// with RoPE scaling from the file's extra tensors.
pub fn config_from_meta(
    fam: &Family,
    meta: &Meta,
    source: &dyn TensorSource,
    rope_tensor: &dyn Fn(&str) -> Result<Option<Vec<f64>>>,
    tok: &Tokenizer,
) -> Result<Config> {
    let file = meta.file;
    let a = fam.gguf_arch;
    let key = |k: &str| format!("{a}.{k}");
    if meta.opt_u64(&key("expert_count"))?.unwrap_or(0) > 0 {
        return Err(Error::Unsupported {
            what: format!("{file}: {a}.expert_count"),
            found: "mixture of experts".into(),
            supported: "dense models".into(),
        });
    }
    let head_count = meta.usize(&key("attention.head_count"))?;
    let key_length = meta
        .opt_u64(&key("attention.key_length"))?
        .map(|v| v as usize);
    let value_length = meta
        .opt_u64(&key("attention.value_length"))?
        .map(|v| v as usize);
    let hidden = meta.usize(&key("embedding_length"))?;
    let head_dim = key_length.unwrap_or(hidden / head_count.max(1));
    if value_length.is_some_and(|v| v != head_dim) {
        return Err(Error::Unsupported {
            what: format!("{file}: {a}.attention.value_length"),
            found: format!("value length {value_length:?} differs from key length {head_dim}"),
            supported: "equal key and value head sizes".into(),
        });
    }
    let rot = meta
        .opt_u64(&key("rope.dimension_count"))?
        .map(|v| v as usize);
    let partial_rotary_factor = match rot {
        Some(r) if r != head_dim && fam.arch == crate::model::config::Arch::Phi3 => {
            Some(r as f64 / head_dim as f64)
        }
        Some(r) if r != head_dim => {
            return Err(Error::Unsupported {
                what: format!("{file}: {a}.rope.dimension_count"),
                found: format!("partial rotary ({r} of {head_dim} dims)"),
                supported: "rotary over the whole head (partial only for phi3)".into(),
            })
        }
        _ => None,
    };
    let layers = meta.usize(&key("block_count"))?;
    let context = meta.opt_u64(&key("context_length"))?.map(|v| v as usize);
    let rope_scaling = match meta.opt_string(&key("rope.scaling.type"))? {
        Some("linear") => Some(serde_json::json!({
            "rope_type": "linear",
            "factor": meta.f64(&key("rope.scaling.factor"))?,
        })),
        Some(t) if t != "none" && t != "yarn" && t != "longrope" => {
            Some(serde_json::json!({ "rope_type": t }))
        }
        _ => None,
    };
    let vocab = tok.vocab_size();
    if let Some(rows) = source
        .shape("model.embed_tokens.weight")
        .and_then(|s| s.first().copied())
    {
        if rows != vocab {
            return Err(Error::Gguf {
                file: file.into(),
                message: format!(
                    "tokenizer.ggml.tokens has {vocab} tokens but token_embd.weight has {rows} rows"
                ),
            });
        }
    }
    let gemma = fam.arch == crate::model::config::Arch::Gemma3;
    let raw = RawConfig {
        model_type: Some(fam.model_type.into()),
        vocab_size: Some(vocab),
        hidden_size: Some(hidden),
        intermediate_size: Some(meta.usize(&key("feed_forward_length"))?),
        num_hidden_layers: Some(layers),
        num_attention_heads: Some(head_count),
        num_key_value_heads: meta
            .opt_u64(&key("attention.head_count_kv"))?
            .map(|v| v as usize),
        head_dim: key_length,
        rms_norm_eps: Some(meta.f64(&key("attention.layer_norm_rms_epsilon"))?),
        rope_theta: meta.opt_f64(&key("rope.freq_base"))?,
        rope_scaling,
        partial_rotary_factor,
        max_position_embeddings: context,
        tie_word_embeddings: Some(!source.names().iter().any(|n| n == "lm_head.weight")),
        attention_bias: Some(
            source
                .names()
                .iter()
                .any(|n| n.starts_with("model.layers.0.self_attn.") && n.ends_with("_proj.bias")),
        ),
        hidden_act: (!gemma).then(|| "silu".into()),
        hidden_activation: gemma.then(|| "gelu_pytorch_tanh".into()),
        bos_token_id: tok.bos_id,
        eos_token_id: Some(OneOrMany::Many(tok.eos_ids.clone())),
        sliding_window: meta
            .opt_u64(&key("attention.sliding_window"))?
            .map(|v| v as usize),
        // llama.cpp's gemma3: every 6th layer global unless the file gives a period, local
        // base 10000 unless the file says; scores scaled by head_dim^-½ except for the 27B
        // shape (hidden/heads, 62 layers).
        sliding_window_pattern: match gemma {
            true => Some(
                meta.opt_u64(&key("attention.sliding_window_pattern"))
                    .ok()
                    .flatten()
                    .map_or(6, |v| v as usize),
            ),
            false => None,
        },
        rope_local_base_freq: match gemma {
            true => Some(
                meta.opt_f64(&key("rope.freq_base_swa"))?
                    .unwrap_or(10_000.0),
            ),
            false => None,
        },
        query_pre_attn_scalar: gemma.then(|| match layers {
            62 => (hidden / head_count) as f64,
            _ => head_dim as f64,
        }),
        final_logit_softcapping: meta.opt_f64(&key("final_logit_softcapping"))?,
        torch_dtype: Some(source.dtype_summary()),
        ..RawConfig::default()
    };
    let mut config = raw.validate(file)?;
    if let Some(divisors) = rope_tensor("rope_freqs.weight")? {
        config.rope_scaling = Some(RopeScaling::Frequencies { divisors });
    }
    if let (Some(short), Some(long)) = (
        rope_tensor("rope_factors_short.weight")?,
        rope_tensor("rope_factors_long.weight")?,
    ) {
        let original = meta
            .opt_u64(&key("rope.scaling.original_context_length"))?
            .map(|v| v as usize)
            .unwrap_or(config.max_position_embeddings);
        let json = serde_json::json!({
            "rope_type": "longrope",
            "short_factor": short,
            "long_factor": long,
            "original_max_position_embeddings": original,
        });
        config.rope_scaling = crate::model::rope_scaling::parse(
            &json,
            Some(original),
            config.max_position_embeddings,
            config.rotary_dim(),
            file,
        )?;
        if let (
            Some(RopeScaling::LongRope {
                attention_factor, ..
            }),
            Some(f),
        ) = (
            config.rope_scaling.as_mut(),
            meta.opt_f64(&key("rope.scaling.attn_factor"))?,
        ) {
            *attention_factor = f;
        }
    }
    Ok(config)
}
