//! The training recipe on the bundled model: each method learns, only trainable tensors
//! change, checkpointing gives identical gradients, and resume is exact.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{bundled, decoder, text_dataset, STORIES};
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::peft::method::{apply_method, LoraSettings, Method, Selective};
use peft_engine::train::{train, TrainConfig, TrainEvent, TrainStatus};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

fn config(method: Method, steps: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        method,
        seq_len: 64,
        batch_size: 2,
        max_steps: Some(steps),
        lr,
        val_fraction: 0.0,
        warmup_steps: 0,
        ..Default::default()
    }
}

fn lora(rank: usize, dropout: f32) -> Method {
    Method::Lora(LoraSettings {
        rank,
        alpha: 2.0 * rank as f64,
        dropout,
        ..Default::default()
    })
}

fn snapshot(m: &mut peft_engine::model::decoder::Decoder) -> HashMap<String, Tensor> {
    m.named_tensors_mut()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy().unwrap()))
        .collect()
}

#[test]
fn every_method_overfits_a_handful_of_examples() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_dataset(dir.path(), &STORIES[..4]);
    for (method, lr) in [
        (lora(16, 0.0), 5e-3),
        (Method::Full, 1e-2),
        (
            Method::Selective {
                what: Selective::LastBlocks(2),
            },
            1e-2,
        ),
    ] {
        let name = method.name();
        let out = dir.path().join(name);
        let s = train(
            &bundled(),
            &data,
            &out,
            &config(method, 60, lr),
            None,
            None,
            &mut |_, _| {},
        )
        .unwrap();
        let first = s.losses[0].1;
        let last = s.losses.last().unwrap().1;
        assert_eq!(s.status, TrainStatus::Completed);
        assert!(
            last < 0.35 * first && last < 1.0,
            "{name}: loss {first:.3} → {last:.3}"
        );
    }
}

#[test]
fn norm_only_tuning_lowers_the_loss_and_bitfit_on_llama_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_dataset(dir.path(), &STORIES[..4]);
    let s = train(
        &bundled(),
        &data,
        &dir.path().join("norm"),
        &config(
            Method::Selective {
                what: Selective::Norm,
            },
            30,
            2e-2,
        ),
        None,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(s.losses.last().unwrap().1 < s.losses[0].1 * 0.9);
    assert_eq!(s.trainable_params, 64 * (2 * 5 + 1));
    let err = train(
        &bundled(),
        &data,
        &dir.path().join("bias"),
        &config(
            Method::Selective {
                what: Selective::Bias,
            },
            5,
            1e-3,
        ),
        None,
        None,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("no bias"), "{err}");
}

#[test]
fn only_trainable_tensors_change_and_selective_touches_only_its_selection() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_dataset(dir.path(), &STORIES);
    for (method, expect) in [
        (
            Method::Selective {
                what: Selective::Norm,
            },
            "layernorm|model.norm",
        ),
        (
            Method::Selective {
                what: Selective::LastBlocks(1),
            },
            "model.layers.4.",
        ),
        (
            Method::Selective {
                what: Selective::Modules("mlp.down_proj".into()),
            },
            "down_proj",
        ),
    ] {
        let before = snapshot(&mut decoder());
        let out = dir
            .path()
            .join(format!("{:?}", method).replace(['"', ' ', '{', '}', '(', ')', ':'], ""));
        train(
            &bundled(),
            &data,
            &out,
            &config(method.clone(), 2, 1e-2),
            None,
            None,
            &mut |_, _| {},
        )
        .unwrap();
        // Apply the written delta to a fresh model and compare tensor by tensor.
        let mut after = decoder();
        peft_engine::peft::adapter_io::apply_adapter(&mut after, &out).unwrap();
        let after = snapshot(&mut after);
        for (name, t) in &before {
            let changed = (t - &after[name])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0;
            let selected = expect.split('|').any(|e| name.contains(e));
            assert_eq!(changed, selected, "{method:?}: {name} changed={changed}");
        }
    }
}

#[test]
fn fresh_lora_adapter_leaves_the_output_unchanged() {
    let mut m = decoder();
    let ids = Tensor::new(&[[1u32, 403, 407, 261, 378, 432]], &Device::Cpu).unwrap();
    let before = m.forward(&ids, &ForwardCtx::default()).unwrap();
    let t = apply_method(&mut m, &lora(4, 0.0), 1).unwrap();
    assert_eq!(t.params.len(), 2 * 7 * 5);
    let after = m.forward(&ids, &ForwardCtx::default()).unwrap();
    let d = (before - after)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
}

