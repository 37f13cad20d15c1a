//! The frozen base's products in bf16 with f32 accumulation (the CPU's `--bf16-compute`): activations
//! are rounded to bf16 (round to nearest even), multiplied by a bf16 weight, and summed in f32.
//! This is what PyTorch's CPU autocast does for a linear layer, and what a GPU's tensor cores
//! do for our bf16 runs.
//!
//! Three backends compute the same products:
//! - **AMX** ([`super::amx`]) where the CPU has it: the weight is packed into VNNI tiles per
//!   block of 32 output columns and each 32×32 block of the result is one tile kernel;
//! - **AVX512-BF16 dot products** ([`super::bf16_dot`]) where it has those but no AMX (Zen 4);
//! - **emulated** elsewhere: the rounded activations and the weight widened to f32 through the
//!   f32 GEMM. The product of two bf16 values is exact in f32, so the backends differ only in the
//!   order of the f32 sums; it is no faster than f32, and exists so that a `--bf16-compute` run
//!   means the same numbers on every CPU (and is tested on every CPU).

use super::amx;
use super::bf16_dot;
pub(crate) use super::bf16_pack::BfRhs;
use super::bf16_pack::{pack_b, pack_rows_vnni, round_bits, round_serial, SharedDst};
use super::gemm::{gemm_into_ld, MatRef};
use candle_core::{bail, Result};
use half::bf16;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Which kernel computes [`gemm_bf16`] on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum Bf16Backend {
    /// Native bf16 tiles (Intel AMX).
    Amx,
    /// Native bf16 dot products (AVX512-BF16's `vdpbf16ps`, [`super::bf16_dot`]): whether
    /// they beat f32 depends on the CPU (2× its f32 rate on Zen 4, 0.7× on Sapphire Rapids),
    /// which the planner measures.
    Dot,
    /// Rounded to bf16, multiplied in f32: the same numbers, no faster than f32.
    Emulated,
}

impl Bf16Backend {
    /// This machine's backend: AMX, else AVX512-BF16, else emulated. `PEFT_BF16_BACKEND=amx`,
    /// `dot` or `emulated` picks one the CPU has (to check on an AMX machine what another CPU
    /// computes); one it lacks, or any other value, leaves the detected one.
    pub fn detect() -> Self {
        static CHOSEN: std::sync::OnceLock<Bf16Backend> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let wanted = std::env::var("PEFT_BF16_BACKEND").ok();
            Self::choose(
                wanted.as_deref(),
                amx::available(),
                super::bf16_dot::available(),
            )
        })
    }

    /// The backend for a `PEFT_BF16_BACKEND` value and what the CPU has.
    fn choose(wanted: Option<&str>, amx: bool, dot: bool) -> Self {
        match wanted {
            Some("emulated") => return Bf16Backend::Emulated,
            Some("dot") if dot => return Bf16Backend::Dot,
            Some("amx") if amx => return Bf16Backend::Amx,
            _ => {}
        }
        if amx {
            Bf16Backend::Amx
        } else if dot {
            Bf16Backend::Dot
        } else {
            Bf16Backend::Emulated
        }
    }

    /// Whether the CPU multiplies bf16 natively (AMX or AVX512-BF16).
    pub fn is_native(self) -> bool {
        self != Bf16Backend::Emulated
    }

    /// For logs and `peft info`.
    pub fn describe(self) -> &'static str {
        match self {
            Bf16Backend::Amx => "native (AMX bf16 tiles)",
            Bf16Backend::Dot => "native (AVX512-BF16 dot products)",
            Bf16Backend::Emulated => "emulated (no native bf16 matrix unit: slower than f32)",
        }
    }
}

