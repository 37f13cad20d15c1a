//! Fused CPU ops with their own backward pass, for the places where candle's fast kernels have
//! none (rms_norm, rope, softmax_last_dim), where an elementwise chain costs a buffer and a
//! pass per step (swiglu, the LoRA delta and the LoRA linear), or where its generic backward
//! wastes memory (the gradient of a frozen weight). See `shared/notes/candle-training.md` for the measurements
//! behind each choice. Every op here is checked against finite differences in `tests/ops.rs`
//! (`linear_cross_entropy` in its own unit tests, which need crate-private chunk sizes).

mod bridge;
pub(crate) use bridge::{cpu_to_tensor, logical_f32, tensor_to_cpu};
mod causal_softmax;
mod frozen_linear;
pub(crate) mod gemm;
mod linear_cross_entropy;
mod lora_delta;
mod lora_linear;
mod rms_norm;
mod rope;
mod swiglu;

pub use causal_softmax::{causal_softmax, causal_softmax_grouped};
pub use frozen_linear::frozen_linear;
pub use linear_cross_entropy::linear_cross_entropy;
pub use lora_delta::{lora_delta, DropoutMask};
pub use lora_linear::lora_linear;
pub use rms_norm::rms_norm;
pub use rope::{rope, RopeTables};
pub use swiglu::swiglu;
