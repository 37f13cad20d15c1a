//! Bringing an adapter trained elsewhere back as a run: the record says who trained it and with
//! what settings, the run's adapter gives Python `peft`'s logits in chat and in a merged export
//! (fixtures written by `scripts/make_scaleout_fixtures.py`), a 4-bit-trained adapter is used
//! over an NF4 base, the trainer's loss log becomes the run's curves, an adapter that came back
//! to a `peft recipe export` folder takes that run's settings, and bad input writes nothing.

mod common;

use candle_core::{Device, Tensor};
use peft_engine::export::merge::{write_merged, ExportDtype};
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::decoder::{Decoder, LoadOptions};
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::adapter_io::apply_adapter;
use peft_engine::peft::method::Method;
use peft_engine::train::history::{self, RunOrigin, RunStatus, WhichAdapter};
use peft_engine::train::import::import_adapter;
use peft_engine::train::tuned::{adapter_base_storage, with_adapter};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    assert!(
        p.join("adapter_config.json").exists(),
        "fixture {} is missing: it is committed; regenerate with scripts/make_scaleout_fixtures.py",
        p.display()
    );
    p
}

/// A copy of fixture `name` in `dir` (to add the files a trainer leaves next to it).
fn copy_fixture(name: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap().flatten() {
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    dir.to_path_buf()
}

/// PEFT's logits for the fixture (token ids, position, logits).
fn reference(dir: &Path) -> (Vec<u32>, usize, Vec<f32>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference_logits.json")).unwrap())
            .unwrap();
    let nums = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    (
        nums("token_ids").iter().map(|&x| x as u32).collect(),
        v["position"].as_u64().unwrap() as usize,
        nums("logits").iter().map(|&x| x as f32).collect(),
    )
}

fn logits_at(m: &Decoder, ids: &[u32], pos: usize) -> Vec<f32> {
    let t = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&t, &ForwardCtx::default())
        .unwrap()
        .squeeze(0)
        .unwrap()
        .get(pos)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn an_imported_adapter_is_a_run_that_chats_and_merges_like_peft() {
    let tmp = tempfile::tempdir().unwrap();
    // A TRL output folder: the adapter, its model card (tags say `trl`) and the loss log.
    let src = copy_fixture("scaleout_modules_to_save", &tmp.path().join("trl-out"));
    std::fs::write(
        src.join("README.md"),
        "---\nlibrary_name: peft\ntags:\n- trl\n- sft\n---\n# model card\n",
    )
    .unwrap();
    std::fs::write(
        src.join("trainer_state.json"),
        r#"{"global_step": 3, "max_steps": 3, "log_history": [
            {"epoch": 0.3, "loss": 2.5, "step": 1}, {"epoch": 0.6, "loss": 2.25, "step": 2},
            {"epoch": 0.6, "eval_loss": 2.4, "step": 2}, {"epoch": 1.0, "loss": 2.0, "step": 3},
            {"epoch": 1.0, "step": 3, "train_loss": 2.25, "train_runtime": 1.0}]}"#,
    )
    .unwrap();
    let model = common::bundled();
    let runs = tmp.path().join("runs");
    let r = import_adapter(&model, &src, &runs.join("imported")).unwrap();

    // The record: completed, trained elsewhere with TRL, the adapter's settings, its log.
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(r.model, "demo");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    let Method::Lora(l) = &r.config.method else {
        panic!("{:?}", r.config.method)
    };
    assert_eq!(l.rank as u64, cfg["r"].as_u64().unwrap());
    assert_eq!(l.alpha, cfg["lora_alpha"].as_f64().unwrap());
    assert_eq!(l.rslora, cfg["use_rslora"].as_bool().unwrap());
    let RunOrigin::Imported {
        engine,
        settings,
        source,
        from_recipe,
        ..
    } = &r.origin
    else {
        panic!("{:?}", r.origin)
    };
    assert_eq!(engine.as_deref(), Some("trl"));
    assert_eq!(source, &src.display().to_string());
    assert!(!from_recipe);
    assert!(settings.contains("fully trained"), "{settings}");
    assert_eq!(r.losses, vec![(1, 2.5), (2, 2.25), (3, 2.0)]);
    assert_eq!(r.eval_losses, vec![(2, 2.4)]);
    assert_eq!((r.step, r.total_steps), (3, 3));

    // It is in the history like a run of ours, and reads back the same (timestamps through
    // JSON to the microsecond).
    let listed = history::list(&runs, &[]);
    assert_eq!(listed.len(), 1);
    assert!((listed[0].finished_at.unwrap() - r.finished_at.unwrap()).abs() < 1e-3);
    let same_times = history::RunRecord {
        started_at: r.started_at,
        finished_at: r.finished_at,
        ..listed[0].clone()
    };
    assert_eq!(same_times, r);

    // Chat: the run's adapter over the opened model gives PEFT's logits.
    let (ids, pos, want) = reference(&fixture("scaleout_modules_to_save"));
    let dir = r.adapter_dir(WhichAdapter::Final).unwrap();
    assert_eq!(adapter_base_storage(&dir), LoadOptions::default());
    let tuned = with_adapter(&model, &dir).unwrap();
    let d = max_diff(&logits_at(&tuned, &ids, pos), &want);
    assert!(d < 1e-4, "chat logits differ from PEFT's by {d}");

    // Merged export, opened again as a plain model: the same logits.
    let mut m = model.build_weights(&LoadOptions::default()).unwrap();
    apply_adapter(&mut m, &dir).unwrap();
    let merged = tmp.path().join("merged");
    write_merged(&model, &mut m, &merged, ExportDtype::F32).unwrap();
    let reopened = LoadedModel::open(
        &ModelSource::parse(merged.to_str().unwrap()).unwrap(),
        OpenOptions::default(),
    )
    .unwrap();
    let d = max_diff(
        &logits_at(&reopened.chat_weights().unwrap(), &ids, pos),
        &want,
    );
    assert!(d < 1e-4, "merged logits differ from PEFT's by {d}");
}

