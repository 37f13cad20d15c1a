//! The memory and time estimate of one training run: pure functions of the model config and
//! the run's settings, one named term per line (like llm.c's `fill_in_parameter_sizes`).
//! No I/O here — the machine's throughput comes in with the [`PlanRequest`] (see `calibrate`).
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
//! - **embedding gradient** (when the embedding trains): its scattered gradient and sums;
//! - **evaluation** (when a validation split exists): one block's activations and the loss
//!   (it runs through detached weights, so it records no graph).
//!
//! Each line belongs to one [`Band`] of the memory bar the app draws; the engine assigns it.
//!
//! On a GPU the same device-side terms apply (candle keeps the same graph) plus a CUDA context;
//! host terms are the runtime and the tokenizer. Constants measured on this project's runs are
//! in [`Calibration`], each with how it was obtained.

pub use super::calibrate::Calibration;
use super::params::{
    base_weight_bytes, largest_trainable, nf4_bytes, tensors, trainable_parameters, trains_tensor,
    TensorSpec,
};
use super::request::{ComputeDevice, GgufBase, PlanRequest};
use super::work::{
    block_activations, first_kept_block, loss_is_fused, train_flops_per_token, LOSS_TILE_BYTES,
};
use crate::model::config::Config;
use crate::model::decoder::WeightDtype;
use crate::quant::nf4_op::DEFAULT_TILE_BYTES;
use serde::{Deserialize, Serialize};

/// glibc's largest dynamic mmap threshold on 64-bit (`DEFAULT_MMAP_THRESHOLD_MAX`).
const GLIBC_MMAP_THRESHOLD_MAX: u64 = 32 << 20;

/// f32 compute: bytes per element of every activation and gradient.
const F: u64 = 4;

/// The part of the memory bar a line is drawn in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum Band {
    Weights,
    Adapters,
    /// Gradients, optimizer moments and the optimizer's temporaries.
    Optimizer,
    Activations,
    Logits,
    /// Runtime, tokenizer, GPU context.
    Overhead,
}

impl Band {
    pub const ALL: [Band; 6] = [
        Band::Weights,
        Band::Adapters,
        Band::Optimizer,
        Band::Activations,
        Band::Logits,
        Band::Overhead,
    ];
}

/// One named term of the estimate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Line {
    /// Stable key (`base_weights.frozen`, `activations.attention_scores`, …).
    pub name: String,
    pub band: Band,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub bytes: u64,
    /// What the term is, with its formula filled in.
    pub explanation: String,
}

fn line(name: &str, band: Band, bytes: u64, explanation: String) -> Line {
    Line {
        name: name.into(),
        band,
        bytes,
        explanation,
    }
}

/// Total bytes of one band at the peak.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct BandTotal {
    pub band: Band,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub bytes: u64,
}

/// Total bytes of one moment of a training step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Phase {
    pub name: String,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub bytes: u64,
}

/// Parameter counts of the planned run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ParamCounts {
    pub total: usize,
    pub trainable: usize,
}

/// The result: lines that sum to `peak_bytes`, the phase they belong to, and the time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Estimate {
    /// Terms alive at the peak; `Σ bytes == peak_bytes`.
    pub lines: Vec<Line>,
    /// The lines summed by band, in [`Band::ALL`] order (every band, zeros included).
    pub bands: Vec<BandTotal>,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub peak_bytes: u64,
    /// Which moment of the step is the peak.
    pub peak_phase: String,
    pub phases: Vec<Phase>,
    /// On a GPU: the device part of `peak_bytes` (the rest is host memory). 0 on CPU.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub device_bytes: u64,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub host_bytes: u64,
    pub params: ParamCounts,
    /// Matmul FLOPs of one trained token (forward, backward, recompute).
    pub flops_per_token: f64,
    pub tokens_per_s: f64,
    /// Seconds of one optimizer step, by kind of work.
    pub step_time: super::time::StepTime,
}

impl Estimate {
    /// Bytes of the lines named `names` (for "what is already in memory" questions).
    pub fn bytes_of(&self, names: &[&str]) -> u64 {
        self.lines
            .iter()
            .filter(|l| names.contains(&l.name.as_str()))
            .map(|l| l.bytes)
            .sum()
    }
}

/// The estimate with the project's measured [`Calibration`].
pub fn estimate(c: &Config, req: &PlanRequest) -> Estimate {
    estimate_with(c, req, &Calibration::default())
}