/// `dst[i·ld + j] (+)= Σ_t bf16(a[i, t]) · b[t, j]` for `i < m`, `j < n`, with f32 sums;
/// `a` row-major `[m, k]` f32. The rest of each `dst` row is left alone; the previous contents
/// are added to only when `accumulate`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16(
    dst: &mut [f32],
    ld: usize,
    a: &[f32],
    m: usize,
    k: usize,
    b: BfRhs<'_>,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    let b_len = match b {
        BfRhs::Transposed(w) | BfRhs::Plain(w) => w.len(),
    };
    let dst_fits = m == 0 || n == 0 || (ld >= n && (m - 1) * ld + n <= dst.len());
    if a.len() != m * k || b_len != k * n || !dst_fits {
        bail!("bf16 gemm: [{m}, {k}] · [{k}, {n}] does not match its buffers");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    match (Bf16Backend::detect(), b) {
        // The weight's own rows are the tiles' A operand: nothing of it is copied.
        (Bf16Backend::Amx, BfRhs::Transposed(w))
            if n.is_multiple_of(amx::BLOCK) && k.is_multiple_of(amx::K_STEP) =>
        {
            amx_gemm_weight_rows(dst, ld, a, m, k, w, n, accumulate);
            Ok(())
        }
        (Bf16Backend::Amx, _) => amx_gemm(dst, ld, a, m, k, b, n, accumulate),
        (Bf16Backend::Dot, BfRhs::Transposed(w)) if k.is_multiple_of(2) && k > 0 => {
            bf16_dot::gemm_weight_rows(dst, ld, a, m, k, w, n, accumulate);
            Ok(())
        }
        (Bf16Backend::Dot, _) => bf16_dot::gemm(dst, ld, a, m, k, b, n, accumulate),
        (Bf16Backend::Emulated, _) => emulated_gemm(dst, ld, a, m, k, b, n, accumulate),
    }
}

/// `dst[i] = bf16(src[i])`, rounded to nearest even, on all of candle's threads: AVX512-BF16's
/// conversion where the CPU has it (which flushes subnormal inputs to zero, as the AMX tiles
/// treat them anyway), else the scalar rounding.
pub(crate) fn round_into(src: &[f32], dst: &mut [bf16]) {
    const CHUNK: usize = 16 << 10;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| round_serial(s, d));
}

/// The emulated backend (and the tests' reference for the AMX one).
#[allow(clippy::too_many_arguments)]
pub(crate) fn emulated_gemm(
    dst: &mut [f32],
    ld: usize,
    a: &[f32],
    m: usize,
    k: usize,
    b: BfRhs<'_>,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    let rounded: Vec<f32> = a
        .iter()
        .map(|&x| f32::from_bits(u32::from(round_bits(x)) << 16))
        .collect();
    let (w, rhs) = match b {
        BfRhs::Transposed(w) => (w, false),
        BfRhs::Plain(w) => (w, true),
    };
    let wide: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
    let b = if rhs {
        MatRef::row_major(&wide, k, n)
    } else {
        MatRef::row_major(&wide, n, k).t()
    };
    gemm_into_ld(
        dst,
        ld,
        MatRef::row_major(&rounded, m, k),
        b,
        1.0,
        accumulate,
    )
}

