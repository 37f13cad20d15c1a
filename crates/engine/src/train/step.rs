//! One micro-step's arithmetic: the forward pass (optionally checkpointed block by block), the
//! masked loss (fused with the output projection when that is frozen), and a validation pass
//! without a graph.

use crate::data::batch::{make_batch, pack_batch, pack_rows, Batch};
use crate::data::render::TokenizedExample;
use crate::error::{Error, Result};
use crate::model::ctx::ForwardCtx;
use crate::model::decoder::{masked_cross_entropy, Decoder};
use crate::model::linear::Base;
use crate::ops::{
    linear_cross_entropy_rows, linear_cross_entropy_trained, linear_cross_entropy_with, HeadWeight,
    Segments,
};
use crate::train::grad_ckpt::{checkpointed_block, GradSink};
use candle_core::{DType, Tensor};
use std::sync::Arc;

/// Per-block checkpointing: the trainable tensors of each block and where their gradients
/// from recomputed blocks are collected.
pub type Checkpointing<'a> = (&'a [Vec<Tensor>], &'a GradSink);

/// Final hidden states after the last norm, `[b, s, h]`, with optional per-block
/// checkpointing (the output projection is applied by [`batch_loss`]).
fn forward_hidden(
    model: &Arc<Decoder>,
    ids: &Tensor,
    ctx: &ForwardCtx,
    ckpt: Option<Checkpointing<'_>>,
) -> Result<Tensor> {
    let Some((per_layer, sink)) = ckpt else {
        return model.forward_hidden(ids, None, ctx);
    };
    let mut x = model.embed(ids)?;
    for (n, params) in per_layer.iter().enumerate() {
        x = checkpointed_block(model, n, &x, ctx, params.clone(), sink)?;
    }
    model.final_norm_with(ctx.ops, &x)
}

/// The output projection's weight when it is frozen and plain (`x · Wᵀ`, nothing else), so
/// the loss can be fused with it. `None` when it trains (full fine-tuning trains the tied
/// embedding; selective tuning may train `lm_head`), is quantized, has a bias or carries LoRA.
pub(crate) fn frozen_output_weight(model: &Decoder) -> Option<&Tensor> {
    // Soft-capped logits (`final_logit_softcapping`) go through `Decoder::logits`.
    if model.config.final_logit_softcapping.is_some() {
        return None;
    }
    match &model.lm_head {
        // A tied head in a GGUF block type goes through `Decoder::logits` (its tiled op).
        None if model.embed_q.is_some() => None,
        None => (!model.embed_tokens.is_variable()).then_some(&model.embed_tokens),
        Some(head) => match &head.base {
            Base::Dense(w) if !w.is_variable() && head.bias.is_none() && head.lora.is_none() => {
                Some(w)
            }
            _ => None,
        },
    }
}

/// The output weight when it is trained and plain (full fine-tuning's tied embedding, or a
/// trained bias-free `lm_head` without LoRA), f32, with no logit soft-capping: the fused loss
/// can then write its gradient tile by tile ([`linear_cross_entropy_trained`]).
fn trained_output_weight(model: &Decoder) -> Option<&Tensor> {
    if model.config.final_logit_softcapping.is_some() {
        return None;
    }
    let w = match &model.lm_head {
        None if model.embed_q.is_none() => &model.embed_tokens,
        None => return None,
        Some(head) => match &head.base {
            Base::Dense(w) if head.bias.is_none() && head.lora.is_none() => w,
            _ => return None,
        },
    };
    (w.is_variable() && w.dtype() == DType::F32).then_some(w)
}

/// A tied output head kept in a GGUF block type (QLoRA over the file's own types), as rows
/// widened on demand for the fused loss; `None` off the CPU path or where logits are capped.
fn quantized_output_head(model: &Decoder, ctx: &ForwardCtx) -> Option<HeadWeight> {
    let q = model.embed_q.as_ref()?;
    let plain = model.lm_head.is_none() && model.config.final_logit_softcapping.is_none();
    if !plain || !ctx.ops.fused_on(model.device()) {
        return None;
    }
    let (vocab, d) = q.shape();
    let q = q.clone();
    let rows: crate::ops::RowsFn = std::sync::Arc::new(move |v0, len| q.widen_rows(v0, v0 + len));
    Some(if ctx.bf16_products {
        HeadWeight::RowsBf16 { vocab, d, rows }
    } else {
        HeadWeight::Rows { vocab, d, rows }
    })
}

