//! What differs between the decoder families we support, as data: module names (the LoRA
//! targets PEFT uses for that family), which norms and fused projections a block has, its
//! activation, and its names in llama.cpp's GGUF files. The decoder, the planner's counts, the
//! GGUF importer and the Hugging Face config writer read this table instead of matching on the
//! architecture in many places.
//!
//! Not here: numbers that come from a model's `config.json` (sizes, RoPE, windows) — those are
//! in [`crate::model::config::Config`]. [`Arch`] lives here (and is re-exported by `config`) so
//! that this table needs nothing from `config`.

/// Architectures the decoder implements, by `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    #[serde(rename = "gemma3_text")]
    Gemma3,
    Phi3,
}

impl Arch {
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3, gemma3_text, phi3";

    pub fn from_model_type(model_type: &str) -> Option<Arch> {
        FAMILIES
            .iter()
            .find(|f| f.model_type == model_type)
            .map(|f| f.arch)
    }

    /// The family's fixed structure (names, norms, fused projections, GGUF names).
    pub fn family(&self) -> &'static Family {
        match self {
            Arch::Llama => &LLAMA,
            Arch::Mistral => &MISTRAL,
            Arch::Qwen2 => &QWEN2,
            Arch::Qwen3 => &QWEN3,
            Arch::Gemma3 => &GEMMA3,
            Arch::Phi3 => &PHI3,
        }
    }

    /// The `model_type` string.
    pub fn as_str(&self) -> &'static str {
        self.family().model_type
    }
}

/// The MLP activation: `silu(gate)·up` (SwiGLU) or `gelu_tanh(gate)·up` (GeGLU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    /// `gelu_pytorch_tanh`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    GeluTanh,
}

/// One family's fixed structure.
#[derive(Debug)]
pub struct Family {
    pub arch: Arch,
    /// `model_type` in `config.json`.
    pub model_type: &'static str,
    /// `architectures[0]` written into exported configs.
    pub hf_class: &'static str,
    /// `general.architecture` in GGUF files (metadata keys are prefixed with it).
    pub gguf_arch: &'static str,
    /// The block's linear layers by path inside the block, in Hugging Face order. Their last
    /// component is the PEFT module name (`qkv_proj`, `gate_up_proj` for Phi-3).
    pub linears: &'static [&'static str],
    /// q, k and v as one `qkv_proj` (rows: q, then k, then v).
    pub fused_qkv: bool,
    /// gate and up as one `gate_up_proj` (rows: gate, then up).
    pub fused_gate_up: bool,
    /// Per-head RMSNorm of q and k before RoPE (`self_attn.q_norm`, `self_attn.k_norm`).
    pub qk_norm: bool,
    /// RMSNorm multiplies by `1 + weight` (Gemma) instead of `weight`.
    pub norm_plus_one: bool,
    /// Embeddings are multiplied by √hidden (Gemma).
    pub scale_embeddings: bool,
    /// Norms after attention and around the MLP (Gemma: `post_attention_layernorm` is applied
    /// to the attention output; `pre_feedforward_layernorm`, `post_feedforward_layernorm`).
    pub sandwich_norms: bool,
    /// llama.cpp permuted q/k rows for its interleaved RoPE (only its `llama` arch).
    pub gguf_permuted_qk: bool,
    /// llama.cpp stored norm weights as `1 + w` (Gemma).
    pub gguf_norm_plus_one: bool,
    /// Block tensors: (llama.cpp name, Hugging Face path inside the block).
    pub gguf_block: &'static [(&'static str, &'static str)],
}

const SPLIT_LINEARS: &[&str] = &[
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

const GGUF_LLAMA: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

const GGUF_QWEN3: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

const GGUF_GEMMA3: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
];

// llama.cpp's phi3 keeps the fused projections: `attn_qkv` and `ffn_up` holding gate then up.
const GGUF_PHI3: &[(&str, &str)] = &[
    ("attn_qkv", "self_attn.qkv_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_up", "mlp.gate_up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

const fn split(arch: Arch, model_type: &'static str, hf_class: &'static str) -> Family {
    Family {
        arch,
        model_type,
        hf_class,
        gguf_arch: "llama",
        linears: SPLIT_LINEARS,
        fused_qkv: false,
        fused_gate_up: false,
        qk_norm: false,
        norm_plus_one: false,
        scale_embeddings: false,
        sandwich_norms: false,
        gguf_permuted_qk: true,
        gguf_norm_plus_one: false,
        gguf_block: GGUF_LLAMA,
    }
}

pub static LLAMA: Family = split(Arch::Llama, "llama", "LlamaForCausalLM");
// Mistral GGUFs say `llama`.
pub static MISTRAL: Family = split(Arch::Mistral, "mistral", "MistralForCausalLM");
pub static QWEN2: Family = Family {
    gguf_arch: "qwen2",
    gguf_permuted_qk: false,
    ..split(Arch::Qwen2, "qwen2", "Qwen2ForCausalLM")
};
pub static QWEN3: Family = Family {
    gguf_arch: "qwen3",
    qk_norm: true,
    gguf_permuted_qk: false,
    gguf_block: GGUF_QWEN3,
    ..split(Arch::Qwen3, "qwen3", "Qwen3ForCausalLM")
};
pub static GEMMA3: Family = Family {
    gguf_arch: "gemma3",
    qk_norm: true,
    norm_plus_one: true,
    scale_embeddings: true,
    sandwich_norms: true,
    gguf_permuted_qk: false,
    gguf_norm_plus_one: true,
    gguf_block: GGUF_GEMMA3,
    ..split(Arch::Gemma3, "gemma3_text", "Gemma3ForCausalLM")
};
pub static PHI3: Family = Family {
    gguf_arch: "phi3",
    linears: &[
        "self_attn.qkv_proj",
        "self_attn.o_proj",
        "mlp.gate_up_proj",
        "mlp.down_proj",
    ],
    fused_qkv: true,
    fused_gate_up: true,
    gguf_permuted_qk: false,
    gguf_block: GGUF_PHI3,
    ..split(Arch::Phi3, "phi3", "Phi3ForCausalLM")
};

/// Every family, in the order the README lists them.
pub static FAMILIES: [&Family; 6] = [&LLAMA, &MISTRAL, &QWEN2, &QWEN3, &GEMMA3, &PHI3];

impl Family {
    /// The PEFT module names of the block's linears (`q_proj`, …; `qkv_proj`, … for Phi-3).
    pub fn module_names(&self) -> Vec<&'static str> {
        self.linears
            .iter()
            .map(|p| p.rsplit('.').next().unwrap_or(p))
            .collect()
    }

    /// The block's norm weights by path inside the block, in Hugging Face order.
    pub fn norms(&self) -> Vec<&'static str> {
        let mut v = vec!["input_layernorm", "post_attention_layernorm"];
        if self.sandwich_norms {
            v.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
        }
        if self.qk_norm {
            v.extend(["self_attn.q_norm", "self_attn.k_norm"]);
        }
        v
    }
}

/// `model_type`s we load, for error messages.
pub fn supported_model_types() -> String {
    FAMILIES
        .iter()
        .map(|f| f.model_type)
        .collect::<Vec<_>>()
        .join(", ")
}
