//! The head's rows a tile at a time, as the loss's GEMMs take them: slices of a borrowed f32
//! or bf16 head, or rows widened on demand (a quantized head is never widened whole). The
//! products go straight into the buffers the loss works on (no candle tensor per tile, which
//! cost a copy of every tile of logits and an add per tile in the backward).

use super::{logits_tile_bf16, weight_tile, with_bf16_head, Bf16Tiles, HeadWeight};
use crate::ops::bf16_gemm::{gemm_bf16, BfRhs};
use crate::ops::gemm::{gemm_into, product, MatRef};
use candle_core::{DType, Result, Storage, Tensor};
use half::bf16;
use std::borrow::Cow;

/// A tile of the head's rows, `[len, d]`, as the GEMMs take it.
pub(super) enum Tile<'a> {
    /// A slice of a borrowed f32 head.
    F32(&'a [f32]),
    /// Rows widened on demand, read in their own storage (no copy out of the tensor).
    Widened(Tensor),
    Bf16(Cow<'a, [bf16]>),
}

/// Runs `f` on an f32 CPU tensor's values, borrowed when contiguous.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(c) => f(&crate::ops::logical_f32(c, layout)?),
        _ => candle_core::bail!("linear_cross_entropy: head rows off the CPU"),
    }
}

impl Tile<'_> {
    /// `f32` on the tile's f32 values (borrowed), or `bf16` on a bf16 tile's.
    fn either<R>(
        &self,
        f32: impl FnOnce(&[f32]) -> Result<R>,
        bf16: impl FnOnce(&[bf16]) -> Result<R>,
    ) -> Result<R> {
        match self {
            Tile::F32(t) => f32(t),
            Tile::Widened(t) => with_values(t, f32),
            Tile::Bf16(t) => bf16(t),
        }
    }

    /// Row `i` widened to f32 into `out` (`d` values).
    pub(super) fn row_into(&self, i: usize, out: &mut [f32]) -> Result<()> {
        let range = i * out.len()..(i + 1) * out.len();
        match self {
            Tile::F32(t) => out.copy_from_slice(&t[range]),
            Tile::Widened(t) => with_values(t, |v| {
                out.copy_from_slice(&v[range]);
                Ok(())
            })?,
            Tile::Bf16(t) => {
                for (o, v) in out.iter_mut().zip(&t[range]) {
                    *o = v.to_f32();
                }
            }
        }
        Ok(())
    }

    /// The logits `hb · tileᵀ`, row-major `[r, len]` (`hb`: `[r, d]`), straight from the GEMM.
    pub(super) fn logits(&self, hb: &[f32], r: usize, d: usize) -> Result<Vec<f32>> {
        let len = |n: usize| n / d.max(1);
        self.either(
            |t| {
                product(
                    MatRef::row_major(hb, r, d),
                    MatRef::row_major(t, len(t.len()), d).t(),
                    1.0,
                )
            },
            |t| logits_tile_bf16(hb, r, t, d, len(t.len())),
        )
    }

    /// `acc += z · tile` (`z`: `[r, len]`, `acc`: `[r, d]`).
    pub(super) fn accumulate(&self, acc: &mut [f32], z: &[f32], r: usize, d: usize) -> Result<()> {
        let f32_rows = |acc: &mut [f32], t: &[f32]| {
            let len = t.len() / d.max(1);
            gemm_into(
                acc,
                MatRef::row_major(z, r, len),
                MatRef::row_major(t, len, d),
                1.0,
                true,
            )
        };
        match self {
            Tile::F32(t) => f32_rows(acc, t),
            Tile::Widened(t) => with_values(t, |v| f32_rows(acc, v)),
            Tile::Bf16(t) => {
                let len = t.len() / d.max(1);
                gemm_bf16(acc, d, z, r, len, BfRhs::Plain(t), d, true)
            }
        }
    }
}

/// Runs `f` with the head's tiles at hand: a borrowed f32 or bf16 head is sliced, other heads
/// are widened tile by tile.
pub(super) fn with_head<R>(w: &HeadWeight, f: impl FnOnce(Head<'_>) -> Result<R>) -> Result<R> {
    match w {
        HeadWeight::Bf16(t) => with_bf16_head(t, |wb| f(Head::Bf16(&Bf16Tiles::Slice(wb)))),
        HeadWeight::RowsBf16 { rows, .. } => f(Head::Bf16(&Bf16Tiles::Rows(rows))),
        HeadWeight::Dense(t) if t.dtype() == DType::F32 && t.device().is_cpu() => {
            let t = t.contiguous()?;
            let (storage, layout) = t.storage_and_layout();
            let whole = match &*storage {
                Storage::Cpu(c) => crate::ops::logical_f32(c, layout)?,
                _ => candle_core::bail!("linear_cross_entropy: the head is not on the CPU"),
            };
            f(Head::F32(&whole))
        }
        _ => f(Head::Tiles(w)),
    }
}

/// Where each tile of the head comes from.
#[derive(Clone, Copy)]
pub(super) enum Head<'a> {
    /// The whole f32 head, borrowed: tiles are slices of it.
    F32(&'a [f32]),
    /// bf16 rows, multiplied in bf16 with f32 sums (`--bf16-compute`).
    Bf16(&'a Bf16Tiles<'a>),
    /// Rows widened to f32 tile by tile (a quantized or non-f32 head).
    Tiles(&'a HeadWeight),
}

impl<'a> Head<'a> {
    /// Rows `v0..v0+len` (`d` wide).
    pub(super) fn tile(&self, v0: usize, len: usize, d: usize) -> Result<Tile<'a>> {
        Ok(match *self {
            Head::F32(whole) => Tile::F32(&whole[v0 * d..(v0 + len) * d]),
            Head::Bf16(tiles) => Tile::Bf16(tiles.tile(v0, len, d)?),
            Head::Tiles(w) => Tile::Widened(weight_tile(w, v0, len)?),
        })
    }
}