/// Mean cross-entropy of the batch's trained positions.
///
/// # Errors
/// [`Error::Invalid`] when every target is masked; compute errors.
pub fn batch_loss(
    model: &Arc<Decoder>,
    b: &Batch,
    ctx: &ForwardCtx,
    ckpt: Option<Checkpointing<'_>>,
) -> Result<Tensor> {
    let n = b.batch * b.seq;
    if b.loss_mask.iter().sum::<f32>() <= 0.0 {
        return Err(Error::invalid(
            "batch",
            "no trained tokens in this batch (every target is masked)",
        ));
    }
    let dev = model.device();
    let ids = Tensor::from_vec(b.input_ids.clone(), (b.batch, b.seq), dev)?;
    let packed;
    let ctx = match &b.segment_starts {
        Some(starts) => {
            packed = ForwardCtx {
                packing: Some(Segments::new(starts.clone(), b.batch, b.seq, dev)?),
                ..ctx.clone()
            };
            &packed
        }
        None => ctx,
    };
    let h = forward_hidden(model, &ids, ctx, ckpt)?;
    if let Some(w) = frozen_output_weight(model) {
        if ctx.bf16_products
            && w.dtype() == DType::BF16
            && ctx.ops.fused_on(dev)
            && h.dtype() == DType::F32
        {
            // `--bf16-compute`: the head's products in bf16 too, as autocast runs the lm_head.
            let h = h.reshape((n, h.dim(2)?))?;
            let head = HeadWeight::Bf16(w.clone());
            return Ok(linear_cross_entropy_rows(
                &h,
                head,
                &b.targets,
                &b.loss_mask,
            )?);
        }
        // Never materialises the [tokens, vocab] logits or their gradient.
        let h = h.reshape((n, h.dim(2)?))?;
        return Ok(linear_cross_entropy_with(
            ctx.ops,
            &h,
            w,
            &b.targets,
            &b.loss_mask,
        )?);
    }
    if let (Some(w), Some(grads)) = (trained_output_weight(model), &ctx.weight_grads) {
        if h.track_op() && ctx.ops.fused_on(dev) && h.dtype() == DType::F32 {
            // Full fine-tuning: the head's gradient is written into the trainer's buffer.
            let h = h.reshape((n, h.dim(2)?))?;
            return Ok(linear_cross_entropy_trained(
                &h,
                w,
                &b.targets,
                &b.loss_mask,
                grads,
            )?);
        }
    }
    if let Some(head) = quantized_output_head(model, ctx) {
        // The same fused loss over a head kept in a GGUF block type, widened tile by tile.
        let h = h.reshape((n, h.dim(2)?))?;
        return Ok(linear_cross_entropy_rows(
            &h,
            head,
            &b.targets,
            &b.loss_mask,
        )?);
    }
    let logits = model.logits(&h, ctx)?.to_dtype(DType::F32)?;
    let vocab = logits.dim(2)?;
    let targets = Tensor::from_vec(b.targets.clone(), n, dev)?;
    let weights = Tensor::from_vec(b.loss_mask.clone(), n, dev)?;
    masked_cross_entropy(&logits.reshape((n, vocab))?, &targets, &weights)
}

/// How a run evaluates: as it trains.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EvalMode {
    /// The run's `--bf16-compute`: its bf16 base multiplied as training multiplies it (in f32
    /// each call widened every projection to an f32 copy first).
    pub bf16_products: bool,
    /// With the run's packing, rows of this many tokens (its `seq_len`): short examples end to
    /// end, each with its own positions and mask, so a batch computes no padding. The loss is
    /// the same mean over the same trained tokens.
    pub pack_to: Option<usize>,
}

