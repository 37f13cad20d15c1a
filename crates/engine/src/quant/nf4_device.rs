//! NF4 codes and double-quantized constants as tensors on a device, dequantized there tile by
//! tile with tensor ops, and the device-generic frozen NF4 linear built on them.
//!
//! The layout is [`super::nf4`]'s, unchanged: two 4-bit codes per byte (first element in the
//! high nibble), one absmax per 64 elements, optionally double-quantized (an 8-bit code per
//! absmax, one f32 scale per 256 of them, one f32 offset). On the device the bytes are `u8`
//! tensors (the signed 8-bit absmax codes are stored `+ 128`, as candle has no `i8`).
//!
//! Dequantizing a range of elements uses only primitives every backend has: `u8 → f32`, a
//! multiply by 1/16 and `floor` split each byte into its two codes exactly, `index_select`
//! looks them up in the 16-value table, and the absmax of each 64-block is broadcast over its
//! elements. The products are the same f32 operations as the CPU dequantizer's, so the values
//! are bit-identical. Nothing is copied to the host.
//!
//! [`nf4_linear`] is the generic op `y = x · Wᵀ` over these codes, forward in tiles of output
//! rows, backward `dx = dy · W` in the same row tiles (accumulated in f32); `W` gets no
//! gradient and never exists whole. What this is not: a fused GPU kernel (the tile is
//! dequantized into a transient buffer, then a candle matmul runs).

use super::nf4_format::{Absmax, DQ_BLOCK, NF4_BLOCK, NF4_CODE};
use crate::ops::generic::{apply, rows2, with_last, GenericOp};
use candle_core::{DType, Device, Result, Tensor};
use std::sync::Arc;

/// The per-block scales on the device.
#[derive(Debug, Clone)]
enum DeviceAbsmax {
    /// `[blocks]` f32.
    F32(Tensor),
    /// `[blocks]` u8 (`code + 128`), `[blocks / 256]` f32 scales, the f32 offset.
    DoubleQuant {
        codes: Tensor,
        scales: Tensor,
        offset: f32,
    },
}

/// An NF4 matrix's codes and constants as tensors on one device.
#[derive(Debug, Clone)]
pub struct Nf4Codes {
    shape: (usize, usize),
    /// `[⌈n/2⌉]` u8.
    packed: Tensor,
    absmax: DeviceAbsmax,
    /// [`NF4_CODE`], `[16]` f32.
    table: Tensor,
}

impl PartialEq for Nf4Codes {
    /// Device buffers compare by identity (comparing contents would copy them to the host).
    fn eq(&self, other: &Self) -> bool {
        self.packed.id() == other.packed.id()
    }
}

impl Nf4Codes {
    /// Copies a host NF4 matrix's buffers to `device`.
    ///
    /// # Errors
    /// Candle errors (allocation on the device).
    pub fn upload(
        shape: (usize, usize),
        packed: &[u8],
        absmax: &Absmax,
        device: &Device,
    ) -> Result<Self> {
        let absmax = match absmax {
            Absmax::F32(v) => DeviceAbsmax::F32(Tensor::new(v.as_slice(), device)?),
            Absmax::DoubleQuant {
                codes,
                scales,
                offset,
            } => {
                let shifted: Vec<u8> = codes.iter().map(|&c| (c as i16 + 128) as u8).collect();
                DeviceAbsmax::DoubleQuant {
                    codes: Tensor::from_vec(shifted, codes.len(), device)?,
                    scales: Tensor::new(scales.as_slice(), device)?,
                    offset: *offset,
                }
            }
        };
        Ok(Self {
            shape,
            packed: Tensor::new(packed, device)?,
            absmax,
            table: Tensor::new(&NF4_CODE, device)?,
        })
    }

    /// The host buffers again: `(packed, absmax)`.
    ///
    /// # Errors
    /// Candle errors (the copy from the device).
    pub fn download(&self) -> Result<(Vec<u8>, Absmax)> {
        let absmax = match &self.absmax {
            DeviceAbsmax::F32(t) => Absmax::F32(t.to_vec1()?),
            DeviceAbsmax::DoubleQuant {
                codes,
                scales,
                offset,
            } => Absmax::DoubleQuant {
                codes: codes
                    .to_vec1::<u8>()?
                    .iter()
                    .map(|&c| (c as i16 - 128) as i8)
                    .collect(),
                scales: scales.to_vec1()?,
                offset: *offset,
            },
        };
        Ok((self.packed.to_vec1()?, absmax))
    }

    pub fn device(&self) -> &Device {
        self.packed.device()
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        self.shape
    }

    /// Bytes held on the device, counted as [`Nf4Tensor::storage_bytes`] counts the host ones.
    pub fn storage_bytes(&self) -> usize {
        self.packed.elem_count()
            + match &self.absmax {
                DeviceAbsmax::F32(t) => 4 * t.elem_count(),
                DeviceAbsmax::DoubleQuant { codes, scales, .. } => {
                    codes.elem_count() + 4 * scales.elem_count() + 4
                }
            }
    }

    /// The absmax of blocks `b0 .. b0 + nb`, `[nb]` f32.
    fn block_scales(&self, b0: usize, nb: usize) -> Result<Tensor> {
        match &self.absmax {
            DeviceAbsmax::F32(t) => t.narrow(0, b0, nb),
            DeviceAbsmax::DoubleQuant {
                codes,
                scales,
                offset,
            } => {
                let c = codes
                    .narrow(0, b0, nb)?
                    .to_dtype(DType::F32)?
                    .affine(1.0, -128.0)?;
                let (s0, s1) = (b0 / DQ_BLOCK, (b0 + nb - 1) / DQ_BLOCK + 1);
                let s = spread(&scales.narrow(0, s0, s1 - s0)?, DQ_BLOCK)?.narrow(
                    0,
                    b0 - s0 * DQ_BLOCK,
                    nb,
                )?;
                // max(0, code · scale + offset), the same f32 operations as `Absmax::get`.
                (c * s)?.affine(1.0, *offset as f64)?.relu()
            }
        }
    }

