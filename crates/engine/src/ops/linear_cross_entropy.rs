//! The training loss fused with the output projection:
//! `Σᵢ wᵢ · (logsumexp(zᵢ) − zᵢ[tᵢ]) / Σᵢ wᵢ` with `z = h·Wᵀ` for a frozen `W: [vocab, d]`.
//!
//! Why: the logits, their log-softmax and their gradient are all `tokens × vocab`. With
//! 49k–150k vocabularies that is the largest activation of a small model (256 tokens × 49152
//! f32 = 50 MB per buffer, and candle's autograd keeps about six such buffers alive from the
//! forward to the backward). This op never materialises them. The forward computes the logits
//! one tile at a time — a block of rows × a slice of the vocabulary, one GEMM, at most 8 MiB —
//! and folds each tile into a running per-row max / logsumexp (the online softmax) and picks
//! the target's logit, in plain loops; it keeps one f32 per row. The backward recomputes each
//! tile, turns it in place into `softmax − onehot(target)` scaled by the row's weight, and
//! multiplies by that slice of `W`, accumulating the block's `dh`. Transient memory is one tile
//! of logits (twice while it is copied out of the GEMM result), plus for a bf16 `W` one widened
//! tile of it (≤ 8 MiB; `W` is never widened whole, unlike the unfused `lm_head`).
//!
//! Tiles span many rows and a slice of the vocabulary rather than a few rows and the whole
//! vocabulary: a GEMM of a few dozen rows runs at half speed, and each row block re-reads all
//! of `W` (measured on a 256 × 576 × 49152 head: 8 MiB row chunks ≈ 2× the time of one GEMM,
//! vocabulary tiles ≈ 1×).
//!
//! Cost: one extra `lm_head` GEMM in the backward (the recomputation), against not allocating,
//! filling and reading several `tokens × vocab` buffers. Rows whose weight is zero (padding,
//! untrained prompt tokens) are skipped entirely: no GEMM, no softmax, a zero gradient.
//!
//! Like [`super::frozen_linear`], `W` is owned by the op, so it gets no gradient from candle;
//! a trained head ([`linear_cross_entropy_trained`]) has its gradient written tile by tile into
//! the trainer's buffer, from the same `softmax − onehot` tiles the input gradient uses.

use super::bf16_gemm::{gemm_bf16, BfRhs};
use super::bridge::cpu_to_tensor;
use super::gemm::{gemm_into, MatRef};
use super::trained_linear::WeightGrads;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, TensorId};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

mod one_pass;
mod tiles;

/// Upper bound on one tile of logits, and on one tile of the weight once widened to f32.
const TILE_BYTES: usize = 8 << 20;
/// Default rows per block: enough for the GEMM to run at full speed (a few dozen rows run it at
/// half speed), few enough that the vocabulary tiles stay wide.
const BLOCK_ROWS: usize = 1024;

fn err(msg: impl Into<String>) -> candle_core::Error {
    candle_core::Error::Msg(msg.into())
}

/// The checked, per-row side of the problem (everything but `h` and `W`) and the tiling.
pub(super) struct Plan {
    pub(super) targets: Vec<u32>,
    pub(super) weights: Vec<f32>,
    /// Rows with a positive weight, in order; the only rows ever computed.
    pub(super) active: Vec<u32>,
    /// `Σ weights`.
    pub(super) total: f64,
    /// Rows per block (at least 1).
    chunk_rows: usize,
    /// Vocabulary entries per tile (at least 1): a tile of logits is `chunk_rows × chunk_vocab`.
    chunk_vocab: usize,
}

impl Plan {
    /// `chunks`: `(rows, vocab)` per tile; by default sized from [`TILE_BYTES`].
    /// `(vocab, dw)`: the weight's shape.
    pub(super) fn new(
        h: &Tensor,
        (vocab, dw): (usize, usize),
        targets: &[u32],
        weights: &[f32],
        chunks: Option<(usize, usize)>,
    ) -> Result<Self> {
        let (n, d) = h.dims2()?;
        if d != dw {
            return Err(err(format!(
                "linear_cross_entropy: hidden size {d} does not match the weight's {dw}"
            )));
        }
        if targets.len() != n || weights.len() != n {
            return Err(err(format!(
                "linear_cross_entropy: {n} rows but {} targets and {} weights",
                targets.len(),
                weights.len()
            )));
        }
        if n > u32::MAX as usize {
            return Err(err("linear_cross_entropy: too many rows"));
        }
        let mut active = Vec::new();
        let mut total = 0f64;
        for (i, (&t, &wt)) in targets.iter().zip(weights).enumerate() {
            if !(wt.is_finite() && wt >= 0.0) {
                return Err(err(format!(
                    "linear_cross_entropy: weight {wt} at row {i} (weights must be finite and ≥ 0)"
                )));
            }
            if wt > 0.0 {
                if t as usize >= vocab {
                    return Err(err(format!(
                        "linear_cross_entropy: target {t} at row {i} is outside the vocabulary of {vocab}"
                    )));
                }
                active.push(i as u32);
                total += wt as f64;
            }
        }
        if total <= 0.0 {
            return Err(err(
                "no trained tokens in this batch (every target is masked)",
            ));
        }
        let (chunk_rows, chunk_vocab) = chunks.unwrap_or_else(|| {
            let rows = BLOCK_ROWS.min(active.len());
            let floats = TILE_BYTES / std::mem::size_of::<f32>();
            (rows, (floats / rows.max(1)).min(floats / d.max(1)))
        });
        Ok(Self {
            targets: targets.to_vec(),
            weights: weights.to_vec(),
            active,
            total,
            chunk_rows: chunk_rows.max(1),
            chunk_vocab: chunk_vocab.clamp(1, vocab.max(1)),
        })
    }