#[test]
fn an_adapter_trained_over_a_4bit_base_is_used_over_nf4() {
    let tmp = tempfile::tempdir().unwrap();
    // LLaMA-Factory's output folder says `quantization_bit: 4` in its training_args.yaml.
    let src = copy_fixture("scaleout_no_prefix", &tmp.path().join("lf-out"));
    std::fs::write(
        src.join("training_args.yaml"),
        "finetuning_type: lora\nquantization_bit: 4\n",
    )
    .unwrap();
    let model = common::bundled();
    let r = import_adapter(&model, &src, &tmp.path().join("run")).unwrap();
    assert!(
        matches!(r.config.method, Method::Qlora(_)),
        "{:?}",
        r.config.method
    );
    assert!(
        matches!(&r.origin, RunOrigin::Imported { engine: Some(e), .. } if e == "llamafactory")
    );
    assert!(r.losses.is_empty(), "no log in the folder, no curve");
    // Chat uses NF4 block linears with the adapter on them, as the run trained.
    assert_eq!(
        adapter_base_storage(&r.dir),
        r.config.method.base_storage(r.config.weight_dtype)
    );
    let tuned = with_adapter(&model, &r.dir).unwrap();
    let s = tuned.storage_report();
    assert!(s.nf4_linears > 0 && s.adapted_linears > 0, "{s:?}");
    // Same adapter over NF4 as applying it by hand to an NF4 decoder.
    let (ids, pos, _) = reference(&src);
    let mut by_hand = common::nf4_decoder();
    apply_adapter(&mut by_hand, &src).unwrap();
    let d = max_diff(
        &logits_at(&tuned, &ids, pos),
        &logits_at(&by_hand, &ids, pos),
    );
    assert_eq!(d, 0.0);
}

#[test]
fn an_adapter_back_in_its_export_folder_takes_the_exported_runs_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = tmp.path().join("export");
    std::fs::create_dir_all(&exp).unwrap();
    // What `peft recipe export` writes next to the engine's output folder.
    let mut sent = peft_engine::train::TrainConfig::demo();
    sent.lr = 1.5e-4;
    sent.seed = 7;
    std::fs::write(
        exp.join(peft_engine::peft::adapter_summary::RECIPE_MANIFEST),
        serde_json::json!({
            "engine": "axolotl", "model": "demo", "data": "/data/chat.jsonl",
            "method": "lora", "train_config": sent,
        })
        .to_string(),
    )
    .unwrap();
    let src = copy_fixture("scaleout_no_prefix", &exp.join("output"));
    let r = import_adapter(&common::bundled(), &src, &tmp.path().join("run")).unwrap();
    assert!(
        matches!(&r.origin, RunOrigin::Imported { engine: Some(e), from_recipe: true, .. } if e == "axolotl")
    );
    assert_eq!(r.data, "/data/chat.jsonl");
    assert_eq!((r.config.lr, r.config.seed), (1.5e-4, 7));
    assert_eq!(r.config.seq_len, sent.seq_len);
    // The method is the adapter's own (what was trained), not the one sent.
    let Method::Lora(l) = &r.config.method else {
        panic!()
    };
    assert_eq!((l.rank, l.targets.clone()), (2, vec!["q_proj".to_string()]));
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::bundled();
    // Pickled weights: refused by name, with the conversion command.
    let pickled = tmp.path().join("pickled");
    std::fs::create_dir_all(&pickled).unwrap();
    std::fs::copy(
        fixture("scaleout_no_prefix").join("adapter_config.json"),
        pickled.join("adapter_config.json"),
    )
    .unwrap();
    std::fs::write(pickled.join("adapter_model.bin"), b"not opened").unwrap();
    let out = tmp.path().join("run1");
    let e = import_adapter(&model, &pickled, &out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("adapter_model.bin") && e.contains("safetensors"),
        "{e}"
    );
    assert!(!out.exists());
    // A tensor for a module the model lacks: named, nothing written.
    let src = copy_fixture("scaleout_no_prefix", &tmp.path().join("bad"));
    let t = Tensor::zeros((2, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut w =
        peft_engine::fsutil::load_safetensors(&src.join("adapter_model.safetensors")).unwrap();
    w.insert("model.layers.99.self_attn.q_proj.lora_A.weight".into(), t);
    peft_engine::fsutil::save_safetensors_atomic(&src.join("adapter_model.safetensors"), &w)
        .unwrap();
    let e = import_adapter(&model, &src, &out).unwrap_err().to_string();
    assert!(e.contains("layers.99"), "{e}");
    assert!(!out.exists());
    // An output folder that already holds files is not overwritten.
    let full = tmp.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep.txt"), b"mine").unwrap();
    let e = import_adapter(&model, &fixture("scaleout_no_prefix"), &full)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already holds files"), "{e}");
    assert_eq!(std::fs::read(full.join("keep.txt")).unwrap(), b"mine");
}
