//! The generic (any-device) version of the fused `linear_cross_entropy` op, and the entry
//! points that pick between them: the same loss
//! `Σᵢ wᵢ · (logsumexp(zᵢ) − zᵢ[tᵢ]) / Σᵢ wᵢ`, `z = h·Wᵀ`, without materialising the
//! `tokens × vocab` logits, written with tensor ops on the device.
//!
//! Forward: the rows with a positive weight are gathered once; the logits are computed one
//! vocabulary tile at a time (all active rows × a slice of the vocabulary) and folded into a
//! running max and sum per row (the online softmax); the target's logit is picked from the tile
//! that holds it. Only the per-row logsumexp is kept for backward. Backward recomputes each
//! tile, turns it into `softmax · coef` (`coef = wᵢ · g / Σw`), multiplies it by that slice of
//! `W` and subtracts `coef · W[tᵢ]` once; the result is scattered back to the full `[n, d]`
//! gradient with `index_add`. `W` is held by the op (no gradient), tiles are bounded by
//! [`GENERIC_TILE_BYTES`], and nothing crosses to the host: the upstream gradient stays a
//! device scalar.
//!
//! Precision: tile matmuls run in `h`'s dtype (bf16 on a GPU); the softmax statistics, the
//! loss and the gradient accumulation are f32.

use super::generic::{apply, GenericOp, OpPath};
use super::linear_cross_entropy::{linear_cross_entropy as fused, Plan};
use candle_core::{DType, Result, Tensor, D};
use std::sync::OnceLock;

/// Upper bound on one tile of f32 logits (64 MiB: a GPU wants large GEMMs).
pub const GENERIC_TILE_BYTES: usize = 64 << 20;

struct LinearCrossEntropy {
    /// `[vocab, d]`, frozen.
    w: Tensor,
    /// Rows with a positive weight, `[na]` u32.
    active: Tensor,
    /// Their targets as f32 `[na, 1]` (exact below 2^24) for the tile arithmetic, and as u32.
    targets_f: Tensor,
    targets: Tensor,
    /// Their weights, `[na, 1]` f32.
    weights: Tensor,
    total: f64,
    /// Vocabulary entries per tile.
    tile: usize,
    /// `[na, 1]` f32 logsumexp per active row, from the forward.
    lse: OnceLock<Tensor>,
}

impl LinearCrossEntropy {
    /// Vocabulary tiles as `(first id, count)`.
    fn tiles(&self) -> Result<Vec<(usize, usize)>> {
        let vocab = self.w.dim(0)?;
        Ok((0..vocab)
            .step_by(self.tile)
            .map(|v0| (v0, self.tile.min(vocab - v0)))
            .collect())
    }

    /// One f32 tile of logits, `[na, len]`.
    fn logits(&self, hb: &Tensor, v0: usize, len: usize) -> Result<Tensor> {
        let wt = self.w.narrow(0, v0, len)?.to_dtype(hb.dtype())?;
        hb.matmul(&wt.t()?)?.to_dtype(DType::F32)
    }

    /// `(lse [na, 1], picked target logits [na, 1])`.
    fn statistics(&self, hb: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut run: Option<(Tensor, Tensor)> = None;
        let mut picked = self.targets_f.zeros_like()?;
        for (v0, len) in self.tiles()? {
            let z = self.logits(hb, v0, len)?;
            let m_t = z.max_keepdim(D::Minus1)?;
            run = Some(match run {
                None => {
                    let s = z.broadcast_sub(&m_t)?.exp()?.sum_keepdim(D::Minus1)?;
                    (m_t, s)
                }
                Some((m, s)) => {
                    let m_new = m.maximum(&m_t)?;
                    let s = ((s * (m - &m_new)?.exp()?)?
                        + z.broadcast_sub(&m_new)?.exp()?.sum_keepdim(D::Minus1)?)?;
                    (m_new, s)
                }
            });
            // The target's logit, where it falls in this tile.
            let lo = v0 as f64;
            let inside = self
                .targets_f
                .ge(lo)?
                .mul(&self.targets_f.lt(lo + len as f64)?)?
                .to_dtype(DType::F32)?;
            let local = self
                .targets_f
                .affine(1.0, -lo)?
                .clamp(0.0, (len - 1) as f64)?
                .to_dtype(DType::U32)?;
            picked = (picked + z.gather(&local, 1)?.mul(&inside)?)?;
        }
        let (m, s) = run.ok_or_else(|| candle_core::Error::Msg("empty vocabulary".into()))?;
        Ok(((m + s.log()?)?, picked))
    }
}