#[allow(clippy::too_many_arguments)]
fn amx_gemm(
    dst: &mut [f32],
    ld: usize,
    a: &[f32],
    m: usize,
    k: usize,
    b: BfRhs<'_>,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    const BL: usize = amx::BLOCK;
    let kp = k.div_ceil(amx::K_STEP) * amx::K_STEP;
    let mp = m.div_ceil(BL) * BL;
    // A as bf16, zero-padded to whole tiles (the padding adds zeros to every sum).
    let mut a_bf = vec![0u16; mp * kp];
    a_bf.par_chunks_mut(kp)
        .zip(a.par_chunks(k))
        .for_each(|(row, src)| {
            // SAFETY: bf16 is a u16 bit pattern (`repr(transparent)`).
            let row: &mut [bf16] =
                unsafe { std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), row.len()) };
            round_serial(src, &mut row[..src.len()]);
        });
    let blocks = n.div_ceil(BL);
    let threads = candle_core::utils::get_num_threads().clamp(1, blocks);
    let per = blocks.div_ceil(threads);
    let out = SharedDst(dst.as_mut_ptr());
    let dst_len = dst.len();
    (0..threads).into_par_iter().for_each(|t| {
        let (nb0, nb1) = (t * per, ((t + 1) * per).min(blocks));
        if nb0 >= nb1 {
            return;
        }
        let half = kp / 2 * 16; // u32 per packed tile column group
        let mut packed = vec![0u32; 2 * half];
        let mut c = [0f32; BL * BL];
        // SAFETY: `available()` was true (the caller dispatched on it); configure/release pair
        // on this thread, and nothing inside runs other rayon work on it.
        unsafe { amx::configure() };
        for nb in nb0..nb1 {
            let n0 = nb * BL;
            pack_b(&mut packed, b, k, kp, n, n0);
            let cols = (n - n0).min(BL);
            for m0 in (0..mp).step_by(BL) {
                // SAFETY: rows m0..m0+32 of `a_bf` exist (mp is a multiple of 32), each
                // kp = 32·steps wide; `packed` holds two groups of kp/2 rows of 16 u32.
                unsafe {
                    amx::block_32x32(
                        a_bf.as_ptr().add(m0 * kp),
                        kp * 2,
                        packed.as_ptr(),
                        packed.as_ptr().add(half),
                        kp / amx::K_STEP,
                        &mut c,
                    );
                }
                for i in 0..(m - m0).min(BL) {
                    let at = (m0 + i) * ld + n0;
                    debug_assert!(at + cols <= dst_len);
                    // SAFETY: row m0+i, columns n0..n0+cols of `dst` are in bounds (checked by
                    // the caller: (m-1)·ld + n ≤ len) and belong to this thread's blocks only.
                    let row = unsafe { std::slice::from_raw_parts_mut(out.ptr().add(at), cols) };
                    let src = &c[i * BL..i * BL + cols];
                    if accumulate {
                        row.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                    } else {
                        row.copy_from_slice(src);
                    }
                }
            }
        }
        // SAFETY: as for `configure` above.
        unsafe { amx::release() };
    });
    Ok(())
}

