//! Causal attention on the CPU as one op: `softmax(scale·q·kᵀ, mask)·v` with its backward.
//!
//! As three candle ops (scores matmul, causal softmax, probs matmul) a training step paid for
//! the whole `s × s` score matrix of every head although the causal mask zeroes half of it,
//! kept both the scores and the probabilities of every layer for backward, and copied the
//! output from head-major back to `[b, s, heads·d]` for `o_proj`. This op works in blocks of
//! query rows and multiplies only the keys a block can see (up to its last query), keeps only
//! the probabilities, writes the output straight into `[b, s, heads·d]`, and reads `v` through
//! its strides (the projection's output, never copied head-major).
//!
//! Shapes: `q: [b, heads, s, d]`, `k, v: [b, kv_heads, s, d]` (any strides with the last
//! dimension contiguous), grouped-query heads `h` reading key head `h / (heads / kv_heads)`
//! as `repeat_kv` pairs them. Masks as [`super::causal_softmax`] has them: causal, optionally a
//! sliding window of `w` keys (its own included), optionally packed rows whose queries see no
//! key before their own example's start. No KV cache: a prefill after cached tokens and
//! devices other than the CPU take the three-op path ([`causal_attention_with`]).
//!
//! Backward, with `P` the kept probabilities and `G` the output's gradient:
//! `dP = G·vᵀ`, `dS = scale · P ⊙ (dP − rowsum(P ⊙ dP))`, `dq = dS·k`, `dk = Σ_groups dSᵀ·q`,
//! `dv = Σ_groups Pᵀ·G` — the first three by blocks of query rows, the last two by blocks of
//! keys (each summing over the queries that can see it), so no two threads write one row.

use super::causal_softmax_packed_with;
use super::fast_exp::{exp_scale, exp_sum};
use super::gemm::{gemm_raw, MatRef};
use super::generic::OpPath;
use super::segments::Segments;
use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage,
    Tensor,
};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

/// Query rows (forward, `dq`) and key rows (`dk`, `dv`) per task: small enough that the 2
/// to 16 threads of a laptop get several tasks per head at s = 256, large enough that each
/// product is a GEMM rather than a dot product.
pub const BLOCK: usize = 64;

/// `softmax(scale·q·kᵀ, mask)·v` as `[b, s, heads·d]`; see the module docs. Fused on the CPU
/// for f32 without a cache offset; otherwise scores, [`causal_softmax_packed_with`] and a
/// second matmul (the same maths; `tests/attention.rs` checks the two against each other).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_with(
    path: OpPath,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    offset: usize,
    window: Option<usize>,
    segments: Option<&Segments>,
) -> Result<Tensor> {
    let (b, nh, s, d) = q.dims4()?;
    let (kb, nkv, kv_len, kd) = k.dims4()?;
    if kb != b || kd != d || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 {
        bail!(
            "attention: q {:?} does not pair with k {:?} and v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if window == Some(0) {
        bail!("attention: a window of 0 keys");
    }
    let f32s = [q, k, v].iter().all(|t| t.dtype() == DType::F32);
    if path.fused_on(q.device()) && f32s && offset == 0 && kv_len == s {
        if let Some(seg) = segments {
            seg.check(b, s)?;
        }
        return q.apply_op3(k, v, CausalAttention::new(scale, window, segments));
    }
    let groups = nh / nkv;
    let q = q.reshape((b, nkv, groups * s, d))?;
    let scores = q.matmul(&k.contiguous()?.t()?)?; // [b, nkv, groups·s, kv_len]
    let probs = causal_softmax_packed_with(path, &scores, scale, offset, s, window, segments)?;
    let out = probs.matmul(&v.contiguous()?)?.reshape((b, nh, s, d))?;
    out.transpose(1, 2)?.reshape((b, s, nh * d))
}

struct CausalAttention {
    scale: f32,
    window: Option<usize>,
    /// Packed rows: per (batch row, query), where the query's example starts.
    starts: Option<Arc<Vec<u32>>>,
    /// The forward's probabilities `[b, heads, s, s]` (zero outside each row's keys), for
    /// backward; freed with the op when the graph is.
    probs: OnceLock<Vec<f32>>,
}

impl CausalAttention {
    fn new(scale: f64, window: Option<usize>, segments: Option<&Segments>) -> Self {
        Self {
            scale: scale as f32,
            window,
            starts: segments.map(Segments::shared_starts),
            probs: OnceLock::new(),
        }
    }

    /// The keys query `i` of batch row `bi` sees: `start..i + 1`.
    fn keys(&self, bi: usize, s: usize, i: usize) -> (usize, usize) {
        let end = i + 1;
        let mut start = self.window.map_or(0, |w| end.saturating_sub(w));
        if let Some(st) = &self.starts {
            start = start.max(st[bi * s + i] as usize);
        }
        (start, end)
    }
}

/// A `[b, heads, s, d]` input read through its strides.
struct Heads<'a> {
    data: Cow<'a, [f32]>,
    /// Strides of the batch, head and position dimensions (the last is 1).
    sb: usize,
    sh: usize,
    ss: usize,
    d: usize,
}

