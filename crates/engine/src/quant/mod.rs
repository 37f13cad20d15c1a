//! Quantized storage for frozen base weights: 4-bit NormalFloat with double-quantized constants
//! (QLoRA's base, [`nf4`]) and the matmul that dequantizes it tile by tile, forward and
//! backward ([`nf4_op`]). Nothing here trains; adapters live in `model::lora`.

pub mod nf4;
pub mod nf4_op;
