//! The bf16 products of [`super::bf16_gemm`] on CPUs with AVX512-BF16 but no AMX tiles
//! (AMD Zen 4 and 5, Intel Cooper Lake): `vdpbf16ps` multiplies 16 pairs of bf16 values and
//! adds each pair's two products to one f32 lane, 32 multiply-adds per instruction.
//!
//! One register kernel serves both layouts. A tile is `R ≤ 12` rows of an operand whose bf16
//! pairs lie along K in memory (each pair broadcast to all lanes) by 32 columns of a VNNI-packed
//! operand (two vectors of 16 columns, pair `p` of each column in one 32-bit lane): 24 f32
//! accumulators stay in registers over the whole K.
//! - the forward `x·Wᵀ` ([`gemm_weight_rows`]): the weight's own rows are the broadcast
//!   operand and only the activations are packed (once per call), as on the AMX path, and each
//!   tile is written transposed;
//! - anything else ([`gemm`]): the activations are rounded and broadcast, and the right operand
//!   is packed 32 columns at a time by each thread for its own columns.
//!
//! Where the instruction is slow the backend is not chosen by speed here: on Sapphire Rapids
//! `vdpbf16ps` retires ~0.7× the f32 FMA's multiply-adds, on Zen 4 2× — `plan::calibrate`
//! measures this machine's bf16 rate, and the planner turns bf16 on by default only where it
//! beats f32.

use super::bf16_pack::{pack_b, pack_rows_vnni, round_serial, BfRhs, SharedDst};
use candle_core::Result;
use half::bf16;
use rayon::prelude::*;

/// Rows per register tile: 12 rows × 2 vectors = 24 accumulators, 2 vectors of the packed
/// operand and 1 broadcast, within AVX-512's 32 registers.
const TILE_ROWS: usize = 12;
/// Columns per tile and per packed block.
const COLS: usize = 32;

/// Whether this CPU has AVX512-BF16 (checked once).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[i·ld + j] (+)= Σ_t bf16(a[i, t])·b[t, j]` (see [`super::bf16_gemm::gemm_bf16`], which
/// checked the buffers): the activations rounded and broadcast, `b` packed per 32 columns.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    dst: &mut [f32],
    ld: usize,
    a: &[f32],
    m: usize,
    k: usize,
    b: BfRhs<'_>,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    assert!(
        available(),
        "bf16 dot products dispatched on a CPU without AVX512-BF16"
    );
    let kp = k.div_ceil(2) * 2;
    let pairs = kp / 2;
    // A as bf16 pairs, zero-padded to an even K (the padding adds zeros to every sum).
    let mut a_bf = vec![0u32; m * pairs];
    a_bf.par_chunks_mut(pairs.max(1))
        .zip(a.par_chunks(k.max(1)))
        .for_each(|(row, src)| {
            // SAFETY: bf16 is a u16 bit pattern (`repr(transparent)`) and a u32 holds two of
            // them with stricter alignment.
            let row: &mut [bf16] =
                unsafe { std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), 2 * row.len()) };
            round_serial(src, &mut row[..src.len()]);
        });
    let blocks = n.div_ceil(COLS);
    let threads = candle_core::utils::get_num_threads().clamp(1, blocks);
    let per = blocks.div_ceil(threads);
    let out = SharedDst(dst.as_mut_ptr());
    (0..threads).into_par_iter().for_each(|t| {
        let (nb0, nb1) = (t * per, ((t + 1) * per).min(blocks));
        let mut packed = vec![0u32; 2 * pairs * 16];
        let mut c = [0f32; TILE_ROWS * COLS];
        for nb in nb0..nb1 {
            let n0 = nb * COLS;
            pack_b(&mut packed, b, k, kp, n, n0);
            let cols = (n - n0).min(COLS);
            for m0 in (0..m).step_by(TILE_ROWS) {
                let rows = (m - m0).min(TILE_ROWS);
                // SAFETY: AVX512-BF16 is present (asserted above); rows m0..m0+rows of `a_bf`
                // hold `pairs` u32 each, `packed` two groups of `pairs` × 16, `c` 12 × 32.
                unsafe {
                    tile(
                        rows,
                        a_bf.as_ptr().add(m0 * pairs),
                        pairs,
                        &packed,
                        pairs,
                        &mut c,
                    )
                };
                for i in 0..rows {
                    // SAFETY: row m0+i < m, columns n0..n0+cols ≤ n are within `dst` (checked
                    // by the caller) and belong to this thread's blocks only.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(out.ptr().add((m0 + i) * ld + n0), cols)
                    };
                    let src = &c[i * COLS..i * COLS + cols];
                    if accumulate {
                        row.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                    } else {
                        row.copy_from_slice(src);
                    }
                }
            }
        }
    });
    Ok(())
}

