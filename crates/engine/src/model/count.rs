//! Exact parameter counts from a config, as Hugging Face's `num_parameters()` reports them
//! (tied embeddings counted once). Per family: the projections (fused or split, from
//! [`crate::model::family::Family`]), their biases, and the norms a block has.

use crate::model::config::Config;

/// The block's linear layers as `(path inside the block, in, out, has bias)`, in Hugging Face
/// order: seven split projections, or Phi-3's four (`qkv_proj`, `o_proj`, `gate_up_proj`,
/// `down_proj`).
pub fn block_linears(c: &Config) -> Vec<(&'static str, usize, usize, bool)> {
    let fam = c.family();
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut v = Vec::with_capacity(7);
    if fam.fused_qkv {
        v.push((
            "self_attn.qkv_proj",
            h,
            c.q_dim() + 2 * c.kv_dim(),
            c.qkv_bias,
        ));
    } else {
        v.push(("self_attn.q_proj", h, c.q_dim(), c.qkv_bias));
        v.push(("self_attn.k_proj", h, c.kv_dim(), c.qkv_bias));
        v.push(("self_attn.v_proj", h, c.kv_dim(), c.qkv_bias));
    }
    v.push(("self_attn.o_proj", c.q_dim(), h, c.o_bias));
    if fam.fused_gate_up {
        v.push(("mlp.gate_up_proj", h, 2 * i, c.mlp_bias));
    } else {
        v.push(("mlp.gate_proj", h, i, c.mlp_bias));
        v.push(("mlp.up_proj", h, i, c.mlp_bias));
    }
    v.push(("mlp.down_proj", i, h, c.mlp_bias));
    v
}

/// The block's norm weights as `(path inside the block, size)`.
pub fn block_norms(c: &Config) -> Vec<(&'static str, usize)> {
    c.family()
        .norms()
        .into_iter()
        .map(|n| {
            let size = if n.starts_with("self_attn.") {
                c.head_dim
            } else {
                c.hidden_size
            };
            (n, size)
        })
        .collect()
}

/// Parameters of one decoder block.
pub fn block_parameters(c: &Config) -> usize {
    let linears: usize = block_linears(c)
        .iter()
        .map(|&(_, i, o, bias)| i * o + if bias { o } else { 0 })
        .sum();
    linears + block_norms(c).iter().map(|(_, n)| n).sum::<usize>()
}

/// Every parameter of the model.
pub fn parameter_count(c: &Config) -> usize {
    let embed = c.vocab_size * c.hidden_size;
    let head = if c.tie_word_embeddings { 0 } else { embed };
    embed + head + c.num_hidden_layers * block_parameters(c) + c.hidden_size
}
