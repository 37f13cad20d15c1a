//! `exp` over rows of logits with AVX-512, or AVX2 + FMA: the softmax passes of the fused loss (a
//! forward sum and a backward rewrite over every `tokens × vocab` logit, 25 M `exp`s per step
//! for SmolLM2 at 256 tokens) ran the scalar libm `exp` and took more time than the loss's
//! GEMMs.
//!
//! The approximation is Cephes' `expf`: `x = n·ln2 + r` with `|r| ≤ ln2/2` (ln2 split in two
//! for an exact reduction), `e^r` by a degree-6 polynomial, `2ⁿ` put into the exponent bits.
//! Relative error ≤ 2 ulp over the range the loss uses (`x ≤ 0`); inputs below −87.3 give 0,
//! as `exp` underflows there; NaN stays NaN. Checked against `f32::exp` in the tests below.

/// Which implementation runs: AVX-512 (16 lanes) where the CPU has it, AVX2 + FMA (8 lanes),
/// else libm one value at a time.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

impl Simd {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
            *LEVEL.get_or_init(|| {
                if is_x86_feature_detected!("avx512f") {
                    Simd::Avx512
                } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    Simd::Avx2
                } else {
                    Simd::Scalar
                }
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        Simd::Scalar
    }
}

/// `Σ exp(z[i] − base)`.
pub(crate) fn exp_sum(z: &[f32], base: f32) -> f32 {
    exp_sum_with(Simd::detect(), z, base)
}

fn exp_sum_with(level: Simd, z: &[f32], base: f32) -> f32 {
    match level {
        // SAFETY: `Simd::detect` found the features of the variant (tests pass only such).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { avx512::exp_sum(z, base) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::exp_sum(z, base) },
        Simd::Scalar => z.iter().map(|&v| (v - base).exp()).sum(),
    }
}

/// `z[i] = exp(z[i] − base) · scale`, in place.
pub(crate) fn exp_scale(z: &mut [f32], base: f32, scale: f32) {
    exp_scale_with(Simd::detect(), z, base, scale)
}

fn exp_scale_with(level: Simd, z: &mut [f32], base: f32, scale: f32) {
    match level {
        // SAFETY: as in `exp_sum_with`.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { avx512::exp_scale(z, base, scale) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::exp_scale(z, base, scale) },
        Simd::Scalar => {
            for v in z.iter_mut() {
                *v = (*v - base).exp() * scale;
            }
        }
    }
}

/// `z[i] = exp(z[i] − base)` in place, returning `Σ z[i]` (one pass: the one-pass loss writes
/// the unnormalised probabilities it multiplies by the head and needs their sum).
pub(crate) fn exp_sum_in_place(z: &mut [f32], base: f32) -> f32 {
    exp_sum_in_place_with(Simd::detect(), z, base)
}

fn exp_sum_in_place_with(level: Simd, z: &mut [f32], base: f32) -> f32 {
    match level {
        // SAFETY: as in `exp_sum_with`.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { avx512::exp_sum_in_place(z, base) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::exp_sum_in_place(z, base) },
        Simd::Scalar => z
            .iter_mut()
            .map(|v| {
                *v = (*v - base).exp();
                *v
            })
            .sum(),
    }
}

/// `s[i] = σ(g[i]) = 1 / (1 + e^(−g[i]))` for `i < g.len()` (SwiGLU's gate: 24 M per SmolLM2
/// step at 256 tokens, forward and backward, ~2 % of it in libm's scalar `expf`). Arguments
/// past the approximation's range saturate to 0 and 1 as σ does.
pub(crate) fn sigmoid(g: &[f32], s: &mut [f32]) {
    sigmoid_with(Simd::detect(), g, s)
}

fn sigmoid_with(level: Simd, g: &[f32], s: &mut [f32]) {
    let s = &mut s[..g.len()];
    match level {
        // SAFETY: as in `exp_sum_with`.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { avx512::sigmoid(g, s) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::sigmoid(g, s) },
        Simd::Scalar => {
            for (o, &v) in s.iter_mut().zip(g) {
                *o = 1.0 / (1.0 + (-v).exp());
            }
        }
    }
}

