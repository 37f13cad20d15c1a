//! What differs between architectures when a model crosses the GGUF border, in one table that
//! both the importer (`model::gguf`) and the exporter (`export::gguf`) read: the
//! `general.architecture` name, the hyper-parameter keys, the RoPE layout (whether llama.cpp's
//! converter permutes q/k rows), the tensor-name map, and the pre-tokenizer names llama.cpp
//! knows with the Hugging Face `pre_tokenizer` each stands for.
//!
//! Adding a family means adding a row to [`ARCHS`] (and, for a new tokenizer, to
//! [`PRE_TOKENIZERS`]); nothing else in the GGUF code names an architecture. Rows today:
//! Llama and Mistral (both written as `llama`, interleaved RoPE, q/k rows permuted) and Qwen2
//! (`qwen2`, NEOX RoPE, rows kept, q/k/v biases).
//!
//! Not here: how tensors are stored (`export::gguf_quant`), tokenizer vocabularies
//! (`model::gguf_tokenizer`, `export::gguf_vocab`).

use crate::error::{Error, Result};
use crate::model::config::{Arch, Config};
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

/// One architecture's GGUF facts.
#[derive(Debug)]
pub struct GgufArch {
    pub arch: Arch,
    /// `general.architecture`, also the prefix of every hyper-parameter key.
    pub name: &'static str,
    pub rope: RopeLayout,
    /// `(GGUF name inside blk.N, Hugging Face path inside model.layers.N)`, without the
    /// `.weight`/`.bias` suffix.
    pub block_tensors: &'static [(&'static str, &'static str)],
}

/// The Llama-family block: attention, SwiGLU MLP and two RMSNorms.
const LLAMA_BLOCK: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Every architecture we import and export. The first row with a given `name` is the one an
/// import picks (a Mistral GGUF says `llama` and loads as Llama, which computes the same).
pub const ARCHS: &[GgufArch] = &[
    GgufArch {
        arch: Arch::Llama,
        name: "llama",
        rope: RopeLayout::Interleaved,
        block_tensors: LLAMA_BLOCK,
    },
    GgufArch {
        arch: Arch::Mistral,
        name: "llama",
        rope: RopeLayout::Interleaved,
        block_tensors: LLAMA_BLOCK,
    },
    GgufArch {
        arch: Arch::Qwen2,
        name: "qwen2",
        rope: RopeLayout::Neox,
        block_tensors: LLAMA_BLOCK,
    },
];

/// Tensors outside the blocks: `(GGUF name, Hugging Face name)`.
const TOP_TENSORS: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The row for a model being written to GGUF.
///
/// # Errors
/// [`Error::Unsupported`] naming the architecture or the setting when the writer has no row
/// for the family yet (Qwen3, Gemma 3, Phi-3) or the config uses something the row cannot
/// express (RoPE scaling such as Llama 3's, partial rotary, sliding windows): writing it
/// anyway would give a file that loads and then computes a different model.
pub fn for_config(c: &Config) -> Result<&'static GgufArch> {
    let refuse = |found: String| Error::Unsupported {
        what: "GGUF export".into(),
        found,
        supported: format!(
            "{} without RoPE scaling, partial rotary or sliding windows",
            supported_archs()
        ),
    };
    let row = ARCHS
        .iter()
        .find(|a| a.arch == c.arch)
        .ok_or_else(|| refuse(format!("model type `{}`", c.arch.as_str())))?;
    if c.rope_scaling.is_some() {
        return Err(refuse("RoPE scaling (e.g. Llama 3's `llama3`)".into()));
    }
    if c.rotary_dim() != c.head_dim {
        return Err(refuse("partial rotary".into()));
    }
    if (0..c.num_hidden_layers).any(|l| c.layer_window(l).is_some()) {
        return Err(refuse("sliding-window attention".into()));
    }
    Ok(row)
}

