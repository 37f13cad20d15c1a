//! The frozen linear op over a GGUF block type with a backward: QLoRA over the file's own
//! quantization (`Q4_1`, `Q4_K`, …), the way [`super::nf4_op`] works over NF4. Forward walks
//! `W` in tiles of output rows, each widened to f32 into a transient buffer and multiplied by
//! candle's GEMM; backward returns only the input gradient `dx = Σ_tiles dy[:, tile] · W_tile`
//! over the same tiles. `W` gets no gradient, no f32 copy of it ever exists, and nothing is kept
//! between forward and backward beyond what candle's graph holds.
//!
//! Also the prompt path of generation: for many rows the GEMM over widened tiles outruns the
//! integer dot kernels (compute-bound), and it is exact in the activations.

use super::q4_1_matmul;
use crate::ops::logical_f32;
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use std::sync::Arc;

/// Bound on one widened tile: 4 MiB of f32, as for NF4.
pub const TILE_BYTES: usize = 4 << 20;

/// Output rows per tile for a weight with `k` inputs.
pub fn tile_rows(n: usize, k: usize) -> usize {
    (TILE_BYTES / (4 * k.max(1))).clamp(1, n.max(1))
}

fn widen<T: GgmlType>(bytes: &[u8], out: &mut [f32]) -> candle_core::Result<()> {
    // SAFETY: `T` is a plain block of integers and f16s; `align_to` only yields the middle
    // part at `T`'s alignment, and we refuse anything left over.
    let (pre, blocks, post) = unsafe { bytes.align_to::<T>() };
    if !pre.is_empty() || !post.is_empty() || blocks.len() * T::BLCK_SIZE != out.len() {
        bail!(
            "{:?} rows of {} bytes are not whole aligned blocks",
            T::DTYPE,
            bytes.len()
        )
    }
    T::to_float(blocks, out);
    Ok(())
}

/// Rows `r0..r1` of `q` (`[n, k]`) as row-major f32, widened in parallel on candle's pool.
///
/// # Errors
/// A block type without a dequantizer here (float GGUF tensors load dense, never as this).
pub fn widen_rows(q: &QTensor, r0: usize, r1: usize) -> candle_core::Result<Vec<f32>> {
    let (_, k) = q.shape().dims2()?;
    let mut out = vec![0f32; r1.saturating_sub(r0) * k];
    widen_rows_into(q, r0, r1, &mut out)?;
    Ok(out)
}

/// Widens whole blocks of one type into f32.
type Widen = fn(&[u8], &mut [f32]) -> candle_core::Result<()>;

/// The widening of whole blocks of `dtype` (any run of whole rows of a weight).
fn widener(dtype: GgmlDType) -> candle_core::Result<Widen> {
    Ok(match dtype {
        GgmlDType::Q4_1 => |bytes, out| {
            q4_1_matmul::dequantize_row(bytes, out);
            Ok(())
        },
        GgmlDType::Q4_0 => widen::<BlockQ4_0>,
        GgmlDType::Q5_0 => widen::<BlockQ5_0>,
        GgmlDType::Q5_1 => widen::<BlockQ5_1>,
        GgmlDType::Q8_0 => widen::<BlockQ8_0>,
        GgmlDType::Q2K => widen::<BlockQ2K>,
        GgmlDType::Q3K => widen::<BlockQ3K>,
        GgmlDType::Q4K => widen::<BlockQ4K>,
        GgmlDType::Q5K => widen::<BlockQ5K>,
        GgmlDType::Q6K => widen::<BlockQ6K>,
        GgmlDType::Q8K => widen::<BlockQ8K>,
        other => bail!("no tiled matmul for GGUF type {other:?}"),
    })
}

/// Rows `r0..r1` of `q` and their bytes, checked against `out`.
fn rows_bytes<'a>(
    q: &QTensor,
    data: &'a [u8],
    r0: usize,
    r1: usize,
    out: &[f32],
) -> candle_core::Result<(usize, usize, &'a [u8])> {
    let (n, k) = q.shape().dims2()?;
    if r0 > r1 || r1 > n || out.len() != (r1 - r0) * k {
        bail!(
            "GGUF weight: rows {r0}..{r1} of {n} into {} values",
            out.len()
        );
    }
    let dtype = q.dtype();
    let row_bytes = k / dtype.block_size() * dtype.type_size();
    Ok((k, row_bytes, &data[r0 * row_bytes..r1 * row_bytes]))
}