    /// Row blocks: the offset of the block in `active`, and its rows.
    fn blocks(&self) -> impl Iterator<Item = (usize, &[u32])> {
        self.active
            .chunks(self.chunk_rows)
            .enumerate()
            .map(move |(c, rows)| (c * self.chunk_rows, rows))
    }

    /// Vocabulary tiles as `(first id, count)`.
    fn tiles(&self, vocab: usize) -> impl Iterator<Item = (usize, usize)> {
        let step = self.chunk_vocab;
        (0..vocab)
            .step_by(step)
            .map(move |v0| (v0, step.min(vocab - v0)))
    }
}

/// Rows `v0..v0+len` of a frozen weight as an f32 `[len, d]` tensor.
pub type RowsFn = Arc<dyn Fn(usize, usize) -> Result<Tensor> + Send + Sync>;

/// The frozen `[vocab, d]` weight the loss multiplies by: a tensor (f32 or bf16), or rows
/// widened to f32 on demand (a GGUF block type, which `quant::ggml_op` widens; never whole).
#[derive(Clone)]
pub enum HeadWeight {
    Dense(Tensor),
    /// A bf16 weight multiplied in bf16 with f32 sums (`--bf16-compute`, [`super::bf16_gemm`]); the
    /// softmax and its statistics stay f32.
    Bf16(Tensor),
    /// Rows on demand (as [`HeadWeight::Rows`]) rounded to bf16 per tile and multiplied like
    /// [`HeadWeight::Bf16`] (QLoRA's quantized head under `--bf16-compute`).
    RowsBf16 {
        vocab: usize,
        d: usize,
        rows: RowsFn,
    },
    Rows {
        vocab: usize,
        d: usize,
        rows: RowsFn,
    },
}

impl HeadWeight {
    fn dims(&self) -> Result<(usize, usize)> {
        match self {
            HeadWeight::Dense(w) | HeadWeight::Bf16(w) => w.dims2(),
            HeadWeight::Rows { vocab, d, .. } | HeadWeight::RowsBf16 { vocab, d, .. } => {
                Ok((*vocab, *d))
            }
        }
    }
}

/// Where the bf16 products' weight tiles come from: a bf16 tensor's rows (borrowed) or rows
/// widened on demand and rounded.
enum Bf16Tiles<'a> {
    Slice(&'a [half::bf16]),
    Rows(&'a RowsFn),
}

impl Bf16Tiles<'_> {
    /// Rows `v0..v0+len` of the `[vocab, d]` weight in bf16.
    fn tile(&self, v0: usize, len: usize, d: usize) -> Result<Cow<'_, [half::bf16]>> {
        match self {
            Bf16Tiles::Slice(w) => Ok(Cow::Borrowed(&w[v0 * d..(v0 + len) * d])),
            Bf16Tiles::Rows(rows) => {
                let t = rows(v0, len)?;
                let (storage, layout) = t.storage_and_layout();
                let wide = match &*storage {
                    candle_core::Storage::Cpu(cpu) => super::logical_f32(cpu, layout)?,
                    _ => return Err(err("linear_cross_entropy: head rows off the CPU")),
                };
                let mut tile = vec![half::bf16::ZERO; wide.len()];
                super::bf16_gemm::round_into(&wide, &mut tile);
                Ok(Cow::Owned(tile))
            }
        }
    }
}

/// Runs `f` on a bf16 head as a row-major `[vocab, d]` slice borrowed from its storage.
fn with_bf16_head<R>(w: &Tensor, f: impl FnOnce(&[half::bf16]) -> Result<R>) -> Result<R> {
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::BF16(v)), Some((a, b))) => f(&v[a..b]),
        _ => Err(err(
            "linear_cross_entropy: the bf16 products need a bf16 head on the CPU",
        )),
    }
}

/// One tile of logits `[rows, len]` for weight rows `v0..v0+len`, in bf16 products with f32
/// sums (the activations rounded where they meet the weight).
fn logits_tile_bf16(
    hb: &[f32],
    rows: usize,
    tile: &[half::bf16],
    d: usize,
    len: usize,
) -> Result<Vec<f32>> {
    let mut z = vec![0f32; rows * len];
    gemm_bf16(
        &mut z,
        len,
        hb,
        rows,
        d,
        BfRhs::Transposed(tile),
        len,
        false,
    )?;
    Ok(z)
}