/// Mean validation loss (no dropout, no gradients kept); `None` without validation examples.
///
/// # Errors
/// Compute errors; an example longer than `mode.pack_to`.
pub fn evaluate(
    model: &Decoder,
    val: &[TokenizedExample],
    batch_size: usize,
    pad: u32,
    mode: EvalMode,
) -> Result<Option<f64>> {
    if val.is_empty() {
        return Ok(None);
    }
    // Through detached weights: no graph, so evaluation never holds more than one block's
    // activations (with a tracked model it kept them all, defeating checkpointing).
    let model = Arc::new(model.detached());
    let ctx = ForwardCtx {
        bf16_products: mode.bf16_products,
        ..Default::default()
    };
    let batches: Vec<Batch> = match mode.pack_to {
        Some(capacity) => {
            let lengths: Vec<usize> = val.iter().map(|e| e.input_ids.len()).collect();
            let order: Vec<usize> = (0..val.len()).collect();
            let rows = pack_rows(&lengths, &order, capacity)?;
            rows.chunks(batch_size.max(1))
                .map(|chunk| {
                    let rows: Vec<Vec<&TokenizedExample>> = chunk
                        .iter()
                        .map(|r| r.iter().map(|&i| &val[i]).collect())
                        .collect();
                    pack_batch(&rows, pad)
                })
                .collect::<Result<_>>()?
        }
        None => val
            .chunks(batch_size.max(1))
            .map(|chunk| make_batch(&chunk.iter().collect::<Vec<_>>(), pad))
            .collect::<Result<_>>()?,
    };
    let (mut total, mut weight) = (0.0, 0.0);
    for b in &batches {
        let n = b.trained_positions() as f64;
        let loss = batch_loss(&model, b, &ctx, None)?;
        total += loss.to_scalar::<f32>()? as f64 * n;
        weight += n;
    }
    Ok((weight > 0.0).then(|| total / weight))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decoder::LoadOptions;
    use crate::model::load::{ModelSource, OpenOptions};
    use crate::model::loaded::LoadedModel;
    use crate::peft::method::{apply_method, layer_index, LoraSettings, Method, Trainable};
    use candle_core::Device;

    /// Loss and every trainable tensor's gradient (checkpointing sink included).
    fn loss_and_grads(
        loss: Tensor,
        trainable: &Trainable,
        sink: &GradSink,
    ) -> (f32, Vec<Vec<f32>>) {
        let l = loss.to_scalar::<f32>().unwrap();
        let store = loss.backward().unwrap();
        let mut extra = sink.drain();
        let grads = trainable
            .params
            .iter()
            .map(|(name, v)| {
                let g = store
                    .get(v.as_tensor())
                    .cloned()
                    .or_else(|| extra.remove(&v.as_tensor().id()))
                    .unwrap_or_else(|| panic!("{name}: no gradient"));
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
            .collect();
        (l, grads)
    }

    /// The bundled model ties its head to a frozen embedding under LoRA, so `batch_loss` takes
    /// the fused path; it must agree with logits + `masked_cross_entropy`, with and without
    /// gradient checkpointing.
    #[test]
    fn fused_batch_loss_matches_logits_and_masked_cross_entropy() {
        let m = LoadedModel::open(&ModelSource::Bundled, OpenOptions::default()).unwrap();
        let mut decoder = (*m.weights(&LoadOptions::default()).unwrap()).clone();
        let method = Method::Lora(LoraSettings {
            rank: 4,
            dropout: 0.0,
            ..Default::default()
        });
        let trainable = apply_method(&mut decoder, &method, 5).unwrap();
        for (name, v) in &trainable.params {
            if name.contains("lora_B") {
                let vals: Vec<f32> = (0..v.elem_count())
                    .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2)
                    .collect();
                v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        let model = Arc::new(decoder);
        assert!(frozen_output_weight(&model).is_some());
        let (batch, seq) = (2, 6);
        let input_ids: Vec<u32> = vec![1, 403, 407, 261, 378, 432, 1, 383, 286, 300, 0, 0];
        let mut targets: Vec<u32> = input_ids[1..].to_vec();
        targets.push(0);
        let loss_mask = vec![0., 1., 1., 1., 1., 0., 0., 1., 1., 0., 0., 0.];
        let b = Batch {
            input_ids,
            targets: targets.clone(),
            loss_mask: loss_mask.clone(),
            attention_mask: vec![1.0; batch * seq],
            batch,
            seq,
            segment_starts: None,
        };
        let ctx = ForwardCtx {
            train: true,
            step_seed: 3,
            ..Default::default()
        };
        let sink = GradSink::default();

        let ids = Tensor::from_vec(b.input_ids.clone(), (batch, seq), &Device::Cpu).unwrap();
        let logits = model.forward(&ids, &ctx).unwrap();
        let reference = masked_cross_entropy(
            &logits
                .reshape((batch * seq, logits.dim(2).unwrap()))
                .unwrap(),
            &Tensor::new(targets.as_slice(), &Device::Cpu).unwrap(),
            &Tensor::new(loss_mask.as_slice(), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let (want_loss, want) = loss_and_grads(reference, &trainable, &sink);

        let per_layer: Vec<Vec<Tensor>> = (0..model.layers.len())
            .map(|n| {
                trainable
                    .params
                    .iter()
                    .filter(|(name, _)| layer_index(name) == Some(n))
                    .map(|(_, v)| v.as_tensor().clone())
                    .collect()
            })
            .collect();
        for ckpt in [None, Some((per_layer.as_slice(), &sink))] {
            let loss = batch_loss(&model, &b, &ctx, ckpt).unwrap();
            let (got_loss, got) = loss_and_grads(loss, &trainable, &sink);
            assert!(
                (got_loss - want_loss).abs() < 1e-5,
                "{got_loss} vs {want_loss}"
            );
            for ((g, w), (name, _)) in got.iter().zip(&want).zip(&trainable.params) {
                let scale = w.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    diff <= 1e-4 * scale,
                    "{name}: max diff {diff} (scale {scale})"
                );
            }
        }

        let masked = Batch {
            loss_mask: vec![0.0; batch * seq],
            ..b
        };
        let e = batch_loss(&model, &masked, &ctx, None).unwrap_err();
        assert!(e.to_string().contains("no trained tokens"), "{e}");
    }
}
