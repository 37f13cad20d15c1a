//! Fused CPU ops with their own backward pass, for the places where candle's fast kernels have
//! none (rms_norm, rope, softmax_last_dim), where an elementwise chain costs a buffer and a
//! pass per step (swiglu, the LoRA delta and the LoRA linear), or where its generic backward
//! wastes memory (the gradient of a frozen weight). See `shared/notes/candle-training.md` for the measurements
//! behind each choice. Every op here is checked against finite differences in `tests/ops.rs`
//! (`linear_cross_entropy` in its own unit tests, which need crate-private chunk sizes).
//!
//! Each op also has a device-generic version (`generic_*`, built on [`generic`]): the same
//! maths and gradients written with candle primitives, which is what runs on CUDA and Metal.
//! The `*_with` entry points take an [`OpPath`] and pick between the two; the plain names are
//! `OpPath::Auto` (fused on the CPU, generic elsewhere). `tests/generic_ops.rs` checks every
//! generic op against its fused one on the CPU.

mod amx;
mod attention;
mod bf16_dot;
pub(crate) mod bf16_gemm;
mod bf16_pack;
mod bridge;
pub(crate) use bridge::{cpu_to_tensor, logical_f32, tensor_to_cpu};
mod causal_softmax;
mod decode_attention;
mod dropout;
mod fast_exp;
mod frozen_linear;
mod frozen_rows;
pub(crate) mod gemm;
pub mod generic;
pub mod generic_linear;
pub mod generic_rowwise;
mod linear_cross_entropy;
mod linear_cross_entropy_generic;
mod lora_delta;
mod lora_linear;
pub(crate) mod narrow_gemm;
pub mod profile;
mod rms_norm;
mod rope;
mod segments;
mod swiglu;
mod trained_linear;

pub use attention::{causal_attention_with, BLOCK as ATTENTION_BLOCK};
pub use bf16_gemm::Bf16Backend;
pub use causal_softmax::{
    causal_softmax, causal_softmax_grouped, causal_softmax_grouped_with,
    causal_softmax_packed_with, causal_softmax_windowed, causal_softmax_windowed_with,
};
pub use decode_attention::decode_attention;
pub use dropout::DropoutMask;
pub use frozen_linear::{frozen_linear, frozen_linear_with};
pub use frozen_rows::{FrozenRows, TILE_BYTES};
pub use generic::OpPath;
pub use linear_cross_entropy::{
    linear_cross_entropy_rows, linear_cross_entropy_trained, HeadWeight, RowsFn,
};
pub use linear_cross_entropy_generic::{
    linear_cross_entropy, linear_cross_entropy_generic, linear_cross_entropy_with,
    GENERIC_TILE_BYTES,
};
pub use lora_delta::{lora_delta, lora_delta_with};
pub use lora_linear::{
    lora_linear, lora_linear_bf16, lora_linear_rows, lora_linear_rows_bf16, lora_linear_with,
};
pub use rms_norm::{rms_norm, rms_norm_with};
pub use rope::{rope, rope_packed_with, rope_with, RopeTables};
pub use segments::Segments;
pub use swiglu::{geglu, geglu_with, swiglu, swiglu_with};
pub use trained_linear::{trained_linear, WeightGrads};