/// `dst (+)= a·wᵀ` computed as `(w·aᵀ)ᵀ`: `w: [n, k]` bf16 row-major with `n` and `k` whole
/// tiles is loaded into the tiles as it lies, and only the activations are packed (once, and
/// `m` is usually far smaller than `n`); each 32×32 result block is written transposed.
#[allow(clippy::too_many_arguments)]
fn amx_gemm_weight_rows(
    dst: &mut [f32],
    ld: usize,
    a: &[f32],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    accumulate: bool,
) {
    const BL: usize = amx::BLOCK;
    let a_blocks = m.div_ceil(BL);
    let group = k / 2 * 16; // u32 per 16-column group of one packed block
    let packed = pack_rows_vnni(a, m, k);
    let w_blocks = n / BL;
    let threads = candle_core::utils::get_num_threads().clamp(1, w_blocks);
    let per = w_blocks.div_ceil(threads);
    let out = SharedDst(dst.as_mut_ptr());
    // SAFETY: bf16 is a u16 bit pattern (`half` documents the layout as `repr(transparent)`).
    let w_bits: &[u16] = unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u16>(), w.len()) };
    (0..threads).into_par_iter().for_each(|t| {
        let (wb0, wb1) = (t * per, ((t + 1) * per).min(w_blocks));
        if wb0 >= wb1 {
            return;
        }
        let mut c = [0f32; BL * BL];
        // SAFETY: the caller dispatched on `available()`; configure/release pair on this thread.
        unsafe { amx::configure() };
        for wb in wb0..wb1 {
            for jb in 0..a_blocks {
                let b = &packed[jb * 2 * group..(jb + 1) * 2 * group];
                // SAFETY: rows wb·32..wb·32+32 of `w` exist (n is a multiple of 32), each k =
                // 32·steps wide; `b` holds two groups of k/2 rows of 16 u32.
                unsafe {
                    amx::block_32x32(
                        w_bits.as_ptr().add(wb * BL * k),
                        k * 2,
                        b.as_ptr(),
                        b.as_ptr().add(group),
                        k / amx::K_STEP,
                        &mut c,
                    );
                }
                // c[i][j] = Σ w[wb·32+i, :]·a[jb·32+j, :] = dst[jb·32+j, wb·32+i].
                for j in 0..(m - jb * BL).min(BL) {
                    let at = (jb * BL + j) * ld + wb * BL;
                    // SAFETY: row jb·32+j < m, columns wb·32..wb·32+32 ≤ n of `dst` are in
                    // bounds (checked by the caller) and belong to this thread's blocks only.
                    let row = unsafe { std::slice::from_raw_parts_mut(out.ptr().add(at), BL) };
                    for (i, d) in row.iter_mut().enumerate() {
                        let v = c[i * BL + j];
                        *d = if accumulate { *d + v } else { v };
                    }
                }
            }
        }
        // SAFETY: as for `configure` above.
        unsafe { amx::release() };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The products in f64 of the bf16-rounded operands.
    fn reference(a: &[f32], m: usize, k: usize, w: &[bf16], n: usize, plain: bool) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for t in 0..k {
                    let x = f64::from(f32::from_bits(u32::from(round_bits(a[i * k + t])) << 16));
                    let wv = if plain { w[t * n + j] } else { w[j * k + t] };
                    s += x * f64::from(wv.to_f32());
                }
                out[i * n + j] = s;
            }
        }
        out
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Path {
        Emulated,
        /// The general AMX kernel (activations as A, the weight packed).
        AmxPacked,
        /// Whatever `gemm_bf16` picks (the weight's rows as A where the shape allows).
        Dispatched,
        /// AVX512-BF16 with the activations broadcast and the right operand packed.
        DotPacked,
        /// AVX512-BF16 with the weight's rows broadcast (transposed weights, even K only).
        DotWeightRows,
    }

    fn check(m: usize, k: usize, n: usize, plain: bool, path: Path) {
        let a = lcg(1 + m as u64, m * k);
        let w: Vec<bf16> = lcg(7 + n as u64, k * n)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let b = if plain {
            BfRhs::Plain(&w)
        } else {
            BfRhs::Transposed(&w)
        };
        let want = reference(&a, m, k, &w, n, plain);
        // A wider destination with a sentinel border, accumulated onto ones.
        let ld = n + 3;
        let mut dst = vec![1f32; m * ld];
        match path {
            Path::Emulated => emulated_gemm(&mut dst, ld, &a, m, k, b, n, true),
            Path::AmxPacked => amx_gemm(&mut dst, ld, &a, m, k, b, n, true),
            Path::Dispatched => gemm_bf16(&mut dst, ld, &a, m, k, b, n, true),
            Path::DotPacked => bf16_dot::gemm(&mut dst, ld, &a, m, k, b, n, true),
            Path::DotWeightRows => {
                bf16_dot::gemm_weight_rows(&mut dst, ld, &a, m, k, &w, n, true);
                Ok(())
            }
        }
        .unwrap();
        for i in 0..m {
            for j in 0..ld {
                let got = dst[i * ld + j];
                if j >= n {
                    assert_eq!(got, 1.0, "column {j} past n was touched");
                    continue;
                }
                let w = 1.0 + want[i * n + j];
                let tol = 1e-5 * (k as f64).sqrt() * 4.0;
                assert!(
                    (f64::from(got) - w).abs() <= tol,
                    "[{m}×{k}]·[{k}×{n}] plain={plain} {path:?} at ({i},{j}): {got} vs {w}"
                );
            }
        }
    }

    /// Edges of every kind, and whole tiles (`n`, `k` multiples of 32: the weight-rows path).
    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (5, 7, 3),
        (32, 32, 32),
        (33, 65, 47),
        (70, 96, 130),
        (64, 577, 40),
        (5, 64, 96),
        (70, 96, 64),
        (257, 576, 192),
    ];

    #[test]
    fn the_emulated_products_equal_an_f64_reference_of_the_rounded_operands() {
        for &(m, k, n) in &SHAPES {
            check(m, k, n, false, Path::Emulated);
            check(m, k, n, true, Path::Emulated);
        }
    }

    #[test]
    fn amx_tiles_equal_the_f64_reference_where_the_cpu_has_them() {
        if !amx::available() {
            // Said, not skipped silently: the emulated test above still ran.
            eprintln!("this CPU has no AMX-BF16 (or the OS refused the tile state): only the emulated bf16 path is checked here");
            return;
        }
        for &(m, k, n) in &SHAPES {
            for path in [Path::AmxPacked, Path::Dispatched] {
                check(m, k, n, false, path);
                check(m, k, n, true, path);
            }
        }
    }

    #[test]
    fn avx512_bf16_dot_products_equal_the_f64_reference_where_the_cpu_has_them() {
        if !bf16_dot::available() {
            eprintln!("this CPU has no AVX512-BF16: the dot-product path is not checked here");
            return;
        }
        // Past the kernel's 12-row tiles and 32-column blocks too, and an odd K for the
        // packed path (its padding pair).
        let shapes = SHAPES
            .iter()
            .copied()
            .chain([(13, 2, 33), (25, 130, 100), (3, 3, 70)]);
        for (m, k, n) in shapes {
            check(m, k, n, false, Path::DotPacked);
            check(m, k, n, true, Path::DotPacked);
            if k % 2 == 0 {
                check(m, k, n, false, Path::DotWeightRows);
            }
        }
    }

    #[test]
    fn the_backend_is_the_best_the_cpu_has_unless_one_it_has_is_asked_for() {
        use Bf16Backend::*;
        let choose = Bf16Backend::choose;
        assert_eq!(choose(None, true, true), Amx);
        assert_eq!(choose(None, false, true), Dot);
        assert_eq!(choose(None, false, false), Emulated);
        assert_eq!(choose(Some("dot"), true, true), Dot);
        assert_eq!(choose(Some("emulated"), true, true), Emulated);
        // Asking for what the CPU lacks, or for nothing known, keeps the detected backend.
        assert_eq!(choose(Some("amx"), false, true), Dot);
        assert_eq!(choose(Some("dot"), false, false), Emulated);
        assert_eq!(choose(Some("fast"), true, true), Amx);
    }

    #[test]
    fn rounding_is_to_nearest_even_like_the_half_crate() {
        for x in lcg(3, 10_000).into_iter().chain([
            0.0,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            f32::INFINITY,
        ]) {
            assert_eq!(round_bits(x), bf16::from_f32(x).to_bits(), "{x}");
        }
        assert!(bf16::from_bits(round_bits(f32::NAN)).is_nan());
    }

    #[test]
    fn parallel_rounding_equals_the_scalar_rounding_on_normal_values() {
        // 70 001 values: whole 32-lane blocks, parallel chunks and a tail.
        let src: Vec<f32> = lcg(11, 70_001)
            .into_iter()
            .map(|x| x * 1e3)
            .chain([0.0, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, f32::INFINITY])
            .collect();
        let mut got = vec![bf16::ZERO; src.len()];
        round_into(&src, &mut got);
        for (g, &x) in got.iter().zip(&src) {
            assert_eq!(g.to_bits(), round_bits(x), "{x}");
        }
    }

    #[test]
    fn mismatched_buffers_are_errors() {
        let w = vec![bf16::ZERO; 6];
        let mut dst = vec![0f32; 4];
        assert!(gemm_bf16(&mut dst, 2, &[0.0; 5], 2, 3, BfRhs::Plain(&w), 2, false).is_err());
        assert!(gemm_bf16(&mut dst, 1, &[0.0; 6], 2, 3, BfRhs::Plain(&w), 2, false).is_err());
    }
}