/// Gradients of every LoRA tensor, with and without per-layer checkpointing.
fn lora_grads(checkpointing: bool) -> Vec<(String, Vec<f32>)> {
    let mut m = decoder();
    let t = apply_method(&mut m, &lora(4, 0.1), 3).unwrap();
    // Non-zero B so A's gradient is non-zero too.
    for (name, v) in &t.params {
        if name.contains("lora_B") {
            let n = v.elem_count();
            let vals: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2)
                .collect();
            let r = Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap();
            v.set(&r).unwrap();
        }
    }
    let model = std::sync::Arc::new(m);
    let ids = Tensor::new(&[[1u32, 403, 407, 261, 378, 432, 383, 286]], &Device::Cpu).unwrap();
    let ctx = ForwardCtx {
        train: true,
        step_seed: 9,
        ..Default::default()
    };
    let sink = peft_engine::train::grad_ckpt::GradSink::default();
    let logits = if checkpointing {
        let per_layer: Vec<Vec<Tensor>> = (0..5)
            .map(|n| {
                t.params
                    .iter()
                    .filter(|(name, _)| name.starts_with(&format!("model.layers.{n}.")))
                    .map(|(_, v)| v.as_tensor().clone())
                    .collect()
            })
            .collect();
        let mut x = model.embed(&ids).unwrap();
        for (n, params) in per_layer.iter().enumerate() {
            x = peft_engine::train::grad_ckpt::checkpointed_block(
                &model,
                n,
                &x,
                &ctx,
                params.clone(),
                &sink,
            )
            .unwrap();
        }
        model.logits(&model.final_norm(&x).unwrap(), &ctx).unwrap()
    } else {
        model.forward(&ids, &ctx).unwrap()
    };
    let loss = logits.sqr().unwrap().mean_all().unwrap();
    let store = loss.backward().unwrap();
    let mut extra = sink.drain();
    t.params
        .iter()
        .map(|(name, v)| {
            let g = store
                .get(v.as_tensor())
                .cloned()
                .or_else(|| extra.remove(&v.as_tensor().id()))
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            (
                name.clone(),
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_adapter_tensor_gets_a_gradient_and_checkpointing_gives_identical_ones() {
    let plain = lora_grads(false);
    let ckpt = lora_grads(true);
    for ((name, a), (_, b)) in plain.iter().zip(&ckpt) {
        assert!(a.iter().any(|x| *x != 0.0), "{name}: zero gradient");
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let scale = a.iter().map(|x| x.abs()).fold(0f32, f32::max);
        assert!(
            d <= 1e-5 * scale.max(1e-3),
            "{name}: checkpointed gradient differs by {d}"
        );
    }
}

#[test]
fn resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_dataset(dir.path(), &STORIES);
    let mut cfg = config(lora(4, 0.1), 20, 5e-3);
    cfg.batch_size = 2;
    cfg.grad_accum = 2;
    cfg.warmup_steps = 3;
    cfg.val_fraction = 0.2;
    cfg.eval_every = 5;
    let full = train(
        &bundled(),
        &data,
        &dir.path().join("a"),
        &cfg,
        None,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(full.losses.len(), 20);

    let out = dir.path().join("b");
    let cancel = AtomicBool::new(false);
    let first = train(
        &bundled(),
        &data,
        &out,
        &cfg,
        None,
        Some(&cancel),
        &mut |e, _| {
            if let TrainEvent::Step(s) = e {
                if s.step == 10 {
                    cancel.store(true, Ordering::SeqCst);
                }
            }
        },
    )
    .unwrap();
    assert_eq!(first.status, TrainStatus::Cancelled);
    assert_eq!(first.steps, 10);
    assert!(
        !out.join("adapter_model.safetensors").exists(),
        "no adapter from a cancelled run"
    );
    let second = train(
        &bundled(),
        &data,
        &out,
        &cfg,
        Some(&out),
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(second.status, TrainStatus::Completed);
    assert_eq!(second.losses.len(), 20);
    for ((s1, a), (s2, b)) in full.losses.iter().zip(&second.losses) {
        assert_eq!(s1, s2);
        assert!((a - b).abs() < 1e-6, "step {s1}: {a} vs {b}");
    }
    for ((_, a), (_, b)) in full.eval_losses.iter().zip(&second.eval_losses) {
        assert!((a - b).abs() < 1e-6);
    }
    // Resuming with other settings is refused, not silently mixed.
    let mut other = cfg.clone();
    other.lr = 1e-3;
    let err = train(
        &bundled(),
        &data,
        &dir.path().join("c"),
        &other,
        Some(&out),
        None,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("different settings"), "{err}");
}

#[test]
fn crash_during_a_checkpoint_write_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_dataset(dir.path(), &STORIES);
    let out = dir.path().join("run");
    let mut cfg = config(lora(4, 0.0), 4, 1e-2);
    cfg.save_every = 2;
    train(&bundled(), &data, &out, &cfg, None, None, &mut |_, _| {}).unwrap();
    // Simulate a crash while writing step 6: a partial folder with a truncated file.
    let partial = out.join("checkpoints/step-000006.partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("trainable.safetensors"), b"\x10\x00garbage").unwrap();
    let ck = peft_engine::train::checkpoint::load_checkpoint(&out).unwrap();
    assert_eq!(ck.state.step, 4);
    assert_eq!(ck.trainable.len(), 70);
    let _ = DType::F32;
}

/// The loop runs on a thread of the pool (so each step's parallel products start on its own
/// thread instead of waking the pool from outside), every event reaches the caller's callback
/// there, and the caller's thread gets the summary back.
#[test]
fn the_loop_runs_on_the_thread_pool_and_reports_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_dataset(dir.path(), &STORIES);
    let cfg = config(lora(4, 0.0), 3, 1e-2);
    let caller = std::thread::current().id();
    let (mut steps, mut off_pool) = (0, 0);
    let s = train(
        &bundled(),
        &data,
        &dir.path().join("run"),
        &cfg,
        None,
        None,
        &mut |e, _| {
            if rayon::current_thread_index().is_none() || std::thread::current().id() == caller {
                off_pool += 1;
            }
            if matches!(e, TrainEvent::Step(_)) {
                steps += 1;
            }
        },
    )
    .unwrap();
    assert_eq!((steps, off_pool), (3, 0));
    assert_eq!(s.status, TrainStatus::Completed);
}
