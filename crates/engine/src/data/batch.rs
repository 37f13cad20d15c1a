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
//! Sample packing ([`pack_rows`], [`pack_batch`]): short examples are laid end to end in rows
//! of `seq_len` tokens, each keeping its own shifted targets and loss mask (an example's last
//! position never predicts the next example's first token), with `segment_starts` telling the
//! model where each example begins so positions restart and attention stays inside it.
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
    /// Packed rows ([`pack_batch`]): per position, the index in its row where its example
    /// starts (`ops::Segments`). `None`: one example per row.
    pub segment_starts: Option<Vec<u32>>,
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
        segment_starts: None,
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

/// Packs examples of `lengths` into rows of at most `capacity` tokens, visiting them in
/// `order` and starting a new row when the next one does not fit (next fit: the order, and
/// so the seeded shuffle, is kept). Each row lists example indices.
///
/// # Errors
/// [`Error::Invalid`] for `capacity == 0` or an example longer than `capacity` (the caller
/// truncates to the sequence length first).
pub fn pack_rows(lengths: &[usize], order: &[usize], capacity: usize) -> Result<Vec<Vec<usize>>> {
    if capacity == 0 {
        return Err(Error::invalid("seq_len", "must be at least 1"));
    }
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut used = capacity;
    for &i in order {
        let len = lengths[i];
        if len > capacity {
            return Err(Error::invalid(
                "packing",
                format!("example {i} has {len} tokens, more than a row of {capacity}"),
            ));
        }
        if used + len > capacity {
            rows.push(Vec::new());
            used = 0;
        }
        if let Some(row) = rows.last_mut() {
            row.push(i);
        }
        used += len;
    }
    Ok(rows)
}

/// A batch of packed rows: each row's examples end to end, right-padded to the longest row.
/// Targets and loss masks are each example's own (shifted inside the example), so the loss is
/// the same mean over trained tokens as [`make_batch`] of the same examples.
///
/// # Errors
/// [`Error::Invalid`] for no rows, an empty row, or a mask length that differs from its ids.
pub fn pack_batch(rows: &[Vec<&TokenizedExample>], pad_id: u32) -> Result<Batch> {
    if rows.is_empty() || rows.iter().any(Vec::is_empty) {
        return Err(Error::invalid("batch", "no examples"));
    }
    if rows.iter().flatten().any(|e| e.input_ids.is_empty()) {
        return Err(Error::invalid("batch", "an example without tokens"));
    }
    let row_len = |r: &Vec<&TokenizedExample>| r.iter().map(|e| e.input_ids.len()).sum::<usize>();
    let seq = rows.iter().map(row_len).max().unwrap_or(0).max(1);
    let mut b = Batch {
        input_ids: Vec::with_capacity(rows.len() * seq),
        targets: Vec::with_capacity(rows.len() * seq),
        loss_mask: Vec::with_capacity(rows.len() * seq),
        attention_mask: Vec::with_capacity(rows.len() * seq),
        batch: rows.len(),
        seq,
        segment_starts: Some(Vec::with_capacity(rows.len() * seq)),
    };
    let mut starts = Vec::with_capacity(rows.len() * seq);
    for row in rows {
        for ex in row {
            let one = make_batch(&[ex], pad_id)?;
            let begin = b.input_ids.len() % seq;
            b.input_ids.extend_from_slice(&one.input_ids);
            b.targets.extend_from_slice(&one.targets);
            b.loss_mask.extend_from_slice(&one.loss_mask);
            b.attention_mask.extend_from_slice(&one.attention_mask);
            starts.extend(std::iter::repeat_n(begin as u32, one.seq));
        }
        // Padding is a segment of its own: it attends only to padding.
        let pad = seq - row_len(row);
        let begin = (seq - pad) as u32;
        b.input_ids.extend(std::iter::repeat_n(pad_id, pad));
        b.targets.extend(std::iter::repeat_n(pad_id, pad));
        b.loss_mask.extend(std::iter::repeat_n(0.0, pad));
        b.attention_mask.extend(std::iter::repeat_n(0.0, pad));
        starts.extend(std::iter::repeat_n(begin, pad));
    }
    b.segment_starts = Some(starts);
    Ok(b)
}
