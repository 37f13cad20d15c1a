//! The training recipe, read top to bottom: prepare data → make parameters trainable →
//! (resume) → loop over optimizer steps [micro-batches → loss → backward → accumulate →
//! clip → AdamW] with evaluation, checkpoints, progress and cancellation → save the result.
//!
//! Determinism (what makes resume exact): the micro-batch for global index `k` is a pure
//! function of (seed, k) through the epoch order, and dropout masks of (seed, k); the
//! checkpoint holds the parameters and optimizer moments bit for bit. So a run resumed at
//! step s computes exactly what the uninterrupted run computes from step s.

use crate::data::batch::{epoch_order, make_batch, pad_id, split, Batch};
use crate::data::formats::{load, LoadOptions};
use crate::data::render::{RenderOptions, Renderer, TokenizedExample};
use crate::error::{Error, Result};
use crate::model::decoder::{masked_cross_entropy, Decoder};
use crate::model::linear::{Base, ForwardCtx};
use crate::model::loaded::LoadedModel;
use crate::ops::linear_cross_entropy;
use crate::peft::adapter_io::{save_delta, save_lora_adapter};
use crate::peft::lora::mix;
use crate::peft::method::{apply_method, layer_index, Method, Trainable};
use crate::train::checkpoint::{load_checkpoint, save_checkpoint, RunState};
use crate::train::config::TrainConfig;
use crate::train::grad_ckpt::{checkpointed_block, GradSink};
use crate::train::optim::{clip_grad_norm, AdamW};
use crate::train::schedule::lr_at;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One optimizer step's numbers, as the progress bar and the app's chart show them.
#[derive(Clone, Debug, Serialize)]
pub struct StepStats {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub eval_loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub eta_s: f64,
    pub rss_bytes: u64,
    pub elapsed_s: f64,
}

/// What the recipe reports while it runs.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        total_steps: usize,
        start_step: usize,
        train_examples: usize,
        val_examples: usize,
        truncated: usize,
        dropped_untrained: usize,
        skipped_rows: usize,
        trainable_params: usize,
        total_params: usize,
    },
    Step(StepStats),
    Eval {
        step: usize,
        loss: f64,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainStatus {
    Completed,
    /// Stopped on request; a checkpoint holds the progress.
    Cancelled,
}

/// The end of a run.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub status: TrainStatus,
    pub steps: usize,
    pub losses: Vec<(usize, f64)>,
    pub eval_losses: Vec<(usize, f64)>,
    /// Real (non-padding) tokens per second over this session's steps.
    pub mean_tokens_per_s: f64,
    pub peak_rss_bytes: u64,
    pub trainable_params: usize,
    /// Where the adapter (or changed tensors) were written.
    pub output: PathBuf,
}

struct Prepared {
    train: Vec<TokenizedExample>,
    val: Vec<TokenizedExample>,
    truncated: usize,
    dropped: usize,
    skipped: usize,
}

fn prepare(model: &LoadedModel, data: &Path, cfg: &TrainConfig) -> Result<Prepared> {
    let ds = load(
        data,
        &LoadOptions {
            skip_bad_rows: cfg.skip_bad_rows,
        },
    )?;
    let renderer = Renderer::new(
        &model.tokenizer,
        &model.template,
        RenderOptions {
            max_len: cfg.seq_len,
            train_on: cfg.train_on,
        },
    )?;
    let mut all = Vec::with_capacity(ds.examples.len());
    let (mut truncated, mut dropped) = (0, 0);
    for ex in &ds.examples {
        let t = renderer.tokenize(ex)?;
        truncated += t.truncated() as usize;
        // An example whose trained part was cut off entirely teaches nothing.
        if t.trained_tokens() == 0 || t.input_ids.len() < 2 {
            dropped += 1;
            continue;
        }
        all.push(t);
    }
    if all.is_empty() {
        return Err(Error::Data {
            file: data.display().to_string(),
            line: 0,
            field: "(all rows)".into(),
            message: format!(
                "no example has trained tokens within seq_len {}",
                cfg.seq_len
            ),
        });
    }
    let (tr, va) = split(all.len(), cfg.val_fraction, cfg.seed)?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| all[i].clone()).collect::<Vec<_>>();
    Ok(Prepared {
        train: pick(&tr),
        val: pick(&va),
        truncated,
        dropped,
        skipped: ds.skipped,
    })
}