impl GenericOp for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear-cross-entropy-generic"
    }

    fn forward(&self, xs: &[Tensor]) -> Result<Tensor> {
        let hb = xs[0].index_select(&self.active, 0)?;
        let (lse, picked) = self.statistics(&hb)?;
        let loss = ((&lse - picked)?.mul(&self.weights)?.sum_all()? / self.total)?;
        let _ = self.lse.set(lse);
        Ok(loss)
    }

    fn backward(
        &self,
        xs: &[Tensor],
        _want: &[bool],
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let h = &xs[0];
        let hb = h.index_select(&self.active, 0)?;
        let recomputed;
        let lse = match self.lse.get() {
            Some(l) => l,
            None => {
                recomputed = self.statistics(&hb)?.0;
                &recomputed
            }
        };
        // coef = wᵢ · g / Σw, [na, 1]; g stays on the device.
        let g = dy.to_dtype(DType::F32)?.reshape((1, 1))?;
        let coef = (self.weights.broadcast_mul(&g)? / self.total)?;
        let wt_rows = self
            .w
            .index_select(&self.targets, 0)?
            .to_dtype(DType::F32)?;
        let mut acc = wt_rows.broadcast_mul(&coef)?.neg()?;
        for (v0, len) in self.tiles()? {
            let p = self
                .logits(&hb, v0, len)?
                .broadcast_sub(lse)?
                .exp()?
                .broadcast_mul(&coef)?;
            let wt = self.w.narrow(0, v0, len)?.to_dtype(hb.dtype())?;
            let part = p.to_dtype(hb.dtype())?.matmul(&wt.contiguous()?)?;
            acc = (acc + part.to_dtype(DType::F32)?)?;
        }
        let dh = h
            .to_dtype(DType::F32)?
            .zeros_like()?
            .index_add(&self.active, &acc, 0)?;
        Ok(vec![Some(dh.to_dtype(h.dtype())?)])
    }
}

/// The generic op for a checked `plan`; `tile`: vocabulary entries per tile (default from
/// [`GENERIC_TILE_BYTES`]).
pub(super) fn with_plan(h: &Tensor, w: &Tensor, plan: Plan, tile: Option<usize>) -> Result<Tensor> {
    let dev = h.device();
    let na = plan.active.len();
    let idx =
        |rows: &[u32]| -> Vec<u32> { plan.active.iter().map(|&r| rows[r as usize]).collect() };
    let targets = idx(&plan.targets);
    let weights: Vec<f32> = plan
        .active
        .iter()
        .map(|&r| plan.weights[r as usize])
        .collect();
    let targets_f: Vec<f32> = targets.iter().map(|&t| t as f32).collect();
    let vocab = w.dim(0)?;
    let tile = tile
        .unwrap_or(GENERIC_TILE_BYTES / (4 * na.max(1)))
        .clamp(1, vocab.max(1));
    let op = LinearCrossEntropy {
        w: w.clone(),
        active: Tensor::new(plan.active.as_slice(), dev)?,
        targets_f: Tensor::from_vec(targets_f, (na, 1), dev)?,
        targets: Tensor::new(targets.as_slice(), dev)?,
        weights: Tensor::from_vec(weights, (na, 1), dev)?,
        total: plan.total,
        tile,
        lse: OnceLock::new(),
    };
    apply(op, &[h])
}

/// The generic op on any device, with the vocabulary tile forced when `tile` is set.
///
/// # Errors
/// As [`linear_cross_entropy`].
pub fn linear_cross_entropy_generic(
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    weights: &[f32],
    tile: Option<usize>,
) -> Result<Tensor> {
    let plan = Plan::new(h, w.dims2()?, targets, weights, None)?;
    with_plan(h, w, plan, tile)
}

/// The mean token loss of `h · wᵀ` without materialising the logits: the fused op on the CPU,
/// the generic op on other devices (see `linear_cross_entropy.rs` for the arguments).
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
    linear_cross_entropy_with(OpPath::Auto, h, w, targets, weights)
}

/// [`linear_cross_entropy`] through the kernel `path` picks for `h`'s device.
///
/// # Errors
/// As [`linear_cross_entropy`].
pub fn linear_cross_entropy_with(
    path: OpPath,
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    weights: &[f32],
) -> Result<Tensor> {
    if path.fused_on(h.device()) {
        fused(h, w, targets, weights)
    } else {
        linear_cross_entropy_generic(h, w, targets, weights, None)
    }
}