    /// Flat elements `e0 .. e0 + len` (row-major) as f32, `[len]`.
    ///
    /// # Errors
    /// A candle error if the range is out of bounds.
    pub fn dequantize_range(&self, e0: usize, len: usize) -> Result<Tensor> {
        let n = self.shape.0 * self.shape.1;
        if len == 0 || e0 + len > n {
            candle_core::bail!("NF4 dequantize: elements {e0}..{} of {n}", e0 + len);
        }
        // Whole 64-blocks around the range (their first element is even: whole bytes).
        let (b0, b1) = (e0 / NF4_BLOCK, (e0 + len).div_ceil(NF4_BLOCK));
        let (a0, a1) = (b0 * NF4_BLOCK, (b1 * NF4_BLOCK).min(n));
        let bytes = self
            .packed
            .narrow(0, a0 / 2, a1.div_ceil(2) - a0 / 2)?
            .to_dtype(DType::F32)?;
        let hi = (&bytes * (1.0 / 16.0))?.floor()?;
        let lo = (bytes - (&hi * 16.0)?)?;
        let idx = Tensor::stack(&[hi, lo], 1)?
            .flatten_all()?
            .narrow(0, 0, a1 - a0)?
            .to_dtype(DType::U32)?;
        let values = self.table.index_select(&idx, 0)?;
        let scales = spread(&self.block_scales(b0, b1 - b0)?, NF4_BLOCK)?.narrow(0, 0, a1 - a0)?;
        (values * scales)?.narrow(0, e0 - a0, len)
    }

    /// Rows `r0 .. r0 + t` as a `[t, in]` tensor of `dtype`.
    ///
    /// # Errors
    /// A candle error if the rows are out of bounds.
    pub fn dequantize_rows(&self, r0: usize, t: usize, dtype: DType) -> Result<Tensor> {
        let k = self.shape.1;
        self.dequantize_range(r0 * k, t * k)?
            .reshape((t, k))?
            .to_dtype(dtype)
    }
}

/// `[n] → [n · times]`, each value repeated `times` times in place.
fn spread(t: &Tensor, times: usize) -> Result<Tensor> {
    let n = t.elem_count();
    t.reshape((n, 1))?
        .broadcast_as((n, times))?
        .contiguous()?
        .flatten_all()
}

struct Nf4MatMul {
    codes: Arc<Nf4Codes>,
    tile_rows: usize,
}

impl Nf4MatMul {
    /// Row tiles as `(first row, rows)`.
    fn tiles(&self) -> Vec<(usize, usize)> {
        let out = self.codes.shape.0;
        (0..out)
            .step_by(self.tile_rows)
            .map(|r0| (r0, self.tile_rows.min(out - r0)))
            .collect()
    }
}

impl GenericOp for Nf4MatMul {
    fn name(&self) -> &'static str {
        "nf4-linear-generic"
    }

    fn forward(&self, xs: &[Tensor]) -> Result<Tensor> {
        let x = &xs[0];
        let x2 = rows2(x)?;
        let parts = self
            .tiles()
            .into_iter()
            .map(|(r0, t)| {
                let w = self.codes.dequantize_rows(r0, t, x.dtype())?;
                x2.matmul(&w.t()?)
            })
            .collect::<Result<Vec<_>>>()?;
        let y = match parts.as_slice() {
            [one] => one.clone(),
            _ => Tensor::cat(&parts, 1)?,
        };
        y.reshape(with_last(x.dims(), self.codes.shape.0))
    }

    fn backward(
        &self,
        xs: &[Tensor],
        _want: &[bool],
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let x = &xs[0];
        let g2 = rows2(&dy.to_dtype(x.dtype())?)?;
        let mut dx: Option<Tensor> = None;
        for (r0, t) in self.tiles() {
            let w = self.codes.dequantize_rows(r0, t, x.dtype())?;
            let part = g2
                .narrow(1, r0, t)?
                .contiguous()?
                .matmul(&w)?
                .to_dtype(DType::F32)?;
            dx = Some(match dx {
                Some(acc) => (acc + part)?,
                None => part,
            });
        }
        let dx = dx.ok_or_else(|| candle_core::Error::Msg("NF4 linear: no rows".into()))?;
        Ok(vec![Some(dx.to_dtype(x.dtype())?.reshape(x.shape())?)])
    }
}

/// `x · Wᵀ` for `x: [..., in]` (any float dtype, on the codes' device) over NF4 codes on the
/// device, in tiles of `tile_rows` output rows; `W` gets no gradient.
///
/// # Errors
/// Mismatched shapes or devices (candle errors naming the op).
pub fn nf4_linear(x: &Tensor, codes: Arc<Nf4Codes>, tile_rows: usize) -> Result<Tensor> {
    let k = codes.shape.1;
    if x.dims().last() != Some(&k) {
        candle_core::bail!(
            "NF4 linear: input shape {:?} does not end in in_features {k}",
            x.dims()
        );
    }
    let op = Nf4MatMul {
        codes,
        tile_rows: tile_rows.max(1),
    };
    apply(op, &[x])
}
