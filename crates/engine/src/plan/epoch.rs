//! Seconds of one epoch over a dataset's examples, from the step-time model in
//! [`super::time`]: the sum over the epoch's micro-batches of one micro-step's time at the
//! length that micro-batch actually computes.
//!
//! Without packing a micro-batch is `batch_size` examples padded to its longest, so a dataset
//! of short examples runs many short, overhead-bound sequences. With packing it is
//! `batch_size` rows of examples laid end to end, each close to `seq_len` (as the trainer packs
//! them: `data::batch::pack_rows`, next fit over a shuffled order). Each micro-step is costed
//! with its own optimizer work, which overstates accumulation runs a little (the optimizer
//! runs once per `grad_accum` micro-steps) but the same way with and without packing.
//!
//! Pure arithmetic over lengths; it measures nothing.

use super::calibrate::Calibration;
use super::request::PlanRequest;
use super::time::step_time;
use crate::data::batch::{epoch_order, pack_rows};
use crate::model::config::Config;
use std::collections::HashMap;

/// The lengths each micro-batch of an epoch computes: per micro-batch, its rows' lengths
/// (examples cut to `seq_len`; packed rows with `req.packing`).
pub fn epoch_rows(lengths: &[usize], req: &PlanRequest) -> Vec<Vec<usize>> {
    let seq = req.seq_len.max(1);
    let cut: Vec<usize> = lengths.iter().map(|&l| l.clamp(1, seq)).collect();
    let order = epoch_order(cut.len(), 0x9ACC_ED5E, 0);
    let rows: Vec<usize> = if req.packing {
        pack_rows(&cut, &order, seq)
            .unwrap_or_default()
            .iter()
            .map(|r| r.iter().map(|&i| cut[i]).sum())
            .collect()
    } else {
        order.iter().map(|&i| cut[i]).collect()
    };
    rows.chunks(req.batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Seconds of one epoch of examples of `lengths` (see the module docs).
pub fn epoch_seconds(c: &Config, req: &PlanRequest, k: &Calibration, lengths: &[usize]) -> f64 {
    // Step time by (rows, length): a dataset has few distinct lengths.
    let mut memo: HashMap<(usize, usize), f64> = HashMap::new();
    epoch_rows(lengths, req)
        .iter()
        .map(|b| {
            let key = (b.len(), b.iter().copied().max().unwrap_or(1));
            *memo.entry(key).or_insert_with(|| {
                let one = PlanRequest {
                    seq_len: key.1,
                    batch_size: key.0,
                    grad_accum: 1,
                    ..req.clone()
                };
                step_time(c, &one, k).total()
            })
        })
        .sum()
}
