//! Sample packing: several examples in one row train exactly as they do one by one.
//!
//! - the packed layout: each example keeps its own shifted targets and loss mask, position ids
//!   restart per example, padding is a segment of its own;
//! - the block-diagonal causal softmax hides every key outside the query's example (fused and
//!   device-generic kernels), and packed RoPE equals RoPE of each example at offset 0;
//! - on the bundled model with LoRA, a packed batch gives the loss and every adapter gradient
//!   of the same examples unpacked (fused and generic ops, with and without checkpointing), and
//!   an example packed after another one gives its own loss and gradients alone — which a
//!   plain causal mask would not (checked: it fails without the segments);
//! - a packed training run takes fewer steps per epoch and learns.

mod common;

use candle_core::{Device, Tensor};
use common::{bundled, decoder, text_dataset, STORIES};
use peft_engine::data::batch::{make_batch, pack_batch, pack_rows, Batch};
use peft_engine::data::render::TokenizedExample;
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::decoder::Decoder;
use peft_engine::ops::{
    causal_softmax_packed_with, causal_softmax_windowed_with, rope_packed_with, rope_with, OpPath,
    RopeTables, Segments,
};
use peft_engine::peft::method::{apply_method, layer_index, LoraSettings, Method, Trainable};
use peft_engine::test_support::{max_diff, uniform};
use peft_engine::train::grad_ckpt::GradSink;
use peft_engine::train::step::batch_loss;
use peft_engine::train::{train, TrainConfig, TrainEvent};
use std::sync::Arc;

fn example(ids: &[u32], mask: &[u8]) -> TokenizedExample {
    TokenizedExample {
        input_ids: ids.to_vec(),
        loss_mask: mask.to_vec(),
        full_len: ids.len(),
    }
}

/// Four examples of different lengths and masks (ids inside the bundled vocabulary).
fn examples() -> Vec<TokenizedExample> {
    vec![
        example(&[1, 403, 407, 261, 378, 432, 383], &[0, 0, 1, 1, 1, 1, 1]),
        example(&[1, 383, 286, 300], &[0, 1, 1, 1]),
        example(
            &[1, 290, 311, 402, 265, 299, 400, 350, 277],
            &[0, 0, 0, 1, 1, 1, 1, 1, 1],
        ),
        example(&[1, 260, 330, 341, 289], &[1, 1, 1, 1, 1]),
    ]
}

#[test]
fn pack_rows_keeps_the_order_and_the_capacity() {
    let lengths = [5, 3, 4, 2, 6, 1];
    let rows = pack_rows(&lengths, &[0, 1, 2, 3, 4, 5], 8).unwrap();
    assert_eq!(rows, vec![vec![0, 1], vec![2, 3], vec![4, 5]]);
    let rows = pack_rows(&lengths, &[5, 4, 3, 2, 1, 0], 8).unwrap();
    assert_eq!(rows, vec![vec![5, 4], vec![3, 2], vec![1, 0]]);
    let e = pack_rows(&lengths, &[4], 5).unwrap_err();
    assert!(e.to_string().contains("6 tokens"), "{e}");
    assert!(pack_rows(&lengths, &[0], 0).is_err());
}

#[test]
fn packed_batch_keeps_each_examples_targets_masks_and_positions() {
    let ex = examples();
    let b = pack_batch(&[vec![&ex[1], &ex[3]], vec![&ex[0]]], 0).unwrap();
    assert_eq!((b.batch, b.seq), (2, 9));
    // Row 0: ex1 (4 tokens) then ex3 (5 tokens); row 1: ex0 (7) then 2 pads.
    assert_eq!(
        &b.input_ids[..9],
        &[1, 383, 286, 300, 1, 260, 330, 341, 289]
    );
    // ex1's last position predicts nothing (not ex3's first token).
    assert_eq!(&b.targets[..4], &[383, 286, 300, 0]);
    assert_eq!(&b.loss_mask[..9], &[1., 1., 1., 0., 1., 1., 1., 1., 0.]);
    assert_eq!(&b.loss_mask[9..], &[0., 1., 1., 1., 1., 1., 0., 0., 0.]);
    assert_eq!(
        &b.attention_mask[9..],
        &[1., 1., 1., 1., 1., 1., 1., 0., 0.]
    );
    let starts = b.segment_starts.clone().unwrap();
    assert_eq!(
        starts,
        vec![0, 0, 0, 0, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 7, 7]
    );
    let seg = Segments::new(starts, 2, 9, &Device::Cpu).unwrap();
    assert_eq!(
        seg.positions().to_vec1::<u32>().unwrap(),
        vec![0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 0, 1]
    );
    // Same trained tokens as the examples unpacked.
    let plain = make_batch(&[&ex[1], &ex[3], &ex[0]], 0).unwrap();
    assert_eq!(b.trained_positions(), plain.trained_positions());
    // A start after its token, or a jump inside an example, is refused.
    assert!(Segments::new(vec![0, 2, 2], 1, 3, &Device::Cpu).is_err());
    assert!(Segments::new(vec![0, 1, 0], 1, 3, &Device::Cpu).is_err());
    assert!(pack_batch(&[vec![&example(&[], &[])]], 0).is_err());
}

