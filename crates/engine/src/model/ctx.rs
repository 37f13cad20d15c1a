//! The per-call context of a forward pass: whether it trains (dropout on) and the seed its
//! dropout masks come from.

/// Per-call settings that change the forward pass during training.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardCtx {
    /// Dropout is active only when training.
    pub train: bool,
    /// Seeds this step's dropout masks; derived from (run seed, step, micro-step) so that a
    /// resumed run draws exactly the masks the uninterrupted run would have.
    pub step_seed: u64,
}