/// Rows `v0..v0+len` of `w` as f32: a view when `w` is f32, a tile-sized copy when it is bf16
/// or quantized (so such a weight is never widened whole).
fn weight_tile(w: &HeadWeight, v0: usize, len: usize) -> Result<Tensor> {
    let t = match w {
        HeadWeight::Dense(w) | HeadWeight::Bf16(w) => w.narrow(0, v0, len)?,
        HeadWeight::Rows { rows, .. } | HeadWeight::RowsBf16 { rows, .. } => return rows(v0, len),
    };
    if t.dtype() == DType::F32 {
        Ok(t)
    } else {
        t.to_dtype(DType::F32)
    }
}

/// The given rows of `h` as an untracked `[rows, d]` f32 tensor.
fn gather_rows(h: &Tensor, rows: &[u32]) -> Result<Tensor> {
    let idx = Tensor::new(rows, h.device())?;
    h.detach().index_select(&idx, 0)?.to_dtype(DType::F32)
}

/// A row's running logsumexp over the tiles seen so far: `max + ln(sum)`, where `sum` is
/// relative to `max` (the online softmax normaliser).
#[derive(Clone, Copy)]
struct Running {
    max: f32,
    sum: f32,
    /// The target's logit, once its tile has been seen.
    picked: f32,
}

impl Running {
    const EMPTY: Self = Self {
        max: f32::NEG_INFINITY,
        sum: 0.0,
        picked: f32::NAN,
    };

    fn add(&mut self, z: &[f32]) {
        let m = super::fast_exp::max_lanes(z);
        if m == f32::NEG_INFINITY {
            // exp(−∞) = 0: nothing to add (and −∞ − (−∞) would be NaN).
            return;
        }
        if m > self.max {
            self.sum *= (self.max - m).exp();
            self.max = m;
        }
        let base = self.max;
        // Non-finite logits make the sum NaN, as the unfused log-softmax does.
        self.sum += super::fast_exp::exp_sum(z, base);
    }

    fn lse(&self) -> f32 {
        self.max + self.sum.ln()
    }
}

/// The mean loss and the logsumexp of every active row (indexed like `plan.active`).
fn forward_pass(h: &Tensor, w: &HeadWeight, plan: &Plan) -> Result<(f64, Vec<f32>)> {
    tiles::with_head(w, |head| forward_tiles(h, w, head, plan))
}

/// [`forward_pass`] over the head's tiles.
fn forward_tiles(
    h: &Tensor,
    w: &HeadWeight,
    head: tiles::Head<'_>,
    plan: &Plan,
) -> Result<(f64, Vec<f32>)> {
    let (vocab, d) = w.dims()?;
    let mut lse = vec![0f32; plan.active.len()];
    let mut sum = 0f64;
    for (start, rows) in plan.blocks() {
        let hb = gather_rows(h, rows)?.flatten_all()?.to_vec1::<f32>()?;
        let mut run = vec![Running::EMPTY; rows.len()];
        for (v0, len) in plan.tiles(vocab) {
            let z = head.tile(v0, len, d)?.logits(&hb, rows.len(), d)?;
            run.par_iter_mut()
                .zip(rows.par_iter())
                .zip(z.par_chunks(len))
                .for_each(|((st, &r), zr)| {
                    st.add(zr);
                    let t = plan.targets[r as usize] as usize;
                    if (v0..v0 + len).contains(&t) {
                        st.picked = zr[t - v0];
                    }
                });
        }
        // Summed sequentially, in row order: the result does not depend on thread scheduling.
        for ((&r, st), l) in rows
            .iter()
            .zip(&run)
            .zip(&mut lse[start..start + rows.len()])
        {
            *l = st.lse();
            sum += plan.weights[r as usize] as f64 * (*l - st.picked) as f64;
        }
    }
    Ok((sum / plan.total, lse))
}

/// `dh = g · Σ-weighted (softmax(z) − onehot(t)) · W`, `[n, d]`; zero on inactive rows. With
/// `dw` (a trained head, `[vocab, d]` row-major), also `dW += dzᵀ · h` tile by tile, each
/// tile's rows written once per row block by one GEMM.
fn backward_pass(
    h: &Tensor,
    w: &HeadWeight,
    plan: &Plan,
    lse: &[f32],
    g: f32,
    dw: Option<&mut [f32]>,
) -> Result<Tensor> {
    match w {
        // Only a frozen head is bf16: its gradient comes from the one-pass forward (kept by
        // the op; recomputed here only if it was not).
        HeadWeight::Bf16(_) | HeadWeight::RowsBf16 { .. } => {
            let one = one_pass::forward_with_grad(h, w, plan)?;
            Tensor::from_vec(one.dh, h.shape(), h.device())? * g as f64
        }
        _ => backward_tiles(h, w, plan, lse, g, dw),
    }
}

