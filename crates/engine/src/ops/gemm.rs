//! f32 GEMM on borrowed slices, through the `gemm` crate candle itself uses on the CPU.
//!
//! Inside a custom op, going through candle tensors costs two full copies per call (the input
//! into a fresh tensor, the result back out of it); on SmolLM2 that is ~0.8 GB of memcpy per
//! training step across the frozen projections. Calling the GEMM on the op's own storage
//! writes the result straight into the buffer the op returns.

use candle_core::{bail, Result};

/// A read-only matrix view: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// Row-major `[rows, cols]`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, as a view of the same data.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    pub(crate) fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `a · b` as a new row-major `[a.rows, b.cols]` buffer, on all of candle's threads.
pub(crate) fn matmul(a: MatRef<'_>, b: MatRef<'_>) -> Result<Vec<f32>> {
    product(a, b, 1.0)
}

/// `beta · a·b` as a new row-major `[a.rows, b.cols]` buffer that is never zero-filled: the
/// GEMM writes every element. Filling a buffer only to overwrite it was ≈ 3 % of a LoRA step
/// (the projections' outputs and input gradients, ~300 MB of `memset` per step on SmolLM2).
pub(crate) fn product(a: MatRef<'_>, b: MatRef<'_>, beta: f32) -> Result<Vec<f32>> {
    if a.cols != b.rows || !a.fits() || !b.fits() {
        bail!(
            "gemm: [{}, {}] · [{}, {}] does not match its buffers",
            a.rows,
            a.cols,
            b.rows,
            b.cols
        );
    }
    let len = a.rows * b.cols;
    let mut dst = Vec::with_capacity(len);
    let threads = candle_core::utils::get_num_threads();
    // SAFETY: the operands fit their data (checked above); `dst` has room for `len` values
    // at row stride `b.cols`, and a non-accumulating `gemm_raw` writes every one of them (zeros
    // when `a.cols` is 0) before `set_len` exposes them.
    unsafe {
        gemm_raw(dst.as_mut_ptr(), b.cols, a, b, beta, false, threads);
        dst.set_len(len);
    }
    Ok(dst)
}

/// `dst = [dst +] beta · a·b`, `dst` row-major `[a.rows, b.cols]`; the previous contents are
/// kept (and added to) only when `accumulate`. The crate's one call into the GEMM kernel.
pub(crate) fn gemm_into(
    dst: &mut [f32],
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    accumulate: bool,
) -> Result<()> {
    if dst.len() != a.rows * b.cols {
        bail!(
            "gemm: [{}, {}] · [{}, {}] does not match its buffers",
            a.rows,
            a.cols,
            b.rows,
            b.cols
        );
    }
    gemm_into_ld(dst, b.cols, a, b, beta, accumulate)
}

/// [`gemm_into`] into a column block of a wider row-major buffer: row `i` of the product
/// is written at `dst[i·ld..i·ld + b.cols]` (a tile of output columns written in place).
pub(crate) fn gemm_into_ld(
    dst: &mut [f32],
    ld: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    accumulate: bool,
) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let dst_fits = m == 0 || n == 0 || (ld >= n && (m - 1) * ld + n <= dst.len());
    if a.cols != b.rows || !a.fits() || !b.fits() || !dst_fits {
        bail!(
            "gemm: [{m}, {k}] · [{}, {n}] does not match its buffers",
            b.rows
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(ld).take(m) {
                let len = n.min(row.len());
                row[..len].fill(0.0);
            }
        }
        return Ok(());
    }
    let threads = candle_core::utils::get_num_threads();
    // SAFETY: every index the GEMM reads is in bounds (checked by `fits` above), and `dst` is
    // an exclusively borrowed buffer holding m rows of n at stride ld (checked above).
    unsafe { gemm_raw(dst.as_mut_ptr(), ld, a, b, beta, accumulate, threads) };
    Ok(())
}

/// `dst = [dst +] beta · a·b` on `threads` threads (1: on the caller's thread, for ops that
/// run many small products in parallel themselves), row `i` at `dst + i·ld`.
///
/// # Safety
/// `a` and `b` must satisfy `MatRef::fits` with `a.cols == b.rows`, and `dst` must be valid
/// for writes (and reads when `accumulate`) of `a.rows` rows of `b.cols` at stride `ld`, with
/// no other thread touching those elements during the call. Other elements between the rows
/// may be written by other threads: only the product's own are touched.
pub(crate) unsafe fn gemm_raw(
    dst: *mut f32,
    ld: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    debug_assert!(a.cols == b.rows && a.fits() && b.fits());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::ptr::write_bytes(dst.add(i * ld), 0, n);
            }
        }
        return;
    }
    if threads > 1 && m * n * k >= SPLIT_WORK {
        split(dst, ld, a, b, beta, accumulate, threads);
        return;
    }
    // `gemm` computes `dst = alpha·dst + beta·a·b`, reading `dst` only when `accumulate`.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ld as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        1.0,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// Products from this many multiply-adds on are shared between threads (the `gemm` crate's own
/// threading threshold).
const SPLIT_WORK: usize = 48 * 48 * 256;