/// The estimate with explicit constants (the benchmark refits them): the lines of every moment
/// of a step, the largest moment as the peak, and the step time.
pub fn estimate_with(c: &Config, req: &PlanRequest, k: &Calibration) -> Estimate {
    let resident = resident_lines(c, req, k);
    let kept = kept_activation_lines(c, req, k);
    let transient = TransientLines::new(c, req, k);
    let mut moments = step_moments(&kept, &transient, req.evaluation);
    for (_, lines) in &mut moments {
        lines.splice(0..0, resident.iter().cloned());
    }
    let phases: Vec<Phase> = moments
        .iter()
        .map(|(n, ls)| Phase {
            name: n.clone(),
            bytes: ls.iter().map(|l| l.bytes).sum(),
        })
        .collect();
    let (peak_phase, mut lines) = moments
        .into_iter()
        .max_by_key(|(_, ls)| ls.iter().map(|l| l.bytes).sum::<u64>())
        .unwrap_or_default();
    lines.retain(|l| l.bytes > 0);
    if req.device != ComputeDevice::Cpu {
        lines.push(line(
            "gpu_context",
            Band::Overhead,
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
    let bands = Band::ALL
        .iter()
        .map(|&band| BandTotal {
            band,
            bytes: lines
                .iter()
                .filter(|l| l.band == band)
                .map(|l| l.bytes)
                .sum(),
        })
        .collect();
    let tokens = (req.batch_size.max(1) * req.seq_len.max(1) * req.grad_accum.max(1)) as f64;
    let step_time = super::time::step_time(c, req, k);
    Estimate {
        lines,
        bands,
        peak_bytes,
        peak_phase,
        phases,
        device_bytes: peak_bytes - host_bytes,
        host_bytes,
        params: ParamCounts {
            total: crate::model::count::parameter_count(c),
            trainable: trainable_parameters(c, &req.method),
        },
        flops_per_token: train_flops_per_token(c, req),
        tokens_per_s: tokens / step_time.total().max(1e-12),
        step_time,
    }
}

/// The GGUF block types QLoRA trains over, when it does (else NF4).
fn gguf_qlora(req: &PlanRequest) -> Option<GgufBase> {
    matches!(req.method, crate::peft::method::Method::Qlora(_))
        .then_some(req.gguf_base)
        .flatten()
        .filter(|_| req.device == ComputeDevice::Cpu)
}

/// `(quantized, dense, trained)` bytes of the base as the run stores it: NF4, or the GGUF's
/// block types (the embedding moved from dense to quantized when it is one of them).
fn stored_base_bytes(c: &Config, req: &PlanRequest) -> (u64, u64, u64) {
    let (nf4, dense, trained) = base_weight_bytes(c, &req.method, req.weight_dtype);
    match gguf_qlora(req) {
        None => (nf4, dense, trained),
        Some(g) => {
            let embed_dense = match (g.embed_bytes, req.weight_dtype) {
                (None, _) => 0,
                (Some(_), WeightDtype::F32) => 4 * (c.vocab_size * c.hidden_size) as u64,
                (Some(_), WeightDtype::Bf16) => 2 * (c.vocab_size * c.hidden_size) as u64,
            };
            let quantized = g.linear_bytes + g.embed_bytes.unwrap_or(0);
            (quantized, dense.saturating_sub(embed_dense), trained)
        }
    }
}

/// Alive for the whole run: runtime, tokenizer, base weights in their storage, adapters and the
/// optimizer's moments.
fn resident_lines(c: &Config, req: &PlanRequest, k: &Calibration) -> Vec<Line> {
    let v = c.vocab_size as u64;
    let trainable = trainable_parameters(c, &req.method) as u64;
    let (nf4, dense, trained_base) = stored_base_bytes(c, req);
    let mut out = vec![
        line(
            "runtime",
            Band::Overhead,
            k.runtime_bytes,
            "binary, threads, allocator arenas and the dataset (measured)".into(),
        ),
        line(
            "tokenizer",
            Band::Overhead,
            k.tokenizer_bytes_per_token * v,
            format!(
                "vocabulary maps: {v} tokens × {} B",
                k.tokenizer_bytes_per_token
            ),
        ),
    ];
    match (nf4, gguf_qlora(req)) {
        (0, _) => {}
        (_, Some(g)) => out.push(line(
            "base_weights.gguf",
            Band::Weights,
            nf4,
            format!(
                "block projections{} in the GGUF's own block types, as the file stores them",
                if g.embed_bytes.is_some() {
                    " and embedding"
                } else {
                    ""
                }
            ),
        )),
        (_, None) => out.push(line(
            "base_weights.nf4",
            Band::Weights,
            nf4,
            "block projections in NF4 with double quantization (≈ 0.516 B/param)".into(),
        )),
    }
    if dense > 0 {
        let what = match req.weight_dtype {
            WeightDtype::F32 => "f32, 4 B/param",
            WeightDtype::Bf16 => "bf16 matrices 2 B/param, vectors f32",
        };
        out.push(line(
            "base_weights.frozen",
            Band::Weights,
            dense,
            format!("frozen weights ({what})"),
        ));
    }
    if trained_base > 0 {
        out.push(line(
            "base_weights.trainable",
            Band::Weights,
            trained_base,
            "weights being trained, f32 Vars (4 B/param)".into(),
        ));
    }
    if req.method.lora().is_some() {
        out.push(line(
            "adapters",
            Band::Adapters,
            F * trainable,
            format!("LoRA A and B, {trainable} params × 4 B"),
        ));
    }
    out.push(line(
        "optimizer_state",
        Band::Optimizer,
        2 * F * trainable,
        format!("AdamW first and second moments: 2 × {trainable} × 4 B"),
    ));
    out
}

/// Activations the forward pass keeps for backward (until `backward()` returns), and the
/// logits when the loss is not fused.
fn kept_activation_lines(c: &Config, req: &PlanRequest, k: &Calibration) -> Vec<Line> {
    let tokens = (req.batch_size.max(1) * req.seq_len.max(1)) as u64;
    let (h, v, layers) = (
        c.hidden_size as u64,
        c.vocab_size as u64,
        c.num_hidden_layers as u64,
    );
    let slack = |x: u64| (x as f64 * (1.0 + k.activation_slack)) as u64;
    let kept_layers = layers - first_kept_block(c, &req.method) as u64;
    let per = block_activations(
        c,
        &req.method,
        req.seq_len,
        req.device == ComputeDevice::Cpu,
    );
    let mut out = Vec::new();
    if req.grad_checkpointing {
        out.push(line("activations.block_inputs", Band::Activations, slack(F * tokens * h * (layers + 1)), format!("checkpointing keeps each block's input: ({layers} + 1) × {tokens} tokens × {h} × 4 B")));
    } else {
        out.push(line("activations.blocks", Band::Activations, slack(F * tokens * (per.dense * kept_layers + h)), format!("norms, q/k/v (+rope, head copies), attention output, MLP gate/up/product, residuals: {} floats/token × {kept_layers} blocks", per.dense)));
        out.push(line(
            "activations.attention_scores",
            Band::Activations,
            slack(F * tokens * per.attention * kept_layers),
            format!(
                "{} [b, {}, s, s] f32 × {kept_layers} blocks",
                match req.device == ComputeDevice::Cpu {
                    true => "softmax probs",
                    false => "scores and softmax probs",
                },
                c.num_attention_heads
            ),
        ));
        if per.lora > 0 {
            out.push(line(
                "activations.lora",
                Band::Activations,
                slack(F * tokens * per.lora * kept_layers),
                format!(
                    "LoRA: base outputs and fused deltas, both kept for the sum: {} floats/token/block",
                    per.lora
                ),
            ));
        }
    }
    out.push(line(
        "activations.final_norm",
        Band::Activations,
        F * tokens * h,
        "final rms-norm output (one fused op, weight included)".into(),
    ));
    // With a frozen dense output projection the loss is the fused, tiled lm_head +
    // cross-entropy (`ops::linear_cross_entropy`): no vocabulary-sized buffer is kept. A trained
    // or quantized head takes the ordinary logits path.
    if !loss_is_fused(c, &req.method, req.device == ComputeDevice::Cpu) {
        out.push(line(
            "logits",
            Band::Logits,
            F * tokens * v * 4,
            format!(
                "logits, log-softmax's shifted logits, exp and result: 4 × {tokens} × {v} × 4 B"
            ),
        ));
    }
    out
}

/// Terms alive during only some moments of a step.
struct TransientLines {
    gradients: Line,
    loss_tiles: Line,
    logits_grad: Line,
    logits_grad_retained: Line,
    block_backward: Line,
    attention_backward: Line,
    nf4_tiles: Line,
    loading: Line,
    optimizer_temporaries: Line,
    embedding_gradient_sum: Line,
    evaluation: Line,
}

impl TransientLines {
    fn new(c: &Config, req: &PlanRequest, k: &Calibration) -> Self {
        let tokens = (req.batch_size.max(1) * req.seq_len.max(1)) as u64;
        let (h, v) = (c.hidden_size as u64, c.vocab_size as u64);
        let trainable = trainable_parameters(c, &req.method) as u64;
        let slack = |x: u64| (x as f64 * (1.0 + k.activation_slack)) as u64;
        let fused_loss = loss_is_fused(c, &req.method, req.device == ComputeDevice::Cpu);
        let loss_tile = (F * tokens * v).min(LOSS_TILE_BYTES);
        let per = block_activations(
            c,
            &req.method,
            req.seq_len,
            req.device == ComputeDevice::Cpu,
        );
        let one_block = F * tokens * per.total();
        let logits_grad = if fused_loss {
            0
        } else {
            (k.logits_grad_copies * (F * tokens * v) as f64) as u64
        };
        // Forward and backward each hold at most one dequantized tile of the largest projection.
        let largest = 4 * c.intermediate_size as u64 * c.hidden_size as u64;
        let tile = largest.min(DEFAULT_TILE_BYTES as u64);
        let nf4 = stored_base_bytes(c, req).0;
        // A trained embedding's gradient is a scatter into a zeroed table, and a tied one then
        // adds the output head's gradient: at the end of the backward, with every activation
        // still held by the graph, up to two table-sized buffers are alive beyond the one
        // counted in `gradients` (SmolLM2 full fine-tuning peaked ≈ 145 MB above the other
        // phases).
        let embedding_trains = trains_tensor(
            &req.method,
            "model.embed_tokens.weight",
            c.num_hidden_layers,
        );
        let eval = block_activations(
            c,
            &req.method,
            req.seq_len,
            req.device == ComputeDevice::Cpu,
        );
        let eval_logits = if fused_loss { 0 } else { 3 * v };
        let eval_acts = F * tokens * (eval.total() + 3 * h + eval_logits) + 2 * loss_tile;
        Self {
            gradients: line(
                "gradients",
                Band::Optimizer,
                F * trainable,
                format!("one f32 gradient per trainable parameter: {trainable} × 4 B"),
            ),
            // Only alive while the loss runs: counted in the logits-backward moment.
            loss_tiles: line(
                "loss_tiles",
                Band::Logits,
                if fused_loss { 2 * loss_tile } else { 0 },
                format!(
                    "fused lm_head + cross-entropy: two logits tiles of at most {} MiB, no [{tokens} × {v}] logits",
                    LOSS_TILE_BYTES >> 20
                ),
            ),
            logits_grad: line(
                "logits_grad",
                Band::Logits,
                logits_grad,
                format!(
                    "vocabulary-sized gradients in flight in the loss backward: {} × {tokens} × {v} × 4 B",
                    k.logits_grad_copies
                ),
            ),
            // glibc serves a request from its heap, and keeps it resident after free, when it
            // is under the mmap threshold, which rises to the size of each mmapped block freed
            // (up to 32 MiB). So from the second step on, logits-sized gradients under 32 MiB
            // stay resident through the block backward that follows the loss; larger ones go
            // back to the system.
            logits_grad_retained: line(
                "logits_grad_retained",
                Band::Logits,
                if cfg!(target_env = "gnu")
                    && !fused_loss
                    && F * tokens * v <= GLIBC_MMAP_THRESHOLD_MAX
                {
                    logits_grad
                } else {
                    0
                },
                format!(
                    "freed logits gradients glibc keeps resident ({tokens} × {v} × 4 B is under its 32 MiB mmap threshold)"
                ),
            ),
            block_backward: if req.grad_checkpointing {
                line(
                    "activations.recompute",
                    Band::Activations,
                    slack(2 * one_block),
                    "checkpointing: one block's activations recomputed plus their gradients"
                        .into(),
                )
            } else {
                line(
                    "block_backward",
                    Band::Activations,
                    one_block,
                    "gradients of one block's activations in flight".into(),
                )
            },
            // The attention's backward holds the gradients of the scores and of the
            // probabilities of one block while it runs; the CPU's fused op one of them.
            attention_backward: line(
                "attention_backward",
                Band::Activations,
                F * tokens * per.attention,
                format!(
                    "one block's attention-score gradients in flight: {} × [b, heads, s, s] f32",
                    per.attention / (c.num_attention_heads * req.seq_len.max(1)).max(1) as u64
                ),
            ),
            loading: loading_line(c, req),
            nf4_tiles: line(
                "nf4_dequant_tiles",
                Band::Activations,
                if nf4 > 0 { 2 * tile } else { 0 },
                format!(
                    "QLoRA: dequantized f32 tiles of at most {} MiB (forward and backward)",
                    DEFAULT_TILE_BYTES >> 20
                ),
            ),
            optimizer_temporaries: line(
                "optimizer_temporaries",
                Band::Optimizer,
                2 * F * largest_trainable(c, &req.method) as u64,
                "AdamW's fused update: a copy of the gradient and of the new values, largest trainable tensor".into(),
            ),
            embedding_gradient_sum: line(
                "embedding_gradient_sum",
                Band::Optimizer,
                if embedding_trains {
                    (if c.tie_word_embeddings { 2 } else { 1 }) * F * v * h
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
            ),
            evaluation: line(
                "evaluation_activations",
                Band::Activations,
                slack(eval_acts),
                "validation forward without a graph: one block's activations and the loss".into(),
            ),
        }
    }
}

/// While the weights load: one tensor is in flight beyond what is already stored. A tensor is
/// widened to f32 from the file's mapping a few MiB at a time (`model::tensors`); kept as f32
/// that is the result itself, but converted to bf16 or quantized to NF4 the f32 copy is
/// transient, so the largest such tensor sets the line. A GGUF's own block types are copied
/// as they are (small).
fn loading_line(c: &Config, req: &PlanRequest) -> Line {
    const CHUNK: u64 = 4 << 20;
    let qlora = matches!(req.method, crate::peft::method::Method::Qlora(_));
    let gguf = gguf_qlora(req).is_some();
    let all = tensors(c);
    let frozen = |t: &TensorSpec| !trains_tensor(&req.method, &t.name, c.num_hidden_layers);
    let narrowed = |t: &TensorSpec| req.weight_dtype == WeightDtype::Bf16 && t.dims.is_some();
    let widened = all
        .iter()
        .filter(|t| {
            let to_nf4 = qlora && !gguf && t.block_linear;
            frozen(t) && (narrowed(t) || to_nf4)
        })
        .map(|t| 4 * t.numel as u64)
        .max()
        .unwrap_or(0);
    // A dense base loads in this order (`Decoder::load`: embedding, blocks, norm, head), so
    // while one tensor is widened the ones after it are not stored yet: the moment exceeds the
    // stored weights by the largest `widened − stored after it` (SmolLM2 in bf16: its
    // embedding comes first, and the load peak measured 294 MiB, not base + embedding).
    let widened = match qlora {
        true => widened,
        false => {
            let stored = |t: &TensorSpec| match frozen(t) && narrowed(t) {
                true => 2 * t.numel as u64,
                false => 4 * t.numel as u64,
            };
            let mut after: u64 = all.iter().map(stored).sum();
            let mut worst = 0u64;
            for t in &all {
                after -= stored(t);
                if frozen(t) && narrowed(t) {
                    worst = worst.max((4 * t.numel as u64).saturating_sub(after));
                }
            }
            worst
        }
    };
    line(
        "loading",
        Band::Activations,
        widened.max(CHUNK),
        "loading: the largest tensor widened to f32 before it is stored smaller (or one 4 MiB run of the file)".into(),
    )
}

/// The moments of a step with the non-resident lines alive in each.
fn step_moments(kept: &[Line], t: &TransientLines, evaluation: bool) -> Vec<(String, Vec<Line>)> {
    let with_kept = |extra: &[&Line]| -> Vec<Line> {
        kept.iter()
            .cloned()
            .chain(extra.iter().map(|l| (*l).clone()))
            .collect()
    };
    let mut out = vec![
        (
            "logits backward".to_string(),
            with_kept(&[&t.logits_grad, &t.loss_tiles, &t.nf4_tiles]),
        ),
        (
            "block backward".to_string(),
            with_kept(&[
                &t.gradients,
                &t.block_backward,
                &t.attention_backward,
                &t.nf4_tiles,
                &t.logits_grad_retained,
            ]),
        ),
        (
            "optimizer step".to_string(),
            vec![t.gradients.clone(), t.optimizer_temporaries.clone()],
        ),
        // Before the first step: the stored weights and one tensor in flight.
        ("loading".to_string(), vec![t.loading.clone()]),
    ];
    if t.embedding_gradient_sum.bytes > 0 {
        // Not the retained logits gradients: by the end of the backward glibc has split their
        // chunks for the blocks' smaller gradients.
        out.push((
            "embedding gradient".to_string(),
            with_kept(&[&t.gradients, &t.embedding_gradient_sum]),
        ));
    }
    if evaluation {
        // Evaluation runs through detached weights: no graph, so only one block's activations
        // and the loss's buffers are alive at once.
        out.push(("evaluation forward".to_string(), vec![t.evaluation.clone()]));
    }
    out
}

/// Bytes of the block projections of `c` in NF4 with double quantization.
pub fn nf4_linear_bytes(c: &Config) -> u64 {
    tensors(c)
        .iter()
        .filter(|t| t.block_linear)
        .map(|t| nf4_bytes(t.numel))
        .sum()
}