/// Scores `[b=2, heads=2, groups·q, q]` with segments of 3+4+1 and 5+3 tokens.
fn packed_scores() -> (Tensor, Segments, usize) {
    let q = 8;
    let starts = vec![0, 0, 0, 3, 3, 3, 3, 7, 0, 0, 0, 0, 0, 5, 5, 5];
    let seg = Segments::new(starts, 2, q, &Device::Cpu).unwrap();
    (uniform(&[2, 2, 2 * q, q], 3), seg, q)
}

#[test]
fn packed_softmax_is_block_diagonal_causal_and_equals_each_example_alone() {
    let (scores, seg, q) = packed_scores();
    let y = causal_softmax_packed_with(OpPath::Auto, &scores, 0.7, 0, q, None, Some(&seg)).unwrap();
    let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let st = seg.starts();
    for (r, row) in yv.chunks(q).enumerate() {
        let (b, t) = (r / (2 * 2 * q), r % q);
        let s = st[b * q + t] as usize;
        for (j, &p) in row.iter().enumerate() {
            if j < s || j > t {
                assert_eq!(p, 0.0, "row {r}: key {j} outside {s}..={t} is visible");
            }
        }
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "row {r} sums to {sum}");
    }
    // Each segment equals the plain causal softmax of that example's own block of scores.
    for (b, s, len) in [(0, 0, 3), (0, 3, 4), (0, 7, 1), (1, 0, 5), (1, 5, 3)] {
        for g in 0..2 * 2 {
            let (h, grp) = (g / 2, g % 2);
            let block = |t: &Tensor| {
                t.get(b)
                    .unwrap()
                    .get(h)
                    .unwrap()
                    .narrow(0, grp * q + s, len)
                    .unwrap()
                    .narrow(1, s, len)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let want =
                causal_softmax_windowed_with(OpPath::Auto, &block(&scores), 0.7, 0, len, None)
                    .unwrap();
            assert!(max_diff(&block(&y), &want) < 1e-6, "segment {b}/{s}");
        }
    }
    // The device-generic kernel (what a GPU runs) agrees, windowed too.
    for window in [None, Some(2)] {
        let a = causal_softmax_packed_with(OpPath::Auto, &scores, 0.7, 0, q, window, Some(&seg));
        let g = causal_softmax_packed_with(OpPath::Generic, &scores, 0.7, 0, q, window, Some(&seg));
        assert!(max_diff(&a.unwrap(), &g.unwrap()) < 1e-6, "{window:?}");
    }
    // Packing has no KV cache.
    assert!(
        causal_softmax_packed_with(OpPath::Auto, &scores, 0.7, 1, q, None, Some(&seg)).is_err()
    );
}

#[test]
fn packed_rope_restarts_positions_per_example() {
    let tables = RopeTables::new(8, 10000.0, 32, &Device::Cpu).unwrap();
    let (_, seg, q) = packed_scores();
    let x = uniform(&[2, 3, q, 8], 9);
    for path in [OpPath::Auto, OpPath::Generic] {
        let y = rope_packed_with(path, &x, &tables, &seg).unwrap();
        for (b, s, len) in [(0, 0, 3), (0, 3, 4), (0, 7, 1), (1, 0, 5), (1, 5, 3)] {
            let part = |t: &Tensor| t.narrow(0, b, 1).unwrap().narrow(2, s, len).unwrap();
            let want = rope_with(path, &part(&x).contiguous().unwrap(), &tables, 0).unwrap();
            assert!(max_diff(&part(&y), &want) < 1e-6, "{path:?} {b}/{s}");
        }
    }
}

