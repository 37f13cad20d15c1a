//! "Continue on a GPU server", the data side: the exported data re-read by our own loader gives
//! the token ids and loss masks our trainer uses (chat and alpaca inputs) with the split our
//! trainer makes; chat templates matched or passed (TRL's masks checked against ours); selective
//! runs mapped or refused; the folder written atomically.

mod common;
#[path = "scaleout_common/mod.rs"]
mod sc;

use peft_engine::data::batch::split;
use peft_engine::data::formats::{load, LoadOptions};
use peft_engine::data::render::{RenderOptions, Renderer, TokenizedExample, TrainOn};
use peft_engine::model::load::ModelSource;
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::method::{Method, Selective};
use peft_engine::scaleout::{export, Engine, ExportRequest};
use peft_engine::train::{train, TrainConfig, TrainEvent};
use sc::*;
use std::path::Path;

/// What our trainer does with `data`: kept examples (tokenised), split by `batch::split`.
fn our_run(
    m: &LoadedModel,
    data: &Path,
    cfg: &TrainConfig,
) -> (Vec<TokenizedExample>, Vec<TokenizedExample>) {
    let ds = load(data, &LoadOptions::default()).unwrap();
    let r = Renderer::new(
        &m.tokenizer,
        &m.template,
        RenderOptions {
            max_len: cfg.seq_len,
            train_on: cfg.train_on,
        },
    )
    .unwrap();
    let kept: Vec<TokenizedExample> = ds
        .examples
        .iter()
        .map(|ex| r.tokenize(ex).unwrap())
        .filter(|t| t.trained_tokens() > 0 && t.input_ids.len() >= 2)
        .collect();
    let (tr, va) = split(kept.len(), cfg.val_fraction, cfg.seed).unwrap();
    let pick = |idx: &[usize]| idx.iter().map(|&i| kept[i].clone()).collect();
    (pick(&tr), pick(&va))
}

fn reread(m: &LoadedModel, path: &Path, cfg: &TrainConfig) -> Vec<TokenizedExample> {
    let ds = load(path, &LoadOptions::default()).unwrap();
    let r = Renderer::new(
        &m.tokenizer,
        &m.template,
        RenderOptions {
            max_len: cfg.seq_len,
            train_on: cfg.train_on,
        },
    )
    .unwrap();
    ds.examples
        .iter()
        .map(|ex| r.tokenize(ex).unwrap())
        .collect()
}

#[test]
fn exported_data_rereads_to_our_token_ids_masks_and_split() {
    let m = common::bundled();
    let tmp = tempfile::tempdir().unwrap();
    for (kind, data) in [
        ("chat", chat_file(tmp.path())),
        ("alpaca", alpaca_file(tmp.path())),
    ] {
        for train_on in [TrainOn::Assistant, TrainOn::All] {
            let cfg = TrainConfig {
                seq_len: 48,
                val_fraction: 0.3,
                seed: 5,
                train_on,
                ..Default::default()
            };
            let (want_train, want_eval) = our_run(&m, &data, &cfg);
            assert!(!want_eval.is_empty() && want_train.len() > want_eval.len());
            for e in Engine::ALL {
                let out = tmp
                    .path()
                    .join(format!("{kind}-{train_on:?}-{}", e.as_str()));
                let r = do_export(&m, e, &data, &cfg, &out);
                let got_train = reread(&m, &out.join("data/train.jsonl"), &cfg);
                let got_eval = reread(&m, &out.join("data/eval.jsonl"), &cfg);
                assert_eq!(got_train, want_train, "{kind} {e:?}: train ids/masks");
                assert_eq!(got_eval, want_eval, "{kind} {e:?}: eval ids/masks");
                assert_eq!(
                    (r.data.train_examples, r.data.eval_examples),
                    (want_train.len(), want_eval.len())
                );
                // The rows keep their roles as `messages`, which every engine reads natively.
                let first = std::fs::read_to_string(out.join("data/train.jsonl")).unwrap();
                assert!(first.starts_with("{\"messages\":[{"), "{first}");
            }
        }
    }
    // The over-long example is dropped, as our trainer drops it; the counts match a real
    // (one-step) training run's.
    let data = chat_file(tmp.path());
    let cfg = TrainConfig {
        max_steps: Some(1),
        val_fraction: 0.3,
        seed: 5,
        ..Default::default()
    };
    let r = do_export(&m, Engine::Trl, &data, &cfg, &tmp.path().join("count"));
    let mut started = None;
    train(
        &common::bundled(),
        &data,
        &tmp.path().join("run"),
        &cfg,
        None,
        None,
        &mut |e, _| {
            if let TrainEvent::Started {
                train_examples,
                val_examples,
                dropped_untrained,
                ..
            } = e
            {
                started = Some((*train_examples, *val_examples, *dropped_untrained));
            }
        },
    )
    .unwrap();
    assert_eq!(
        started,
        Some((
            r.data.train_examples,
            r.data.eval_examples,
            r.data.dropped_untrained
        ))
    );
    assert_eq!(r.data.dropped_untrained, 1);
}