/// `(softmax − onehot)` of one tile of logits `z` `[rows, len]` in place, each row scaled by
/// its weight.
fn softmax_minus_onehot(
    z: &mut [f32],
    len: usize,
    v0: usize,
    rows: &[u32],
    lse: &[f32],
    plan: &Plan,
    scale: f64,
) {
    z.par_chunks_mut(len)
        .zip(rows.par_iter().zip(lse.par_iter()))
        .for_each(|(zr, (&r, &l))| {
            let r = r as usize;
            let s = (scale * plan.weights[r] as f64) as f32;
            super::fast_exp::exp_scale(zr, l, s);
            let t = plan.targets[r] as usize;
            if (v0..v0 + len).contains(&t) {
                zr[t - v0] -= s;
            }
        });
}

/// The two-pass backward (a trained head's, whose `dW` needs each normalised tile): each tile
/// of logits is recomputed, turned into `softmax − onehot`, and multiplied by the tile.
fn backward_tiles(
    h: &Tensor,
    w: &HeadWeight,
    plan: &Plan,
    lse: &[f32],
    g: f32,
    dw: Option<&mut [f32]>,
) -> Result<Tensor> {
    tiles::with_head(w, |head| backward_over(h, w, head, plan, lse, g, dw))
}

fn backward_over(
    h: &Tensor,
    w: &HeadWeight,
    head: tiles::Head<'_>,
    plan: &Plan,
    lse: &[f32],
    g: f32,
    mut dw: Option<&mut [f32]>,
) -> Result<Tensor> {
    let (n, d) = h.dims2()?;
    let vocab = w.dims()?.0;
    let mut dh = vec![0f32; n * d];
    let scale = g as f64 / plan.total;
    for (start, rows) in plan.blocks() {
        let r = rows.len();
        let hb = gather_rows(h, rows)?.flatten_all()?.to_vec1::<f32>()?;
        let lse = &lse[start..start + r];
        let mut acc = vec![0f32; r * d];
        for (v0, len) in plan.tiles(vocab) {
            let tile = head.tile(v0, len, d)?;
            let mut z = tile.logits(&hb, r, d)?;
            softmax_minus_onehot(&mut z, len, v0, rows, lse, plan, scale);
            if let Some(dw) = dw.as_deref_mut() {
                gemm_into(
                    &mut dw[v0 * d..(v0 + len) * d],
                    MatRef::row_major(&z, r, len).t(),
                    MatRef::row_major(&hb, r, d),
                    1.0,
                    true,
                )?;
            }
            tile.accumulate(&mut acc, &z, r, d)?;
        }
        for (&row, src) in rows.iter().zip(acc.chunks(d)) {
            dh[row as usize * d..(row as usize + 1) * d].copy_from_slice(src);
        }
    }
    Tensor::from_vec(dh, (n, d), h.device())
}

struct LinearCrossEntropy {
    /// `[vocab, d]`, frozen.
    w: HeadWeight,
    /// A trained head (full fine-tuning's tied embedding): where its gradient goes.
    trained: Option<(WeightGrads, TensorId)>,
    plan: Plan,
    /// Per-active-row logsumexp from the forward. Kept (4 bytes a trained token) rather than
    /// recomputed: with it the backward needs a single `exp` pass per row instead of a max
    /// pass, a sum pass and an `exp` pass. Filled exactly once, by `cpu_fwd`.
    lse: OnceLock<Vec<f32>>,
    /// Set for a frozen head whose input is tracked: the forward also computes `dh`
    /// ([`one_pass`]) and the backward only scales it.
    grad_in_forward: bool,
    /// `d loss / d h` for an upstream gradient of 1, from a one-pass forward.
    dh: OnceLock<Vec<f32>>,
}

impl CustomOp1 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _profile = super::profile::span(super::profile::Kind::Loss);
        let h = cpu_to_tensor(storage, layout)?;
        if self.grad_in_forward {
            let one = one_pass::forward_with_grad(&h, &self.w, &self.plan)?;
            let _ = self.lse.set(one.lse);
            let _ = self.dh.set(one.dh);
            return Ok((CpuStorage::F32(vec![one.loss as f32]), Shape::from(())));
        }
        let (loss, lse) = forward_pass(&h, &self.w, &self.plan)?;
        // A second forward of the same op (which candle never does) would compute the same.
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _profile = super::profile::span(super::profile::Kind::Loss);
        let g = grad
            .detach()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .first()
            .copied()
            .ok_or_else(|| err("linear_cross_entropy: empty upstream gradient"))?;
        let h = arg.detach();
        if let Some(dh) = self.dh.get() {
            return Ok(Some(
                (Tensor::from_slice(dh, h.shape(), h.device())? * g as f64)?,
            ));
        }
        let recomputed;
        let lse = match self.lse.get() {
            Some(l) => l,
            None => {
                recomputed = forward_pass(&h, &self.w, &self.plan)?.1;
                &recomputed
            }
        };
        let Some((grads, id)) = &self.trained else {
            return Ok(Some(backward_pass(&h, &self.w, &self.plan, lse, g, None)?));
        };
        let (vocab, d) = self.w.dims()?;
        let dh = grads.with_buffer(*id, vocab * d, |dw| {
            backward_pass(&h, &self.w, &self.plan, lse, g, Some(dw))
        })?;
        Ok(Some(dh))
    }
}

