//! The training recipe, read top to bottom: check settings and the output folder → prepare data
//! and the model as the method trains it → (resume) → loop over optimizer steps
//! [micro-batches → loss → backward → accumulate → clip → AdamW] with evaluation (keeping the
//! best-evaluation adapter), checkpoints, progress and cancellation → save the result. The
//! run's record (`train::history`) is kept current throughout and saved in the run folder.
//!
//! Determinism (what makes resume exact): the micro-batch for global index `k` is a pure
//! function of (seed, k) through the epoch order, and dropout masks of (seed, k); the
//! checkpoint holds the parameters and optimizer moments bit for bit. So a run resumed at
//! step s computes exactly what the uninterrupted run computes from step s.

use crate::data::batch::{epoch_order, make_batch, pack_batch, pack_rows, pad_id, Batch};
use crate::data::render::TokenizedExample;
use crate::error::{Error, Result};
use crate::fsutil::replace_dir;
use crate::memory::{peak_rss_bytes, rss_bytes};
use crate::model::ctx::ForwardCtx;
use crate::model::loaded::LoadedModel;
use crate::ops::profile::{span, Kind};
use crate::ops::WeightGrads;
use crate::peft::adapter_io::{save_delta, save_lora_adapter, ADAPTER_CONFIG, DELTA_WEIGHTS};
use crate::peft::method::{layer_index, Method, Trainable};
use crate::plan::{estimate, ComputeDevice, Throughput};
use crate::seed::mix;
use crate::train::checkpoint::{checkpoints_dir, load_checkpoint, save_checkpoint, RunState};
use crate::train::config::TrainConfig;
use crate::train::events::{StepStats, TrainEvent, TrainStatus, TrainSummary};
use crate::train::grad_ckpt::GradSink;
use crate::train::history::{
    now, BestCheckpoint, RunMemory, RunRecord, RunStatus, BEST_DIR, RECORD_FILE,
};
use crate::train::optim::{clip_scale, grad_norm, AdamW};
use crate::train::prepare::{prepare_data, prepare_model, validate, PreparedData, RunModel};
use crate::train::run_lock::RunLock;
use crate::train::schedule::lr_at;
use crate::train::step::{batch_loss, evaluate, EvalMode};
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Called with every event and the run's record as it stands after that event, on the thread
/// that runs the loop (a thread of the run's own pool, `runtime::on_own_pool`); the caller's
/// thread waits meanwhile.
pub type OnEvent<'a> = &'a mut (dyn FnMut(&TrainEvent, &RunRecord) + Send);

/// Trains `model` on the file `data`, writing checkpoints, the record and the result into
/// `out`. The model is only read: the base is taken in the storage the method needs (built
/// from its files the first time), so the caller can keep using it for chat and export.
///
/// `resume`: a run folder (or checkpoint folder) to continue exactly where it stopped; it must
/// have been started with the same settings, model and data. Without it `out` must not hold a
/// run already (nothing is overwritten). `cancel` is checked between micro-steps; when set, a
/// checkpoint is written and the summary says `Cancelled`.
///
/// # Errors
/// Bad settings ([`Error::Invalid`]), data problems ([`Error::Data`] with file and line),
/// a checkpoint that does not match this run, I/O failures naming the file. A run that fails
/// after it started is recorded as failed (with the error) in its folder.
pub fn train(
    model: &LoadedModel,
    data: &Path,
    out: &Path,
    cfg: &TrainConfig,
    resume: Option<&Path>,
    cancel: Option<&AtomicBool>,
    on_event: OnEvent<'_>,
) -> Result<TrainSummary> {
    validate(cfg)?;
    // Before the record is touched: a folder another process trains into is refused as it is.
    let _lock = RunLock::acquire(out)?;
    let mut record = begin_record(model, data, out, cfg, resume.is_some())?;
    // What a step frees stays for the next step, and goes back to the kernel after the run.
    let memory = crate::runtime::StepMemory::keep();
    // On a thread pool of its own (`runtime::on_own_pool`): LoRA on SmolLM2 313–320 → 333–348
    // tokens/s in three alternating runs (2 cores).
    let result = crate::runtime::on_own_pool(|| {
        run(model, data, cfg, resume, cancel, &mut record, on_event)
    });
    drop(memory);
    if let Err(e) = &result {
        record.status = RunStatus::Failed;
        record.error = Some(e.into());
        record.finished_at = Some(now());
        let _ = record.save();
    }
    result
}