/// [`widen_rows`] into `out` (`(r1 - r0) · k` values).
///
/// # Errors
/// As [`widen_rows`]; a range outside the weight or an `out` of the wrong length.
pub fn widen_rows_into(
    q: &QTensor,
    r0: usize,
    r1: usize,
    out: &mut [f32],
) -> candle_core::Result<()> {
    let data = q.data()?;
    let (k, row_bytes, bytes) = rows_bytes(q, &data, r0, r1, out)?;
    let dtype = q.dtype();
    if dtype == GgmlDType::Q4_1 {
        q4_1_matmul::dequantize(bytes, k, out);
        return Ok(());
    }
    let f = widener(dtype)?;
    // Whole rows per work item; each row is whole blocks, so every slice is aligned.
    let out_at = out.as_mut_ptr() as usize;
    let failed = std::sync::atomic::AtomicBool::new(false);
    candle_core::utils::barrier_pool().execute_chunked(r1 - r0, |rows| {
        let o = rows.start * k;
        // SAFETY: row ranges are disjoint per work item and inside `out`.
        let dst =
            unsafe { std::slice::from_raw_parts_mut((out_at as *mut f32).add(o), rows.len() * k) };
        let src = &bytes[rows.start * row_bytes..rows.end * row_bytes];
        if f(src, dst).is_err() {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    if failed.into_inner() {
        bail!("{dtype:?} rows are not whole aligned blocks")
    }
    Ok(())
}

/// [`widen_rows_into`] on the calling thread (for a caller that shares rows out itself).
///
/// # Errors
/// As [`widen_rows_into`].
pub fn widen_rows_serial(
    q: &QTensor,
    r0: usize,
    r1: usize,
    out: &mut [f32],
) -> candle_core::Result<()> {
    let data = q.data()?;
    let (_, _, bytes) = rows_bytes(q, &data, r0, r1, out)?;
    widener(q.dtype())?(bytes, out)
}

/// Forward op `x · Wᵀ`; its backward applies [`GgmlMatMulT`] to the output gradient.
pub struct GgmlMatMul {
    pub w: Arc<QTensor>,
    pub tile_rows: usize,
}

/// Backward op `g · W`, never recorded (no second-order gradients).
struct GgmlMatMulT {
    w: Arc<QTensor>,
    tile_rows: usize,
}

fn rows_of(layout: &Layout, k: usize, what: &str) -> candle_core::Result<usize> {
    match layout.dims().last() {
        Some(&last) if last == k => Ok(layout.shape().elem_count() / k),
        _ => bail!(
            "GGUF linear: {what} shape {:?} does not end in {k}",
            layout.dims()
        ),
    }
}

fn out_shape(layout: &Layout, last: usize) -> Shape {
    let mut dims = layout.dims().to_vec();
    if let Some(d) = dims.last_mut() {
        *d = last;
    }
    Shape::from(dims)
}

impl CustomOp1 for GgmlMatMul {
    fn name(&self) -> &'static str {
        "ggml-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.w.shape().dims2()?;
        let m = rows_of(layout, k, "input")?;
        let x = Tensor::from_slice(&logical_f32(s, layout)?, (m, k), &Device::Cpu)?;
        let mut y = vec![0f32; m * n];
        for r0 in (0..n).step_by(self.tile_rows.max(1)) {
            let r1 = (r0 + self.tile_rows).min(n);
            let t = Tensor::from_vec(widen_rows(&self.w, r0, r1)?, (r1 - r0, k), &Device::Cpu)?;
            let yt = x.matmul(&t.t()?)?.flatten_all()?.to_vec1::<f32>()?; // [m, r1-r0]
            for (row, src) in y.chunks_exact_mut(n).zip(yt.chunks_exact(r1 - r0)) {
                row[r0..r1].copy_from_slice(src);
            }
        }
        Ok((CpuStorage::F32(y), out_shape(layout, n)))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = GgmlMatMulT {
            w: self.w.clone(),
            tile_rows: self.tile_rows,
        };
        Ok(Some(grad.detach().apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for GgmlMatMulT {
    fn name(&self) -> &'static str {
        "ggml-linear-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.w.shape().dims2()?;
        let m = rows_of(layout, n, "gradient")?;
        let g = Tensor::from_slice(&logical_f32(s, layout)?, (m, n), &Device::Cpu)?;
        let mut dx: Option<Tensor> = None;
        for r0 in (0..n).step_by(self.tile_rows.max(1)) {
            let r1 = (r0 + self.tile_rows).min(n);
            let t = Tensor::from_vec(widen_rows(&self.w, r0, r1)?, (r1 - r0, k), &Device::Cpu)?;
            // A tile of rows of W meets the matching columns of the gradient.
            let part = g.narrow(1, r0, r1 - r0)?.contiguous()?.matmul(&t)?;
            dx = Some(match dx {
                Some(acc) => (acc + part)?,
                None => part,
            });
        }
        let dx = match dx {
            Some(d) => d.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0f32; m * k],
        };
        Ok((CpuStorage::F32(dx), out_shape(layout, k)))
    }
}
