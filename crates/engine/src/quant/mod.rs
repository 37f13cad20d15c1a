//! Quantized storage for frozen base weights: 4-bit NormalFloat with double-quantized constants
//! (QLoRA's base, [`nf4`]), the matmul that dequantizes it tile by tile on the CPU, forward and
//! backward ([`nf4_op`]), and the same codes as tensors on any device with a generic matmul
//! ([`nf4_device`]); and a GGUF file's own block types kept as they are for inference
//! ([`ggml`], with our own Q4_1 kernel in [`q4_1_matmul`]). Nothing here trains; adapters
//! live in `model::lora`.

pub mod ggml;
pub mod ggml_op;
pub mod nf4;
pub mod nf4_device;
pub mod nf4_format;
pub mod nf4_op;
mod nf4_simd;
pub mod q4_1_matmul;
