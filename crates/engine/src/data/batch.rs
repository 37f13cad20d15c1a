//! Seeded train/validation split, reproducible epoch order, and padded batches.
//!
//! Shapes: a [`Batch`] holds `batch · seq` values per field, row-major, `seq` being the longest
//! example in the batch (right-padded). Targets are shifted by one: position `t` predicts token
//! `t + 1`, so `targets[t] = input_ids[t + 1]` and `loss_mask[t] = mask[t + 1]`; the last
//! position of each row and every padded position have weight 0. The loss is
//! `Σ w_t · CE(logits_t, target_t) / Σ w_t`.
//!
//! Randomness is [`crate::seed::SplitMix64`] and Fisher–Yates, fixed forever, so a resumed
//! run sees the same order from `(seed, epoch)` after any dependency update.
//!
//! This module does not tokenise (`render`) or move data to a device (the trainer does).

use crate::data::render::TokenizedExample;
use crate::error::{Error, Result};
use crate::seed::SplitMix64;

/// A seeded Fisher–Yates permutation of `0..n`.
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Splits `0..n` into (train, validation) index lists, each sorted. The validation share is
/// `round(n · val_fraction)`, kept below `n` so training always has a row.
///
/// # Errors
/// [`Error::Invalid`] when `val_fraction` is not in `[0, 1)`.
pub fn split(n: usize, val_fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(Error::invalid(
            "val_fraction",
            format!("{val_fraction} is not in [0, 1)"),
        ));
    }
    let n_val = ((n as f64 * val_fraction).round() as usize).min(n.saturating_sub(1));
    // A different stream from any epoch order: the split must not correlate with epoch 0.
    let order = permutation(n, seed ^ 0x5EED_5EED_5EED_5EED);
    let (mut val, mut train) = (order[..n_val].to_vec(), order[n_val..].to_vec());
    val.sort_unstable();
    train.sort_unstable();
    Ok((train, val))
}

/// The order in which epoch `epoch` visits `0..n`; a pure function of `(n, seed, epoch)`, so a
/// resumed run recomputes it and skips the steps already done.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut mix = SplitMix64(seed.wrapping_add(epoch.wrapping_mul(0xD1B5_4A32_D192_ED03)));
    permutation(n, mix.next_u64())
}

/// A right-padded batch, row-major `[batch, seq]` in every field.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    /// `input_ids` shifted left by one; `pad_id` where there is no next token.
    pub targets: Vec<u32>,
    /// 1.0 where `targets[t]` is a trained token, else 0.0.
    pub loss_mask: Vec<f32>,
    /// 1.0 on real tokens, 0.0 on padding.
    pub attention_mask: Vec<f32>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    /// Number of positions that carry loss.
    pub fn trained_positions(&self) -> usize {
        self.loss_mask.iter().filter(|&&w| w > 0.0).count()
    }
}

/// The pad id: the first EOS id, else 0. Padded positions never carry loss, so the choice only
/// has to be a valid embedding row.
pub fn pad_id(tokenizer: &crate::tokenizer::Tokenizer) -> u32 {
    tokenizer.eos_ids.first().copied().unwrap_or(0)
}

/// Pads `examples` to the longest and shifts targets.
///
/// # Errors
/// [`Error::Invalid`] for an empty batch or an example whose mask length differs from its ids.
pub fn make_batch(examples: &[&TokenizedExample], pad_id: u32) -> Result<Batch> {
    if examples.is_empty() {
        return Err(Error::invalid("batch", "no examples"));
    }
    if examples
        .iter()
        .any(|e| e.loss_mask.len() != e.input_ids.len())
    {
        return Err(Error::invalid(
            "batch",
            "loss_mask and input_ids lengths differ",
        ));
    }
    let seq = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let cells = examples.len() * seq;
    let mut b = Batch {
        input_ids: vec![pad_id; cells],
        targets: vec![pad_id; cells],
        loss_mask: vec![0.0; cells],
        attention_mask: vec![0.0; cells],
        batch: examples.len(),
        seq,
    };
    for (row, ex) in examples.iter().enumerate() {
        let base = row * seq;
        let len = ex.input_ids.len();
        b.input_ids[base..base + len].copy_from_slice(&ex.input_ids);
        for t in 0..len {
            b.attention_mask[base + t] = 1.0;
            if t + 1 < len {
                b.targets[base + t] = ex.input_ids[t + 1];
                b.loss_mask[base + t] = if ex.loss_mask[t + 1] != 0 { 1.0 } else { 0.0 };
            }
        }
    }
    Ok(b)
}

/// Groups an epoch order into batches of `batch_size` indices (the last may be smaller).
///
/// # Errors
/// [`Error::Invalid`] for `batch_size == 0`.
pub fn batch_indices(order: &[usize], batch_size: usize) -> Result<Vec<Vec<usize>>> {
    if batch_size == 0 {
        return Err(Error::invalid("batch_size", "must be at least 1"));
    }
    Ok(order.chunks(batch_size).map(<[usize]>::to_vec).collect())
}