impl<'a> Heads<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout) -> Result<Self> {
        let data = match storage {
            CpuStorage::F32(v) => v.as_slice(),
            other => bail!("attention: expected f32, got {:?}", other.dtype()),
        };
        let (_, h, s, d) = layout.shape().dims4()?;
        let st = layout.stride();
        if st[3] == 1 {
            return Ok(Self {
                data: Cow::Borrowed(&data[layout.start_offset()..]),
                sb: st[0],
                sh: st[1],
                ss: st[2],
                d,
            });
        }
        // A transposed last dimension: gather it (never produced by the decoder).
        let data = super::logical_f32(storage, layout)?;
        Ok(Self {
            data,
            sb: h * s * d,
            sh: s * d,
            ss: d,
            d,
        })
    }

    fn from_tensor(storage: &'a Storage, layout: &Layout) -> Result<Self> {
        match storage {
            Storage::Cpu(cpu) => Self::new(cpu, layout),
            _ => bail!("attention: expected a CPU tensor"),
        }
    }

    /// Positions `from..to` of head `h` in batch row `bi`, as a `[to − from, d]` matrix.
    fn rows(&self, bi: usize, h: usize, from: usize, to: usize) -> MatRef<'_> {
        MatRef {
            data: &self.data[bi * self.sb + h * self.sh + from * self.ss..],
            rows: to - from,
            cols: self.d,
            rs: self.ss,
            cs: 1,
        }
    }
}

/// A pointer shared by tasks that write disjoint elements behind it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: every task writes only elements no other task reads or writes (see each use).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn at(self, i: usize) -> *mut f32 {
        // SAFETY (of callers): `i` stays inside the allocation the pointer came from.
        self.0.wrapping_add(i)
    }
}

/// The rows `i0..i1` of a `[rows, s]` row-major buffer, columns `0..cols`, as a matrix.
fn block(data: &[f32], s: usize, i0: usize, i1: usize, cols: usize) -> MatRef<'_> {
    MatRef {
        data: &data[i0 * s..],
        rows: i1 - i0,
        cols,
        rs: s,
        cs: 1,
    }
}