/// The largest value (−∞ for an empty row; NaN is skipped, as `f32::max` does), in 16 lanes
/// so it vectorises (a single running `max` is one dependent instruction per value).
pub(crate) fn max_lanes(z: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = z.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v);
        }
    }
    tail.iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `e^x` for 8 lanes (see the module docs).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let hi = _mm256_set1_ps(88.376_26);
        let lo = _mm256_set1_ps(-87.336_55);
        let nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
        let under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
        let x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
        // n = round(x / ln 2); r = x − n·ln2 in two steps (C1 + C2 = ln 2).
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5e-1,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        // 2ⁿ: n + 127 in the exponent field.
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        ));
        let out = _mm256_mul_ps(e, pow2);
        let out = _mm256_andnot_ps(under, out);
        _mm256_blendv_ps(out, _mm256_set1_ps(f32::NAN), nan)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sum(z: &[f32], base: f32) -> f32 {
        let b = _mm256_set1_ps(base);
        let mut acc = _mm256_setzero_ps();
        let chunks = z.len() / 8;
        for i in 0..chunks {
            let v = _mm256_loadu_ps(z.as_ptr().add(8 * i));
            acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(v, b)));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut sum: f32 = lanes.iter().sum();
        for &v in &z[8 * chunks..] {
            sum += (v - base).exp();
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sum_in_place(z: &mut [f32], base: f32) -> f32 {
        let b = _mm256_set1_ps(base);
        let mut acc = _mm256_setzero_ps();
        let chunks = z.len() / 8;
        for i in 0..chunks {
            let p = z.as_mut_ptr().add(8 * i);
            let v = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), b));
            _mm256_storeu_ps(p, v);
            acc = _mm256_add_ps(acc, v);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut sum: f32 = lanes.iter().sum();
        for v in &mut z[8 * chunks..] {
            *v = (*v - base).exp();
            sum += *v;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sigmoid(g: &[f32], s: &mut [f32]) {
        let one = _mm256_set1_ps(1.0);
        let neg = _mm256_set1_ps(-0.0);
        let chunks = g.len().min(s.len()) / 8;
        for i in 0..chunks {
            let v = _mm256_loadu_ps(g.as_ptr().add(8 * i));
            let e = exp8(_mm256_xor_ps(v, neg));
            _mm256_storeu_ps(
                s.as_mut_ptr().add(8 * i),
                _mm256_div_ps(one, _mm256_add_ps(one, e)),
            );
        }
        for (o, &v) in s[8 * chunks..].iter_mut().zip(&g[8 * chunks..]) {
            *o = 1.0 / (1.0 + (-v).exp());
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_scale(z: &mut [f32], base: f32, scale: f32) {
        let (b, s) = (_mm256_set1_ps(base), _mm256_set1_ps(scale));
        let chunks = z.len() / 8;
        for i in 0..chunks {
            let p = z.as_mut_ptr().add(8 * i);
            let v = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), b));
            _mm256_storeu_ps(p, _mm256_mul_ps(v, s));
        }
        for v in &mut z[8 * chunks..] {
            *v = (*v - base).exp() * scale;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `e^x` for 16 lanes: the AVX2 version's steps (see the module docs) on AVX-512.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp16(x: __m512) -> __m512 {
        let lo = _mm512_set1_ps(-87.336_55);
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo);
        let x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.376_26)), lo);
        // n = round(x / ln 2) (the current rounding mode: nearest); r = x − n·ln2 in two steps.
        let ni = _mm512_cvtps_epi32(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
        let n = _mm512_cvtepi32_ps(ni);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5e-1,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        let pow2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            ni,
            _mm512_set1_epi32(127),
        )));
        let out = _mm512_maskz_mov_ps(!under, _mm512_mul_ps(e, pow2));
        _mm512_mask_mov_ps(out, nan, _mm512_set1_ps(f32::NAN))
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_sum(z: &[f32], base: f32) -> f32 {
        let b = _mm512_set1_ps(base);
        let mut acc = _mm512_setzero_ps();
        let chunks = z.len() / 16;
        for i in 0..chunks {
            let v = _mm512_loadu_ps(z.as_ptr().add(16 * i));
            acc = _mm512_add_ps(acc, exp16(_mm512_sub_ps(v, b)));
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        for &v in &z[16 * chunks..] {
            sum += (v - base).exp();
        }
        sum
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_sum_in_place(z: &mut [f32], base: f32) -> f32 {
        let b = _mm512_set1_ps(base);
        let mut acc = _mm512_setzero_ps();
        let chunks = z.len() / 16;
        for i in 0..chunks {
            let p = z.as_mut_ptr().add(16 * i);
            let v = exp16(_mm512_sub_ps(_mm512_loadu_ps(p), b));
            _mm512_storeu_ps(p, v);
            acc = _mm512_add_ps(acc, v);
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        for v in &mut z[16 * chunks..] {
            *v = (*v - base).exp();
            sum += *v;
        }
        sum
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_scale(z: &mut [f32], base: f32, scale: f32) {
        let (b, s) = (_mm512_set1_ps(base), _mm512_set1_ps(scale));
        let chunks = z.len() / 16;
        for i in 0..chunks {
            let p = z.as_mut_ptr().add(16 * i);
            let v = exp16(_mm512_sub_ps(_mm512_loadu_ps(p), b));
            _mm512_storeu_ps(p, _mm512_mul_ps(v, s));
        }
        for v in &mut z[16 * chunks..] {
            *v = (*v - base).exp() * scale;
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn sigmoid(g: &[f32], s: &mut [f32]) {
        let one = _mm512_set1_ps(1.0);
        let chunks = g.len().min(s.len()) / 16;
        for i in 0..chunks {
            let v = _mm512_loadu_ps(g.as_ptr().add(16 * i));
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), v));
            _mm512_storeu_ps(
                s.as_mut_ptr().add(16 * i),
                _mm512_div_ps(one, _mm512_add_ps(one, e)),
            );
        }
        for (o, &v) in s[16 * chunks..].iter_mut().zip(&g[16 * chunks..]) {
            *o = 1.0 / (1.0 + (-v).exp());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every implementation this CPU can run (the dispatched one is the widest).
    fn levels() -> Vec<Simd> {
        #[allow(unused_mut)]
        let mut out = vec![Simd::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                out.push(Simd::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                out.push(Simd::Avx512);
            }
        }
        out
    }

    #[test]
    fn sigmoid_is_within_a_few_ulp_of_libm_and_saturates() {
        for level in levels() {
            sigmoid_at(level);
        }
        let mut s = [0f32; 2];
        sigmoid(&[0.0, 2.0], &mut s);
        assert_eq!(s[0], 0.5);
    }

    fn sigmoid_at(level: Simd) {
        let g: Vec<f32> = (-2000..=2000)
            .map(|i| i as f32 * 0.05)
            .chain([-1e4, 1e4, 0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY])
            .collect();
        let mut s = vec![0f32; g.len() + 3];
        sigmoid_with(level, &g, &mut s);
        for (&v, &got) in g.iter().zip(&s) {
            let want = 1.0 / (1.0 + (-f64::from(v)).exp());
            assert!(
                (f64::from(got) - want).abs() <= 4.0 * f64::from(f32::EPSILON) * want.max(1e-30),
                "{level:?}: σ({v}) = {got}, want {want}"
            );
        }
        assert_eq!(&s[g.len()..], &[0.0; 3], "wrote past g");
        let mut nan = [0f32; 17];
        sigmoid_with(level, &[f32::NAN; 17], &mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    /// Within 2 ulp of libm's `exp` from −100 to 88 (underflow to 0 included), NaN kept.
    #[test]
    fn matches_libm_exp() {
        for level in levels() {
            matches_libm_exp_at(level);
        }
    }

    fn matches_libm_exp_at(level: Simd) {
        let xs: Vec<f32> = (0..40_000)
            .map(|i| -100.0 + 188.0 * i as f32 / 40_000.0)
            .chain([0.0, -0.0, 1e-30, -87.0, 88.0])
            .collect();
        let mut got = xs.clone();
        exp_scale_with(level, &mut got, 0.0, 1.0);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = x.exp();
            let ulp = (want.to_bits() as i64 - g.to_bits() as i64).abs();
            assert!(
                ulp <= 2 || (want < 1e-37 && g < 1e-37),
                "{level:?}: exp({x}) = {g}, libm {want}"
            );
        }
        let mut nan = [
            f32::NAN,
            1.0,
            -1.0,
            f32::NEG_INFINITY,
            0.5,
            0.25,
            2.0,
            3.0,
            -3.0,
        ]
        .repeat(2);
        exp_scale_with(level, &mut nan, 0.0, 2.0);
        assert!(nan[0].is_nan());
        assert_eq!(nan[3], 0.0);
        assert!((nan[1] - 2.0 * 1f32.exp()).abs() < 1e-6);
        // The sum over a row with a tail that is not a multiple of 8 or 16.
        let row: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let want: f64 = row.iter().map(|&v| ((v - 3.0) as f64).exp()).sum();
        let got = exp_sum_with(level, &row, 3.0) as f64;
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
        // In place: the same sum, and each value the scaled pass's.
        let (mut inplace, mut scaled) = (row.clone(), row.clone());
        let got = exp_sum_in_place_with(level, &mut inplace, 3.0) as f64;
        exp_scale_with(level, &mut scaled, 3.0, 1.0);
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
        assert_eq!(inplace, scaled);
    }

    #[test]
    fn max_lanes_is_the_max_and_skips_nan() {
        let row: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let want = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max_lanes(&row), want);
        let mut peak_in_tail = row.clone();
        peak_in_tail[1000] = 9.0;
        assert_eq!(max_lanes(&peak_in_tail), 9.0);
        assert_eq!(max_lanes(&[]), f32::NEG_INFINITY);
        assert_eq!(max_lanes(&[f32::NAN, -2.0]), -2.0);
        assert_eq!(max_lanes(&[f32::NEG_INFINITY; 20]), f32::NEG_INFINITY);
    }
}