/// `dst (+)= a·wᵀ` computed as `(w·aᵀ)ᵀ` for `w: [n, k]` row-major with `k` even: the weight's
/// rows are broadcast as they lie (nothing of it is copied), the activations are packed once.
/// Each thread takes its own rows of `w`, so its own columns of `dst`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_weight_rows(
    dst: &mut [f32],
    ld: usize,
    a: &[f32],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    accumulate: bool,
) {
    assert!(
        available(),
        "bf16 dot products dispatched on a CPU without AVX512-BF16"
    );
    assert!(
        k.is_multiple_of(2) && k > 0,
        "weight rows need an even, non-zero K"
    );
    let pairs = k / 2;
    let group = pairs * 16;
    let packed = pack_rows_vnni(a, m, k);
    let a_blocks = m.div_ceil(COLS);
    let chunks = n.div_ceil(TILE_ROWS);
    let threads = candle_core::utils::get_num_threads().clamp(1, chunks);
    let per = chunks.div_ceil(threads) * TILE_ROWS;
    let out = SharedDst(dst.as_mut_ptr());
    // Pairs of a weight row start at even elements, so at every 4 bytes of the row; the whole
    // slice may still be only 2-byte aligned, which the kernel's unaligned reads allow.
    let w_pairs = w.as_ptr().cast::<u32>();
    let w_addr = w_pairs as usize;
    (0..threads).into_par_iter().for_each(|t| {
        let w_pairs = w_addr as *const u32;
        let (j0, j1) = (t * per, ((t + 1) * per).min(n));
        let mut c = [0f32; TILE_ROWS * COLS];
        for jr in (j0..j1).step_by(TILE_ROWS) {
            let rows = (j1 - jr).min(TILE_ROWS);
            for jb in 0..a_blocks {
                let b = &packed[jb * 2 * group..(jb + 1) * 2 * group];
                // SAFETY: AVX512-BF16 is present (asserted above); rows jr..jr+rows < n of `w`
                // are `pairs` u32 each (k even), `b` holds two groups of `pairs` × 16.
                unsafe {
                    tile(
                        rows,
                        w_pairs.wrapping_add(jr * pairs),
                        pairs,
                        b,
                        pairs,
                        &mut c,
                    )
                };
                // c[r·32 + i] = Σ w[jr+r, :]·a[jb·32+i, :] = dst[jb·32+i, jr+r].
                for i in 0..(m - jb * COLS).min(COLS) {
                    let at = (jb * COLS + i) * ld + jr;
                    // SAFETY: row jb·32+i < m, columns jr..jr+rows ≤ n of `dst` are in bounds
                    // (checked by the caller) and belong to this thread's rows of `w` only.
                    let row = unsafe { std::slice::from_raw_parts_mut(out.ptr().add(at), rows) };
                    for (r, d) in row.iter_mut().enumerate() {
                        let v = c[r * COLS + i];
                        *d = if accumulate { *d + v } else { v };
                    }
                }
            }
        }
    });
}

/// `c[r·32 + j] = Σ_p pair(a, r, p) · packed(b, p, j)` for `r < rows`, `j < 32`: `a` holds
/// `rows` rows of `pairs` bf16 pairs, `lda` pairs apart (possibly unaligned); `b` two groups
/// of `pairs` × 16 u32 (columns 0–15, then 16–31).
///
/// # Safety
/// AVX512-BF16 is present; `a` is readable for `rows` rows of `pairs` u32 at stride `lda`.
unsafe fn tile(
    rows: usize,
    a: *const u32,
    lda: usize,
    b: &[u32],
    pairs: usize,
    c: &mut [f32; TILE_ROWS * COLS],
) {
    assert!(b.len() >= 2 * pairs * 16 && rows <= TILE_ROWS);
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! rows {
            ($($r:literal)*) => {
                match rows {
                    $($r => kernel::tile::<$r>(a, lda, b.as_ptr(), pairs, c),)*
                    _ => {}
                }
            };
        }
        rows!(1 2 3 4 5 6 7 8 9 10 11 12);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (a, lda, pairs, c);
        unreachable!("AVX512-BF16 is never reported available off x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::{COLS, TILE_ROWS};
    use std::arch::x86_64::*;

    /// [`super::tile`] for a fixed row count, so the accumulators are registers.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile<const R: usize>(
        a: *const u32,
        lda: usize,
        b: *const u32,
        pairs: usize,
        c: &mut [f32; TILE_ROWS * COLS],
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let b_hi = b.add(pairs * 16);
        for p in 0..pairs {
            let v0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * 16).cast()));
            let v1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b_hi.add(p * 16).cast()));
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = a.wrapping_add(r * lda + p).read_unaligned();
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, v0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, v1);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.as_mut_ptr().add(r * COLS), acc[0]);
            _mm512_storeu_ps(c.as_mut_ptr().add(r * COLS + 16), acc[1]);
        }
    }
}
