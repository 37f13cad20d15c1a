//! NF4 (4-bit NormalFloat) storage with double quantization, as in QLoRA (Dettmers et al. 2023,
//! arXiv 2305.14314) and bitsandbytes' `quantize_4bit(quant_type="nf4", blocksize=64)`.
//!
//! # What this is
//! A frozen weight `W: [out, in]` (row-major, flattened to `n = out·in` elements) stored as:
//! - **blocks of 64** consecutive elements `W[64b .. 64b+64]`, each with one scale
//!   `absmax_b = max |W_i|` over the block;
//! - **a 4-bit code per element**, `q_i = nearest(W_i / absmax_b)` in the 16-value table
//!   [`NF4_CODE`]; dequantization is `Ŵ_i = NF4_CODE[q_i] · absmax_b` (computed in f32);
//! - **two codes per byte**, element `2j` in the high nibble of `packed[j]` and `2j+1` in the low
//!   nibble (bitsandbytes' order: `qvals[j] = q(2j) << 4 | q(2j+1)`);
//! - optionally (**double quantization**, QLoRA's default) the absmax constants themselves
//!   quantized to 8 bits in blocks of 256, see [`Absmax::DoubleQuant`].
//!
//! Storage: `4 + 32/64 = 4.5` bits/param plain; `4 + 8/64 + 32/(64·256) ≈ 4.127` with double
//! quantization (plus one f32 mean per tensor). [`Nf4Tensor::storage_bytes`] and
//! [`Nf4Tensor::bits_per_param`] count the real buffers.
//!
//! # Rounding, exactly as bitsandbytes
//! The normalised value is `W_i · (1/absmax_b)` in f32 (bitsandbytes multiplies by the
//! reciprocal). The code is chosen by the 15 midpoints of adjacent code values
//! ([`NF4_THRESHOLDS`], bitsandbytes' `dQuantizeNF4` decision-tree literals): `q = #{t : x > t}`.
//! A value exactly on a midpoint therefore rounds **down** (to the lower code), as in the tree.
//! An all-zero block has `absmax = 0`; its elements get code 7 (the exact `0.0`) and dequantize
//! to 0 (bitsandbytes would divide by zero there).
//!
//! # Element counts not divisible by 64
//! Accepted, as bitsandbytes does: the last block holds the remaining `n mod 64` elements and its
//! absmax is over those only. If `n` is odd, the low nibble of the last byte is padding and holds
//! code 7 (zero). Nothing else is padded.
//!
//! # What this is not
//! Not a compute dtype: weights are dequantized to f32 tile by tile for every matmul (see
//! [`super::nf4_op::Nf4Linear`]). Not trainable, not mergeable in place (merging a LoRA into a
//! 4-bit base loses the adapter's precision: merge into a dequantized f32 copy instead). The
//! double-quantization code map is a linear int8 one, not bitsandbytes' dynamic map, so packed
//! absmax bytes are not bit-compatible with bitsandbytes files (the 4-bit codes are).

use super::nf4_device::Nf4Codes;
pub use super::nf4_format::{nf4_index, Absmax, DQ_BLOCK, NF4_BLOCK, NF4_CODE, NF4_THRESHOLDS};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// A frozen `[out, in]` matrix in NF4 (see the module docs for the layout).
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    name: String,
    shape: (usize, usize),
    /// Empty while the codes live on a GPU (`device`).
    packed: Vec<u8>,
    absmax: Absmax,
    /// The codes and constants as tensors on a GPU ([`Nf4Tensor::to_device`]); the host
    /// buffers are then released. `None` on the CPU.
    device: Option<Arc<Nf4Codes>>,
}

impl Nf4Tensor {
    /// Quantizes a row-major `[out, in]` f32 matrix.
    ///
    /// # Errors
    /// [`Error::Tensor`] if `data.len() != out · in`, the matrix is empty, or a value is NaN or
    /// infinite (the message gives its row and column).
    pub fn quantize(data: &[f32], shape: (usize, usize), double_quant: bool) -> Result<Self> {
        Self::quantize_named("<unnamed>", data, shape, double_quant)
    }