/// Columns `0..rows` and rows `0..cols` of a row-major buffer with row stride `s`, starting at
/// `base`, transposed: a `[rows, cols]` matrix.
fn transposed_block(data: &[f32], base: usize, rows: usize, cols: usize, s: usize) -> MatRef<'_> {
    MatRef {
        data: &data[base..],
        rows,
        cols,
        rs: 1,
        cs: s,
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _profile = super::profile::span(super::profile::Kind::Attention);
        let (b, nh, s, d) = l1.shape().dims4()?;
        let nkv = l2.shape().dims4()?.1;
        let (q, k, v) = (
            Heads::new(s1, l1)?,
            Heads::new(s2, l2)?,
            Heads::new(s3, l3)?,
        );
        let (groups, nqb) = (nh / nkv, s.div_ceil(BLOCK));
        let mut probs = vec![0f32; b * nh * s * s];
        let mut out = vec![0f32; b * s * nh * d];
        let (pp, op) = (SendPtr(probs.as_mut_ptr()), SendPtr(out.as_mut_ptr()));
        (0..b * nh * nqb).into_par_iter().for_each(|t| {
            let (bh, qb) = (t / nqb, t % nqb);
            let (bi, h) = (bh / nh, bh % nh);
            let kvh = h / groups;
            let (i0, i1) = (qb * BLOCK, ((qb + 1) * BLOCK).min(s));
            let rows = pp.at((bh * s + i0) * s);
            // SAFETY: rows i0..i1 of head (bi, h)'s probabilities belong to this task alone,
            // and the products' operands are in bounds (`Heads::rows`, `block`).
            unsafe {
                let (qr, kr) = (q.rows(bi, h, i0, i1), k.rows(bi, kvh, 0, i1));
                gemm_raw(rows, s, qr, kr.t(), self.scale, false, 1);
                let p = std::slice::from_raw_parts_mut(rows, (i1 - i0) * s);
                for (r, row) in p.chunks_mut(s).enumerate() {
                    let (start, end) = self.keys(bi, s, i0 + r);
                    row[..start].fill(0.0);
                    row[end..i1].fill(0.0);
                    let x = &mut row[start..end];
                    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let z = exp_sum(x, m);
                    exp_scale(x, m, 1.0 / z);
                }
                // Output rows i0..i1, columns of head h, of [b, s, heads·d]: this task's alone.
                let dst = op.at(((bi * s + i0) * nh + h) * d);
                let pr = block(p, s, 0, i1 - i0, i1);
                gemm_raw(dst, nh * d, pr, v.rows(bi, kvh, 0, i1), 1.0, false, 1);
            }
        });
        let _ = self.probs.set(probs);
        Ok((CpuStorage::F32(out), Shape::from((b, s, nh * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _profile = super::profile::span(super::profile::Kind::Attention);
        let Some(p) = self.probs.get() else {
            bail!("attention: backward without a forward");
        };
        let (b, nh, s, d) = q.dims4()?;
        let nkv = k.dim(1)?;
        let (groups, gw) = (nh / nkv, nh * d);
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (qh, kh, vh) = (
            Heads::from_tensor(&qs, ql)?,
            Heads::from_tensor(&ks, kl)?,
            Heads::from_tensor(&vs, vl)?,
        );
        let g = super::bridge::tensor_f32(&gs, gl)?; // [b, s, heads·d]
        let g = &g[..];
        // G's rows from..to of head h in batch row bi.
        let g_rows = |bi: usize, h: usize, from: usize, to: usize| MatRef {
            data: &g[(bi * s + from) * gw + h * d..],
            rows: to - from,
            cols: d,
            rs: gw,
            cs: 1,
        };
        let mut ds = vec![0f32; b * nh * s * s];
        let mut dq = vec![0f32; b * nh * s * d];
        let (dsp, dqp) = (SendPtr(ds.as_mut_ptr()), SendPtr(dq.as_mut_ptr()));
        let nqb = s.div_ceil(BLOCK);
        (0..b * nh * nqb).into_par_iter().for_each(|t| {
            let (bh, qb) = (t / nqb, t % nqb);
            let (bi, h) = (bh / nh, bh % nh);
            let kvh = h / groups;
            let (i0, i1) = (qb * BLOCK, ((qb + 1) * BLOCK).min(s));
            let rows = dsp.at((bh * s + i0) * s);
            // SAFETY: rows i0..i1 of head (bi, h) in dS and dq belong to this task alone.
            unsafe {
                let vr = vh.rows(bi, kvh, 0, i1);
                gemm_raw(rows, s, g_rows(bi, h, i0, i1), vr.t(), 1.0, false, 1);
                let dsr = std::slice::from_raw_parts_mut(rows, (i1 - i0) * s);
                let pr = &p[(bh * s + i0) * s..(bh * s + i1) * s];
                for (r, (row, prow)) in dsr.chunks_mut(s).zip(pr.chunks(s)).enumerate() {
                    let (start, end) = self.keys(bi, s, i0 + r);
                    let (x, y) = (&mut row[start..end], &prow[start..end]);
                    let dot: f32 = x.iter().zip(y).map(|(a, b)| a * b).sum();
                    for (o, &pv) in x.iter_mut().zip(y) {
                        *o = self.scale * pv * (*o - dot);
                    }
                    row[..start].fill(0.0);
                    row[end..i1].fill(0.0);
                }
                let dst = dqp.at((bh * s + i0) * d);
                let dsb = block(dsr, s, 0, i1 - i0, i1);
                gemm_raw(dst, d, dsb, kh.rows(bi, kvh, 0, i1), 1.0, false, 1);
            }
        });
        let mut dk = vec![0f32; b * nkv * s * d];
        let mut dv = vec![0f32; b * nkv * s * d];
        let (dkp, dvp) = (SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
        let ds = &ds[..];
        (0..b * nkv * nqb).into_par_iter().for_each(|t| {
            let (bk, kb) = (t / nqb, t % nqb);
            let (bi, kvh) = (bk / nkv, bk % nkv);
            let (j0, j1) = (kb * BLOCK, ((kb + 1) * BLOCK).min(s));
            let (dkr, dvr) = (dkp.at((bk * s + j0) * d), dvp.at((bk * s + j0) * d));
            for gi in 0..groups {
                let h = kvh * groups + gi;
                let base = ((bi * nh + h) * s + j0) * s + j0;
                // Queries j0..s (the only ones that see keys j0..j1), keys j0..j1, transposed.
                let t = |m| transposed_block(m, base, j1 - j0, s - j0, s);
                // SAFETY: rows j0..j1 of key head (bi, kvh) in dk and dv belong to this task.
                unsafe {
                    let acc = gi > 0;
                    gemm_raw(dkr, d, t(ds), qh.rows(bi, h, j0, s), 1.0, acc, 1);
                    gemm_raw(dvr, d, t(p), g_rows(bi, h, j0, s), 1.0, acc, 1);
                }
            }
        });
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, nh, s, d), dev)?),
            Some(Tensor::from_vec(dk, (b, nkv, s, d), dev)?),
            Some(Tensor::from_vec(dv, (b, nkv, s, d), dev)?),
        ))
    }
}