/// The run's record: continued when resuming, new otherwise — refusing to write over a
/// folder that already holds a run (its adapter and checkpoints would be lost).
fn begin_record(
    model: &LoadedModel,
    data: &Path,
    out: &Path,
    cfg: &TrainConfig,
    resuming: bool,
) -> Result<RunRecord> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // Temporary files of a run that was killed mid-write: the complete files beside them
    // are what counts.
    for dir in [out.to_path_buf(), checkpoints_dir(out), out.join(BEST_DIR)] {
        crate::fsutil::remove_stale_tmp(&dir);
    }
    let existing = [RECORD_FILE, ADAPTER_CONFIG, DELTA_WEIGHTS]
        .iter()
        .map(|f| out.join(f))
        .chain([checkpoints_dir(out)])
        .find(|p| p.exists());
    let mut record = match (resuming, existing) {
        (false, Some(found)) => {
            return Err(Error::invalid(
                "out",
                format!(
                    "{} already holds a run ({} exists); resume it, or train into an empty folder",
                    out.display(),
                    found.display()
                ),
            ))
        }
        (true, _) if out.join(RECORD_FILE).is_file() => RunRecord::load(out)?,
        _ => RunRecord::new(out, &model.source.spec(), data, cfg),
    };
    record.status = RunStatus::Running;
    record.error = None;
    record.finished_at = None;
    record.save()?;
    Ok(record)
}

/// Everything after the record exists; any error is recorded by [`train`].
fn run(
    model: &LoadedModel,
    data: &Path,
    cfg: &TrainConfig,
    resume: Option<&Path>,
    cancel: Option<&AtomicBool>,
    record: &mut RunRecord,
    on_event: OnEvent<'_>,
) -> Result<TrainSummary> {
    let baseline = rss_bytes().unwrap_or(0);
    let prep = prepare_data(model, data, cfg)?;
    let rm = prepare_model(model, cfg)?;
    let packed_rows = packed_rows(&prep.train, cfg)?;
    let units = packed_rows.as_ref().map_or(prep.train.len(), Vec::len);
    let micro_per_epoch = units.div_ceil(cfg.batch_size);
    let total_steps = match cfg.max_steps {
        Some(s) => s,
        None => ((cfg.epochs * micro_per_epoch as f64) / cfg.grad_accum as f64)
            .ceil()
            .max(1.0) as usize,
    };
    let config_json =
        serde_json::to_value(cfg).map_err(|e| Error::invalid("config", e.to_string()))?;
    let mut opt = AdamW::new(&rm.trainable.params, cfg.adamw.clone())?;
    let mut state = RunState {
        step: 0,
        optimizer_t: 0,
        config: config_json,
        losses: Vec::new(),
        eval_losses: Vec::new(),
        model: model.source.describe(),
        data: data.display().to_string(),
        train_examples: prep.train.len(),
    };
    if let Some(path) = resume.filter(|p| !stopped_before_saving(p)) {
        restore(path, &mut state, &mut opt, &rm.trainable)?;
    }
    // The record shows exactly what the checkpoint holds: a resumed run recomputes the steps
    // after it.
    record.step = state.step;
    record.total_steps = total_steps;
    record.losses = state.losses.clone();
    record.eval_losses = state.eval_losses.clone();
    record.best = best_of(&state.eval_losses).filter(|_| record.dir.join(BEST_DIR).is_dir());
    record.storage = Some(rm.storage.clone());
    let memory = memory_plan(model, cfg, &rm, baseline);
    record.memory = Some(memory);
    record.save()?;
    on_event(
        &TrainEvent::Started {
            total_steps,
            start_step: state.step,
            train_examples: prep.train.len(),
            val_examples: prep.val.len(),
            truncated: prep.truncated,
            dropped_untrained: prep.dropped,
            skipped_rows: prep.skipped,
            trainable_params: rm.trainable.count(),
            total_params: rm.decoder.num_parameters(),
            storage: rm.storage.clone(),
            memory,
        },
        record,
    );
    let mut r = Run {
        model,
        cfg,
        prep: &prep,
        rm: &rm,
        pad: pad_id(&model.tokenizer),
        packed_rows,
        micro_per_epoch,
        total_steps,
        baseline,
        out: record.dir.clone(),
    };
    let (status, mean_tokens_per_s) = r.steps(&mut state, &mut opt, cancel, record, on_event)?;
    let p = r.checkpoint(&state, &opt)?;
    on_event(
        &TrainEvent::Checkpoint {
            step: state.step,
            path: p,
        },
        record,
    );
    if status == TrainStatus::Completed {
        save_adapter(&record.dir, model, &rm.trainable, cfg, state.step)?;
    }
    record.status = match status {
        TrainStatus::Completed => RunStatus::Completed,
        TrainStatus::Cancelled => RunStatus::Paused,
    };
    record.finished_at = Some(now());
    record.save()?;
    Ok(TrainSummary {
        status,
        steps: state.step,
        mean_tokens_per_s,
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
        baseline_rss_bytes: baseline,
        trainable_params: rm.trainable.count(),
        storage: rm.storage.clone(),
        losses: state.losses,
        eval_losses: state.eval_losses,
        output: record.dir.clone(),
    })
}