/// The model types the GGUF writer has rows for.
fn supported_archs() -> String {
    ARCHS
        .iter()
        .map(|a| a.arch.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The row an import of `general.architecture = name` uses.
pub fn by_name(name: &str) -> Option<&'static GgufArch> {
    ARCHS.iter().find(|a| a.name == name)
}

/// `general.architecture` names we import, for error messages.
pub fn supported_names() -> String {
    let mut names: Vec<&str> = ARCHS.iter().map(|a| a.name).collect();
    names.dedup();
    names.join(", ")
}

impl GgufArch {
    /// `{name}.{suffix}`: a hyper-parameter key.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.name)
    }

    /// Hugging Face name of a GGUF tensor name; `None` for names this architecture lacks.
    pub fn hf_name(&self, gguf: &str) -> Option<String> {
        if let Some((_, hf)) = TOP_TENSORS.iter().find(|(g, _)| *g == gguf) {
            return Some(hf.to_string());
        }
        let (layer, rest) = gguf.strip_prefix("blk.")?.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (part, suffix) = rest.split_once('.')?;
        let (_, hf) = self.block_tensors.iter().find(|(g, _)| *g == part)?;
        let norm = hf.ends_with("layernorm");
        match suffix {
            "weight" => Some(format!("model.layers.{layer}.{hf}.weight")),
            "bias" if !norm => Some(format!("model.layers.{layer}.{hf}.bias")),
            _ => None,
        }
    }

    /// GGUF name of a Hugging Face tensor name; `None` for names this architecture lacks.
    pub fn gguf_name(&self, hf: &str) -> Option<String> {
        if let Some((g, _)) = TOP_TENSORS.iter().find(|(_, h)| *h == hf) {
            return Some(g.to_string());
        }
        let (layer, rest) = hf.strip_prefix("model.layers.")?.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (path, suffix) = rest.rsplit_once('.')?;
        let (g, _) = self.block_tensors.iter().find(|(_, h)| *h == path)?;
        matches!(suffix, "weight" | "bias").then(|| format!("blk.{layer}.{g}.{suffix}"))
    }

    /// Heads to permute a tensor's rows over when writing (q: heads, k: kv heads), or `None`
    /// when the tensor is stored as it is. `gguf` is the GGUF name.
    pub fn rope_heads(&self, gguf: &str, n_head: usize, n_head_kv: usize) -> Option<usize> {
        if self.rope != RopeLayout::Interleaved {
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
            (self.key("rope.dimension_count"), u(c.head_dim)),
            (self.key("vocab_size"), u(c.vocab_size)),
        ];
        if c.head_dim * c.num_attention_heads != c.hidden_size {
            kv.push((self.key("attention.key_length"), u(c.head_dim)));
            kv.push((self.key("attention.value_length"), u(c.head_dim)));
        }
        kv
    }
}

/// A Hugging Face pre-tokenizer reduced to the pieces that decide how text is split:
/// `Split` regexes, individual digits, and byte-level with or without GPT-2's own regex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrePiece {
    Regex(&'static str),
    Digits,
    /// ByteLevel with `use_regex = true` (GPT-2's split).
    ByteLevelGpt2,
    /// ByteLevel with `use_regex = false` (bytes only; the split comes from a regex before it).
    ByteLevel,
}

/// Llama 3's split regex (`tokenizer.ggml.pre = llama-bpe`).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with single digits (`tokenizer.ggml.pre = qwen2`).
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` names for byte-level BPE vocabularies, with the Hugging Face
/// pre-tokenizer each one means in llama.cpp (`llama-vocab.cpp`). `smollm` stands for the
/// digits-then-GPT-2 split that llama.cpp also calls `starcoder` and `refact`.
pub const PRE_TOKENIZERS: &[(&str, &[PrePiece])] = &[
    ("gpt-2", &[PrePiece::ByteLevelGpt2]),
    ("smollm", &[PrePiece::Digits, PrePiece::ByteLevelGpt2]),
    (
        "llama-bpe",
        &[PrePiece::Regex(LLAMA3_REGEX), PrePiece::ByteLevel],
    ),
    (
        "qwen2",
        &[PrePiece::Regex(QWEN2_REGEX), PrePiece::ByteLevel],
    ),
];

/// The `tokenizer.ggml.pre` name for a pre-tokenizer, if llama.cpp has one we know.
pub fn pre_tokenizer_name(pieces: &[PrePiece]) -> Option<&'static str> {
    PRE_TOKENIZERS
        .iter()
        .find(|(_, p)| *p == pieces)
        .map(|(n, _)| *n)
}

/// The pieces of a known `tokenizer.ggml.pre` name.
pub fn pre_tokenizer_pieces(name: &str) -> Option<&'static [PrePiece]> {
    PRE_TOKENIZERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
}
