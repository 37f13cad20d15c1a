//! What one training step computes and keeps, before any machine speed or memory policy:
//! the activations a decoder block records for backward ([`block_activations`]), which blocks
//! record anything ([`first_kept_block`]), the matmul FLOPs per token
//! ([`train_flops_per_token`]) and whether the loss runs fused with the output projection
//! ([`loss_is_fused`]). The memory estimate (`estimate`) and the step-time model (`time`) both
//! read these counts.

use super::params::{adapted_linears, block_trains, tensors, trains_tensor};
use super::request::{ComputeDevice, PlanRequest};
use crate::model::config::Config;
use crate::peft::method::Method;

/// Per-token f32 element counts of what one decoder block keeps for backward.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockActivations {
    /// Everything but attention scores and LoRA: `6h + 5·q + 5·kv + 3·i`.
    pub dense: u64,
    /// Attention matrices `[b, heads, s, s]`: `scores` and `probs`, `2·heads·s` per token;
    /// on the CPU only `probs` (`ops::causal_attention_with` keeps no scores), `heads·s`.
    pub attention: u64,
    /// LoRA adapters: `2·out` per adapted projection on an NF4 base, 0 on a dense one.
    pub lora: u64,
}

impl BlockActivations {
    pub fn total(&self) -> u64 {
        self.dense + self.attention + self.lora
    }
}

/// What block `n` keeps per token, tensor by tensor from `Decoder::block_forward`:
/// - two rms-norms (one fused op each, weight included): their outputs `2h`;
/// - q: projection, head-major copy, rotated: `3q`; k: the same `3kv`; v: projection and
///   copy `2kv` (grouped-query heads share their key head's k and v, never repeated);
/// - scores `q·kᵀ` and causal-softmax probs: `2·heads·s`;
/// - `probs·v` and its `[b, s, q]` copy: `2q`; o_proj output and the residual sum: `2h`;
/// - on the CPU the attention is one op (`ops::causal_attention_with`) that reads v in place
///   (`kv` less), keeps only the probs (`heads·s`) and writes its output as `[b, s, q]`
///   (`q` less), and RoPE reads q and k in place too (no head-major copies: `q + kv` less);
/// - MLP: gate, up and the fused `silu(gate)·up` `3i`; down output and residual sum `2h`;
/// - LoRA: nothing (base and delta are one op that keeps only its inputs), and QLoRA the same
///   on the CPU (`on_cpu`: the quantized base is widened tile by tile inside that op); QLoRA
///   off the CPU, per adapted projection: the quantized base's output and the fused delta
///   `scale·B·(A·x)`, both inputs of the sum (`2·out`). Neither op keeps more: `A·x` is
///   recomputed and the dropout mask regenerated from its seed in backward (`ops::lora_delta`).
///
/// Evaluation's forward keeps the same counts (dropout keeps nothing).
pub fn block_activations(
    c: &Config,
    method: &Method,
    seq: usize,
    on_cpu: bool,
) -> BlockActivations {
    let (h, q, kv, i) = (
        c.hidden_size as u64,
        c.q_dim() as u64,
        c.kv_dim() as u64,
        c.intermediate_size as u64,
    );
    let heads_s = (c.num_attention_heads * seq) as u64;
    let mut a = match on_cpu {
        true => BlockActivations {
            dense: 6 * h + 3 * q + 3 * kv + 3 * i,
            attention: heads_s,
            ..Default::default()
        },
        false => BlockActivations {
            dense: 6 * h + 5 * q + 5 * kv + 3 * i,
            attention: 2 * heads_s,
            ..Default::default()
        },
    };
    // Family extras (`model::block`): the q/k norm outputs (Qwen3, Gemma 3), the two extra
    // norm outputs of Gemma's sandwich norms, and partial rotary's concatenated q and k
    // (Phi-3/4). GeGLU keeps what SwiGLU keeps; fused projections are split by views.
    let fam = c.family();
    if fam.qk_norm {
        a.dense += q + kv;
    }
    if fam.sandwich_norms {
        a.dense += 2 * h;
    }
    if c.rotary_dim() < c.head_dim {
        a.dense += q + kv;
    }
    // A frozen base and its adapter run as one op (`ops::lora_linear`) that keeps only its
    // inputs; on the CPU that includes a quantized base (widened tile by tile inside the op).
    // Off the CPU a quantized base keeps its output and the delta's, both inputs of their sum.
    if matches!(method, Method::Qlora(_)) && !on_cpu {
        let per_layer = adapted_linears(c, method).len() / c.num_hidden_layers.max(1);
        let linears: Vec<(usize, usize)> = adapted_linears(c, method)
            .into_iter()
            .take(per_layer)
            .collect();
        a.lora = linears.iter().map(|&(_, o)| 2 * o as u64).sum();
    }
    a
}

/// Index of the first block that trains: blocks before it see an untracked input and no
/// trainable tensor, so they keep nothing. 0 when the embedding trains.
pub fn first_kept_block(c: &Config, method: &Method) -> usize {
    if trains_tensor(method, "model.embed_tokens.weight", c.num_hidden_layers) {
        return 0;
    }
    (0..c.num_hidden_layers)
        .find(|&n| block_trains(c, method, n))
        .unwrap_or(c.num_hidden_layers)
}

