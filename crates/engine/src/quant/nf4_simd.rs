//! NF4 codes widened to f32 with AVX2: the inner loop of every QLoRA tile (forward, backward
//! and checkpointed recompute each widen the whole base once per step). A table lookup per
//! nibble is 16 floats, which fit two AVX registers: `vpermps` picks from each half by the low
//! three bits and the fourth bit blends the halves. The product with the block's constant is
//! one IEEE multiply, so values equal the scalar path's bit for bit.

use super::nf4_format::NF4_CODE;

/// `out[2i] = CODE[bytes[i] >> 4]·scale`, `out[2i+1] = CODE[bytes[i] & 15]·scale`.
///
/// # Panics
/// `out` not twice as long as `bytes` (a caller bug: lengths are computed, not read).
pub(crate) fn widen_pairs(bytes: &[u8], scale: f32, out: &mut [f32]) {
    assert_eq!(out.len(), 2 * bytes.len(), "NF4: two values per byte");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        done = bytes.len() / 8 * 8;
        // SAFETY: AVX2 was detected; `out` holds 2 values per byte of the first `done` bytes.
        unsafe { avx2::widen_pairs(&bytes[..done], scale, &mut out[..2 * done]) };
    }
    widen_pairs_scalar(&bytes[done..], scale, &mut out[2 * done..]);
}

fn widen_pairs_scalar(bytes: &[u8], scale: f32, out: &mut [f32]) {
    for (&byte, dst) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        dst[0] = NF4_CODE[(byte >> 4) as usize] * scale;
        dst[1] = NF4_CODE[(byte & 0x0f) as usize] * scale;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::NF4_CODE;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX2; `bytes.len()` is a multiple of 8 and `out` is twice as long.
    #[target_feature(enable = "avx2")]
    pub unsafe fn widen_pairs(bytes: &[u8], scale: f32, out: &mut [f32]) {
        let lo_tab = _mm256_loadu_ps(NF4_CODE.as_ptr());
        let hi_tab = _mm256_loadu_ps(NF4_CODE.as_ptr().add(8));
        let s = _mm256_set1_ps(scale);
        let low = _mm_set1_epi8(0x0F);
        let o = out.as_mut_ptr();
        for c in 0..bytes.len() / 8 {
            let raw = _mm_loadl_epi64(bytes.as_ptr().add(8 * c) as *const __m128i);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
            let lo = _mm_and_si128(raw, low);
            // High nibble first: element 2i is byte i's high nibble.
            let idx = _mm_unpacklo_epi8(hi, lo);
            for (h, part) in [idx, _mm_srli_si128(idx, 8)].into_iter().enumerate() {
                let i = _mm256_cvtepu8_epi32(part);
                let a = _mm256_permutevar8x32_ps(lo_tab, i);
                let b = _mm256_permutevar8x32_ps(hi_tab, i);
                // Bit 3 of the code into the sign bit selects the upper half of the table.
                let pick = _mm256_castsi256_ps(_mm256_slli_epi32(i, 28));
                let v = _mm256_mul_ps(_mm256_blendv_ps(a, b, pick), s);
                _mm256_storeu_ps(o.add(16 * c + 8 * h), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_equals_scalar_bit_for_bit_at_every_length() {
        let bytes: Vec<u8> = (0..77u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in [0, 1, 7, 8, 9, 32, 77] {
            let (mut a, mut b) = (vec![0f32; 2 * len], vec![1f32; 2 * len]);
            widen_pairs(&bytes[..len], 0.731, &mut a);
            widen_pairs_scalar(&bytes[..len], 0.731, &mut b);
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        // Every code appears: all 16 table entries are reached through both halves.
        let all: Vec<u8> = (0..16u8).map(|i| (i << 4) | (15 - i)).collect();
        let mut out = vec![0f32; 32];
        widen_pairs(&all, 1.0, &mut out);
        for (i, pair) in out.chunks(2).enumerate() {
            assert_eq!(pair, [NF4_CODE[i], NF4_CODE[15 - i]]);
        }
    }
}
