//! `x · Wᵀ` for a weight in ggml's Q4_1 blocks, the way llama.cpp computes it: each input row
//! is quantized to Q8_1-like blocks (32 signed bytes, a scale and the scaled sum), and each
//! output is Σ_blocks d_w·d_x·(q_w·q_x) + m_w·s_x, the integer dot on AVX2 where the CPU has it.
//!
//! Why our own: candle 0.11 has SIMD dot products for Q4_0, Q8_0 and the k-quants but only a
//! scalar loop for Q4_1, which made a Q4_1 model (the bundled SmolLM2 GGUF) decode slower in
//! its own type than dequantized to f32. The activation blocks keep f32 scales (llama.cpp
//! rounds them to f16), so this is at least as close to the f32 product as llama.cpp is.

/// Weights per block.
pub const BLOCK: usize = 32;
/// Bytes per Q4_1 block: f16 scale, f16 min, 16 bytes of nibbles.
pub const BLOCK_BYTES: usize = 20;

/// One quantized activation block.
#[derive(Clone, Copy)]
struct XBlock {
    d: f32,
    /// `d · Σ q`: what the weight's min multiplies.
    s: f32,
    q: [i8; BLOCK],
}

const ZERO: XBlock = XBlock {
    d: 0.0,
    s: 0.0,
    q: [0; BLOCK],
};

fn quantize_row(x: &[f32], out: &mut [XBlock]) {
    for (xs, b) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in b.q.iter_mut().zip(xs) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        b.d = d;
        b.s = d * sum as f32;
    }
}

fn f16_at(w: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([w[at], w[at + 1]])).to_f32()
}

/// One output: a weight row (`blocks` Q4_1 blocks) against one quantized input row.
fn dot_scalar(w: &[u8], x: &[XBlock]) -> f32 {
    let mut sum = 0f32;
    for (wb, xb) in w.chunks_exact(BLOCK_BYTES).zip(x) {
        let (d, m) = (f16_at(wb, 0), f16_at(wb, 2));
        let mut si = 0i32;
        for j in 0..BLOCK / 2 {
            let byte = wb[4 + j];
            si += (byte & 0x0F) as i32 * xb.q[j] as i32 + (byte >> 4) as i32 * xb.q[j + 16] as i32;
        }
        sum += d * xb.d * si as f32 + m * xb.s;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{XBlock, BLOCK_BYTES};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `w` holds `x.len()` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(w: &[u8], x: &[XBlock]) -> f32 {
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        let p = w.as_ptr();
        for (i, xb) in x.iter().enumerate() {
            let b = p.add(i * BLOCK_BYTES);
            // Scale and min: two f16 at the block's start.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((b as *const i32).read_unaligned()));
            let d = _mm_cvtss_f32(dm);
            let m = _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1));
            let nib = _mm_loadu_si128(b.add(4) as *const __m128i);
            let lo = _mm_and_si128(nib, low);
            let hi = _mm_and_si128(_mm_srli_epi16(nib, 4), low);
            // Elements 0..16 are the low nibbles, 16..32 the high ones.
            let wq = _mm256_set_m128i(hi, lo);
            let xq = _mm256_loadu_si256(xb.q.as_ptr() as *const __m256i);
            // u8·i8 pairs to i16 (at most 2·15·127, no saturation), then to i32.
            let pairs = _mm256_maddubs_epi16(wq, xq);
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), sums, acc);
            mins += m * xb.s;
        }
        let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        _mm_cvtss_f32(h) + mins
    }

    /// A row of blocks widened to f32: `d·q + m` per weight, as a multiply then an add (not
    /// fused), so the values are the scalar path's bit for bit.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; `out` holds 32 values per 20-byte block of `w`.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn dequantize_row(w: &[u8], out: &mut [f32]) {
        let low = _mm_set1_epi8(0x0F);
        let o = out.as_mut_ptr();
        for i in 0..w.len() / BLOCK_BYTES {
            let b = w.as_ptr().add(i * BLOCK_BYTES);
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((b as *const i32).read_unaligned()));
            let d = _mm256_set1_ps(_mm_cvtss_f32(dm));
            let m = _mm256_set1_ps(_mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)));
            let nib = _mm_loadu_si128(b.add(4) as *const __m128i);
            let lo = _mm_and_si128(nib, low);
            let hi = _mm_and_si128(_mm_srli_epi16(nib, 4), low);
            // Elements 0..16 are the low nibbles, 16..32 the high ones, 8 per store.
            for (j, q) in [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)]
                .into_iter()
                .enumerate()
            {
                let f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
                let v = _mm256_add_ps(_mm256_mul_ps(f, d), m);
                _mm256_storeu_ps(o.add(i * 32 + j * 8), v);
            }
        }
    }
}

fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn dot(w: &[u8], x: &[XBlock], simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only when the features were detected; lengths match.
        return unsafe { avx2::dot(w, x) };
    }
    let _ = simd;
    dot_scalar(w, x)
}