#[test]
fn chat_templates_are_matched_or_passed_and_trl_masks_match_ours() {
    let m = common::bundled();
    let tmp = tempfile::tempdir().unwrap();
    let data = chat_file(tmp.path());
    let cfg = TrainConfig::default();
    // The bundled model has no template: ours (the fallback) is passed explicitly…
    let out = tmp.path().join("ax");
    do_export(&m, Engine::Axolotl, &data, &cfg, &out);
    let y = yaml(&out.join("axolotl.yaml"));
    assert_eq!(s(&y, "chat_template"), "jinja");
    assert_eq!(
        std::fs::read_to_string(out.join(s(&y, "chat_template_jinja"))).unwrap(),
        m.template.source()
    );
    let ds = &y["datasets"][0];
    // Per dataset too: Axolotl would otherwise default each dataset to `tokenizer_default`.
    assert_eq!(
        (s(ds, "chat_template"), s(ds, "chat_template_jinja")),
        ("jinja", "chat_template.jinja")
    );
    assert_eq!(
        (s(ds, "type"), strs(&ds["roles_to_train"])),
        ("chat_template", vec!["assistant".to_string()])
    );
    // …LLaMA-Factory gets the nearest registered template with its default system prompt off…
    let out = tmp.path().join("lf");
    let r = do_export(&m, Engine::LlamaFactory, &data, &cfg, &out);
    let y = yaml(&out.join("llamafactory.yaml"));
    assert_eq!((s(&y, "template"), s(&y, "default_system")), ("alpaca", ""));
    assert!(
        r.not_carried.iter().any(|g| g.field == "chat template"),
        "the alpaca differences are listed"
    );
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("data/dataset_info.json")).unwrap())
            .unwrap();
    assert_eq!(info["peft_studio_train"]["formatting"], "sharegpt");
    assert_eq!(info["peft_studio_eval"]["file_name"], "eval.jsonl");
    // …and TRL a template with generation markers whose masks equal ours on every conversation
    // (multi-turn ones included): no difference is listed for the assistant-only loss.
    let out = tmp.path().join("trl");
    let r = do_export(&m, Engine::Trl, &data, &cfg, &out);
    let y = yaml(&out.join("trl.yaml"));
    assert!(b(&y, "assistant_only_loss"));
    let jinja = std::fs::read_to_string(out.join(s(&y, "chat_template_path"))).unwrap();
    assert!(jinja.contains("{% generation %}") && jinja.contains(m.template.source()));
    assert!(
        !r.not_carried
            .iter()
            .any(|g| g.field == "train_on assistant"),
        "{:?}",
        r.not_carried
    );
}

#[test]
fn selective_runs_map_where_the_engine_can_and_are_refused_where_it_cannot() {
    let m = common::bundled();
    let tmp = tempfile::tempdir().unwrap();
    let data = chat_file(tmp.path());
    let sel = |w: Selective| TrainConfig {
        method: Method::Selective { what: w },
        ..Default::default()
    };
    let out = tmp.path().join("ax");
    do_export(&m, Engine::Axolotl, &data, &sel(Selective::Norm), &out);
    let y = yaml(&out.join("axolotl.yaml"));
    assert_eq!(
        strs(&y["unfrozen_parameters"]),
        [".+layernorm.weight$", "model.norm.weight$"]
    );
    do_export(
        &m,
        Engine::Axolotl,
        &data,
        &sel(Selective::LastBlocks(2)),
        &out,
    );
    let y = yaml(&out.join("axolotl.yaml"));
    assert_eq!(strs(&y["unfrozen_parameters"]), ["model.layers.(3|4)."]);
    let out = tmp.path().join("lf");
    do_export(
        &m,
        Engine::LlamaFactory,
        &data,
        &sel(Selective::LastBlocks(2)),
        &out,
    );
    let y = yaml(&out.join("llamafactory.yaml"));
    assert_eq!(
        (s(&y, "finetuning_type"), i(&y, "freeze_trainable_layers")),
        ("freeze", 2)
    );
    for (e, w) in [
        (Engine::LlamaFactory, Selective::Norm),
        (Engine::Trl, Selective::LastBlocks(1)),
    ] {
        let req = ExportRequest {
            engine: e,
            source: &ModelSource::Bundled,
            model_config: &m.info.config,
            tokenizer: &m.tokenizer,
            template: &m.template,
            data: &data,
            train: &sel(w),
        };
        let out = tmp.path().join(format!("refused-{}", e.as_str()));
        let err = export(&req, &out).unwrap_err().to_string();
        assert!(err.contains("Axolotl") && !out.exists(), "{err}");
    }
}

#[test]
fn the_folder_is_written_whole_and_never_over_other_files() {
    let m = common::bundled();
    let tmp = tempfile::tempdir().unwrap();
    let data = chat_file(tmp.path());
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "mine").unwrap();
    let req = ExportRequest {
        engine: Engine::Trl,
        source: &ModelSource::Bundled,
        model_config: &m.info.config,
        tokenizer: &m.tokenizer,
        template: &m.template,
        data: &data,
        train: &TrainConfig::default(),
    };
    let err = export(&req, &busy).unwrap_err().to_string();
    assert!(err.contains("not an earlier export"), "{err}");
    assert_eq!(
        std::fs::read_to_string(busy.join("notes.txt")).unwrap(),
        "mine"
    );
    // An earlier export is replaced, with no leftovers of the other engine's files.
    let out = tmp.path().join("out");
    do_export(&m, Engine::Axolotl, &data, &TrainConfig::default(), &out);
    let r = do_export(&m, Engine::Trl, &data, &TrainConfig::default(), &out);
    assert!(!out.join("axolotl.yaml").exists() && out.join("trl.yaml").exists());
    let mut on_disk: Vec<String> = walk(&out);
    let mut listed = r.files.clone();
    on_disk.sort();
    listed.sort();
    assert_eq!(on_disk, listed);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary folders left behind");
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out
}
