//! The memory and time estimate of one training run: pure functions of the model config and
//! the run's settings, one named term per line (like llm.c's `fill_in_parameter_sizes`).
//! No I/O here — the machine's throughput comes in as [`Throughput`] (see `calibrate`).
//!
//! # What is counted (CPU, f32 compute)
//! Every tensor our decoder records for backward stays alive until `backward()` returns, so
//! the activation terms are the outputs of every tracked op in `Decoder::block_forward`
//! (see [`block_activations`] for the list, tensor by tensor). The peak is the largest of
//! these moments of a step, each the sum of what is alive then:
//! - **logits backward**: weights + optimizer state + all kept activations + logits and
//!   log-softmax + the vocabulary-sized gradients in flight;
//! - **block backward**: the same minus the logits gradients, plus every weight gradient and
//!   (checkpointing) one block's recomputed activations and their gradients;
//! - **optimizer step**: weights + gradients + moments + AdamW's temporaries;
//! - **evaluation** (when a validation split exists): one block's activations and the loss
//!   (it runs through detached weights, so it records no graph).
//!
//! On a GPU the same device-side terms apply (candle keeps the same graph) plus a CUDA context;
//! host terms are the runtime and the tokenizer. Constants measured on this project's runs are
//! in [`Calibration`], each with how it was obtained.

pub use super::calibrate::Calibration;
use super::params::{
    adapted_linears, base_weight_bytes, block_trains, largest_trainable, nf4_bytes, tensors,
    trainable_parameters, trains_tensor,
};
use crate::model::config::Config;
use crate::model::decoder::WeightDtype;
use crate::peft::method::Method;
use crate::peft::nf4_op::DEFAULT_TILE_BYTES;
use serde::{Deserialize, Serialize};

/// glibc's largest dynamic mmap threshold on 64-bit (`DEFAULT_MMAP_THRESHOLD_MAX`).
const GLIBC_MMAP_THRESHOLD_MAX: u64 = 32 << 20;

/// Where the run computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDevice {
    #[default]
    Cpu,
    Cuda,
    Metal,
}

/// The machine's measured speed (from `plan::calibrate`), the input to the time estimate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// f32 GEMM speed with all threads, GFLOP/s.
    pub gemm_gflops: f64,
    /// Bytes per second an elementwise op moves on activation-sized tensors (all threads),
    /// GB/s.
    pub mem_gbps: f64,
}

impl Default for Throughput {
    /// This project's 2-core reference machine (median probes over a `peft bench plan` run).
    fn default() -> Self {
        Self {
            gemm_gflops: 165.0,
            mem_gbps: 48.0,
        }
    }
}

/// The run being planned; the same knobs as `TrainConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    pub method: Method,
    pub seq_len: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub grad_checkpointing: bool,
    /// Storage of frozen dense weights (QLoRA's block projections are NF4 regardless).
    pub weight_dtype: WeightDtype,
    pub device: ComputeDevice,
    /// A validation split is evaluated (its forward pass has its own peak).
    pub evaluation: bool,
    pub throughput: Throughput,
}

impl Default for PlanRequest {
    fn default() -> Self {
        Self {
            method: Method::Lora(Default::default()),
            seq_len: 256,
            batch_size: 1,
            grad_accum: 1,
            grad_checkpointing: false,
            weight_dtype: WeightDtype::F32,
            device: ComputeDevice::Cpu,
            evaluation: true,
            throughput: Throughput::default(),
        }
    }
}

/// One named term of the estimate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Stable key (`base_weights.dense`, `activations.attention_scores`, …).
    pub name: String,
    pub bytes: u64,
    /// What the term is, with its formula filled in.
    pub explanation: String,
}

/// Total bytes of one moment of a training step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub bytes: u64,
}

/// Parameter counts of the planned run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamCounts {
    pub total: usize,
    pub trainable: usize,
}