/// The mean token loss of `h · wᵀ` without materialising the logits (see the module docs).
///
/// `h: [n, d]` f32 (tracked or not), `w: [vocab, d]` frozen (f32 or bf16), `targets` and
/// `weights` of length `n` (weights finite and ≥ 0; rows weighing 0 are skipped). Returns the
/// scalar `Σ wᵢ·(logsumexp(zᵢ) − zᵢ[tᵢ]) / Σ wᵢ`; the backward gives `h` its gradient and `w`
/// none.
///
/// # Errors
/// Mismatched shapes, a negative or non-finite weight, a weighted target outside the
/// vocabulary, or `Σ weights ≤ 0` ("no trained tokens in this batch").
pub fn linear_cross_entropy(
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    weights: &[f32],
) -> Result<Tensor> {
    with_chunks(h, w, targets, weights, None)
}

/// [`linear_cross_entropy`] over a weight given as rows on demand (a quantized head): the
/// fused CPU op only.
///
/// # Errors
/// As [`linear_cross_entropy`]; `h` on another device than the CPU.
pub fn linear_cross_entropy_rows(
    h: &Tensor,
    head: HeadWeight,
    targets: &[u32],
    weights: &[f32],
) -> Result<Tensor> {
    if !h.device().is_cpu() {
        candle_core::bail!("a quantized output head has only the CPU loss kernel")
    }
    with_head(h, &head, targets, weights, None)
}

/// [`linear_cross_entropy`] over a *trained* f32 head `w` (full fine-tuning's tied embedding, a
/// trained `lm_head`): the same fused loss, whose backward also writes `dW` into `grads` tile
/// by tile instead of candle materialising the logits and their gradient. The fused CPU op
/// only, and `h` must be tracked (else candle records no op and `W` would get no gradient).
///
/// # Errors
/// As [`linear_cross_entropy`]; an untracked `h` or a weight that is not an f32 CPU tensor.
pub fn linear_cross_entropy_trained(
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    weights: &[f32],
    grads: &WeightGrads,
) -> Result<Tensor> {
    trained_with_chunks(h, w, targets, weights, grads, None)
}

fn trained_with_chunks(
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    weights: &[f32],
    grads: &WeightGrads,
    chunks: Option<(usize, usize)>,
) -> Result<Tensor> {
    if !h.track_op() || !h.device().is_cpu() || w.dtype() != DType::F32 {
        candle_core::bail!("a trained output head in the fused loss needs a tracked f32 CPU input")
    }
    let head = HeadWeight::Dense(w.clone());
    let plan = Plan::new(h, head.dims()?, targets, weights, chunks)?;
    h.to_dtype(DType::F32)?.apply_op1(LinearCrossEntropy {
        w: head,
        trained: Some((grads.clone(), w.id())),
        plan,
        lse: OnceLock::new(),
        grad_in_forward: false,
        dh: OnceLock::new(),
    })
}

/// [`linear_cross_entropy`] with the tile size forced to `(rows, vocab)` (tests use tiny ones).
fn with_chunks(
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    weights: &[f32],
    chunks: Option<(usize, usize)>,
) -> Result<Tensor> {
    with_head(h, &HeadWeight::Dense(w.clone()), targets, weights, chunks)
}