/// True when `path` is a run folder whose run stopped (was killed) before its first complete
/// checkpoint and wrote no adapter: there is nothing to continue from and nothing to lose, so
/// a resume starts at step 0 (a half-written `checkpoints/step-*.partial` is removed by the
/// next checkpoint).
fn stopped_before_saving(path: &Path) -> bool {
    path.join(RECORD_FILE).is_file()
        && !path.join("state.json").exists()
        && !checkpoints_dir(path).join("latest").exists()
        && !path.join(ADAPTER_CONFIG).exists()
        && !path.join(DELTA_WEIGHTS).exists()
}

/// Loads the checkpoint at `path` into the parameters, the optimizer and `state`, refusing one
/// from other settings, another model or other data.
fn restore(
    path: &Path,
    state: &mut RunState,
    opt: &mut AdamW,
    trainable: &Trainable,
) -> Result<()> {
    let ck = load_checkpoint(path)?;
    // The device is where a run computes, not what it computes: a run may resume elsewhere.
    let settings = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("device");
        }
        v
    };
    if settings(&ck.state.config) != settings(&state.config) {
        return Err(Error::invalid(
            "resume",
            format!(
                "{} was started with different settings; resume with the same settings",
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
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    let file = ck.dir.join("optimizer.safetensors").display().to_string();
    opt.load_state(ck.state.optimizer_t, &|n| {
        ck.optimizer.get(n).cloned().ok_or_else(|| Error::Tensor {
            file: file.clone(),
            tensor: n.into(),
            message: "missing".into(),
        })
    })?;
    *state = ck.state;
    Ok(())
}

/// The lowest evaluation so far.
fn best_of(evals: &[(usize, f64)]) -> Option<BestCheckpoint> {
    evals
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(step, eval_loss)| BestCheckpoint { step, eval_loss })
}

/// With `cfg.packing`, the training examples packed into rows of `seq_len` tokens once per
/// run, in a seeded order of their own: the rows are fixed, so an epoch has a fixed number of
/// micro-batches (what makes the step → batch map, and so resume, exact) and each epoch
/// shuffles the rows.
fn packed_rows(train: &[TokenizedExample], cfg: &TrainConfig) -> Result<Option<Vec<Vec<usize>>>> {
    if !cfg.packing {
        return Ok(None);
    }
    let lengths: Vec<usize> = train.iter().map(|e| e.input_ids.len()).collect();
    let order = epoch_order(train.len(), cfg.seed ^ 0x9ACC_ED5E_9ACC_ED5E, u64::MAX);
    Ok(Some(pack_rows(&lengths, &order, cfg.seq_len)?))
}

/// The planned memory of this run, and the part of it already in memory when it began
/// (runtime, tokenizer, and the base weights when the run shares ones built earlier).
fn memory_plan(model: &LoadedModel, cfg: &TrainConfig, rm: &RunModel, baseline: u64) -> RunMemory {
    let est = estimate(
        &model.config,
        &cfg.plan_request(
            ComputeDevice::of(rm.decoder.device()),
            Throughput::default(),
        )
        .for_model(model),
    );
    let mut already = est.bytes_of(&["runtime", "tokenizer"]);
    if rm.shared_base_bytes > 0 {
        already += est.bytes_of(&[
            "base_weights.frozen",
            "base_weights.nf4",
            "base_weights.gguf",
        ]);
    }
    RunMemory {
        baseline_rss_bytes: baseline,
        planned_peak_bytes: est.peak_bytes,
        already_loaded_bytes: already,
        planned_growth_bytes: est.peak_bytes.saturating_sub(already),
        peak_growth_bytes: 0,
    }
}

/// The loop's fixed inputs.
struct Run<'a> {
    model: &'a LoadedModel,
    cfg: &'a TrainConfig,
    prep: &'a PreparedData,
    rm: &'a RunModel,
    pad: u32,
    /// With packing, the rows of example indices every epoch shuffles (see [`packed_rows`]).
    packed_rows: Option<Vec<Vec<usize>>>,
    micro_per_epoch: usize,
    total_steps: usize,
    baseline: u64,
    out: PathBuf,
}

impl Run<'_> {
    /// Optimizer steps until the end or a cancellation; how it ended and this session's mean
    /// tokens/s (real tokens, padding excluded).
    fn steps(
        &mut self,
        state: &mut RunState,
        opt: &mut AdamW,
        cancel: Option<&AtomicBool>,
        record: &mut RunRecord,
        on_event: OnEvent<'_>,
    ) -> Result<(TrainStatus, f64)> {
        let cfg = self.cfg;
        let trainable = &self.rm.trainable;
        // Trainable tensors of each block, for gradient checkpointing.
        let per_layer: Vec<Vec<Tensor>> = (0..self.rm.decoder.layers.len())
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
        let started = Instant::now();
        let session_start = state.step;
        let mut tokens_done = 0usize;
        let tokens_per_s =
            |tokens: usize| tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        while state.step < self.total_steps {
            let step = state.step;
            let Some((loss, grads, tokens)) = self.micro_steps(step, ckpt, &sink, cancel)? else {
                return Ok((TrainStatus::Cancelled, tokens_per_s(tokens_done)));
            };
            tokens_done += tokens;
            let optimizer_span = span(Kind::Optimizer);
            let grad_norm = grad_norm(&grads)?;
            if !loss.is_finite() || !grad_norm.is_finite() {
                return Err(Error::invalid(
                    "training",
                    format!("loss became {loss} at step {} (grad norm {grad_norm}); lower the learning rate", step + 1),
                ));
            }
            let lr = lr_at(
                cfg.scheduler,
                cfg.lr,
                cfg.warmup_steps,
                self.total_steps,
                step,
            );
            opt.step_scaled(&grads, lr, clip_scale(grad_norm, cfg.max_grad_norm))?;
            drop(optimizer_span);
            state.step += 1;
            state.optimizer_t = opt.t;
            state.losses.push((state.step, loss));
            record.step = state.step;
            record.losses.push((state.step, loss));

            let eval_loss = self.maybe_evaluate(state, record, on_event)?;
            let elapsed = started.elapsed().as_secs_f64();
            let done = state.step - session_start;
            let rss = rss_bytes().unwrap_or(0);
            let growth = rss.saturating_sub(self.baseline);
            if let Some(m) = record.memory.as_mut() {
                m.peak_growth_bytes = m.peak_growth_bytes.max(growth);
            }
            on_event(
                &TrainEvent::Step(StepStats {
                    step: state.step,
                    total_steps: self.total_steps,
                    epoch: (state.step * cfg.grad_accum) as f64 / self.micro_per_epoch as f64,
                    loss,
                    eval_loss,
                    lr,
                    grad_norm,
                    tokens_per_s: tokens_per_s(tokens_done),
                    eta_s: elapsed / done as f64 * (self.total_steps - state.step) as f64,
                    rss_bytes: rss,
                    rss_growth_bytes: growth,
                    elapsed_s: elapsed,
                }),
                record,
            );
            let last = state.step == self.total_steps;
            if cfg.save_every > 0 && state.step.is_multiple_of(cfg.save_every) && !last {
                let p = self.checkpoint(state, opt)?;
                record.save()?;
                on_event(
                    &TrainEvent::Checkpoint {
                        step: state.step,
                        path: p,
                    },
                    record,
                );
            }
        }
        Ok((TrainStatus::Completed, tokens_per_s(tokens_done)))
    }

    /// The micro-batches of optimizer step `step`: mean loss, summed gradients and the real
    /// tokens seen; `None` when cancelled before the step completed.
    fn micro_steps(
        &self,
        step: usize,
        ckpt: Option<crate::train::step::Checkpointing<'_>>,
        sink: &GradSink,
        cancel: Option<&AtomicBool>,
    ) -> Result<Option<(f64, Vec<Tensor>, usize)>> {
        let cfg = self.cfg;
        let params = &self.rm.trainable.params;
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let (mut step_loss, mut tokens) = (0.0, 0);
        // Trained dense weights' gradients, accumulated in place over the micro-batches.
        let weight_grads = WeightGrads::default();
        for j in 0..cfg.grad_accum {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Ok(None);
            }
            let k = step * cfg.grad_accum + j;
            let (epoch, pos) = (k / self.micro_per_epoch, k % self.micro_per_epoch);
            let b = self.micro_batch(epoch, pos)?;
            tokens += b.attention_mask.iter().filter(|&&m| m > 0.0).count();
            let ctx = ForwardCtx {
                train: true,
                step_seed: mix(cfg.seed, k as u64),
                weight_grads: Some(weight_grads.clone()),
                bf16_products: cfg.bf16_compute,
                ..Default::default()
            };
            let loss = batch_loss(&self.rm.decoder, &b, &ctx, ckpt)?;
            step_loss += loss.to_scalar::<f32>()? as f64 / cfg.grad_accum as f64;
            let store = (loss / cfg.grad_accum as f64)?.backward()?;
            let mut extra = sink.drain();
            for (slot, (_, var)) in grads.iter_mut().zip(params) {
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
        for (slot, (_, var)) in grads.iter_mut().zip(params) {
            if let Some(w) = weight_grads.take(var.as_tensor().id()) {
                let w = Tensor::from_vec(w, var.shape(), var.device())?;
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + w)?,
                    None => w,
                });
            }
        }
        let grads = grads
            .into_iter()
            .zip(params)
            .map(|(g, (_, v))| g.map(Ok).unwrap_or_else(|| v.as_tensor().zeros_like()))
            .collect::<candle_core::Result<_>>()?;
        Ok(Some((step_loss, grads, tokens)))
    }

    /// Micro-batch `pos` of epoch `epoch`: examples (or packed rows) in the epoch's order.
    fn micro_batch(&self, epoch: usize, pos: usize) -> Result<Batch> {
        let (cfg, train) = (self.cfg, &self.prep.train);
        let units = self.packed_rows.as_ref().map_or(train.len(), Vec::len);
        let order = epoch_order(units, cfg.seed, epoch as u64);
        let idx = &order[pos * cfg.batch_size..((pos + 1) * cfg.batch_size).min(order.len())];
        match &self.packed_rows {
            Some(rows) => {
                let rows: Vec<Vec<&TokenizedExample>> = idx
                    .iter()
                    .map(|&r| rows[r].iter().map(|&i| &train[i]).collect())
                    .collect();
                pack_batch(&rows, self.pad)
            }
            None => {
                let refs: Vec<&TokenizedExample> = idx.iter().map(|&i| &train[i]).collect();
                make_batch(&refs, self.pad)
            }
        }
    }

    /// Validation loss when due (every `eval_every` steps and at the end); a new best is saved
    /// as the run's best checkpoint.
    fn maybe_evaluate(
        &self,
        state: &mut RunState,
        record: &mut RunRecord,
        on_event: OnEvent<'_>,
    ) -> Result<Option<f64>> {
        let cfg = self.cfg;
        let last = state.step == self.total_steps;
        if !((cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every)) || last) {
            return Ok(None);
        }
        let Some(loss) = evaluate(
            &self.rm.decoder,
            &self.prep.val,
            cfg.batch_size,
            self.pad,
            EvalMode {
                bf16_products: cfg.bf16_compute,
                pack_to: cfg.packing.then_some(cfg.seq_len),
            },
        )?
        else {
            return Ok(None);
        };
        state.eval_losses.push((state.step, loss));
        record.eval_losses.push((state.step, loss));
        let best = record.best.is_none_or(|b| loss < b.eval_loss);
        if best {
            let dir = record.dir.join(BEST_DIR);
            replace_dir(&dir, |tmp| {
                save_adapter(tmp, self.model, &self.rm.trainable, cfg, state.step)
            })?;
            record.best = Some(BestCheckpoint {
                step: state.step,
                eval_loss: loss,
            });
        }
        record.save()?;
        on_event(
            &TrainEvent::Eval {
                step: state.step,
                loss,
                best,
            },
            record,
        );
        Ok(Some(loss))
    }

    fn checkpoint(&self, state: &RunState, opt: &AdamW) -> Result<PathBuf> {
        let params: HashMap<String, Tensor> = self
            .rm
            .trainable
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        save_checkpoint(&self.out, state, &params, &opt.state_slices()?)
    }
}

/// Writes the trained parameters into `dir`: a PEFT LoRA adapter, or the changed tensors of a
/// selective/full run.
fn save_adapter(
    dir: &Path,
    model: &LoadedModel,
    trainable: &Trainable,
    cfg: &TrainConfig,
    steps: usize,
) -> Result<()> {
    match &cfg.method {
        Method::Lora(s) | Method::Qlora(s) => save_lora_adapter(
            dir,
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
                "steps": steps,
                "tensors": trainable.params.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            });
            save_delta(dir, trainable, &run)
        }
    }
}