fn validate(cfg: &TrainConfig) -> Result<()> {
    let positive = [
        ("seq_len", cfg.seq_len),
        ("batch_size", cfg.batch_size),
        ("grad_accum", cfg.grad_accum),
    ];
    for (name, v) in positive {
        if v == 0 {
            return Err(Error::invalid(name, "must be at least 1"));
        }
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return Err(Error::invalid(
            "lr",
            format!("{} must be a positive number", cfg.lr),
        ));
    }
    if cfg.max_steps.is_none() && cfg.epochs <= 0.0 {
        return Err(Error::invalid(
            "epochs",
            "must be positive (or give max_steps)",
        ));
    }
    Ok(())
}

/// Final hidden states after the last norm, `[b, s, h]`, with optional per-block
/// checkpointing (the output projection is applied by [`batch_loss`]).
fn forward_hidden(
    model: &Arc<Decoder>,
    ids: &Tensor,
    ctx: &ForwardCtx,
    ckpt: Option<(&[Vec<Tensor>], &GradSink)>,
) -> Result<Tensor> {
    let Some((per_layer, sink)) = ckpt else {
        return model.forward_hidden(ids, None, ctx);
    };
    let mut x = model.embed(ids)?;
    for (n, params) in per_layer.iter().enumerate() {
        x = checkpointed_block(model, n, &x, ctx, params.clone(), sink)?;
    }
    model.final_norm(&x)
}

/// The output projection's weight when it is frozen and plain (`x · Wᵀ`, nothing else), so
/// the loss can be fused with it. `None` when it trains (full fine-tuning trains the tied
/// embedding; selective tuning may train `lm_head`), is NF4, has a bias or carries LoRA.
fn frozen_output_weight(model: &Decoder) -> Option<&Tensor> {
    // Soft-capped logits (`final_logit_softcapping`) go through `Decoder::logits`.
    if model.config.final_logit_softcapping.is_some() {
        return None;
    }
    match &model.lm_head {
        None => (!model.embed_tokens.is_variable()).then_some(&model.embed_tokens),
        Some(head) => match &head.base {
            Base::Dense(w) if !w.is_variable() && head.bias.is_none() && head.lora.is_none() => {
                Some(w)
            }
            _ => None,
        },
    }
}

fn batch_loss(
    model: &Arc<Decoder>,
    b: &Batch,
    ctx: &ForwardCtx,
    ckpt: Option<(&[Vec<Tensor>], &GradSink)>,
) -> Result<Tensor> {
    let n = b.batch * b.seq;
    if b.loss_mask.iter().sum::<f32>() <= 0.0 {
        return Err(Error::invalid(
            "batch",
            "no trained tokens in this batch (every target is masked)",
        ));
    }
    let ids = Tensor::from_vec(b.input_ids.clone(), (b.batch, b.seq), &Device::Cpu)?;
    let h = forward_hidden(model, &ids, ctx, ckpt)?;
    if let Some(w) = frozen_output_weight(model) {
        // Never materialises the [tokens, vocab] logits or their gradient.
        let h = h.reshape((n, h.dim(2)?))?;
        return Ok(linear_cross_entropy(&h, w, &b.targets, &b.loss_mask)?);
    }
    let logits = model.logits(&h, ctx)?;
    let vocab = logits.dim(2)?;
    let targets = Tensor::from_vec(b.targets.clone(), n, &Device::Cpu)?;
    let weights = Tensor::from_vec(b.loss_mask.clone(), n, &Device::Cpu)?;
    masked_cross_entropy(&logits.reshape((n, vocab))?, &targets, &weights)
}

