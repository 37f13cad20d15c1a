//! Attention of one new token over the KV cache (decode, no gradient): for each key head, the
//! query heads that share it score every cached key, take the softmax (over the last `window`
//! keys when the layer has one) and sum the values. Why not the general path: there each
//! token ran two batched GEMMs of a single query row per key head plus the softmax op, and at
//! a 1024-token context that cost more than the quantized projections. Keys and values are
//! read where the cache keeps them (strided views of its buffers), never copied.

use candle_core::{bail, CpuStorage, Device, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Contexts from which the key heads are spread over threads.
const PARALLEL_FROM: usize = 256;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight running sums: the compiler turns them into one vector register.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Start offset and element strides of a `[b, heads, len, d]` layout (rows must be contiguous).
fn row_strides(layout: &Layout) -> Result<(usize, [usize; 3])> {
    let s = layout.stride();
    if s.len() != 4 || s[3] != 1 {
        bail!("decode attention: keys/values must be [b, heads, len, d] with contiguous rows")
    }
    Ok((layout.start_offset(), [s[0], s[1], s[2]]))
}

/// `softmax(scale · q·kᵀ) · v` for one query position. `q: [b, kv_heads, groups, d]`,
/// `k`, `v`: `[b, kv_heads, len, d]` (any strides with contiguous rows); the result is
/// `[b, kv_heads, groups, d]`.
///
/// # Errors
/// Shapes that disagree, tensors that are not f32 on the CPU.
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    window: Option<usize>,
) -> Result<Tensor> {
    let (b, h, g, d) = q.dims4()?;
    let (kb, kh, len, kd) = k.dims4()?;
    if (kb, kh, kd) != (b, h, d) || v.dims4()? != (b, h, len, d) || len == 0 {
        bail!(
            "decode attention: q {:?}, k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let qv = q.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (koff, kst) = row_strides(kl)?;
    let (voff, vst) = row_strides(vl)?;
    let (Storage::Cpu(CpuStorage::F32(kd_)), Storage::Cpu(CpuStorage::F32(vd_))) = (&*ks, &*vs)
    else {
        bail!("decode attention: f32 CPU keys and values")
    };
    let start = window.map_or(0, |w| len.saturating_sub(w));
    let n = len - start;
    let head = |bh: usize| -> Vec<f32> {
        let (bi, hi) = (bh / h, bh % h);
        let krow = |j: usize| {
            let o = koff + bi * kst[0] + hi * kst[1] + j * kst[2];
            &kd_[o..o + d]
        };
        let vrow = |j: usize| {
            let o = voff + bi * vst[0] + hi * vst[1] + j * vst[2];
            &vd_[o..o + d]
        };
        let qs = &qv[bh * g * d..(bh + 1) * g * d];
        let mut scores = vec![0f32; g * n];
        for j in 0..n {
            let kr = krow(start + j);
            for gi in 0..g {
                scores[gi * n + j] = dot(&qs[gi * d..(gi + 1) * d], kr) * scale;
            }
        }
        for row in scores.chunks_exact_mut(n) {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            let mut z = 0f32;
            for x in row.iter_mut() {
                *x = (*x - m).exp();
                z += *x;
            }
            let inv = 1.0 / z;
            row.iter_mut().for_each(|x| *x *= inv);
        }
        let mut out = vec![0f32; g * d];
        for j in 0..n {
            let vr = vrow(start + j);
            for gi in 0..g {
                let p = scores[gi * n + j];
                for (o, &x) in out[gi * d..(gi + 1) * d].iter_mut().zip(vr) {
                    *o += p * x;
                }
            }
        }
        out
    };
    let outs: Vec<Vec<f32>> = if len >= PARALLEL_FROM {
        (0..b * h).into_par_iter().map(head).collect()
    } else {
        (0..b * h).map(head).collect()
    };
    Tensor::from_vec(outs.concat(), (b, h, g, d), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equals the general path (`q·kᵀ`, windowed causal softmax of the last row, `·v`) on
    /// strided views of bigger buffers, with and without a window.
    #[test]
    fn equals_matmul_softmax_matmul_on_cache_views() {
        let dev = Device::Cpu;
        let (b, h, g, d, len, cap) = (1, 3, 3, 64, 37, 50);
        let q = Tensor::randn(0f32, 1.0, (b, h, g, d), &dev).unwrap();
        let kbuf = Tensor::randn(0f32, 1.0, (b, h, cap, d), &dev).unwrap();
        let vbuf = Tensor::randn(0f32, 1.0, (b, h, cap, d), &dev).unwrap();
        let (k, v) = (
            kbuf.narrow(2, 0, len).unwrap(),
            vbuf.narrow(2, 0, len).unwrap(),
        );
        let scale = 0.125f32;
        for window in [None, Some(10)] {
            let got = decode_attention(&q, &k, &v, scale, window).unwrap();
            let scores = q.matmul(&k.t().unwrap()).unwrap();
            // The query is the last position: offset len-1 among `g` rows of one query each.
            let probs = crate::ops::causal_softmax_windowed(
                &scores.reshape((b, h, g, len)).unwrap(),
                scale as f64,
                len - 1,
                1,
                window,
            )
            .unwrap();
            let want = probs.matmul(&v.contiguous().unwrap()).unwrap();
            let diff = (&got - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "window {window:?}");
        }
    }
}