/// The bundled model with LoRA r4 on every projection, `B`s non-zero so every `A` learns.
fn lora_model() -> (Arc<Decoder>, Trainable) {
    let mut d = decoder();
    let method = Method::Lora(LoraSettings {
        rank: 4,
        dropout: 0.0,
        ..Default::default()
    });
    let trainable = apply_method(&mut d, &method, 5).unwrap();
    for (name, v) in &trainable.params {
        if name.contains("lora_B") {
            let vals: Vec<f32> = (0..v.elem_count())
                .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2)
                .collect();
            v.set(&Tensor::from_vec(vals, v.dims(), v.device()).unwrap())
                .unwrap();
        }
    }
    (Arc::new(d), trainable)
}

/// Loss and every trainable tensor's gradient for batch `b`.
fn loss_and_grads(
    model: &Arc<Decoder>,
    trainable: &Trainable,
    b: &Batch,
    ops: OpPath,
    ckpt: bool,
) -> (f32, Vec<Vec<f32>>) {
    let ctx = ForwardCtx {
        ops,
        ..Default::default()
    };
    let per_layer: Vec<Vec<Tensor>> = (0..model.layers.len())
        .map(|n| {
            let of_layer = trainable
                .params
                .iter()
                .filter(|(name, _)| layer_index(name) == Some(n));
            of_layer.map(|(_, v)| v.as_tensor().clone()).collect()
        })
        .collect();
    let sink = GradSink::default();
    let loss = batch_loss(
        model,
        b,
        &ctx,
        ckpt.then_some((per_layer.as_slice(), &sink)),
    )
    .unwrap();
    let store = loss.backward().unwrap();
    let mut extra = sink.drain();
    let grads = trainable
        .params
        .iter()
        .map(|(name, v)| {
            let g = store.get(v.as_tensor()).cloned();
            let g = g.or_else(|| extra.remove(&v.as_tensor().id()));
            let g = g.unwrap_or_else(|| panic!("{name}: no gradient"));
            g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        })
        .collect();
    (loss.to_scalar::<f32>().unwrap(), grads)
}

/// Loss within `tol` relative and every gradient within `tol` of its largest entry.
fn assert_same(what: &str, got: &(f32, Vec<Vec<f32>>), want: &(f32, Vec<Vec<f32>>), tol: f32) {
    let el = ((got.0 - want.0) / want.0).abs();
    assert!(el <= tol, "{what}: loss {} vs {} ({el:e})", got.0, want.0);
    for (n, (g, w)) in got.1.iter().zip(&want.1).enumerate() {
        let scale = w.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= tol * scale,
            "{what}: gradient {n} differs by {diff} (scale {scale})"
        );
    }
}

#[test]
fn packed_batch_trains_exactly_like_the_examples_unpacked() {
    let (model, trainable) = lora_model();
    let ex = examples();
    let unpacked = make_batch(&[&ex[0], &ex[1], &ex[2], &ex[3]], 0).unwrap();
    // Two rows of 7+4 and 9+5 tokens, so padding and several segments per row are covered.
    let packed = pack_batch(&[vec![&ex[0], &ex[1]], vec![&ex[2], &ex[3]]], 0).unwrap();
    for ops in [OpPath::Auto, OpPath::Generic] {
        for ckpt in [false, true] {
            let want = loss_and_grads(&model, &trainable, &unpacked, ops, ckpt);
            let got = loss_and_grads(&model, &trainable, &packed, ops, ckpt);
            // Different padding changes GEMM shapes and so summation order: f32 rounding only.
            assert_same(&format!("{ops:?} ckpt {ckpt}"), &got, &want, 5e-5);
        }
    }
}

#[test]
fn an_example_packed_after_another_sees_nothing_of_it() {
    let (model, trainable) = lora_model();
    let ex = examples();
    // ex[2] first, its loss masked out: only ex[0]'s tokens carry loss.
    let silent = example(&ex[2].input_ids, &vec![0; ex[2].input_ids.len()]);
    let alone = make_batch(&[&ex[0]], 0).unwrap();
    let packed = pack_batch(&[vec![&silent, &ex[0]]], 0).unwrap();
    let want = loss_and_grads(&model, &trainable, &alone, OpPath::Auto, false);
    let got = loss_and_grads(&model, &trainable, &packed, OpPath::Auto, false);
    assert_same("packed after another", &got, &want, 1e-5);
    // The same row under a plain causal mask (no segments) mixes the two examples: the check
    // above is one that cross-contamination fails.
    let plain = Batch {
        segment_starts: None,
        ..packed
    };
    let mixed = loss_and_grads(&model, &trainable, &plain, OpPath::Auto, false);
    assert!(
        ((mixed.0 - want.0) / want.0).abs() > 1e-3,
        "a plain causal mask gave the same loss {} — the test cannot tell",
        mixed.0
    );
}

