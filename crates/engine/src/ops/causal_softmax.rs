//! Scaled, causally masked softmax over attention scores, with its backward.
//!
//! Input `s: [b, h, rows, k]` whose rows are queries at positions `offset + (row mod q)`
//! (`rows = q`, or `groups · q` when grouped-query heads share their key head's scores
//! matrix) and key `j` at position `j` (`k = offset + q` with a KV cache). Output
//! `y_ij = softmax_j(scale · s_ij)` over `j ≤ position(i)`, and 0 above the diagonal.
//! Folding the mask in here means no additive mask tensor collects a gradient per layer;
//! the backward is `dx = scale · y ⊙ (g − Σ_j g ⊙ y)`. Right-padded batches need no extra
//! mask: padding sits after every real token, so causality already hides it.
//!
//! Sliding-window attention (Gemma 3's local layers, Phi-3): with a window `w`, a query at
//! position `p` sees keys `p − w + 1 ..= p` (its own included, `w` in all), as transformers'
//! `sliding_window_overlay` defines it; the rest of the row is 0 and gets no gradient.
//!
//! Packed rows (sample packing, [`Segments`]): a query also sees no key before the start of
//! its own example, so the mask is block-diagonal causal and examples never see each other.

use super::bridge::{logical_f32, tensor_f32};
use super::generic::OpPath;
use super::segments::Segments;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct CausalSoftmax {
    scale: f32,
    offset: usize,
    /// Queries per group of rows (the sequence length of this call).
    q: usize,
    /// Keys visible to each query, its own included (`None`: all earlier keys).
    window: Option<usize>,
    /// Packed rows: per (batch row, query), where the query's example starts; keys before it
    /// are hidden (block-diagonal causal mask).
    starts: Option<std::sync::Arc<Vec<u32>>>,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _profile = super::profile::span(super::profile::Kind::Attention);
        let dims = layout.shape().dims();
        let k = dims[dims.len() - 1];
        let x = logical_f32(storage, layout)?;
        let mut y = vec![0f32; x.len()];
        let (scale, offset, q, window) = (self.scale, self.offset, self.q.max(1), self.window);
        let starts = self.starts.as_deref().map(Vec::as_slice);
        // Score rows per batch row (kv heads · groups · q): the batch row of a score row.
        let per_batch = match starts {
            Some(st) => (x.len() / k) / (st.len() / q).max(1),
            None => 1,
        };
        y.par_chunks_mut(k)
            .zip(x.par_chunks(k))
            .enumerate()
            .for_each(|(row, (yr, xr))| {
                let end = ((row % q) + offset + 1).min(k);
                let mut start = window.map_or(0, |w| end.saturating_sub(w));
                if let Some(st) = starts {
                    start = start.max(st[(row / per_batch) * q + row % q] as usize);
                }
                let (yr, xr) = (&mut yr[start..end], &xr[start..end]);
                let m = xr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b * scale));
                let mut z = 0f32;
                for (o, &v) in yr.iter_mut().zip(xr) {
                    *o = (v * scale - m).exp();
                    z += *o;
                }
                let inv = 1.0 / z;
                for o in yr.iter_mut() {
                    *o *= inv;
                }
            });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _profile = super::profile::span(super::profile::Kind::Attention);
        let k = res.dim(candle_core::D::Minus1)?;
        let (ys, yl) = res.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (y, g) = (tensor_f32(&ys, yl)?, tensor_f32(&gs, gl)?);
        let mut dx = vec![0f32; y.len()];
        let scale = self.scale;
        dx.par_chunks_mut(k)
            .zip(y.par_chunks(k).zip(g.par_chunks(k)))
            .for_each(|(dr, (yr, gr))| {
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                    *o = scale * yv * (gv - dot);
                }
            });
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

/// `softmax(scale · scores)` with a causal mask; see the module docs for shapes.
pub fn causal_softmax(scores: &Tensor, scale: f64, offset: usize) -> Result<Tensor> {
    let q = scores.dim(candle_core::D::Minus2)?;
    causal_softmax_grouped(scores, scale, offset, q)
}

/// [`causal_softmax`] for scores whose rows are groups of `q` queries each (grouped-query
/// attention computed per key head: `[b, kv_heads, groups · q, k]`).
pub fn causal_softmax_grouped(
    scores: &Tensor,
    scale: f64,
    offset: usize,
    q: usize,
) -> Result<Tensor> {
    causal_softmax_windowed_with(OpPath::Auto, scores, scale, offset, q, None)
}

/// [`causal_softmax_grouped`] through the kernel `path` picks for the device.
pub fn causal_softmax_grouped_with(
    path: OpPath,
    scores: &Tensor,
    scale: f64,
    offset: usize,
    q: usize,
) -> Result<Tensor> {
    causal_softmax_windowed_with(path, scores, scale, offset, q, None)
}

/// [`causal_softmax_grouped`] where each query sees at most the last `window` keys (its own
/// included) when `window` is set.
pub fn causal_softmax_windowed(
    scores: &Tensor,
    scale: f64,
    offset: usize,
    q: usize,
    window: Option<usize>,
) -> Result<Tensor> {
    causal_softmax_windowed_with(OpPath::Auto, scores, scale, offset, q, window)
}

/// [`causal_softmax_windowed`] through the kernel `path` picks for the device (the generic op
/// off the CPU or for non-f32 scores).
pub fn causal_softmax_windowed_with(
    path: OpPath,
    scores: &Tensor,
    scale: f64,
    offset: usize,
    q: usize,
    window: Option<usize>,
) -> Result<Tensor> {
    causal_softmax_packed_with(path, scores, scale, offset, q, window, None)
}

/// [`causal_softmax_windowed_with`] over packed rows: a query also sees no key before the
/// start of its own example (`segments`, a `[batch, q]` layout; `offset` must be 0, packing
/// has no KV cache). With `None` it is the plain causal softmax.
pub fn causal_softmax_packed_with(
    path: OpPath,
    scores: &Tensor,
    scale: f64,
    offset: usize,
    q: usize,
    window: Option<usize>,
    segments: Option<&Segments>,
) -> Result<Tensor> {
    let rows = scores.dim(candle_core::D::Minus2)?;
    if q == 0 || rows % q != 0 {
        candle_core::bail!("causal softmax: {rows} score rows are not groups of {q} queries");
    }
    if window == Some(0) {
        candle_core::bail!("causal softmax: a window of 0 keys");
    }
    if let Some(seg) = segments {
        if offset != 0 {
            candle_core::bail!("causal softmax: packed rows with a KV cache (offset {offset})");
        }
        seg.check(scores.dim(0)?, q)?;
    }
    if !path.fused_on(scores.device()) || scores.dtype() != candle_core::DType::F32 {
        return super::generic_rowwise::causal_softmax_packed(
            scores, scale, offset, q, window, segments,
        );
    }
    scores.apply_op1(CausalSoftmax {
        scale: scale as f32,
        offset,
        q,
        window,
        starts: segments.map(Segments::shared_starts),
    })
}