/// `out[m, n] = x[m, k] · Wᵀ` where `w` is `n` rows of `k / 32` Q4_1 blocks, by integer dot
/// products (the decode path: one row, memory-bound on the weight's bytes).
///
/// Runs on candle's persistent barrier pool, the one its own quantized kernels use: a second
/// pool (rayon) spinning beside it cost a fifth of decode time in scheduler calls on 2 cores.
pub fn matmul(x: &[f32], m: usize, k: usize, w: &[u8], n: usize, out: &mut [f32]) {
    assert!(k.is_multiple_of(BLOCK) && x.len() == m * k && out.len() == m * n);
    let kb = k / BLOCK;
    let row_bytes = kb * BLOCK_BYTES;
    assert_eq!(w.len(), n * row_bytes, "Q4_1 weight bytes for {n}x{k}");
    let mut xq = vec![ZERO; m * kb];
    for (xr, qr) in x.chunks_exact(k).zip(xq.chunks_exact_mut(kb)) {
        quantize_row(xr, qr);
    }
    let simd = simd();
    // Work items are runs of output columns (weight rows); each walks every input row, so a
    // run of weight rows is read from memory once and stays in cache across the rows.
    const COLS: usize = 8;
    let out_at = out.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(COLS), |items| {
        for it in items {
            for c in it * COLS..((it + 1) * COLS).min(n) {
                let wr = &w[c * row_bytes..(c + 1) * row_bytes];
                for r in 0..m {
                    let v = dot(wr, &xq[r * kb..(r + 1) * kb], simd);
                    // SAFETY: `out` has m·n elements (asserted above) and each (r, c) belongs
                    // to exactly one work item, so no two workers write the same element.
                    unsafe { *(out_at as *mut f32).add(r * n + c) = v };
                }
            }
        }
    });
}

/// The whole weight as f32, row by row on the same pool (`out` is `n·k`).
pub fn dequantize(w: &[u8], k: usize, out: &mut [f32]) {
    let row_bytes = k / BLOCK * BLOCK_BYTES;
    let n = out.len() / k;
    assert_eq!(w.len(), n * row_bytes, "Q4_1 weight bytes for {n}x{k}");
    let out_at = out.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(n, |rows| {
        for r in rows {
            // SAFETY: rows are disjoint per work item and inside `out` (n·k elements).
            let o = unsafe { std::slice::from_raw_parts_mut((out_at as *mut f32).add(r * k), k) };
            dequantize_row(&w[r * row_bytes..(r + 1) * row_bytes], o);
        }
    });
}

/// Rows of the weight as f32 (`out` is `k` wide per row): the embedding lookup, the check, and
/// every tile QLoRA over a Q4_1 file widens (AVX2 where the CPU has it).
pub fn dequantize_row(w_row: &[u8], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        w_row.len() / BLOCK_BYTES * BLOCK,
        "Q4_1 row widths"
    );
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: the features were detected; `out` holds 32 values per block (asserted).
        return unsafe { avx2::dequantize_row(w_row, out) };
    }
    dequantize_row_scalar(w_row, out)
}

fn dequantize_row_scalar(w_row: &[u8], out: &mut [f32]) {
    for (wb, o) in w_row
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let (d, m) = (f16_at(wb, 0), f16_at(wb, 2));
        for j in 0..BLOCK / 2 {
            o[j] = d * (wb[4 + j] & 0x0F) as f32 + m;
            o[j + 16] = d * (wb[4 + j] >> 4) as f32 + m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds `n` rows of random Q4_1 blocks.
    fn weights(n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u32
        };
        let mut w = Vec::new();
        for _ in 0..n * k / BLOCK {
            let d = half::f16::from_f32((next() % 1000) as f32 / 50_000.0);
            let m = half::f16::from_f32(-((next() % 1000) as f32) / 10_000.0);
            w.extend_from_slice(&d.to_bits().to_le_bytes());
            w.extend_from_slice(&m.to_bits().to_le_bytes());
            w.extend((0..16).map(|_| next() as u8));
        }
        w
    }

    /// The kernel against an f64 product of the dequantized weights and the unquantized input:
    /// the only error allowed is the input's 8-bit rounding (≤ 1/254 of each block's max).
    #[test]
    fn matmul_matches_f64_reference() {
        let (m, k, n) = (3, 96, 37);
        let w = weights(n, k, 7);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let mut out = vec![0f32; m * n];
        matmul(&x, m, k, &w, n, &mut out);
        let row_bytes = k / BLOCK * BLOCK_BYTES;
        for r in 0..m {
            for c in 0..n {
                let mut wr = vec![0f32; k];
                dequantize_row(&w[c * row_bytes..(c + 1) * row_bytes], &mut wr);
                let xr = &x[r * k..(r + 1) * k];
                let exact: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                // Bound: Σ |w| · (block max / 254).
                let bound: f64 = wr
                    .chunks(BLOCK)
                    .zip(xr.chunks(BLOCK))
                    .map(|(wb, xb)| {
                        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                        wb.iter().map(|v| v.abs() as f64).sum::<f64>() * amax / 254.0
                    })
                    .sum();
                let got = out[r * n + c] as f64;
                assert!(
                    (got - exact).abs() <= bound + 1e-5,
                    "[{r},{c}] {got} vs {exact} (bound {bound})"
                );
            }
        }
    }

    /// The SIMD dot equals the scalar one (same integer sums; only float order differs).
    #[test]
    fn simd_dot_equals_scalar() {
        let k = 256;
        let w = weights(1, k, 3);
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut xq = vec![ZERO; k / BLOCK];
        quantize_row(&x, &mut xq);
        let a = dot(&w, &xq, simd());
        let b = dot_scalar(&w, &xq);
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        if !simd() {
            eprintln!("no AVX2 here: both sides were the scalar dot");
        }
    }

    /// The widened row equals the scalar widening bit for bit (a multiply, then an add).
    #[test]
    fn simd_dequantize_equals_scalar_bit_for_bit() {
        let k = 320;
        let w = weights(3, k, 11);
        let (mut a, mut b) = (vec![0f32; 3 * k], vec![1f32; 3 * k]);
        dequantize(&w, k, &mut a);
        for (row, o) in w.chunks_exact(w.len() / 3).zip(b.chunks_exact_mut(k)) {
            dequantize_row_scalar(row, o);
        }
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(a.iter().any(|&v| v != 0.0));
    }
}