    /// [`Nf4Tensor::quantize`] with a tensor name (e.g. `model.layers.0.self_attn.q_proj.weight`)
    /// that error messages and [`Nf4Tensor::name`] carry.
    ///
    /// # Errors
    /// As [`Nf4Tensor::quantize`].
    pub fn quantize_named(
        name: &str,
        data: &[f32],
        shape: (usize, usize),
        double_quant: bool,
    ) -> Result<Self> {
        let err = |message: String| Error::Tensor {
            file: "NF4 quantization".into(),
            tensor: name.into(),
            message,
        };
        let (rows, cols) = shape;
        let n = rows.checked_mul(cols).ok_or_else(|| {
            err(format!(
                "shape [{rows}, {cols}] has too many elements to address"
            ))
        })?;
        if n == 0 {
            return Err(err(format!("shape [{rows}, {cols}] is empty")));
        }
        if data.len() != n {
            return Err(err(format!(
                "shape [{rows}, {cols}] needs {n} values, got {}",
                data.len()
            )));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(err(format!(
                "value {} at [{}, {}] is not finite; NF4 needs finite weights",
                data[i],
                i / cols,
                i % cols
            )));
        }

        let mut packed = vec![0u8; n.div_ceil(2)];
        let mut absmax = Vec::with_capacity(n.div_ceil(NF4_BLOCK));
        for (b, block) in data.chunks(NF4_BLOCK).enumerate() {
            let amax = block.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
            absmax.push(amax);
            let inv = if amax > 0.0 { 1.0 / amax } else { 0.0 };
            let base = b * NF4_BLOCK; // even, so nibble parity follows the in-block index
            for (j, &v) in block.iter().enumerate() {
                let q = nf4_index(v * inv);
                let i = base + j;
                packed[i / 2] |= if i & 1 == 0 { q << 4 } else { q };
            }
        }
        if n % 2 == 1 {
            packed[n / 2] |= nf4_index(0.0); // padding nibble: the zero code
        }
        let absmax = if double_quant {
            Absmax::double_quantize(&absmax)
        } else {
            Absmax::F32(absmax)
        };
        Ok(Self {
            name: name.into(),
            shape,
            packed,
            absmax,
            device: None,
        })
    }

    /// Quantizes a 2-D candle tensor of any float dtype (widened to f32 first).
    ///
    /// # Errors
    /// [`Error::Tensor`] if `t` is not 2-D, plus those of [`Nf4Tensor::quantize`];
    /// [`Error::Candle`] if reading the tensor fails.
    pub fn from_tensor(name: &str, t: &Tensor, double_quant: bool) -> Result<Self> {
        let (rows, cols) = t.dims2().map_err(|_| Error::Tensor {
            file: "NF4 quantization".into(),
            tensor: name.into(),
            message: format!("expected a 2-D [out, in] weight, got shape {:?}", t.dims()),
        })?;
        let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Self::quantize_named(name, &data, (rows, cols), double_quant)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.0 * self.shape.1
    }

