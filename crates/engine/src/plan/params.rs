//! Parameter accounting by tensor: every tensor of a Llama-family model by Hugging Face name
//! and element count, which of them a method trains, and how many bytes each is stored in.
//! Pure functions of the config; the sum of [`tensors`] is exactly
//! [`crate::model::count::parameter_count`].

use crate::model::config::Config;
use crate::model::decoder::WeightDtype;
use crate::peft::method::{layer_index, Method, ALL_LINEAR};
use crate::quant::nf4::{DQ_BLOCK, NF4_BLOCK};

/// One tensor of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub numel: usize,
    /// A projection inside a block (`q_proj` … `down_proj`) weight: the ones LoRA adapts and
    /// QLoRA stores in NF4.
    pub block_linear: bool,
    /// `(in, out)` for linear weights.
    pub dims: Option<(usize, usize)>,
}

/// The seven projections of a block as `(name, in, out)`.
pub fn projections(c: &Config) -> [(&'static str, usize, usize); 7] {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    [
        ("q_proj", h, c.q_dim()),
        ("k_proj", h, c.kv_dim()),
        ("v_proj", h, c.kv_dim()),
        ("o_proj", c.q_dim(), h),
        ("gate_proj", h, i),
        ("up_proj", h, i),
        ("down_proj", i, h),
    ]
}

/// Every tensor, in load order.
pub fn tensors(c: &Config) -> Vec<TensorSpec> {
    let h = c.hidden_size;
    let plain = |name: String, numel: usize| TensorSpec {
        name,
        numel,
        block_linear: false,
        dims: None,
    };
    let mut out = vec![TensorSpec {
        dims: Some((h, c.vocab_size)),
        ..plain("model.embed_tokens.weight".into(), c.vocab_size * h)
    }];
    for n in 0..c.num_hidden_layers {
        let p = format!("model.layers.{n}");
        out.push(plain(format!("{p}.input_layernorm.weight"), h));
        out.push(plain(format!("{p}.post_attention_layernorm.weight"), h));
        for (name, inp, o) in projections(c) {
            let module = if name.ends_with("_proj") && name.starts_with(['g', 'u', 'd']) {
                "mlp"
            } else {
                "self_attn"
            };
            let path = format!("{p}.{module}.{name}");
            out.push(TensorSpec {
                name: format!("{path}.weight"),
                numel: inp * o,
                block_linear: true,
                dims: Some((inp, o)),
            });
            let bias = match name {
                "q_proj" | "k_proj" | "v_proj" => c.qkv_bias,
                "o_proj" => c.o_bias,
                _ => c.mlp_bias,
            };
            if bias {
                out.push(plain(format!("{path}.bias"), o));
            }
        }
    }
    out.push(plain("model.norm.weight".into(), h));
    if !c.tie_word_embeddings {
        out.push(TensorSpec {
            dims: Some((h, c.vocab_size)),
            ..plain("lm_head.weight".into(), c.vocab_size * h)
        });
    }
    out
}

/// Whether `method` turns tensor `name` into a trainable `Var` (full and selective only;
/// LoRA trains adapters, counted by [`lora_parameters`]).
pub fn trains_tensor(method: &Method, name: &str, num_layers: usize) -> bool {
    match method {
        Method::Full => true,
        Method::Selective { what } => what.selects(name, num_layers),
        Method::Lora(_) | Method::Qlora(_) => false,
    }
}

/// LoRA adapters as `(in, out)` of every adapted projection: `A: [r, in]`, `B: [out, r]`.
/// Unknown targets are ignored here (the trainer rejects them).
pub fn adapted_linears(c: &Config, method: &Method) -> Vec<(usize, usize)> {
    let Some(s) = method.lora() else {
        return vec![];
    };
    let targets = s
        .resolved_targets()
        .unwrap_or_else(|_| ALL_LINEAR.iter().map(|t| t.to_string()).collect());
    let mut out = Vec::new();
    for n in 0..c.num_hidden_layers {
        if s.layers.as_ref().is_some_and(|l| !l.contains(&n)) {
            continue;
        }
        for (name, inp, o) in projections(c) {
            if targets.iter().any(|t| t == name) {
                out.push((inp, o));
            }
        }
    }
    out
}

/// Trainable LoRA parameters: `Σ r·(in + out)` over adapted projections.
pub fn lora_parameters(c: &Config, method: &Method) -> usize {
    let r = method.lora().map(|s| s.rank).unwrap_or(0);
    adapted_linears(c, method)
        .iter()
        .map(|(i, o)| r * (i + o))
        .sum()
}

/// Trainable parameters of `method`, exactly as the trainer reports them.
pub fn trainable_parameters(c: &Config, method: &Method) -> usize {
    match method {
        Method::Lora(_) | Method::Qlora(_) => lora_parameters(c, method),
        _ => tensors(c)
            .iter()
            .filter(|t| trains_tensor(method, &t.name, c.num_hidden_layers))
            .map(|t| t.numel)
            .sum(),
    }
}

/// Real bytes of one tensor in NF4 with double quantization, as `quant::nf4` stores it:
/// two codes per byte, one i8 absmax code per 64-block, one f32 scale per 256 absmax codes,
/// one f32 offset. ≈ 0.516 bytes per parameter.
pub fn nf4_bytes(numel: usize) -> u64 {
    let blocks = numel.div_ceil(NF4_BLOCK);
    (numel.div_ceil(2) + blocks + 4 * blocks.div_ceil(DQ_BLOCK) + 4) as u64
}

/// Bytes of the stored base weights: NF4 for block projections under QLoRA, `dtype` for
/// other matrices, f32 for vectors and for every tensor the method trains (trainable tensors
/// are f32 `Var`s whatever the storage type).
pub fn base_weight_bytes(c: &Config, method: &Method, dtype: WeightDtype) -> (u64, u64, u64) {
    let (mut nf4, mut dense, mut trained) = (0u64, 0u64, 0u64);
    let qlora = matches!(method, Method::Qlora(_));
    for t in tensors(c) {
        if trains_tensor(method, &t.name, c.num_hidden_layers) {
            trained += 4 * t.numel as u64;
        } else if qlora && t.block_linear {
            nf4 += nf4_bytes(t.numel);
        } else if t.dims.is_some() && dtype == WeightDtype::Bf16 {
            dense += 2 * t.numel as u64;
        } else {
            dense += 4 * t.numel as u64;
        }
    }
    (nf4, dense, trained)
}

/// Largest trainable tensor in elements (sets the optimizer step's transient buffers).
pub fn largest_trainable(c: &Config, method: &Method) -> usize {
    match method {
        Method::Lora(_) | Method::Qlora(_) => {
            let r = method.lora().map(|s| s.rank).unwrap_or(0);
            adapted_linears(c, method)
                .iter()
                .map(|(i, o)| r * i.max(o))
                .max()
                .unwrap_or(0)
        }
        _ => tensors(c)
            .iter()
            .filter(|t| trains_tensor(method, &t.name, c.num_hidden_layers))
            .map(|t| t.numel)
            .max()
            .unwrap_or(0),
    }
}

/// Whether block `n` holds a trainable tensor or adapter (it then keeps weight gradients).
pub fn block_trains(c: &Config, method: &Method, n: usize) -> bool {
    match method {
        Method::Lora(s) | Method::Qlora(s) => s.layers.as_ref().is_none_or(|l| l.contains(&n)),
        _ => tensors(c).iter().any(|t| {
            layer_index(&t.name) == Some(n) && trains_tensor(method, &t.name, c.num_hidden_layers)
        }),
    }
}
