//! What the bf16 backends share ([`super::bf16_gemm`]'s AMX and emulated paths,
//! [`super::bf16_dot`]): the right operand's type, rounding to bf16, and the VNNI packings
//! (pairs of consecutive K values in one 32-bit lane, 16 columns per 64 bytes).

use half::bf16;
use rayon::prelude::*;

/// The bf16 right-hand operand `B` (`[k, n]`) of [`super::bf16_gemm::gemm_bf16`].
#[derive(Clone, Copy)]
pub(crate) enum BfRhs<'a> {
    /// `B = Wᵀ` for a row-major weight `W: [n, k]` (the forward `x·Wᵀ`).
    Transposed(&'a [bf16]),
    /// `B = W`, row-major `[k, n]` (the backward `g·W`).
    Plain(&'a [bf16]),
}

/// f32 → bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
#[inline]
pub(super) fn round_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

pub(super) fn round_serial(src: &[f32], dst: &mut [bf16]) {
    #[cfg(target_arch = "x86_64")]
    {
        static NATIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *NATIVE.get_or_init(|| std::arch::is_x86_feature_detected!("avx512bf16")) {
            // SAFETY: AVX512-BF16 (and so AVX-512F) is present, checked above.
            unsafe { round_avx512bf16(src, dst) };
            return;
        }
    }
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = bf16::from_bits(round_bits(x));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f")]
unsafe fn round_avx512bf16(src: &[f32], dst: &mut [bf16]) {
    use std::arch::x86_64::{__m512i, _mm512_cvtne2ps_pbh, _mm512_loadu_ps, _mm512_storeu_si512};
    let n = src.len().min(dst.len());
    let whole = n / 32 * 32;
    for i in (0..whole).step_by(32) {
        // SAFETY: i + 32 ≤ n, within both slices.
        let lo = _mm512_loadu_ps(src.as_ptr().add(i));
        let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
        let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.as_mut_ptr().add(i).cast(), packed);
    }
    for i in whole..n {
        dst[i] = bf16::from_bits(round_bits(src[i]));
    }
}

/// A raw pointer shared by the threads of one call, each writing its own columns.
#[derive(Clone, Copy)]
pub(super) struct SharedDst(pub(super) *mut f32);
// SAFETY: the threads of `amx_gemm` write disjoint column ranges of `dst` (see there).
unsafe impl Send for SharedDst {}
unsafe impl Sync for SharedDst {}

impl SharedDst {
    /// Through a method, so a closure captures the whole (`Send`) wrapper, not its pointer.
    pub(super) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `aᵀ` (`a: [m, k]` f32, `k` even) rounded to bf16 as VNNI operands of 32 columns: block `jb`
/// holds activation rows `jb·32..` as two groups of 16 columns, each `k/2` pairs × 16 u32
/// (`[p·16 + j] = (a[row, 2p], a[row, 2p+1])`, low half first); rows past `m` are zero.
pub(super) fn pack_rows_vnni(a: &[f32], m: usize, k: usize) -> Vec<u32> {
    const BL: usize = 32;
    let group = k / 2 * 16;
    let mut packed = vec![0u32; m.div_ceil(BL) * 2 * group];
    packed
        .par_chunks_mut(2 * group)
        .enumerate()
        .for_each(|(jb, block)| {
            for g in 0..2 {
                let cols = &mut block[g * group..(g + 1) * group];
                for j in 0..16 {
                    let row = jb * BL + 16 * g + j;
                    if row >= m {
                        continue; // already zero
                    }
                    let src = &a[row * k..(row + 1) * k];
                    for (p, pair) in src.chunks_exact(2).enumerate() {
                        cols[p * 16 + j] =
                            u32::from(round_bits(pair[0])) | (u32::from(round_bits(pair[1])) << 16);
                    }
                }
            }
        });
    packed
}

/// Packs output columns `n0..n0+32` of `B` (zero past `n` and past `k`) as two VNNI tiles
/// columns: `packed[g·kp/2·16 + p·16 + j] = (B[2p, n0+16g+j], B[2p+1, n0+16g+j])`, low half first.
pub(super) fn pack_b(packed: &mut [u32], b: BfRhs<'_>, k: usize, kp: usize, n: usize, n0: usize) {
    let pairs = kp / 2;
    match b {
        BfRhs::Transposed(w) => {
            // B[t, j] = W[j, t]: each output column is a row of W, whose pairs are adjacent.
            for g in 0..2 {
                let group = &mut packed[g * pairs * 16..(g + 1) * pairs * 16];
                for j in 0..16 {
                    let col = n0 + 16 * g + j;
                    if col >= n {
                        for p in 0..pairs {
                            group[p * 16 + j] = 0;
                        }
                        continue;
                    }
                    let row = &w[col * k..(col + 1) * k];
                    let mut pairs_of = row.chunks_exact(2);
                    let mut p = 0;
                    for pair in &mut pairs_of {
                        group[p * 16 + j] =
                            u32::from(pair[0].to_bits()) | (u32::from(pair[1].to_bits()) << 16);
                        p += 1;
                    }
                    if let [last] = pairs_of.remainder() {
                        group[p * 16 + j] = u32::from(last.to_bits());
                        p += 1;
                    }
                    for q in p..pairs {
                        group[q * 16 + j] = 0;
                    }
                }
            }
        }
        BfRhs::Plain(w) => {
            // B[t, j] = W[t, j]: pairs interleave two consecutive rows of W.
            let bits = |t: usize, col: usize| -> u32 {
                if t < k && col < n {
                    u32::from(w[t * n + col].to_bits())
                } else {
                    0
                }
            };
            for g in 0..2 {
                let group = &mut packed[g * pairs * 16..(g + 1) * pairs * 16];
                let c0 = n0 + 16 * g;
                for p in 0..pairs {
                    let dst = &mut group[p * 16..p * 16 + 16];
                    if 2 * p + 1 < k && c0 + 16 <= n {
                        let lo = &w[2 * p * n + c0..2 * p * n + c0 + 16];
                        let hi = &w[(2 * p + 1) * n + c0..(2 * p + 1) * n + c0 + 16];
                        interleave16(lo, hi, dst);
                    } else {
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = bits(2 * p, c0 + j) | (bits(2 * p + 1, c0 + j) << 16);
                        }
                    }
                }
            }
        }
    }
}

/// `dst[j] = lo[j] | hi[j] << 16` for 16 columns: two rows of `W` as VNNI pairs. AVX-512
/// where present (every AMX CPU has it), the same in scalar code elsewhere.
#[inline]
fn interleave16(lo: &[bf16], hi: &[bf16], dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *AVX512.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f")) {
            // SAFETY: AVX-512F is present (checked above); the three slices hold 16 elements
            // (asserted inside).
            unsafe { interleave16_avx512(lo, hi, dst) };
            return;
        }
    }
    for j in 0..16 {
        dst[j] = u32::from(lo[j].to_bits()) | (u32::from(hi[j].to_bits()) << 16);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn interleave16_avx512(lo: &[bf16], hi: &[bf16], dst: &mut [u32]) {
    use std::arch::x86_64::{
        _mm256_loadu_si256, _mm512_cvtepu16_epi32, _mm512_or_si512, _mm512_slli_epi32,
        _mm512_storeu_si512,
    };
    assert!(lo.len() >= 16 && hi.len() >= 16 && dst.len() >= 16);
    let l = _mm512_cvtepu16_epi32(_mm256_loadu_si256(lo.as_ptr().cast()));
    let h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(hi.as_ptr().cast()));
    let pairs = _mm512_or_si512(l, _mm512_slli_epi32::<16>(h));
    _mm512_storeu_si512(dst.as_mut_ptr().cast(), pairs);
}
