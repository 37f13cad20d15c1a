//! The NF4 format's fixed parts: block sizes, the 16-value code table and its rounding
//! thresholds (bitsandbytes' literals), and the per-block scales ([`Absmax`], optionally double
//! quantized). Shared by the host storage ([`super::nf4`]) and its device copy
//! ([`super::nf4_device`]); see `nf4` for the format as a whole.

/// Elements per NF4 block (one absmax each).
pub const NF4_BLOCK: usize = 64;
/// Absmax constants per double-quantization block (one f32 scale each).
pub const DQ_BLOCK: usize = 256;

/// The 16 NF4 code values, index 0..15, copied from bitsandbytes `functional.py`
/// (`create_normal_map(offset=0.9677083, use_extra_value=True)`, stored as f32).
#[allow(clippy::excessive_precision)] // verbatim bitsandbytes literals
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Decision thresholds between adjacent codes: bitsandbytes' `dQuantizeNF4` tree literals, the
/// f64 midpoints of [`NF4_CODE`] written in decimal and parsed to f32 (where a midpoint is an
/// exact tie between two f32 values, the literal decides which one; we keep it verbatim).
#[allow(clippy::excessive_precision)] // verbatim bitsandbytes literals
pub const NF4_THRESHOLDS: [f32; 15] = [
    -0.8480964004993439,
    -0.6106329262256622,
    -0.4599952697753906,
    -0.33967943489551544,
    -0.23460740596055984,
    -0.13791173323988914,
    -0.045525018125772476,
    0.03979014977812767,
    0.1202552504837513,
    0.2035212516784668,
    0.2920137718319893,
    0.3893125355243683,
    0.5016634166240692,
    0.6427869200706482,
    0.8614784181118011,
];

/// The code index of a normalised value (`x` in about `[-1, 1]`); ties round down.
#[inline]
pub fn nf4_index(x: f32) -> u8 {
    // Thresholds are ascending, so `x > t` holds on a prefix: its length is the code.
    NF4_THRESHOLDS.partition_point(|&t| x > t) as u8
}

/// The per-block scales of an [`Nf4Tensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 per 64-block: 32/64 = 0.5 bits/param.
    F32(Vec<f32>),
    /// Double quantization: `absmax_b ≈ max(0, codes[b] · scales[b / 256] + offset)`.
    ///
    /// `offset` is the mean of all absmax constants; each block of 256 centred constants
    /// `c = absmax − offset` is scaled symmetrically by `scale = max|c| / 127` and rounded to
    /// the nearest integer in `[-127, 127]`. Reconstruction error per constant is at most
    /// `scale / 2` (plus f32 rounding); clamping at 0 can only reduce it, since absmax ≥ 0.
    ///
    /// Why linear instead of bitsandbytes' dynamic 8-bit map: the centred constants of a weight
    /// matrix lie in a narrow, roughly symmetric range, where a uniform grid has the smallest
    /// worst-case error and a one-line bound; the resulting relative scale error of a block
    /// (typically well under 1 %) is far below the NF4 rounding step itself (≥ 8 % of absmax).
    DoubleQuant {
        codes: Vec<i8>,
        scales: Vec<f32>,
        offset: f32,
    },
}

impl Absmax {
    /// Number of 64-blocks described.
    pub fn len(&self) -> usize {
        match self {
            Absmax::F32(v) => v.len(),
            Absmax::DoubleQuant { codes, .. } => codes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The (reconstructed) absmax of block `b`.
    #[inline]
    pub fn get(&self, b: usize) -> f32 {
        match self {
            Absmax::F32(v) => v[b],
            Absmax::DoubleQuant {
                codes,
                scales,
                offset,
            } => (codes[b] as f32 * scales[b / DQ_BLOCK] + offset).max(0.0),
        }
    }

    /// All reconstructed constants.
    pub fn to_vec(&self) -> Vec<f32> {
        (0..self.len()).map(|b| self.get(b)).collect()
    }

    /// Bytes held: 4 per constant, or 1 per constant + 4 per 256-block + 4 for the offset.
    pub fn storage_bytes(&self) -> usize {
        match self {
            Absmax::F32(v) => 4 * v.len(),
            Absmax::DoubleQuant { codes, scales, .. } => codes.len() + 4 * scales.len() + 4,
        }
    }

    /// Quantizes absmax constants (non-negative, finite) as described at [`Absmax::DoubleQuant`].
    pub fn double_quantize(absmax: &[f32]) -> Absmax {
        let mean = if absmax.is_empty() {
            0.0
        } else {
            (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32
        };
        let mut codes = Vec::with_capacity(absmax.len());
        let mut scales = Vec::with_capacity(absmax.len().div_ceil(DQ_BLOCK));
        for chunk in absmax.chunks(DQ_BLOCK) {
            let range = chunk
                .iter()
                .map(|&a| (a - mean).abs())
                .fold(0.0f32, f32::max);
            let scale = range / 127.0;
            // A block whose constants all equal the mean stores zeros and reconstructs the mean.
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            codes.extend(
                chunk
                    .iter()
                    .map(|&a| ((a - mean) * inv).round().clamp(-127.0, 127.0) as i8),
            );
            scales.push(scale);
        }
        Absmax::DoubleQuant {
            codes,
            scales,
            offset: mean,
        }
    }
}
