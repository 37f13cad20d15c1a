//! `beta · x·Aᵀ` for a narrow `A` (`[r, k]`, r a LoRA rank): the adapter's down-projection and
//! the gradient through its up-projection.
//!
//! Why not the GEMM crate: its kernels fill 16-lane vectors along the product's columns, so an
//! `[m, 8]` result leaves half of every vector empty and reloads the activations for each
//! 6 rows; those products ran at ~40 GFLOP/s on two AVX-512 cores, ≈ 4 % of a LoRA step.
//! Here each output is a dot product along k, which keeps every lane busy: blocks of 4 rows of
//! `x` by 4 rows of `A` hold 16 vector sums in registers, and each is reduced once at the end.

use super::gemm::{product, MatRef};
use candle_core::Result;
use rayon::prelude::*;

/// Rows of `x` per parallel task: enough work per hand-off to the thread pool.
const TASK_ROWS: usize = 32;

/// `beta · x·Aᵀ` as a row-major `[m, r]` buffer, for row-major `x: [m, k]` and `a: [r, k]`.
pub(crate) fn x_at(
    x: &[f32],
    m: usize,
    k: usize,
    a: &[f32],
    r: usize,
    beta: f32,
) -> Result<Vec<f32>> {
    if x.len() != m * k || a.len() != r * k {
        candle_core::bail!("narrow gemm: x [{m}, {k}] and A [{r}, {k}] do not match their buffers");
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && k > 0 {
        let mut out = vec![0f32; m * r];
        out.par_chunks_mut(TASK_ROWS * r)
            .zip(x.par_chunks(TASK_ROWS * k))
            .for_each(|(o, xs)| {
                // SAFETY: the CPU has AVX-512F (checked above); `xs` holds whole rows of k and
                // `o` the same number of rows of r, and `a` holds r rows of k (checked above).
                unsafe { avx512::rows(xs, k, a, r, beta, o) }
            });
        return Ok(out);
    }
    product(
        MatRef::row_major(x, m, k),
        MatRef::row_major(a, r, k).t(),
        beta,
    )
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `o[i, c] = beta · Σ_p x[i, p]·a[c, p]` for all rows of `x` (`o.len() / r` of them).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows(x: &[f32], k: usize, a: &[f32], r: usize, beta: f32, o: &mut [f32]) {
        let m = o.len() / r;
        let mut i = 0;
        while i < m {
            let rb = (m - i).min(4);
            let mut c = 0;
            while c < r {
                let cb = (r - c).min(4);
                let (xp, ap, op) = (
                    x.as_ptr().add(i * k),
                    a.as_ptr().add(c * k),
                    o.as_mut_ptr().add(i * r + c),
                );
                match (rb, cb) {
                    (4, 4) => block::<4, 4>(xp, ap, k, op, r, beta),
                    (4, _) => block::<4, 1>(xp, ap, k, op, r, beta),
                    (_, 4) => block::<1, 4>(xp, ap, k, op, r, beta),
                    _ => block::<1, 1>(xp, ap, k, op, r, beta),
                }
                c += if cb == 4 { 4 } else { 1 };
            }
            i += if rb == 4 { 4 } else { 1 };
        }
    }

    /// One `R × C` block of outputs: rows of `x` at stride k, rows of `a` at stride k, outputs
    /// at row stride `os`. The last `k % 16` elements go through masked loads.
    // Indexed loops over the const bounds: the arrays are registers once unrolled.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize, const C: usize>(
        x: *const f32,
        a: *const f32,
        k: usize,
        o: *mut f32,
        os: usize,
        beta: f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut av = [_mm512_setzero_ps(); C];
        let mut p = 0;
        while p + 16 <= k {
            for c in 0..C {
                av[c] = _mm512_loadu_ps(a.add(c * k + p));
            }
            for i in 0..R {
                let xv = _mm512_loadu_ps(x.add(i * k + p));
                for c in 0..C {
                    acc[i][c] = _mm512_fmadd_ps(xv, av[c], acc[i][c]);
                }
            }
            p += 16;
        }
        if p < k {
            let mask: __mmask16 = ((1u32 << (k - p)) - 1) as u16;
            for c in 0..C {
                av[c] = _mm512_maskz_loadu_ps(mask, a.add(c * k + p));
            }
            for i in 0..R {
                let xv = _mm512_maskz_loadu_ps(mask, x.add(i * k + p));
                for c in 0..C {
                    acc[i][c] = _mm512_fmadd_ps(xv, av[c], acc[i][c]);
                }
            }
        }
        for i in 0..R {
            for c in 0..C {
                *o.add(i * os + c) = beta * _mm512_reduce_add_ps(acc[i][c]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 reference, with every kind of tail: rows and ranks not multiples of the
    /// 4×4 block, k shorter than, equal to and not a multiple of a vector.
    #[test]
    fn narrow_products_equal_an_f64_reference() {
        for (m, k, r) in [
            (70, 576, 8),
            (5, 37, 3),
            (9, 16, 4),
            (33, 7, 6),
            (64, 1536, 16),
            (3, 0, 2),
        ] {
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let a: Vec<f32> = (0..r * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let got = x_at(&x, m, k, &a, r, 0.5).unwrap();
            assert_eq!(got.len(), m * r);
            for i in 0..m {
                for c in 0..r {
                    let want: f64 = 0.5
                        * (0..k)
                            .map(|p| x[i * k + p] as f64 * a[c * k + p] as f64)
                            .sum::<f64>();
                    let g = got[i * r + c] as f64;
                    assert!(
                        (g - want).abs() < 1e-4 * want.abs().max(1.0),
                        "[{m}, {k}, {r}] ({i}, {c}): {g} vs {want}"
                    );
                }
            }
        }
        assert!(x_at(&[0.0; 5], 2, 3, &[0.0; 6], 2, 1.0).is_err());
    }
}
