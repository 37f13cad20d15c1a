//! The loss and its input gradient in one pass over the vocabulary, for a frozen head.
//!
//! Why: the two-pass backward ([`super::backward_pass`]) recomputes every tile of logits (one
//! more `lm_head` GEMM: 7.2 GFLOP for SmolLM2 at 256 tokens) and runs the `exp` pass again.
//! The input gradient `dh = Σ_v softmax(z)_v · W_v − W_t` has the form of attention's output
//! (softmax times values, the head's rows as values), so it accumulates as flash attention's
//! does: each row keeps a running max `m`, a running `Σ exp(z − m)` and an unnormalised
//! `Σ exp(z − m) · W_v`, rescaled by `exp(m_old − m_new)` whenever the max grows, and divided
//! by the sum at the end. One pass over the tiles gives the loss and `dh`, which is kept
//! (`[n, d]`, 4·d bytes a token against the head's `4·vocab·d`); the backward only scales it by
//! the upstream gradient. A trained head needs each normalised tile for its own gradient, so it
//! keeps the two-pass backward.

use super::tiles::{with_head, Head};
use super::{gather_rows, HeadWeight, Plan};
use crate::ops::fast_exp::{exp_sum_in_place, max_lanes};
use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// The forward's results: the mean loss, each active row's logsumexp (indexed like
/// `plan.active`) and `d loss / d h` for an upstream gradient of 1 (`[n, d]`, zero on inactive
/// rows).
pub(super) struct OnePass {
    pub loss: f64,
    pub lse: Vec<f32>,
    pub dh: Vec<f32>,
}

/// One row's online softmax: running max, `Σ exp(z − max)`, and the target's logit.
#[derive(Clone, Copy)]
struct Row {
    max: f32,
    sum: f32,
    picked: f32,
}

/// The loss, logsumexps and input gradient of `h` (`[n, d]` f32) against the frozen head `w`.
pub(super) fn forward_with_grad(h: &Tensor, w: &HeadWeight, plan: &Plan) -> Result<OnePass> {
    with_head(w, |head| run(h, w, head, plan))
}

fn run(h: &Tensor, w: &HeadWeight, head: Head<'_>, plan: &Plan) -> Result<OnePass> {
    let (vocab, d) = w.dims()?;
    let n = h.dims2()?.0;
    let mut lse = vec![0f32; plan.active.len()];
    let mut dh = vec![0f32; n * d];
    let mut loss = 0f64;
    for (start, rows) in plan.blocks() {
        let r = rows.len();
        let hb = gather_rows(h, rows)?.flatten_all()?.to_vec1::<f32>()?;
        // Σ exp(z − max)·W_v per row, and the target's row of W.
        let mut acc = vec![0f32; r * d];
        let mut target_rows = vec![0f32; r * d];
        let mut state = vec![
            Row {
                max: f32::NEG_INFINITY,
                sum: 0.0,
                picked: f32::NAN,
            };
            r
        ];
        for (v0, len) in plan.tiles(vocab) {
            let tile = head.tile(v0, len, d)?;
            let mut z = tile.logits(&hb, r, d)?;
            // The head's row of each target in this tile (one row of W per active row, once).
            for (&row, tr) in rows.iter().zip(target_rows.chunks_mut(d)) {
                let t = plan.targets[row as usize] as usize;
                if (v0..v0 + len).contains(&t) {
                    tile.row_into(t - v0, tr)?;
                }
            }
            // Each row: rescale its sums to the new max, turn its logits into exp(z − max).
            z.par_chunks_mut(len)
                .zip(state.par_iter_mut())
                .zip(acc.par_chunks_mut(d))
                .zip(rows.par_iter())
                .for_each(|(((zr, st), ar), &row)| {
                    let t = plan.targets[row as usize] as usize;
                    if (v0..v0 + len).contains(&t) {
                        st.picked = zr[t - v0];
                    }
                    let m = max_lanes(zr);
                    if m == f32::NEG_INFINITY {
                        // exp(−∞) = 0: the tile adds nothing to this row.
                        zr.fill(0.0);
                        return;
                    }
                    if m > st.max {
                        let c = (st.max - m).exp();
                        st.sum *= c;
                        ar.iter_mut().for_each(|a| *a *= c);
                        st.max = m;
                    }
                    // Non-finite logits make the sum NaN, as the unfused log-softmax does.
                    st.sum += exp_sum_in_place(zr, st.max);
                });
            tile.accumulate(&mut acc, &z, r, d)?;
        }
        // Summed sequentially, in row order: the result does not depend on thread scheduling.
        for (i, (&row, st)) in rows.iter().zip(&state).enumerate() {
            let l = st.max + st.sum.ln();
            lse[start + i] = l;
            let weight = plan.weights[row as usize] as f64;
            loss += weight * (l - st.picked) as f64;
            let (k, inv) = ((weight / plan.total) as f32, 1.0 / st.sum);
            let out = &mut dh[row as usize * d..(row as usize + 1) * d];
            let (a, t) = (&acc[i * d..(i + 1) * d], &target_rows[i * d..(i + 1) * d]);
            for ((o, &a), &t) in out.iter_mut().zip(a).zip(t) {
                *o = k * (a * inv - t);
            }
        }
    }
    Ok(OnePass {
        loss: loss / plan.total,
        lse,
        dh,
    })
}