/// A raw output pointer shared by the threads of [`split`], each writing its own block.
#[derive(Clone, Copy)]
struct Dst(*mut f32);
// SAFETY: the blocks written through it are disjoint (see `split`).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    /// Through a method, so that a closure captures the whole (`Send`) wrapper, not its field.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// [`gemm_raw`] shared between `threads` threads by output blocks, each one a single-threaded
/// product on its own columns of `b` (its own rows of `a` when `b` is narrow).
///
/// Why not the crate's own threads: they split its work by blocks of output columns of the
/// transposed problem, so every thread packs the *whole* weight operand (both of them pack
/// every row of W into their own buffers on each call). Split by the weight's rows here, each
/// thread packs only its half: a LoRA step on SmolLM2 runs ≈ 10 % faster.
///
/// # Safety
/// As [`gemm_raw`].
unsafe fn split(
    dst: *mut f32,
    ld: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    accumulate: bool,
    threads: usize,
) {
    use rayon::prelude::*;
    let (m, n) = (a.rows, b.cols);
    // Blocks of output columns are whole vectors of the crate's kernel (16 lanes); blocks of
    // rows, whole groups of its 6 register columns.
    let by_cols = n >= 64 * threads;
    let (len, align) = if by_cols { (n, 16) } else { (m, 6) };
    let chunk = len.div_ceil(threads).div_ceil(align) * align;
    let dst = Dst(dst);
    (0..len.div_ceil(chunk)).into_par_iter().for_each(|t| {
        let (s, e) = (t * chunk, ((t + 1) * chunk).min(len));
        // SAFETY: each block is the product's own columns s..e (rows s..e) of `dst`, disjoint
        // from the others; the sub-views start inside their data (s < len) and keep `fits`.
        if by_cols {
            let b = MatRef {
                data: &b.data[s * b.cs..],
                cols: e - s,
                ..b
            };
            gemm_raw(dst.ptr().add(s), ld, a, b, beta, accumulate, 1);
        } else {
            let a = MatRef {
                data: &a.data[s * a.rs..],
                rows: e - s,
                ..a
            };
            gemm_raw(dst.ptr().add(s * ld), ld, a, b, beta, accumulate, 1);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product_in_every_layout() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: Vec<f32> = (0..m * n)
            .map(|ij| (0..k).map(|p| a[ij / n * k + p] * b[p * n + ij % n]).sum())
            .collect();
        let got = matmul(MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n)).unwrap();
        // The same b stored transposed ([n, k] row-major), viewed back through `.t()`.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let got_t = matmul(
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&bt, n, k).t(),
        )
        .unwrap();
        for (g, w) in got.iter().chain(&got_t).zip(want.iter().chain(&want)) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        // Into columns 2..2+n of a 7-wide buffer: the rest of each row is left as it was.
        let ld = 7;
        let mut wide = vec![-1f32; m * ld];
        gemm_into_ld(
            &mut wide[2..],
            ld,
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, k, n),
            1.0,
            false,
        )
        .unwrap();
        for (i, row) in wide.chunks(ld).enumerate() {
            assert!(row[..2].iter().chain(&row[2 + n..]).all(|&v| v == -1.0));
            for (g, w) in row[2..2 + n].iter().zip(&want[i * n..(i + 1) * n]) {
                assert!((g - w).abs() < 1e-5, "{g} vs {w}");
            }
        }
        let mut short = vec![0f32; (m - 1) * ld + n - 1];
        let (ar, br) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        assert!(gemm_into_ld(&mut short, ld, ar, br, 1.0, false).is_err());
        assert!(matmul(MatRef::row_major(&a, m, k), MatRef::row_major(&b, n, k)).is_err());
        assert!(matmul(
            MatRef::row_major(&a[1..], m, k),
            MatRef::row_major(&b, k, n)
        )
        .is_err());
    }

    /// Shared between threads by columns (a wide `b`) or by rows (a narrow one), in every
    /// layout, into a wider buffer and accumulating: the same as one thread's product, and the
    /// elements outside the product untouched.
    #[test]
    fn threads_share_a_product_without_changing_it() {
        for (m, k, n) in [(70, 64, 200), (300, 256, 9)] {
            assert!(m * k * n >= SPLIT_WORK && (n >= 128) == (n == 200));
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let views = [
                (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n)),
                (
                    MatRef::row_major(&a, k, m).t(),
                    MatRef::row_major(&b, n, k).t(),
                ),
            ];
            for (av, bv) in views {
                let ld = n + 3;
                let run = |threads: usize, accumulate: bool| {
                    let mut dst: Vec<f32> = (0..m * ld).map(|i| i as f32 * 1e-3).collect();
                    unsafe { gemm_raw(dst.as_mut_ptr(), ld, av, bv, 0.5, accumulate, threads) };
                    dst
                };
                for accumulate in [false, true] {
                    let (one, two) = (run(1, accumulate), run(2, accumulate));
                    let fresh = run(1, accumulate);
                    assert_eq!(one, fresh);
                    for (i, (x, y)) in one.iter().zip(&two).enumerate() {
                        if i % ld >= n {
                            assert_eq!(*y, i as f32 * 1e-3, "outside the product at {i}");
                        }
                        assert!(
                            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                            "{x} vs {y} at {i}"
                        );
                    }
                }
            }
        }
    }
}
