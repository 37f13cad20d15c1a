//! Exact parameter counts from a config, as Hugging Face's `num_parameters()` reports them
//! (tied embeddings counted once).

use crate::model::config::Config;

/// Parameters of one decoder block.
pub fn block_parameters(c: &Config) -> usize {
    let h = c.hidden_size;
    let attn = h * c.q_dim() + 2 * h * c.kv_dim() + c.q_dim() * h;
    let attn_bias = if c.qkv_bias {
        c.q_dim() + 2 * c.kv_dim()
    } else {
        0
    } + if c.o_bias { h } else { 0 };
    let mlp = 3 * h * c.intermediate_size;
    let mlp_bias = if c.mlp_bias {
        2 * c.intermediate_size + h
    } else {
        0
    };
    attn + attn_bias + mlp + mlp_bias + 2 * h
}

/// Every parameter of the model.
pub fn parameter_count(c: &Config) -> usize {
    let embed = c.vocab_size * c.hidden_size;
    let head = if c.tie_word_embeddings { 0 } else { embed };
    embed + head + c.num_hidden_layers * block_parameters(c) + c.hidden_size
}
