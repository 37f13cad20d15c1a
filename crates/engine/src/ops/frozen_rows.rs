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

    /// Rows `r0..r1` rounded to bf16 (nearest even) into `out`: QLoRA's bf16 compute dtype
    /// (`--bf16-compute`). By default widened to f32 first; exact for NF4 and the GGUF types
    /// whose values have at most 8 significant bits, rounded like any f32 otherwise.
    ///
    /// # Errors
    /// As [`FrozenRows::widen_rows_into`].
    fn widen_rows_bf16_into(&self, r0: usize, r1: usize, out: &mut [half::bf16]) -> Result<()> {
        let k = self.dims().1;
        if r0 > r1 || out.len() != (r1 - r0) * k {
            candle_core::bail!("widen rows {r0}..{r1} into {} bf16 values", out.len());
        }
        // Widened whole (one parallel pass, as for f32) into a per-thread scratch buffer that
        // is kept between calls: a fresh multi-MiB allocation per call costs its page faults.
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|scratch| {
            let mut wide = scratch.borrow_mut();
            wide.resize(out.len(), 0.0);
            self.widen_rows_into(r0, r1, &mut wide)?;
            super::bf16_gemm::round_into(&wide, out);
            Ok(())
        })
    }

    /// Output rows per tile: as many as fit [`TILE_BYTES`] of f32, at least 1.
    fn tile_rows(&self) -> usize {
        let (out, inp) = self.dims();
        (TILE_BYTES / (4 * inp.max(1))).clamp(1, out.max(1))
    }
}