    /// Two codes per byte, first element in the high nibble.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    pub fn absmax(&self) -> &Absmax {
        &self.absmax
    }

    pub fn is_double_quant(&self) -> bool {
        matches!(self.absmax, Absmax::DoubleQuant { .. })
    }

    /// The device copy of the codes, when they live on a GPU (the host buffers are empty then).
    pub fn device_codes(&self) -> Option<&Arc<Nf4Codes>> {
        self.device.as_ref()
    }

    /// Where the codes live.
    pub fn device(&self) -> Device {
        self.device
            .as_ref()
            .map(|c| c.device().clone())
            .unwrap_or(Device::Cpu)
    }

    /// This matrix with its codes on `device`: uploaded once (and the host buffers released)
    /// for a GPU, downloaded back for the CPU, shared when already there.
    ///
    /// # Errors
    /// [`Error::Candle`] for a failed copy.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let host = match &self.device {
            Some(c) if c.device().same_device(device) => return Ok(self.clone()),
            Some(c) => {
                let (packed, absmax) = c.download()?;
                Self {
                    packed,
                    absmax,
                    device: None,
                    ..self.clone()
                }
            }
            None => self.clone(),
        };
        if device.is_cpu() {
            return Ok(host);
        }
        let codes = Nf4Codes::upload(host.shape, &host.packed, &host.absmax, device)?;
        let empty = match host.absmax {
            Absmax::F32(_) => Absmax::F32(Vec::new()),
            Absmax::DoubleQuant { offset, .. } => Absmax::DoubleQuant {
                codes: Vec::new(),
                scales: Vec::new(),
                offset,
            },
        };
        Ok(Self {
            packed: Vec::new(),
            absmax: empty,
            device: Some(Arc::new(codes)),
            ..host
        })
    }

    /// The 4-bit code of flat element `i` (row-major).
    #[inline]
    pub fn code_index(&self, i: usize) -> u8 {
        let byte = self.packed[i / 2];
        if i & 1 == 0 {
            byte >> 4
        } else {
            byte & 0x0f
        }
    }

    /// Bytes of quantized data: packed codes plus absmax storage (shape and name not counted).
    pub fn storage_bytes(&self) -> usize {
        match &self.device {
            Some(c) => c.storage_bytes(),
            None => self.packed.len() + self.absmax.storage_bytes(),
        }
    }

    /// `8 · storage_bytes / numel`: 4.5 plain, ≈ 4.127 with double quantization.
    pub fn bits_per_param(&self) -> f64 {
        8.0 * self.storage_bytes() as f64 / self.numel() as f64
    }

    /// Dequantizes flat elements `start .. start + out.len()` into `out`. Callers guarantee
    /// the range is in bounds (the public wrappers check).
    pub(crate) fn dequantize_range_into(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        debug_assert!(end <= self.numel());
        let mut i = start;
        let mut o = 0;
        while i < end {
            let b = i / NF4_BLOCK;
            let scale = self.absmax.get(b);
            let stop = end.min((b + 1) * NF4_BLOCK);
            // A lone low nibble first, then whole bytes (two values each, no per-element
            // branch), then a lone high nibble: the hot loop of every NF4 matmul tile.
            if i & 1 == 1 {
                out[o] = NF4_CODE[(self.packed[i / 2] & 0x0f) as usize] * scale;
                o += 1;
                i += 1;
            }
            let pairs = (stop - i) / 2;
            super::nf4_simd::widen_pairs(
                &self.packed[i / 2..i / 2 + pairs],
                scale,
                &mut out[o..o + 2 * pairs],
            );
            i += 2 * pairs;
            o += 2 * pairs;
            if i < stop {
                out[o] = NF4_CODE[(self.packed[i / 2] >> 4) as usize] * scale;
                o += 1;
                i += 1;
            }
        }
    }

    /// The whole matrix as a contiguous f32 `Vec` (row-major).
    pub fn dequantize_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.numel()];
        self.dequantize_range_into(0, &mut out);
        out
    }

    /// The whole matrix as an f32 `[out, in]` tensor where the codes live (the CPU, or the GPU
    /// they were moved to).
    ///
    /// # Errors
    /// [`Error::Candle`] if the tensor cannot be built.
    pub fn dequantize(&self) -> Result<Tensor> {
        if let Some(c) = &self.device {
            return Ok(c.dequantize_rows(0, self.shape.0, DType::F32)?);
        }
        Ok(Tensor::from_vec(
            self.dequantize_vec(),
            self.shape,
            &Device::Cpu,
        )?)
    }

    /// Dequantizes rows `start .. end` into `out` (`(end − start) · in` values, row-major): the
    /// tile primitive of the NF4 matmul.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the row range is empty-inverted or past the end, or `out` has the
    /// wrong length.
    pub fn dequantize_rows(&self, start: usize, end: usize, out: &mut [f32]) -> Result<()> {
        let (rows, cols) = self.shape;
        if start > end || end > rows {
            return Err(Error::invalid(
                "rows",
                format!(
                    "{start}..{end} is not a row range of `{}` ({rows} rows)",
                    self.name
                ),
            ));
        }
        if out.len() != (end - start) * cols {
            return Err(Error::invalid(
                "out",
                format!(
                    "rows {start}..{end} of `{}` need {} values, buffer holds {}",
                    self.name,
                    (end - start) * cols,
                    out.len()
                ),
            ));
        }
        self.dequantize_range_into(start * cols, out);
        Ok(())
    }
}

impl Nf4Tensor {
    /// The codes as tensors on `device`: this tensor's device copy when it lives there, a
    /// fresh upload of the host buffers otherwise.
    ///
    /// # Errors
    /// Candle errors; codes that live on another device are refused.
    pub fn codes_on(&self, device: &Device) -> candle_core::Result<Arc<Nf4Codes>> {
        match self.device_codes() {
            Some(c) if c.device().same_device(device) => Ok(c.clone()),
            Some(c) => candle_core::bail!(
                "NF4 `{}` lives on {:?}, not {:?}",
                self.name(),
                c.device().location(),
                device.location()
            ),
            None => Ok(Arc::new(Nf4Codes::upload(
                self.shape(),
                self.packed(),
                self.absmax(),
                device,
            )?)),
        }
    }
}
