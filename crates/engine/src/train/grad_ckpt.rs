//! Per-layer gradient checkpointing: a block's forward keeps no graph; its backward runs the
//! block again from the saved input and backpropagates through that copy.
//!
//! Implemented as a device-generic custom op (`ops::generic`, so it runs on every backend) on
//! the block input whose backward re-runs the block with the input
//! as a fresh `Var`, calls `backward()` on `Σ y ⊙ dy`, returns `dx`, and hands the gradients of
//! the trainable tensors inside the block to a [`GradSink`] that the trainer adds to the outer
//! gradients. Memory: one block's activations at a time instead of all of them; cost: one
//! extra forward per block. Dropout masks are a pure function of the step seed, so the
//! re-run sees the same masks and the gradients are identical to the plain path.

use crate::model::ctx::ForwardCtx;
use crate::model::decoder::Decoder;
use crate::ops::generic::{apply, GenericOp};
use candle_core::{Result, Tensor, TensorId, Var};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Gradients of trainable tensors collected inside checkpointed blocks, by tensor id.
#[derive(Clone, Default)]
pub struct GradSink {
    inner: Arc<Mutex<HashMap<TensorId, Tensor>>>,
}

impl GradSink {
    fn add(&self, id: TensorId, g: Tensor) -> Result<()> {
        let mut map = self
            .inner
            .lock()
            .map_err(|_| candle_core::Error::Msg("grad sink poisoned".into()))?;
        let sum = match map.remove(&id) {
            Some(prev) => (prev + g)?,
            None => g,
        };
        map.insert(id, sum);
        Ok(())
    }

    /// Takes every collected gradient, leaving the sink empty for the next step.
    pub fn drain(&self) -> HashMap<TensorId, Tensor> {
        self.inner
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
    }
}

struct CheckpointedBlock {
    model: Arc<Decoder>,
    layer: usize,
    ctx: ForwardCtx,
    /// Trainable tensors of this block (their ids key the sink).
    params: Vec<Tensor>,
    sink: GradSink,
}

impl GenericOp for CheckpointedBlock {
    fn name(&self) -> &'static str {
        "checkpointed-block"
    }

    fn forward(&self, xs: &[Tensor]) -> Result<Tensor> {
        Ok(self
            .model
            .block_forward(self.layer, &xs[0], 0, None, &self.ctx)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .detach())
    }

    fn backward(
        &self,
        xs: &[Tensor],
        _want: &[bool],
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let x = Var::from_tensor(&xs[0])?;
        let y = self
            .model
            .block_forward(self.layer, x.as_tensor(), 0, None, &self.ctx)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let grads = (y * dy)?.sum_all()?.backward()?;
        for p in &self.params {
            if let Some(g) = grads.get(p) {
                self.sink.add(p.id(), g.detach())?;
            }
        }
        Ok(vec![grads.get(x.as_tensor()).map(|g| g.detach())])
    }
}

/// Runs block `layer` on `x` without keeping its graph (see the module docs).
pub fn checkpointed_block(
    model: &Arc<Decoder>,
    layer: usize,
    x: &Tensor,
    ctx: &ForwardCtx,
    params: Vec<Tensor>,
    sink: &GradSink,
) -> Result<Tensor> {
    // The first block's input comes from a frozen embedding and is untracked: without a
    // tracked input candle would not record the op and the block's adapters would get no
    // gradient.
    let x = if x.track_op() {
        x.clone()
    } else {
        Var::from_tensor(x)?.as_tensor().clone()
    };
    let op = CheckpointedBlock {
        model: model.clone(),
        layer,
        ctx: ctx.clone(),
        params,
        sink: sink.clone(),
    };
    apply(op, &[&x])
}
