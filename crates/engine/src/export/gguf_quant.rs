//! Which GGUF type each tensor of an export gets ([`tensor_type`]), and turning an f32 tensor
//! into those bytes ([`encode`]).
//!
//! The plans follow llama.cpp: `f32`/`f16`/`bf16` as `convert_hf_to_gguf.py --outtype` writes
//! them (1-D tensors — norms, biases — always F32); `q8_0` as its converter does (Q8_0 for
//! every matrix whose rows split into 32-element blocks, F16 otherwise); `q4_k_m` as
//! `llama-quantize` decides per tensor (`src/llama-quant.cpp`, `llama_tensor_get_type`):
//! - base type Q4_K;
//! - `output.weight`, and `token_embd.weight` when the output is tied to it: Q6_K, or Q8_0
//!   directly when the row length is not a multiple of 256;
//! - `attn_v.weight` and `ffn_down.weight` on the layers where `use_more_bits(i, n)` holds
//!   (the first n/8, the last n/8, and every third layer between): Q6_K;
//! - then, for a row length that is not a multiple of 256, the fallbacks Q4_K → Q5_0 and
//!   Q6_K → Q8_0, and F16 if even 32 does not divide it.
//!
//! Bytes come from candle's `QTensor::quantize`. Caveat: candle's Q4_K quantizer
//! (`make_qkx1_quants`) is older than ggml's reference one, so our Q4_K blocks are valid and
//! load everywhere, but may be slightly less accurate than `llama-quantize`'s for the same
//! weights; Q8_0, Q5_0 and Q6_K follow ggml's reference rounding.

use crate::error::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

/// Storage type of an exported GGUF model (`--quant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum GgufQuant {
    /// Exact; 4 bytes per weight.
    F32,
    /// Half size; what llama.cpp's converter writes by default.
    F16,
    /// Half size, f32's range.
    Bf16,
    /// 8.5 bits per weight; near-lossless.
    #[serde(rename = "q8_0")]
    #[cfg_attr(feature = "clap", value(name = "q8_0"))]
    Q8_0,
    /// ≈ 4.9 bits per weight: llama.cpp's most used mix.
    #[serde(rename = "q4_k_m")]
    #[cfg_attr(feature = "clap", value(name = "q4_k_m"))]
    Q4KM,
}

impl GgufQuant {
    /// `general.file_type` (`enum llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            GgufQuant::F32 => 0,
            GgufQuant::F16 => 1,
            GgufQuant::Q8_0 => 7,
            GgufQuant::Q4KM => 15,
            GgufQuant::Bf16 => 32,
        }
    }

    /// llama.cpp's spelling (`F16`, `Q4_K_M`), used in file names.
    pub fn label(self) -> &'static str {
        match self {
            GgufQuant::F32 => "F32",
            GgufQuant::F16 => "F16",
            GgufQuant::Bf16 => "BF16",
            GgufQuant::Q8_0 => "Q8_0",
            GgufQuant::Q4KM => "Q4_K_M",
        }
    }

    /// True when the export keeps the weights to f16 precision or better, so greedy generation
    /// must match the in-memory model token for token (the self-check's strict mode).
    pub fn is_lossless(self) -> bool {
        matches!(self, GgufQuant::F32 | GgufQuant::F16)
    }
}

/// Where a tensor sits, for the per-tensor rules.
#[derive(Clone, Copy, Debug)]
pub struct TensorRole<'a> {
    /// GGUF name (`blk.3.attn_v.weight`).
    pub name: &'a str,
    /// candle shape (`[rows, cols]`; cols is ggml's `ne[0]`).
    pub shape: &'a [usize],
    /// Blocks in the model.
    pub n_layers: usize,
    /// True when `output.weight` is absent (the head is tied to `token_embd`).
    pub tied_output: bool,
}

/// Whether a layer gets more bits in the `_M` mixes (`use_more_bits` in llama-quant.cpp).
pub fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The type `quant` gives one tensor, and whether a fallback was taken (its row length did not
/// fit the planned type's blocks).
pub fn tensor_type(quant: GgufQuant, role: &TensorRole) -> (GgmlDType, bool) {
    let cols = role.shape.last().copied().unwrap_or(1);
    let matrix = role.shape.len() >= 2
        && role.name.ends_with(".weight")
        && !role.name.contains("_norm.weight");
    if !matrix {
        return (GgmlDType::F32, false);
    }
    let fits = |t: GgmlDType| cols.is_multiple_of(t.block_size());
    match quant {
        GgufQuant::F32 => (GgmlDType::F32, false),
        GgufQuant::F16 => (GgmlDType::F16, false),
        GgufQuant::Bf16 => (GgmlDType::BF16, false),
        GgufQuant::Q8_0 if fits(GgmlDType::Q8_0) => (GgmlDType::Q8_0, false),
        GgufQuant::Q8_0 => (GgmlDType::F16, true),
        GgufQuant::Q4KM => {
            let name = role.name;
            let is_output =
                name == "output.weight" || (role.tied_output && name == "token_embd.weight");
            let more_bits = |part: &str| {
                name.contains(part)
                    && layer_of(name).is_some_and(|i| use_more_bits(i, role.n_layers))
            };
            let planned = if is_output {
                if fits(GgmlDType::Q4K) {
                    GgmlDType::Q6K
                } else {
                    // llama.cpp goes to Q8_0 here without counting it a fallback.
                    return if fits(GgmlDType::Q8_0) {
                        (GgmlDType::Q8_0, false)
                    } else {
                        (GgmlDType::F16, true)
                    };
                }
            } else if more_bits(".attn_v.") || more_bits(".ffn_down.") {
                GgmlDType::Q6K
            } else {
                GgmlDType::Q4K
            };
            if fits(planned) {
                return (planned, false);
            }
            let fallback = match planned {
                GgmlDType::Q6K => GgmlDType::Q8_0,
                _ => GgmlDType::Q5_0,
            };
            if fits(fallback) {
                (fallback, true)
            } else {
                (GgmlDType::F16, true)
            }
        }
    }
}

/// The tensor's bytes in `dtype` (row-major, ggml block layout).
///
/// # Errors
/// [`Error::Invalid`] naming the tensor when its rows do not split into the type's blocks;
/// candle failures.
pub fn encode(name: &str, t: &Tensor, dtype: GgmlDType) -> Result<Vec<u8>> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let cols = t.dims().last().copied().unwrap_or(1);
    if !cols.is_multiple_of(dtype.block_size()) {
        return Err(Error::invalid(
            "tensor type",
            format!(
                "`{name}`: rows of {cols} do not split into blocks of {}",
                dtype.block_size()
            ),
        ));
    }
    if dtype == GgmlDType::F32 {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        return Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect());
    }
    let q = QTensor::quantize(&t, dtype)?;
    Ok(q.data()?.into_owned())
}