/// Mean validation loss (no dropout, no gradients kept).
fn evaluate(
    model: &Arc<Decoder>,
    val: &[TokenizedExample],
    batch_size: usize,
    pad: u32,
) -> Result<Option<f64>> {
    if val.is_empty() {
        return Ok(None);
    }
    // Through detached weights: no graph, so evaluation never holds more than one block's
    // activations (with a tracked model it kept them all, defeating checkpointing).
    let model = Arc::new(model.detached());
    let (mut total, mut weight) = (0.0, 0.0);
    for chunk in val.chunks(batch_size) {
        let refs: Vec<&TokenizedExample> = chunk.iter().collect();
        let b = make_batch(&refs, pad)?;
        let n = b.trained_positions() as f64;
        let loss = batch_loss(&model, &b, &ForwardCtx::default(), None)?;
        total += loss.to_scalar::<f32>()? as f64 * n;
        weight += n;
    }
    Ok((weight > 0.0).then(|| total / weight))
}

/// Trains `model` on the file `data`, writing checkpoints and the result into `out`.
///
/// `resume`: a run folder (or checkpoint folder) to continue exactly where it stopped; it must
/// have been started with the same settings, model and data. `cancel` is checked between
/// micro-steps; when set, a checkpoint is written and the summary says `Cancelled`.
///
/// # Errors
/// Bad settings ([`Error::Invalid`]), data problems ([`Error::Data`] with file and line),
/// a checkpoint that does not match this run, I/O failures naming the file.
pub fn train(
    mut model: LoadedModel,
    data: &Path,
    out: &Path,
    cfg: &TrainConfig,
    resume: Option<&Path>,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    validate(cfg)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let prep = prepare(&model, data, cfg)?;
    let pad = pad_id(&model.tokenizer);
    let trainable = apply_method(&mut model.decoder, &cfg.method, cfg.seed)?;
    let config_json =
        serde_json::to_value(cfg).map_err(|e| Error::invalid("config", e.to_string()))?;

    let micro_per_epoch = prep.train.len().div_ceil(cfg.batch_size);
    let total_steps = match cfg.max_steps {
        Some(s) => s,
        None => ((cfg.epochs * micro_per_epoch as f64) / cfg.grad_accum as f64)
            .ceil()
            .max(1.0) as usize,
    };
    let mut opt = AdamW::new(&trainable.params, cfg.adamw.clone())?;
    let mut state = RunState {
        step: 0,
        optimizer_t: 0,
        config: config_json.clone(),
        losses: Vec::new(),
        eval_losses: Vec::new(),
        model: model.source.describe(),
        data: data.display().to_string(),
        train_examples: prep.train.len(),
    };
    if let Some(path) = resume {
        let ck = load_checkpoint(path)?;
        if ck.state.config != config_json {
            return Err(Error::invalid(
                "resume",
                format!(
                    "{} was started with different settings; resume with the same flags",
                    ck.dir.display()
                ),
            ));
        }
        if ck.state.model != state.model || ck.state.train_examples != state.train_examples {
            return Err(Error::invalid(
                "resume",
                format!(
                    "{} was trained on {} with {} examples, not this model/data",
                    ck.dir.display(),
                    ck.state.model,
                    ck.state.train_examples
                ),
            ));
        }
        for (name, var) in &trainable.params {
            let t = ck.trainable.get(name).ok_or_else(|| Error::Tensor {
                file: ck.dir.join("trainable.safetensors").display().to_string(),
                tensor: name.clone(),
                message: "missing".into(),
            })?;
            var.set(t)?;
        }
        let file = ck.dir.join("optimizer.safetensors").display().to_string();
        opt.load_state(ck.state.optimizer_t, &|n| {
            ck.optimizer.get(n).cloned().ok_or_else(|| Error::Tensor {
                file: file.clone(),
                tensor: n.into(),
                message: "missing".into(),
            })
        })?;
        state = ck.state;
    }

    let decoder = Arc::new(model.decoder.clone());
    // Trainable tensors of each block, for gradient checkpointing.
    let per_layer: Vec<Vec<Tensor>> = (0..decoder.layers.len())
        .map(|n| {
            trainable
                .params
                .iter()
                .filter(|(name, _)| layer_index(name) == Some(n))
                .map(|(_, v)| v.as_tensor().clone())
                .collect()
        })
        .collect();
    let sink = GradSink::default();
    let ckpt = cfg
        .grad_checkpointing
        .then_some((per_layer.as_slice(), &sink));
    let total_params = decoder.num_parameters();
    on_event(&TrainEvent::Started {
        total_steps,
        start_step: state.step,
        train_examples: prep.train.len(),
        val_examples: prep.val.len(),
        truncated: prep.truncated,
        dropped_untrained: prep.dropped,
        skipped_rows: prep.skipped,
        trainable_params: trainable.count(),
        total_params,
    });

    let started = Instant::now();
    let session_start_step = state.step;
    let mut tokens_done = 0usize;
    let mut status = TrainStatus::Completed;
    let is_cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    'steps: while state.step < total_steps {
        let step = state.step;
        let mut grads: Vec<Option<Tensor>> = vec![None; trainable.params.len()];
        let mut step_loss = 0.0;
        for j in 0..cfg.grad_accum {
            if is_cancelled() {
                status = TrainStatus::Cancelled;
                break 'steps;
            }
            let k = step * cfg.grad_accum + j;
            let (epoch, pos) = (k / micro_per_epoch, k % micro_per_epoch);
            let order = epoch_order(prep.train.len(), cfg.seed, epoch as u64);
            let idx = &order[pos * cfg.batch_size..((pos + 1) * cfg.batch_size).min(order.len())];
            let refs: Vec<&TokenizedExample> = idx.iter().map(|&i| &prep.train[i]).collect();
            let b = make_batch(&refs, pad)?;
            tokens_done += b.attention_mask.iter().filter(|&&m| m > 0.0).count();
            let ctx = ForwardCtx {
                train: true,
                step_seed: mix(cfg.seed, k as u64),
            };
            let loss = batch_loss(&decoder, &b, &ctx, ckpt)?;
            step_loss += loss.to_scalar::<f32>()? as f64 / cfg.grad_accum as f64;
            let store = (loss / cfg.grad_accum as f64)?.backward()?;
            let mut extra = sink.drain();
            for (slot, (_, var)) in grads.iter_mut().zip(&trainable.params) {
                let mut g = store.get(var.as_tensor()).cloned();
                if let Some(e) = extra.remove(&var.as_tensor().id()) {
                    g = Some(match g {
                        Some(g) => (g + e)?,
                        None => e,
                    });
                }
                if let Some(g) = g {
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + g)?,
                        None => g,
                    });
                }
            }
        }
        let mut grads: Vec<Tensor> = grads
            .into_iter()
            .zip(&trainable.params)
            .map(|(g, (_, v))| g.map(Ok).unwrap_or_else(|| v.as_tensor().zeros_like()))
            .collect::<candle_core::Result<_>>()?;
        let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
        if !step_loss.is_finite() || !grad_norm.is_finite() {
            return Err(Error::invalid(
                "training",
                format!("loss became {step_loss} at step {} (grad norm {grad_norm}); lower the learning rate", step + 1),
            ));
        }
        let lr = lr_at(cfg.scheduler, cfg.lr, cfg.warmup_steps, total_steps, step);
        opt.step(&grads, lr)?;
        state.step += 1;
        state.optimizer_t = opt.t;
        state.losses.push((state.step, step_loss));

        let last = state.step == total_steps;
        let mut eval_loss = None;
        if (cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every)) || last {
            eval_loss = evaluate(&decoder, &prep.val, cfg.batch_size, pad)?;
            if let Some(l) = eval_loss {
                state.eval_losses.push((state.step, l));
                on_event(&TrainEvent::Eval {
                    step: state.step,
                    loss: l,
                });
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let done = state.step - session_start_step;
        on_event(&TrainEvent::Step(StepStats {
            step: state.step,
            total_steps,
            epoch: (state.step * cfg.grad_accum) as f64 / micro_per_epoch as f64,
            loss: step_loss,
            eval_loss,
            lr,
            grad_norm,
            tokens_per_s: tokens_done as f64 / elapsed.max(1e-9),
            eta_s: elapsed / done as f64 * (total_steps - state.step) as f64,
            rss_bytes: crate::memory::rss_bytes().unwrap_or(0),
            elapsed_s: elapsed,
        }));
        if cfg.save_every > 0 && state.step.is_multiple_of(cfg.save_every) && !last {
            let p = write_checkpoint(out, &state, &trainable, &opt)?;
            on_event(&TrainEvent::Checkpoint {
                step: state.step,
                path: p,
            });
        }
    }
    let p = write_checkpoint(out, &state, &trainable, &opt)?;
    on_event(&TrainEvent::Checkpoint {
        step: state.step,
        path: p,
    });
    if status == TrainStatus::Completed {
        save_result(out, &model, &trainable, cfg, &state)?;
    }
    Ok(TrainSummary {
        status,
        steps: state.step,
        mean_tokens_per_s: tokens_done as f64 / started.elapsed().as_secs_f64().max(1e-9),
        peak_rss_bytes: crate::memory::peak_rss_bytes().unwrap_or(0),
        trainable_params: trainable.count(),
        losses: state.losses,
        eval_losses: state.eval_losses,
        output: out.to_path_buf(),
    })
}