/// [`with_chunks`] over any [`HeadWeight`].
fn with_head(
    h: &Tensor,
    w: &HeadWeight,
    targets: &[u32],
    weights: &[f32],
    chunks: Option<(usize, usize)>,
) -> Result<Tensor> {
    let plan = Plan::new(h, w.dims()?, targets, weights, chunks)?;
    if h.track_op() && !h.device().is_cpu() {
        candle_core::bail!(
            "the fused cross-entropy has only a CPU kernel; `ops::linear_cross_entropy` picks the generic op on {:?}",
            h.device().location()
        );
    }
    let h = h.to_dtype(DType::F32)?;
    if h.track_op() {
        return h.apply_op1(LinearCrossEntropy {
            w: w.clone(),
            trained: None,
            plan,
            lse: OnceLock::new(),
            grad_in_forward: true,
            dh: OnceLock::new(),
        });
    }
    let (loss, _) = forward_pass(&h, w, &plan)?;
    Tensor::new(loss as f32, h.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decoder::masked_cross_entropy;
    use crate::test_support::max_diff_slices;
    use candle_core::{Device, Var};

    const N: usize = 37;
    const DIM: usize = 16;
    const VOCAB: usize = 101;
    /// 27 active rows in blocks of 5, 101 logits in tiles of 17: both last ones partial.
    const CHUNK: Option<(usize, usize)> = Some((5, 17));

    /// Deterministic pseudo-random numbers in [-1, 1).
    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    struct Case {
        h: Vec<f32>,
        w: Vec<f32>,
        targets: Vec<u32>,
        weights: Vec<f32>,
    }

    fn case(general_weights: bool) -> Case {
        // Scaled so the logits spread over several units (a non-trivial softmax).
        let h = rand_vec(N * DIM, 1).iter().map(|v| v * 2.0).collect();
        let w = rand_vec(VOCAB * DIM, 2);
        let targets = rand_vec(N, 3)
            .iter()
            .map(|v| (((v + 1.0) / 2.0 * VOCAB as f32) as u32).min(VOCAB as u32 - 1))
            .collect();
        let weights = (0..N)
            .map(|i| match (i % 4, general_weights) {
                (0, _) => 0.0,
                (2, true) => 0.5,
                (3, true) => 2.0,
                _ => 1.0,
            })
            .collect();
        Case {
            h,
            w,
            targets,
            weights,
        }
    }

    fn tensors(c: &Case) -> (Tensor, Tensor) {
        let h = Tensor::from_vec(c.h.clone(), (N, DIM), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(c.w.clone(), (VOCAB, DIM), &Device::Cpu).unwrap();
        (h, w)
    }

    fn reference_loss(h: &Tensor, w: &Tensor, c: &Case) -> Tensor {
        let targets = Tensor::new(c.targets.as_slice(), &Device::Cpu).unwrap();
        let weights = Tensor::new(c.weights.as_slice(), &Device::Cpu).unwrap();
        masked_cross_entropy(&h.matmul(&w.t().unwrap()).unwrap(), &targets, &weights).unwrap()
    }

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    fn vec2(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Loss and `dh` through the fused op with `h` as a `Var`.
    fn fused_with_grad(c: &Case, w: &Tensor, chunk: Option<(usize, usize)>) -> (f32, Vec<f32>) {
        let (h, _) = tensors(c);
        let hv = Var::from_tensor(&h).unwrap();
        let loss = with_chunks(hv.as_tensor(), w, &c.targets, &c.weights, chunk).unwrap();
        let grads = loss.backward().unwrap();
        let dh = grads.get(hv.as_tensor()).expect("h has a gradient");
        (scalar(&loss), vec2(dh))
    }

    #[test]
    fn linear_cross_entropy_matches_masked_cross_entropy() {
        for general in [false, true] {
            let c = case(general);
            let (h, w) = tensors(&c);
            let want = scalar(&reference_loss(&h, &w, &c));
            for chunk in [CHUNK, Some((1, VOCAB)), Some((N, 1)), None] {
                // Untracked h: the no-graph path.
                let got = scalar(&with_chunks(&h, &w, &c.targets, &c.weights, chunk).unwrap());
                assert!((got - want).abs() < 1e-5, "untracked {got} vs {want}");
                // Tracked h: the custom op.
                let (got, _) = fused_with_grad(&c, &w, chunk);
                assert!((got - want).abs() < 1e-5, "op {got} vs {want}");
            }
            // The public entry point (default chunking) too.
            let got = scalar(&linear_cross_entropy(&h, &w, &c.targets, &c.weights).unwrap());
            assert!((got - want).abs() < 1e-5);
        }
    }

    /// A trained head: `dh` from the graph and `dW` from the buffer equal candle's autograd
    /// through the unfused logits, across partial tiles and row blocks.
    #[test]
    fn a_trained_head_gets_autograds_weight_gradient() {
        for general in [false, true] {
            let c = case(general);
            let (h, w) = tensors(&c);
            let (hv, wv) = (Var::from_tensor(&h).unwrap(), Var::from_tensor(&w).unwrap());
            let want = (reference_loss(hv.as_tensor(), wv.as_tensor(), &c) / 4.0)
                .unwrap()
                .backward()
                .unwrap();
            for chunk in [CHUNK, Some((N, 1)), None] {
                let grads = WeightGrads::default();
                let (x, wt) = (hv.as_tensor(), wv.as_tensor());
                let loss = trained_with_chunks(x, wt, &c.targets, &c.weights, &grads, chunk);
                let got = (loss.unwrap() / 4.0).unwrap().backward().unwrap();
                assert!(got.get(wt).is_none(), "dW goes to the buffer");
                let dw = grads.take(wt.id()).expect("a head gradient");
                let e = max_diff_slices(&dw, &vec2(want.get(wt).unwrap()));
                assert!(e < 1e-5, "dW differs by {e} ({chunk:?})");
                let dh = vec2(got.get(x).unwrap());
                assert!(max_diff_slices(&dh, &vec2(want.get(x).unwrap())) < 1e-5);
            }
        }
    }

    #[test]
    fn linear_cross_entropy_gradient_matches_autograd() {
        for general in [false, true] {
            let c = case(general);
            let (h, w) = tensors(&c);
            let hv = Var::from_tensor(&h).unwrap();
            let loss = reference_loss(hv.as_tensor(), &w, &c);
            // A non-unit upstream gradient, as under gradient accumulation.
            let grads = (loss / 4.0).unwrap().backward().unwrap();
            let want = vec2(grads.get(hv.as_tensor()).unwrap());

            let hv2 = Var::from_tensor(&h).unwrap();
            let fused = with_chunks(hv2.as_tensor(), &w, &c.targets, &c.weights, CHUNK).unwrap();
            let grads = (fused / 4.0).unwrap().backward().unwrap();
            let got = vec2(grads.get(hv2.as_tensor()).unwrap());
            let diff = max_diff_slices(&got, &want);
            assert!(diff < 1e-5, "max |dh diff| {diff}");
            // Zero-weight rows get exactly zero gradient.
            for (i, &wt) in c.weights.iter().enumerate() {
                if wt == 0.0 {
                    assert!(got[i * DIM..(i + 1) * DIM].iter().all(|&v| v == 0.0));
                }
            }
            // w is frozen: it is not an input of the graph at all.
            assert!(grads.get(&w).is_none());
        }
    }

    /// The one-pass forward rescales each row's running sums whenever a later tile holds a
    /// larger logit. Here every tile's logits are larger than the last one's (the head's rows
    /// grow along the vocabulary), so every row rescales at every tile; the gradient must still
    /// equal autograd's through the unfused loss, and the two-pass backward (a trained head's)
    /// over the same tiles.
    #[test]
    fn one_pass_gradient_survives_a_max_that_rises_every_tile() {
        let mut c = case(true);
        for (v, row) in c.w.chunks_mut(DIM).enumerate() {
            let grow = 0.5 + 6.0 * v as f32 / VOCAB as f32;
            row.iter_mut().for_each(|x| *x = x.abs() * grow);
        }
        c.h.iter_mut().for_each(|x| *x = x.abs());
        let (h, w) = tensors(&c);
        let hv = Var::from_tensor(&h).unwrap();
        let reference = reference_loss(hv.as_tensor(), &w, &c);
        let want = vec2(reference.backward().unwrap().get(hv.as_tensor()).unwrap());
        let (loss, got) = fused_with_grad(&c, &w, CHUNK);
        assert!(
            (loss - scalar(&reference)).abs() < 1e-4,
            "{loss} vs {}",
            scalar(&reference)
        );
        let diff = max_diff_slices(&got, &want);
        assert!(
            diff < 1e-5,
            "one pass against autograd: max |dh diff| {diff}"
        );
        // The same tiles through the two-pass backward.
        let head = HeadWeight::Dense(w.clone());
        let plan = Plan::new(&h, head.dims().unwrap(), &c.targets, &c.weights, CHUNK).unwrap();
        let (_, lse) = forward_pass(&h, &head, &plan).unwrap();
        let two = vec2(&backward_tiles(&h, &head, &plan, &lse, 1.0, None).unwrap());
        let diff = max_diff_slices(&got, &two);
        assert!(
            diff < 1e-5,
            "one pass against two passes: max |dh diff| {diff}"
        );
        assert!(
            got.iter().any(|&v| v.abs() > 1e-3),
            "a gradient that is not all zero"
        );
    }

    /// The loss in f64, straight from the definition.
    fn loss_f64(h: &[f64], c: &Case) -> f64 {
        let (mut sum, mut total) = (0f64, 0f64);
        for i in 0..N {
            let z: Vec<f64> = (0..VOCAB)
                .map(|v| {
                    (0..DIM)
                        .map(|k| h[i * DIM + k] * c.w[v * DIM + k] as f64)
                        .sum()
                })
                .collect();
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            sum += c.weights[i] as f64 * (lse - z[c.targets[i] as usize]);
            total += c.weights[i] as f64;
        }
        sum / total
    }

    #[test]
    fn linear_cross_entropy_gradient_matches_finite_differences() {
        let c = case(true);
        let (_, w) = tensors(&c);
        let (loss, dh) = fused_with_grad(&c, &w, CHUNK);
        let h64: Vec<f64> = c.h.iter().map(|&v| v as f64).collect();
        assert!((loss as f64 - loss_f64(&h64, &c)).abs() < 1e-5);
        let eps = 1e-4;
        // Entries spread over rows (including zero-weight ones, rows in the partial last chunk).
        for idx in [
            0,
            17,
            5 * DIM + 3,
            14 * DIM + 9,
            23 * DIM + 15,
            36 * DIM + 7,
        ] {
            let (mut hp, mut hm) = (h64.clone(), h64.clone());
            hp[idx] += eps;
            hm[idx] -= eps;
            let fd = (loss_f64(&hp, &c) - loss_f64(&hm, &c)) / (2.0 * eps);
            let got = dh[idx] as f64;
            assert!(
                (got - fd).abs() <= 1e-5 + 1e-3 * fd.abs(),
                "dh[{idx}] = {got}, finite difference {fd}"
            );
        }
    }

    #[test]
    fn linear_cross_entropy_bf16_weight_equals_widened_f32() {
        let c = case(false);
        let (_, w) = tensors(&c);
        let w_bf16 = w.to_dtype(DType::BF16).unwrap();
        let w_wide = w_bf16.to_dtype(DType::F32).unwrap();
        let (l_bf, dh_bf) = fused_with_grad(&c, &w_bf16, CHUNK);
        let (l_f32, dh_f32) = fused_with_grad(&c, &w_wide, CHUNK);
        assert!((l_bf - l_f32).abs() < 1e-6);
        assert!(max_diff_slices(&dh_bf, &dh_f32) < 1e-6);
    }

    /// A weight given as rows on demand (how a quantized head is passed) computes exactly what
    /// the same weight as a tensor does, loss and gradient, across partial tiles.
    #[test]
    fn linear_cross_entropy_over_rows_on_demand_equals_the_tensor() {
        let c = case(true);
        let (h, w) = tensors(&c);
        let src = w.clone();
        let rows: RowsFn = Arc::new(move |v0, len| src.narrow(0, v0, len)?.contiguous());
        let head = HeadWeight::Rows {
            vocab: VOCAB,
            d: DIM,
            rows,
        };
        let (want, want_dh) = fused_with_grad(&c, &w, CHUNK);
        let hv = Var::from_tensor(&h).unwrap();
        let loss = with_head(hv.as_tensor(), &head, &c.targets, &c.weights, CHUNK).unwrap();
        let grads = loss.backward().unwrap();
        let got_dh = vec2(grads.get(hv.as_tensor()).unwrap());
        assert_eq!(scalar(&loss), want);
        assert_eq!(max_diff_slices(&got_dh, &want_dh), 0.0);
    }

    /// The bf16 products (`--bf16-compute`): the loss is the f32 loss of the bf16-rounded `h`
    /// over the bf16 weight (only sum order differs); `dh` is the f32 gradient up to the
    /// rounding of `softmax − onehot` to bf16 where it meets `W`; a quantized head's rows
    /// rounded per tile give exactly the bf16 tensor's results; across partial tiles.
    #[test]
    fn bf16_products_in_the_loss_follow_the_rounded_operands() {
        let c = case(true);
        let (h, w) = tensors(&c);
        let w_bf16 = w.to_dtype(DType::BF16).unwrap();
        let w_wide = w_bf16.to_dtype(DType::F32).unwrap();
        let h_rounded = h
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let want = scalar(&reference_loss(&h_rounded, &w_wide, &c));
        let (_, want_dh) = fused_with_grad(&c, &w_wide, CHUNK);
        let src = w_wide.clone();
        let rows: RowsFn = Arc::new(move |v0, len| src.narrow(0, v0, len)?.contiguous());
        let heads = [
            HeadWeight::Bf16(w_bf16),
            HeadWeight::RowsBf16 {
                vocab: VOCAB,
                d: DIM,
                rows,
            },
        ];
        let mut results = Vec::new();
        for head in &heads {
            for chunk in [CHUNK, None] {
                let hv = Var::from_tensor(&h).unwrap();
                let loss = with_head(hv.as_tensor(), head, &c.targets, &c.weights, chunk).unwrap();
                let dh = vec2(loss.backward().unwrap().get(hv.as_tensor()).unwrap());
                let got = scalar(&loss);
                assert!((got - want).abs() < 1e-5, "loss {got} vs {want}");
                let scale = want_dh.iter().fold(0f32, |m, v| m.max(v.abs()));
                let off = max_diff_slices(&dh, &want_dh);
                assert!(off <= 1e-2 * scale, "dh off by {off} (max |dh| {scale})");
                assert!(off > 0.0, "dz was not rounded");
                results.push((got, dh));
            }
        }
        assert_eq!(
            results[0], results[2],
            "rows on demand differ from the bf16 tensor"
        );
    }

    #[test]
    fn linear_cross_entropy_rejects_bad_inputs_without_panicking() {
        let c = case(false);
        let (h, w) = tensors(&c);
        let hv = Var::from_tensor(&h).unwrap();
        let zeros = vec![0f32; N];
        for t in [&h, hv.as_tensor()] {
            let e = linear_cross_entropy(t, &w, &c.targets, &zeros).unwrap_err();
            assert!(e.to_string().contains("no trained tokens"), "{e}");
        }
        let mut neg = c.weights.clone();
        neg[3] = -1.0;
        assert!(linear_cross_entropy(&h, &w, &c.targets, &neg).is_err());
        let mut bad_target = c.targets.clone();
        bad_target[1] = VOCAB as u32; // weighted row
        assert!(linear_cross_entropy(&h, &w, &bad_target, &c.weights).is_err());
        // An out-of-vocabulary target on a masked row is fine (padding).
        let mut pad_target = c.targets.clone();
        pad_target[0] = u32::MAX;
        assert!(linear_cross_entropy(&h, &w, &pad_target, &c.weights).is_ok());
        assert!(linear_cross_entropy(&h, &w, &c.targets[1..], &c.weights).is_err());
        let w_wrong = Tensor::zeros((VOCAB, DIM + 1), DType::F32, &Device::Cpu).unwrap();
        assert!(linear_cross_entropy(&h, &w_wrong, &c.targets, &c.weights).is_err());
    }
}