/// The result: lines that sum to `peak_bytes`, the phase they belong to, and the time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Terms alive at the peak; `Σ bytes == peak_bytes`.
    pub lines: Vec<Line>,
    pub peak_bytes: u64,
    /// Which moment of the step is the peak.
    pub peak_phase: String,
    pub phases: Vec<Phase>,
    /// On a GPU: the device part of `peak_bytes` (the rest is host memory). 0 on CPU.
    pub device_bytes: u64,
    pub host_bytes: u64,
    pub params: ParamCounts,
    /// Matmul FLOPs of one trained token (forward, backward, recompute).
    pub flops_per_token: f64,
    pub tokens_per_s: f64,
    /// Seconds of one optimizer step, by kind of work.
    pub step_time: super::time::StepTime,
}

/// Per-token f32 element counts of what one decoder block keeps for backward.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockActivations {
    /// Everything but attention scores and LoRA: `6h + 5·q + 5·kv + 3·i`.
    pub dense: u64,
    /// `scores` and `probs` `[b, heads, s, s]`: `2·heads·s` per token.
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
/// - MLP: gate, up and the fused `silu(gate)·up` `3i`; down output and residual sum `2h`;
/// - LoRA on a dense base: nothing (base and delta are one op that keeps only its inputs);
///   QLoRA per adapted projection: the NF4 base output and the fused delta `scale·B·(A·x)`,
///   both inputs of the sum (`2·out`). Neither op keeps more: `A·x` is recomputed and the
///   dropout mask regenerated from its seed in backward (`peft::lora_op`).
///
/// `train == false` is the evaluation forward; the counts are the same (dropout keeps nothing).
pub fn block_activations(
    c: &Config,
    method: &Method,
    seq: usize,
    _train: bool,
) -> BlockActivations {
    let (h, q, kv, i) = (
        c.hidden_size as u64,
        c.q_dim() as u64,
        c.kv_dim() as u64,
        c.intermediate_size as u64,
    );
    let mut a = BlockActivations {
        dense: 6 * h + 5 * q + 5 * kv + 3 * i,
        attention: 2 * (c.num_attention_heads * seq) as u64,
        ..Default::default()
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
    // A dense frozen base and its adapter run as one op (`peft::lora_linear_op`) that keeps
    // only its inputs; an NF4 base keeps its output and the delta's, both inputs of their sum.
    if matches!(method, Method::Qlora(_)) {
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
/// `6·r·(in+out)`; attention `4·s·q` forward and `8·s·q` backward per layer; the logits
/// `2·h·V` forward and again for their input gradient (and for the weight gradient when the
/// head trains), plus a recomputation when the loss is fused; checkpointing repeats the block
/// forwards.
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
    let attn = 4.0 * s * c.q_dim() as f64 * c.num_hidden_layers as f64;
    let logits = 2.0
        * h
        * v
        * if loss_is_fused(c, &req.method) {
            3.0
        } else {
            2.0
        };
    let fwd = fwd_blocks + lora + attn;
    let recompute = if req.grad_checkpointing { fwd } else { 0.0 };
    fwd + recompute + bwd + 2.0 * lora + 2.0 * attn + logits
}

/// The fused loss's bound on one logits tile (`ops::linear_cross_entropy`).
const LOSS_TILE_BYTES: u64 = 8 << 20;

/// Whether the loss runs fused with the output projection (tiles, no logits kept): whenever
/// that projection is frozen.
pub fn loss_is_fused(c: &Config, method: &Method) -> bool {
    !output_head_trains(c, method)
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

/// The estimate with the project's measured [`Calibration`].
pub fn estimate(c: &Config, req: &PlanRequest) -> Estimate {
    estimate_with(c, req, &Calibration::default())
}

/// The estimate with explicit constants (the benchmark refits them).
pub fn estimate_with(c: &Config, req: &PlanRequest, k: &Calibration) -> Estimate {
    let f = 4u64; // f32 compute
    let (b, s) = (req.batch_size.max(1) as u64, req.seq_len.max(1) as u64);
    let tokens = b * s;
    let (h, v, layers) = (
        c.hidden_size as u64,
        c.vocab_size as u64,
        c.num_hidden_layers as u64,
    );
    let trainable = trainable_parameters(c, &req.method) as u64;
    let is_lora = req.method.lora().is_some();
    let (nf4, dense, trained_base) = base_weight_bytes(c, &req.method, req.weight_dtype);
    let line = |name: &str, bytes: u64, explanation: String| Line {
        name: name.into(),
        bytes,
        explanation,
    };

    // Alive for the whole run.
    let mut stat = vec![
        line(
            "runtime",
            k.runtime_bytes,
            "binary, threads, allocator arenas and the dataset (measured)".into(),
        ),
        line(
            "tokenizer",
            k.tokenizer_bytes_per_token * v,
            format!(
                "vocabulary maps: {v} tokens × {} B",
                k.tokenizer_bytes_per_token
            ),
        ),
    ];
    if nf4 > 0 {
        stat.push(line(
            "base_weights.nf4",
            nf4,
            "block projections in NF4 with double quantization (≈ 0.516 B/param)".into(),
        ));
    }
    if dense > 0 {
        let what = match req.weight_dtype {
            WeightDtype::F32 => "f32, 4 B/param",
            WeightDtype::Bf16 => "bf16 matrices 2 B/param, vectors f32",
        };
        stat.push(line(
            "base_weights.frozen",
            dense,
            format!("frozen weights ({what})"),
        ));
    }
    if trained_base > 0 {
        stat.push(line(
            "base_weights.trainable",
            trained_base,
            "weights being trained, f32 Vars (4 B/param)".into(),
        ));
    }
    if is_lora {
        stat.push(line(
            "adapters",
            f * trainable,
            format!("LoRA A and B, {trainable} params × 4 B"),
        ));
    }
    stat.push(line(
        "optimizer_state",
        2 * f * trainable,
        format!("AdamW first and second moments: 2 × {trainable} × 4 B"),
    ));

    let grads = line(
        "gradients",
        f * trainable,
        format!("one f32 gradient per trainable parameter: {trainable} × 4 B"),
    );

    // Activations kept by the forward pass.
    let slack = |x: u64| (x as f64 * (1.0 + k.activation_slack)) as u64;
    let kept_layers = layers - first_kept_block(c, &req.method) as u64;
    let per = block_activations(c, &req.method, req.seq_len, true);
    let mut acts = Vec::new();
    if req.grad_checkpointing {
        acts.push(line("activations.block_inputs", slack(f * tokens * h * (layers + 1)), format!("checkpointing keeps each block's input: ({layers} + 1) × {tokens} tokens × {h} × 4 B")));
    } else {
        acts.push(line("activations.blocks", slack(f * tokens * (per.dense * kept_layers + h)), format!("norms, q/k/v (+rope, head copies), attention output, MLP gate/up/product, residuals: {} floats/token × {kept_layers} blocks", per.dense)));
        acts.push(line(
            "activations.attention_scores",
            slack(f * tokens * per.attention * kept_layers),
            format!(
                "scores and softmax probs [b, {}, s, s] f32 × {kept_layers} blocks",
                c.num_attention_heads
            ),
        ));
        if per.lora > 0 {
            acts.push(line(
                "activations.lora",
                slack(f * tokens * per.lora * kept_layers),
                format!(
                    "LoRA: base outputs and fused deltas, both kept for the sum: {} floats/token/block",
                    per.lora
                ),
            ));
        }
    }
    acts.push(line(
        "activations.final_norm",
        f * tokens * h,
        "final rms-norm output (one fused op, weight included)".into(),
    ));
    // With a frozen dense output projection the loss is the fused, tiled lm_head + cross-entropy
    // (`ops::linear_cross_entropy`): no vocabulary-sized buffer is kept, only one logits tile
    // in flight in forward and one in backward. A trained or quantized head takes the
    // ordinary logits path.
    let fused_loss = loss_is_fused(c, &req.method);
    let loss_tile = (f * tokens * v).min(LOSS_TILE_BYTES);
    // Only alive while the loss runs: counted in the logits-backward phase, not in the blocks'.
    let loss_tiles = line(
        "loss_tiles",
        if fused_loss { 2 * loss_tile } else { 0 },
        format!(
            "fused lm_head + cross-entropy: two logits tiles of at most {} MiB, no [{tokens} × {v}] logits",
            LOSS_TILE_BYTES >> 20
        ),
    );
    if !fused_loss {
        acts.push(line(
            "logits",
            f * tokens * v * 4,
            format!(
                "logits, log-softmax's shifted logits, exp and result: 4 × {tokens} × {v} × 4 B"
            ),
        ));
    }

    let logits_grad = line(
        "logits_grad",
        if fused_loss {
            0
        } else {
            (k.logits_grad_copies * (f * tokens * v) as f64) as u64
        },
        format!(
            "vocabulary-sized gradients in flight in the loss backward: {} × {tokens} × {v} × 4 B",
            k.logits_grad_copies
        ),
    );
    // glibc serves a request from its heap, and keeps it resident after free, when it is under
    // the mmap threshold, which rises to the size of each mmapped block freed (up to 32 MiB).
    // So from the second step on, logits-sized gradients under 32 MiB stay resident through
    // the block backward that follows the loss (the demo's full fine-tuning, and SmolLM2's at
    // 128 tokens, peaked that much above the blocks' own terms); larger ones go back to the
    // system.
    let retained_logits = line(
        "logits_grad_retained",
        if cfg!(target_env = "gnu") && !fused_loss && f * tokens * v <= GLIBC_MMAP_THRESHOLD_MAX {
            logits_grad.bytes
        } else {
            0
        },
        format!(
            "freed logits gradients glibc keeps resident ({tokens} × {v} × 4 B is under its 32 MiB mmap threshold)"
        ),
    );
    let one_block = f * tokens * per.total();
    let block_bwd = if req.grad_checkpointing {
        line(
            "activations.recompute",
            slack(2 * one_block),
            "checkpointing: one block's activations recomputed plus their gradients".into(),
        )
    } else {
        line(
            "block_backward",
            one_block,
            "gradients of one block's activations in flight".into(),
        )
    };
    // Forward and backward each hold at most one dequantized tile of the largest projection.
    let largest = 4 * c.intermediate_size as u64 * c.hidden_size as u64;
    let tile = largest.min(DEFAULT_TILE_BYTES as u64);
    // The causal-softmax backward holds the gradients of the scores and of the probabilities
    // of one block while it runs: two more [b, heads, s, s] buffers. Negligible at 256 tokens
    // on SmolLM2; a fifth of the peak of a small model at long sequences.
    let attention_bwd = line(
        "attention_backward",
        f * tokens * per.attention,
        "one block's attention-score gradients in flight: 2 × [b, heads, s, s] f32".into(),
    );
    let nf4_tiles = line(
        "nf4_dequant_tiles",
        if nf4 > 0 { 2 * tile } else { 0 },
        format!(
            "QLoRA: dequantized f32 tiles of at most {} MiB (forward and backward)",
            DEFAULT_TILE_BYTES >> 20
        ),
    );
    let opt_tmp = line(
        "optimizer_temporaries",
        2 * f * largest_trainable(c, &req.method) as u64,
        "AdamW's fused update: a copy of the gradient and of the new values, largest trainable tensor".into(),
    );

    // A trained embedding's gradient is a scatter into a zeroed table, and a tied one then
    // adds the output head's gradient: at the end of the backward, with every activation still
    // held by the graph, up to two table-sized buffers are alive beyond the one counted in
    // `gradients` (SmolLM2 full fine-tuning peaked ≈ 145 MB above the other phases).
    let embedding_trains = trains_tensor(
        &req.method,
        "model.embed_tokens.weight",
        c.num_hidden_layers,
    );
    let embedding_sum = line(
        "embedding_gradient_sum",
        if embedding_trains {
            (if c.tie_word_embeddings { 2 } else { 1 }) * f * v * h
        } else {
            0
        },
        format!(
            "the trained embedding's scattered gradient{}: [{v} × {h}] f32 each",
            if c.tie_word_embeddings {
                " and its sum with the tied head's"
            } else {
                ""
            }
        ),
    );

    let mut candidates: Vec<(String, Vec<Line>)> = Vec::new();
    let mut with_static = |name: &str, extra: Vec<Line>| {
        let mut all = stat.clone();
        all.extend(extra);
        candidates.push((name.to_string(), all));
    };
    let mut p1 = acts.clone();
    p1.push(logits_grad.clone());
    p1.push(loss_tiles);
    p1.push(nf4_tiles.clone());
    with_static("logits backward", p1);
    let mut p2 = acts.clone();
    p2.push(grads.clone());
    p2.push(block_bwd);
    p2.push(attention_bwd);
    p2.push(nf4_tiles.clone());
    p2.push(retained_logits);
    with_static("block backward", p2);
    with_static("optimizer step", vec![grads.clone(), opt_tmp]);
    if embedding_sum.bytes > 0 {
        let mut p3 = acts.clone();
        p3.push(grads.clone());
        // Not the retained logits gradients: by the end of the backward glibc has split
        // their chunks for the blocks' smaller gradients.
        p3.push(embedding_sum);
        with_static("embedding gradient", p3);
    }
    if req.evaluation {
        let eval = block_activations(c, &req.method, req.seq_len, false);
        // Evaluation runs through detached weights: no graph, so only one block's activations
        // and the loss's buffers are alive at once.
        let logits = if fused_loss { 0 } else { 3 * v };
        let eval_acts = f * tokens * (eval.total() + 3 * h + logits) + 2 * loss_tile;
        with_static(
            "evaluation forward",
            vec![line(
                "evaluation_activations",
                slack(eval_acts),
                "validation forward without a graph: one block's activations and the loss".into(),
            )],
        );
    }
    let phases: Vec<Phase> = candidates
        .iter()
        .map(|(n, ls)| Phase {
            name: n.clone(),
            bytes: ls.iter().map(|l| l.bytes).sum(),
        })
        .collect();
    let (peak_phase, mut lines) = candidates
        .into_iter()
        .max_by_key(|(_, ls)| ls.iter().map(|l| l.bytes).sum::<u64>())
        .unwrap_or_default();
    lines.retain(|l| l.bytes > 0);
    if req.device != ComputeDevice::Cpu {
        lines.push(line(
            "gpu_context",
            k.gpu_context_bytes,
            "CUDA/Metal context and allocator reserve".into(),
        ));
    }
    let peak_bytes: u64 = lines.iter().map(|l| l.bytes).sum();
    let host_bytes = if req.device == ComputeDevice::Cpu {
        peak_bytes
    } else {
        lines
            .iter()
            .filter(|l| l.name == "runtime" || l.name == "tokenizer")
            .map(|l| l.bytes)
            .sum()
    };

    let flops_per_token = train_flops_per_token(c, req);
    let step_time = super::time::step_time(c, req, k);
    Estimate {
        lines,
        peak_bytes,
        peak_phase,
        phases,
        device_bytes: peak_bytes - host_bytes,
        host_bytes,
        params: ParamCounts {
            total: crate::model::count::parameter_count(c),
            trainable: trainable as usize,
        },
        flops_per_token,
        tokens_per_s: (tokens * req.grad_accum.max(1) as u64) as f64 / step_time.total().max(1e-12),
        step_time,
    }
}

/// Bytes of the block projections of `c` in NF4 with double quantization.
pub fn nf4_linear_bytes(c: &Config) -> u64 {
    tensors(c)
        .iter()
        .filter(|t| t.block_linear)
        .map(|t| nf4_bytes(t.numel))
        .sum()
}