fn write_checkpoint(
    out: &Path,
    state: &RunState,
    trainable: &Trainable,
    opt: &AdamW,
) -> Result<PathBuf> {
    let params: HashMap<String, Tensor> = trainable
        .params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    save_checkpoint(out, state, &params, &opt.state_slices())
}

fn save_result(
    out: &Path,
    model: &LoadedModel,
    trainable: &Trainable,
    cfg: &TrainConfig,
    state: &RunState,
) -> Result<()> {
    match &cfg.method {
        Method::Lora(s) | Method::Qlora(s) => save_lora_adapter(
            out,
            trainable,
            s,
            &model.source.base_model_id(),
            cfg.adapter_dtype,
        ),
        Method::Full | Method::Selective { .. } => {
            let run = serde_json::json!({
                "format": "peft-studio-delta",
                "method": cfg.method,
                "base_model": model.source.base_model_id(),
                "steps": state.step,
                "tensors": trainable.params.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            });
            save_delta(out, trainable, &run)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decoder::LoadOptions as ModelLoadOptions;
    use crate::model::load::{ModelSource, OpenOptions};
    use crate::peft::method::LoraSettings;

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
        let mut m = LoadedModel::load(
            &ModelSource::Bundled,
            OpenOptions::default(),
            &ModelLoadOptions::default(),
        )
        .unwrap();
        let method = Method::Lora(LoraSettings {
            rank: 4,
            dropout: 0.0,
            ..Default::default()
        });
        let trainable = apply_method(&mut m.decoder, &method, 5).unwrap();
        for (name, v) in &trainable.params {
            if name.contains("lora_B") {
                let vals: Vec<f32> = (0..v.elem_count())
                    .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2)
                    .collect();
                v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        let model = Arc::new(m.decoder.clone());
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
        };
        let ctx = ForwardCtx {
            train: true,
            step_seed: 3,
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