/// Bytes of a KV cache for chat: k and v, f32, `[kv_heads, tokens, head_dim]` per layer.
pub fn kv_cache_bytes(c: &Config, tokens: usize) -> u64 {
    (2 * c.num_hidden_layers * c.kv_dim() * tokens * 4) as u64
}

/// Matmul FLOPs per trained token: forward `2·in·out` per frozen projection, backward
/// `2·in·out` for the input gradient and another `2·in·out` where the weight trains; LoRA
/// `6·r·(in+out)`; attention `4·s·q` forward and `8·s·q` backward per layer (on the CPU
/// only the causally visible part, about half); the logits
/// `2·h·V` forward and again for their input gradient (and for the weight gradient when the
/// head trains), plus a recomputation where the fused loss has one ([`head_gemm_passes`]);
/// checkpointing repeats the block forwards.
pub fn train_flops_per_token(c: &Config, req: &PlanRequest) -> f64 {
    let (h, v, s) = (
        c.hidden_size as f64,
        c.vocab_size as f64,
        req.seq_len as f64,
    );
    let mut fwd_blocks = 0.0;
    let mut bwd = 0.0;
    for t in tensors(c) {
        let Some((inp, out)) = t.dims else { continue };
        let mm = 2.0 * inp as f64 * out as f64;
        let trained = trains_tensor(&req.method, &t.name, c.num_hidden_layers);
        if t.block_linear {
            fwd_blocks += mm;
            bwd += mm + if trained { mm } else { 0.0 };
        } else if t.name == "lm_head.weight" || c.tie_word_embeddings {
            bwd += if trained { mm } else { 0.0 };
        }
    }
    let r = req.method.lora().map(|l| l.rank).unwrap_or(0) as f64;
    let lora: f64 = adapted_linears(c, &req.method)
        .iter()
        .map(|&(i, o)| 2.0 * r * (i + o) as f64)
        .sum();
    // The CPU's fused attention multiplies only the keys each block of queries can see:
    // the lower triangle and half of the diagonal blocks.
    let visible = match req.device == ComputeDevice::Cpu {
        true => ((s + crate::ops::ATTENTION_BLOCK as f64) / (2.0 * s)).min(1.0),
        false => 1.0,
    };
    let attn = 4.0 * s * c.q_dim() as f64 * c.num_hidden_layers as f64 * visible;
    let logits = 2.0 * h * v * head_gemm_passes(c, &req.method, req.device == ComputeDevice::Cpu);
    let fwd = fwd_blocks + lora + attn;
    let recompute = if req.grad_checkpointing { fwd } else { 0.0 };
    fwd + recompute + bwd + 2.0 * lora + 2.0 * attn + logits
}

/// The part of [`train_flops_per_token`] that runs at the bf16 rate in a `bf16_compute` run
/// (0 otherwise): the frozen base's products — each block projection's forward (again under
/// checkpointing) and its input gradient, and the frozen head's passes in the fused loss.
/// LoRA's own products and the attention stay f32.
pub fn bf16_flops_per_token(c: &Config, req: &PlanRequest) -> f64 {
    let bf16 = req.bf16_compute
        && req.device == ComputeDevice::Cpu
        && matches!(req.method, Method::Lora(_) | Method::Qlora(_));
    if !bf16 {
        return 0.0;
    }
    let passes = if req.grad_checkpointing { 3.0 } else { 2.0 };
    let blocks: f64 = tensors(c)
        .iter()
        .filter(|t| t.block_linear)
        .filter_map(|t| t.dims)
        .map(|(i, o)| passes * 2.0 * i as f64 * o as f64)
        .sum();
    blocks
        + head_gemm_passes(c, &req.method, true) * 2.0 * c.hidden_size as f64 * c.vocab_size as f64
}

/// Products of the tokens with the whole output head per step, for the logits and their input
/// gradient (a trained head's weight gradient is one more, counted with the other weights').
/// On the CPU a frozen head's fused loss does both in one pass over the vocabulary
/// (`ops::linear_cross_entropy`'s one-pass forward accumulates `softmax · W` as it goes): 2.
/// The other fused loss recomputes each tile of logits in its backward: 3. Unfused: 2.
pub fn head_gemm_passes(c: &Config, method: &Method, on_cpu: bool) -> f64 {
    if on_cpu && !output_head_trains(c, method) {
        2.0
    } else if loss_is_fused(c, method, on_cpu) {
        3.0
    } else {
        2.0
    }
}

/// Passes over each token's row of logits (`tokens × vocab` f32 written or read): one, except
/// where the fused loss recomputes them in its backward ([`head_gemm_passes`]).
pub fn logit_passes(c: &Config, method: &Method, on_cpu: bool) -> f64 {
    head_gemm_passes(c, method, on_cpu) - 1.0
}

/// The fused loss's bound on one logits tile (`ops::linear_cross_entropy`).
pub(crate) const LOSS_TILE_BYTES: u64 = 8 << 20;

/// Whether the loss runs fused with the output projection (tiles, no logits kept): whenever
/// that projection is frozen, and on the CPU also when it trains (its gradient is written tile
/// by tile, `ops::linear_cross_entropy_trained`).
pub fn loss_is_fused(c: &Config, method: &Method, on_cpu: bool) -> bool {
    on_cpu || !output_head_trains(c, method)
}

/// Whether the output projection (the embedding when tied) trains, so the loss must build the
/// full logits with a graph.
fn output_head_trains(c: &Config, method: &Method) -> bool {
    let name = if c.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    trains_tensor(method, name, c.num_hidden_layers)
}