#[test]
fn a_packed_run_takes_fewer_steps_per_epoch_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_dataset(dir.path(), &STORIES);
    let mut totals = Vec::new();
    for packing in [false, true] {
        let cfg = TrainConfig {
            method: Method::Lora(LoraSettings {
                rank: 8,
                alpha: 16.0,
                dropout: 0.0,
                ..Default::default()
            }),
            seq_len: 64,
            batch_size: 1,
            epochs: 3.0,
            lr: 5e-3,
            val_fraction: 0.0,
            packing,
            ..Default::default()
        };
        let mut total = 0;
        let mut on_event = |e: &TrainEvent, _: &_| {
            if let TrainEvent::Started { total_steps, .. } = e {
                total = *total_steps;
            }
        };
        let out = dir.path().join(format!("run-{packing}"));
        let s = train(&bundled(), &data, &out, &cfg, None, None, &mut on_event).unwrap();
        let (first, last) = (s.losses[0].1, s.losses.last().unwrap().1);
        assert!(last < first, "packing {packing}: loss {first} → {last}");
        totals.push(total);
    }
    // Six stories: three epochs are 18 steps one by one, fewer packed (rows of 64 tokens).
    assert_eq!(totals[0], 18);
    assert!(totals[1] < totals[0], "packed run: {} steps", totals[1]);
}

#[test]
fn the_planner_costs_an_epoch_by_the_rows_it_computes() {
    use peft_engine::plan::epoch::{epoch_rows, epoch_seconds};
    use peft_engine::plan::{Calibration, PlanRequest};
    let lengths: Vec<usize> = (0..200).map(|i| 20 + i % 30).chain([400]).collect();
    let plain = PlanRequest {
        seq_len: 256,
        ..Default::default()
    };
    let packed = PlanRequest {
        packing: true,
        ..plain.clone()
    };
    let cut: usize = lengths.iter().map(|&l| l.min(256)).sum();
    // One micro-batch per example unpacked; packed, rows of at most seq_len holding every
    // (cut) token once, nearly full.
    let rows = epoch_rows(&lengths, &plain);
    assert_eq!(rows.len(), 201);
    assert_eq!(rows.iter().flatten().sum::<usize>(), cut);
    let rows = epoch_rows(&lengths, &packed);
    assert_eq!(rows.iter().flatten().sum::<usize>(), cut);
    assert!(rows.iter().flatten().all(|&r| r <= 256));
    assert!(rows.len() <= cut.div_ceil(256) + 2, "{} rows", rows.len());
    let c = bundled().config.clone();
    let k = Calibration::default();
    let (a, b) = (
        epoch_seconds(&c, &plain, &k, &lengths),
        epoch_seconds(&c, &packed, &k, &lengths),
    );
    assert!(
        a.is_finite() && b.is_finite() && a > 0.0 && b > 0.0 && a != b,
        "{a} {b}"
    );
}

/// A packing run evaluates packed too: the same mean loss over the same trained tokens as the
/// examples one by one, from fewer, fuller rows. Rows of 12 tokens take the examples (7, 4, 9
/// and 5 tokens, and a copy of the first) as 7+4, 9, 5+7; batches of 2 rows, so the last
/// batch holds one row.
#[test]
fn a_packing_run_evaluates_packed_with_the_same_loss() {
    use peft_engine::train::step::{evaluate, EvalMode};
    let (model, _) = lora_model();
    let mut val = examples();
    val.push(val[0].clone());
    let unpacked = evaluate(&model, &val, 2, 0, EvalMode::default())
        .unwrap()
        .unwrap();
    let mode = EvalMode {
        pack_to: Some(12),
        ..Default::default()
    };
    let packed = evaluate(&model, &val, 2, 0, mode).unwrap().unwrap();
    assert!(
        ((packed - unpacked) / unpacked).abs() < 1e-5,
        "packed {packed} vs unpacked {unpacked}"
    );
    // The rows: checked against `pack_rows` in file order, the order evaluation packs in.
    let lengths: Vec<usize> = val.iter().map(|e| e.input_ids.len()).collect();
    let rows = pack_rows(&lengths, &[0, 1, 2, 3, 4], 12).unwrap();
    assert_eq!(rows, vec![vec![0, 1], vec![2], vec![3, 4]]);
    // An example longer than a row is refused with its length, not truncated.
    let tight = EvalMode {
        pack_to: Some(8),
        ..Default::default()
    };
    let err = evaluate(&model, &val, 2, 0, tight).unwrap_err().to_string();
    assert!(err.contains("9 tokens"), "{err}");
}
