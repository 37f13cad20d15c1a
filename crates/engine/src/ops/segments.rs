//! Where each example starts inside a packed row (sample packing): several short examples share
//! one `[seq]` row, and every token's attention and position must stay inside its own example.
//!
//! For a `[batch, seq]` layout, `starts[b·seq + t]` is the index in row `b` where the example
//! holding token `t` begins (`starts ≤ t`, non-decreasing within an example). From it follow
//! - the position ids, `t − starts[t]`, restarting at 0 for every example (RoPE reads them);
//! - the block-diagonal causal mask: query `t` sees keys `starts[t] ..= t`.
//!
//! Padding after the last example forms a segment of its own, so it sees only padding.
//! This module checks and holds the layout; it does not build it (`data::batch::pack_batch`).

use candle_core::{Device, Result, Tensor};
use std::sync::Arc;

/// A checked packing layout with its position ids on the compute device.
#[derive(Clone, Debug)]
pub struct Segments {
    batch: usize,
    seq: usize,
    starts: Arc<Vec<u32>>,
    /// `t − starts[t]`, u32, `[batch · seq]`.
    positions: Tensor,
    /// Largest position id + 1.
    span: usize,
}

impl Segments {
    /// The layout of `[batch, seq]` rows whose token `t` belongs to the example starting at
    /// `starts[b·seq + t]`.
    ///
    /// # Errors
    /// A wrong length, or a start after its token or before the row's previous example.
    pub fn new(starts: Vec<u32>, batch: usize, seq: usize, device: &Device) -> Result<Self> {
        if starts.len() != batch * seq {
            candle_core::bail!(
                "segments: {} starts for a [{batch}, {seq}] layout",
                starts.len()
            );
        }
        let mut positions = Vec::with_capacity(starts.len());
        for row in starts.chunks(seq.max(1)) {
            for (t, &s) in row.iter().enumerate() {
                let prev = if t == 0 { 0 } else { row[t - 1] };
                // A token starts a new example (s == t) or continues the previous one.
                if s as usize > t || (s != prev && s as usize != t) {
                    candle_core::bail!("segments: token {t} cannot start at {s}");
                }
                positions.push(t as u32 - s);
            }
        }
        let span = positions.iter().max().map_or(0, |&p| p as usize + 1);
        Ok(Self {
            batch,
            seq,
            starts: Arc::new(starts),
            positions: Tensor::from_vec(positions, batch * seq, device)?,
            span,
        })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn seq(&self) -> usize {
        self.seq
    }

    /// Per token, where its example starts in the row (`[batch · seq]`).
    pub fn starts(&self) -> &[u32] {
        &self.starts
    }

    pub(crate) fn shared_starts(&self) -> Arc<Vec<u32>> {
        self.starts.clone()
    }

    /// Position ids `[batch · seq]` (u32), restarting at 0 per example.
    pub fn positions(&self) -> &Tensor {
        &self.positions
    }

    /// The longest example's length: the positions RoPE tables must cover.
    pub fn span(&self) -> usize {
        self.span
    }

    /// Checks that this layout belongs to scores or activations of `batch` rows of `seq`.
    pub(crate) fn check(&self, batch: usize, seq: usize) -> Result<()> {
        if (batch, seq) != (self.batch, self.seq) {
            candle_core::bail!(
                "segments for [{}, {}] applied to [{batch}, {seq}]",
                self.batch,
                self.seq
            );
        }
        Ok(())
    }
}
