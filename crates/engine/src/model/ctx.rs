//! The per-call context of a forward pass: whether it trains (dropout on), the seed its
//! dropout masks come from, which implementation of the custom ops runs, and, for packed
//! rows, where each example starts; and where trained weights' gradients are written.

use crate::ops::{OpPath, Segments, WeightGrads};

/// Per-call settings that change the forward pass during training.
#[derive(Clone, Debug, Default)]
pub struct ForwardCtx {
    /// Dropout is active only when training.
    pub train: bool,
    /// Seeds this step's dropout masks; derived from (run seed, step, micro-step) so that a
    /// resumed run draws exactly the masks the uninterrupted run would have.
    pub step_seed: u64,
    /// Fused CPU kernels or device-generic ops (`Auto`: fused on the CPU, generic elsewhere;
    /// tests force `Generic` on the CPU to compare the two).
    pub ops: OpPath,
    /// Sample packing: several examples per row, each with its own positions (from 0) and
    /// attention confined to itself. `None`: one example per row.
    pub packing: Option<Segments>,
    /// Where trained dense weights' gradients go (full and selective fine-tuning on the CPU,
    /// [`crate::ops::trained_linear`]); `None`: through candle's gradient store.
    pub weight_grads: Option<WeightGrads>,
    /// `--bf16-compute` on the CPU: a bf16-stored frozen base meets its activations in bf16 with f32
    /// sums ([`crate::ops::lora_linear_bf16`]) instead of being widened to f32.
    pub bf16_products: bool,
}
