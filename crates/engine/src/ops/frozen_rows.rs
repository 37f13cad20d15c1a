//! A frozen weight that is not stored as f32 but can widen any run of its rows to f32 on
//! demand: NF4 (QLoRA) and the GGUF block types (QLoRA over a file's own quantization). The
//! fused LoRA linear ([`super::lora_linear`]) multiplies by such a weight tile by tile, so the
//! f32 copy of the whole weight never exists and the adapter shares the op with the base.
//!
//! The trait lives here, below `quant`, so the ops layer does not import the storage formats;
//! `quant` implements it for its types.

use candle_core::Result;
use half::bf16;
use std::cell::RefCell;

thread_local! {
    static F32_TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static BF16_TILE: RefCell<Vec<bf16>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch tile of `len` f32 values, which `f` overwrites (they hold
/// whatever the last use left). Why: a fresh zero-filled tile per call filled the whole
/// widened base with zeros on every pass before widening overwrote it (QLoRA's `memset` was
/// 4.6 % of a step on SmolLM2). At most [`TILE_BYTES`] stay allocated per thread.
pub(crate) fn with_f32_tile<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    F32_TILE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut t) => {
            if t.len() < len {
                t.resize(len, 0.0);
            }
            f(&mut t[..len])
        }
        // A nested call on the same thread (none today) gets a buffer of its own.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// [`with_f32_tile`] for a bf16 tile (`--bf16-compute` over a quantized base).
pub(crate) fn with_bf16_tile<R>(len: usize, f: impl FnOnce(&mut [bf16]) -> R) -> R {
    BF16_TILE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut t) => {
            if t.len() < len {
                t.resize(len, bf16::ZERO);
            }
            f(&mut t[..len])
        }
        Err(_) => f(&mut vec![bf16::ZERO; len]),
    })
}

/// f32 bytes one task of [`FrozenRows::widen_rows_bf16_into`] widens before rounding them: well
/// inside a core's L2.
const ROUND_CHUNK_BYTES: usize = 64 << 10;

/// Bound on one widened tile: 4 MiB of f32. The projections of small models fit whole (one
/// GEMM per call); a 7B model's 4096-wide rows come in tiles of 256 rows.
pub const TILE_BYTES: usize = 4 << 20;

/// A frozen `[out, in]` weight readable as f32 rows.
pub trait FrozenRows: Send + Sync {
    /// `(out, in)`.
    fn dims(&self) -> (usize, usize);

    /// Rows `r0..r1` as row-major f32 into `out` (`(r1 - r0) · in` elements), on all of
    /// candle's threads (the GEMM that follows uses every core; a serial widening leaves all
    /// but one idle).
    ///
    /// # Errors
    /// A range outside the weight, or `out` of the wrong length.
    fn widen_rows_into(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()>;

    /// [`FrozenRows::widen_rows_into`] on the calling thread only, for callers that share
    /// rows out between threads themselves. By default the parallel widening.
    ///
    /// # Errors
    /// As [`FrozenRows::widen_rows_into`].
    fn widen_rows_serial(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        self.widen_rows_into(r0, r1, out)
    }

    /// Rows `r0..r1` rounded to bf16 (nearest even) into `out`: QLoRA's bf16 compute dtype
    /// (`--bf16-compute`). Exact for NF4 and the GGUF types whose values have at most 8
    /// significant bits, rounded like any f32 otherwise.
    ///
    /// Each parallel task widens a few rows into a small f32 buffer of its thread's and rounds
    /// them from there while they are in cache: widening the whole tile first and rounding it in
    /// a second pass moved 1.5× the tile's f32 size through memory (QLoRA's widening was 11 %
    /// of a bf16 step on SmolLM2).
    ///
    /// # Errors
    /// As [`FrozenRows::widen_rows_into`].
    fn widen_rows_bf16_into(&self, r0: usize, r1: usize, out: &mut [half::bf16]) -> Result<()> {
        use rayon::prelude::*;
        let k = self.dims().1;
        if r0 > r1 || out.len() != (r1 - r0) * k {
            candle_core::bail!("widen rows {r0}..{r1} into {} bf16 values", out.len());
        }
        if k == 0 || r0 == r1 {
            return Ok(());
        }
        thread_local! {
            static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
        }
        let rows = (ROUND_CHUNK_BYTES / (4 * k)).max(1);
        out.par_chunks_mut(rows * k)
            .enumerate()
            .try_for_each(|(i, o)| {
                let a = r0 + i * rows;
                let b = a + o.len() / k;
                let mut widen_and_round = |wide: &mut Vec<f32>| -> Result<()> {
                    wide.resize(o.len(), 0.0);
                    self.widen_rows_serial(a, b, wide)?;
                    super::bf16_pack::round_serial(wide, o);
                    Ok(())
                };
                SCRATCH.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut wide) => widen_and_round(&mut wide),
                    // Re-entered on this thread (a default `widen_rows_serial` that runs
                    // parallel work): a buffer of its own.
                    Err(_) => widen_and_round(&mut Vec::new()),
                })
            })
    }

    /// Output rows per tile: as many as fit [`TILE_BYTES`] of f32, at least 1.
    fn tile_rows(&self) -> usize {
        let (out, inp) = self.dims();
        (TILE_BYTES / (4 * inp.max(1))).clamp(1, out.max(1))
    }
}
