//! "Continue on a GPU server": golden tests of the Axolotl, LLaMA-Factory and TRL configs for
//! LoRA, QLoRA (rsLoRA, chosen layers) and full runs — each written file is parsed back with a
//! YAML parser and every mapped value compared with our settings — and the exported data re-read
//! by our own loader giving the token ids and loss masks our trainer uses (chat and alpaca
//! inputs), with the split our trainer makes.

mod common;

use peft_engine::data::batch::split;
use peft_engine::data::formats::{load, LoadOptions};
use peft_engine::data::render::{RenderOptions, Renderer, TokenizedExample, TrainOn};
use peft_engine::model::load::ModelSource;
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::method::{LoraSettings, Method, Selective};
use peft_engine::scaleout::{export, Engine, ExportReport, ExportRequest};
use peft_engine::train::schedule::Scheduler;
use peft_engine::train::{train, TrainConfig, TrainEvent};
use serde_yaml::Value;
use std::path::{Path, PathBuf};

fn chat_file(dir: &Path) -> PathBuf {
    let rows = [
        r#"{"messages":[{"role":"system","content":"You tell short stories."},{"role":"user","content":"Tell me about a cat."},{"role":"assistant","content":"The cat sat in the sun and was happy."}]}"#,
        r#"{"messages":[{"role":"user","content":"Who is Tom?"},{"role":"assistant","content":"Tom is a boy with a red kite."},{"role":"user","content":"What did he do?"},{"role":"assistant","content":"He flew it high in the sky with his dad."}]}"#,
        r#"{"messages":[{"role":"user","content":"Say hi."},{"role":"assistant","content":"Hi! I am a little bird."}]}"#,
        r#"{"messages":[{"role":"user","content":"What did Sue find?"},{"role":"assistant","content":"Sue found a small cat under a tree."}]}"#,
        r#"{"messages":[{"role":"user","content":"Where did the dog run?"},{"role":"assistant","content":"The big dog ran to the park to play."},{"role":"user","content":"Then?"},{"role":"assistant","content":"It played with the ball all day."}]}"#,
        r#"{"messages":[{"role":"user","content":"What did Lily bake?"},{"role":"assistant","content":"Lily baked a cake with her mom."}]}"#,
        r#"{"messages":[{"role":"user","content":"Who built a tower?"},{"role":"assistant","content":"Ben and Mia built a tall tower of blocks."}]}"#,
        r#"{"messages":[{"role":"user","content":"Sing."},{"role":"assistant","content":"A little bird sang a happy song."}]}"#,
        r#"{"messages":[{"role":"user","content":"Tell me more."},{"role":"assistant","content":""}]}"#,
        r#"{"messages":[{"role":"user","content":"What is the sky?"},{"role":"assistant","content":"The sky is big and blue."}]}"#,
    ];
    // A prompt longer than any seq_len used here: its reply is cut off, so the example teaches
    // nothing and our trainer drops it.
    let long = serde_json::json!({"messages": [
        {"role": "user", "content": "tell me a story ".repeat(150)},
        {"role": "assistant", "content": "No."}
    ]})
    .to_string();
    let p = dir.join("chat.jsonl");
    std::fs::write(&p, rows.join("\n") + "\n" + &long + "\n").unwrap();
    p
}

fn alpaca_file(dir: &Path) -> PathBuf {
    let mut body = String::new();
    for (i, s) in common::STORIES.iter().enumerate() {
        let input = if i % 2 == 0 { "" } else { "Make it short." };
        body.push_str(
            &serde_json::json!({"instruction": format!("Tell story number {i}."), "input": input, "output": s})
                .to_string(),
        );
        body.push('\n');
    }
    let p = dir.join("alpaca.jsonl");
    std::fs::write(&p, body).unwrap();
    p
}

fn lora(
    rank: usize,
    alpha: f64,
    targets: &[&str],
    layers: Option<Vec<usize>>,
    rslora: bool,
) -> LoraSettings {
    LoraSettings {
        rank,
        alpha,
        dropout: 0.1,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        layers,
        rslora,
    }
}

/// Three runs: plain LoRA; QLoRA with rsLoRA on chosen blocks; full fine-tuning.
fn runs() -> Vec<(&'static str, TrainConfig)> {
    let mut a = TrainConfig {
        method: Method::Lora(lora(8, 16.0, &["q_proj", "v_proj"], None, false)),
        seq_len: 128,
        batch_size: 2,
        grad_accum: 3,
        lr: 2e-4,
        scheduler: Scheduler::Cosine,
        warmup_steps: 2,
        epochs: 3.0,
        eval_every: 4,
        seed: 7,
        grad_checkpointing: true,
        max_grad_norm: 0.5,
        val_fraction: 0.2,
        ..Default::default()
    };
    a.adamw.weight_decay = 0.01;
    let b = TrainConfig {
        method: Method::Qlora(lora(16, 32.0, &["all-linear"], Some(vec![3, 4]), true)),
        scheduler: Scheduler::Linear,
        max_steps: Some(11),
        lr: 1e-4,
        seed: 123,
        ..Default::default()
    };
    let c = TrainConfig {
        method: Method::Full,
        scheduler: Scheduler::Constant,
        lr: 2e-5,
        val_fraction: 0.0,
        ..Default::default()
    };
    vec![("lora", a), ("qlora", b), ("full", c)]
}

fn do_export(
    m: &LoadedModel,
    engine: Engine,
    data: &Path,
    cfg: &TrainConfig,
    out: &Path,
) -> ExportReport {
    let req = ExportRequest {
        engine,
        source: &ModelSource::Bundled,
        model_config: &m.info.config,
        tokenizer: &m.tokenizer,
        template: &m.template,
        data,
        train: cfg,
    };
    export(&req, out).unwrap_or_else(|e| panic!("{engine:?}: {e}"))
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("`{k}` is not a number: {:?}", v[k]))
}
fn i(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("`{k}` is not an integer: {:?}", v[k]))
}
fn b(v: &Value, k: &str) -> bool {
    v[k].as_bool()
        .unwrap_or_else(|| panic!("`{k}` is not a boolean: {:?}", v[k]))
}
fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("`{k}` is not a string: {:?}", v[k]))
}
fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Every key the report says it mapped is in the file with the value the report shows.
fn report_matches_file(r: &ExportReport, y: &Value) {
    for m in &r.mapped {
        let v = &y[m.theirs.as_str()];
        assert!(
            !v.is_null() || m.value == "null",
            "{:?}: `{}` missing from the file",
            r.engine,
            m.theirs
        );
        let shown = match v {
            Value::String(x) => x.clone(),
            Value::Sequence(_) | Value::Mapping(_) => continue,
            other => serde_yaml::to_string(other).unwrap().trim().to_string(),
        };
        if m.value.starts_with("data/") {
            continue;
        }
        let same = shown == m.value
            || shown
                .parse::<f64>()
                .ok()
                .zip(m.value.parse::<f64>().ok())
                .is_some_and(|(a, b)| a == b);
        assert!(
            same,
            "{:?}: `{}` is {shown} in the file, {} in the report",
            r.engine, m.theirs, m.value
        );
    }
    // Every setting of the run is accounted for: mapped or listed as a difference.
    let ours: Vec<&str> = r.mapped.iter().map(|m| m.ours.as_str()).collect();
    for need in [
        "model",
        "method",
        "seq_len",
        "batch_size",
        "grad_accum",
        "epochs",
        "lr",
        "scheduler",
        "warmup_steps",
        "seed",
        "grad_checkpointing",
        "max_grad_norm",
        "weight_decay",
        "optimizer",
        "adamw.beta1",
        "adamw.beta2",
        "adamw.eps",
    ] {
        assert!(
            ours.contains(&need),
            "{:?}: `{need}` not mapped ({ours:?})",
            r.engine
        );
    }
}

fn check_common(e: Engine, y: &Value, cfg: &TrainConfig, r: &ExportReport) {
    let key = |ax: &'static str, lf: &'static str, trl: &'static str| match e {
        Engine::Axolotl => ax,
        Engine::LlamaFactory => lf,
        Engine::Trl => trl,
    };
    assert_eq!(
        s(
            y,
            key("base_model", "model_name_or_path", "model_name_or_path")
        ),
        "./model"
    );
    assert_eq!(f(y, "learning_rate"), cfg.lr);
    assert_eq!(
        i(y, key("sequence_len", "cutoff_len", "max_length")),
        cfg.seq_len as u64
    );
    assert_eq!(
        i(
            y,
            key(
                "micro_batch_size",
                "per_device_train_batch_size",
                "per_device_train_batch_size"
            )
        ),
        cfg.batch_size as u64
    );
    assert_eq!(i(y, "gradient_accumulation_steps"), cfg.grad_accum as u64);
    assert_eq!(
        f(y, key("num_epochs", "num_train_epochs", "num_train_epochs")),
        cfg.epochs
    );
    match cfg.max_steps {
        Some(m) => assert_eq!(i(y, "max_steps"), m as u64),
        None => assert!(y["max_steps"].is_null()),
    }
    assert_eq!(i(y, "warmup_steps"), cfg.warmup_steps as u64);
    assert_eq!(i(y, "seed"), cfg.seed);
    assert_eq!(f(y, "weight_decay"), cfg.adamw.weight_decay);
    assert_eq!(f(y, "max_grad_norm"), cfg.max_grad_norm);
    assert_eq!(
        (f(y, "adam_beta1"), f(y, "adam_beta2"), f(y, "adam_epsilon")),
        (cfg.adamw.beta1, cfg.adamw.beta2, cfg.adamw.eps)
    );
    match e {
        Engine::LlamaFactory => assert_eq!(
            b(y, "disable_gradient_checkpointing"),
            !cfg.grad_checkpointing
        ),
        _ => assert_eq!(b(y, "gradient_checkpointing"), cfg.grad_checkpointing),
    }
    // The schedule: ours decays cosine to 10 % of the peak.
    let (sk, kw) = (
        key("lr_scheduler", "lr_scheduler_type", "lr_scheduler_type"),
        &y["lr_scheduler_kwargs"],
    );
    match (cfg.scheduler, e) {
        (Scheduler::Cosine, Engine::Axolotl) => {
            assert_eq!(s(y, sk), "cosine");
            assert_eq!(f(y, "cosine_min_lr_ratio"), 0.1);
        }
        (Scheduler::Cosine, _) => {
            assert_eq!(s(y, sk), "cosine_with_min_lr");
            assert_eq!(f(kw, "min_lr_rate"), 0.1);
        }
        (Scheduler::Linear, _) => assert_eq!(s(y, sk), "linear"),
        (Scheduler::Constant, _) => assert_eq!(s(y, sk), "constant_with_warmup"),
    }
    // Validation: our split written out; every `eval_every` steps, or once at the end.
    if r.data.eval_examples > 0 {
        let want = if cfg.eval_every > 0 {
            cfg.eval_every
        } else {
            r.total_steps
        };
        assert_eq!(i(y, "eval_steps"), want as u64);
    } else {
        assert!(y["eval_steps"].is_null());
    }
}

fn check_method(e: Engine, y: &Value, cfg: &TrainConfig) {
    match (&cfg.method, e) {
        (Method::Lora(l) | Method::Qlora(l), _) => {
            let q = matches!(cfg.method, Method::Qlora(_));
            let targets = l.resolved_targets().unwrap();
            let (rk, tk, rs) = match e {
                Engine::Axolotl => ("lora_r", "lora_target_modules", "peft_use_rslora"),
                Engine::LlamaFactory => ("lora_rank", "lora_target", "use_rslora"),
                Engine::Trl => ("lora_r", "lora_target_modules", "use_rslora"),
            };
            assert_eq!(i(y, rk), l.rank as u64);
            assert_eq!(f(y, "lora_alpha"), l.alpha);
            // The f32 setting written as the decimal the user gave (0.1, not 0.10000000149).
            assert_eq!(f(y, "lora_dropout") as f32, l.dropout);
            assert_eq!(f(y, "lora_dropout"), 0.1);
            assert_eq!(b(y, rs), l.rslora);
            match (e, &l.layers) {
                (Engine::Axolotl, layers) => {
                    assert_eq!(strs(&y[tk]), targets);
                    let got: Option<Vec<usize>> = y["peft_layers_to_transform"]
                        .as_sequence()
                        .map(|s| s.iter().map(|x| x.as_u64().unwrap() as usize).collect());
                    assert_eq!(&got, layers);
                }
                (Engine::LlamaFactory, _) => {
                    assert_eq!(s(y, tk).split(',').collect::<Vec<_>>(), targets)
                }
                (Engine::Trl, None) => assert_eq!(strs(&y[tk]), targets),
                (Engine::Trl, Some(layers)) => {
                    // One regex PEFT full-matches against module names: check it means our set.
                    let re = strs(&y[tk]);
                    assert_eq!(re.len(), 1);
                    let idx: Vec<String> = layers.iter().map(|i| i.to_string()).collect();
                    assert_eq!(
                        re[0],
                        format!(
                            r"model\.layers\.({})\..*\.({})",
                            idx.join("|"),
                            targets.join("|")
                        )
                    );
                }
            }
            match e {
                Engine::Axolotl => {
                    assert_eq!(s(y, "adapter"), if q { "qlora" } else { "lora" });
                    if q {
                        assert!(b(y, "load_in_4bit"));
                        let k = &y["bnb_config_kwargs"];
                        assert_eq!(s(k, "bnb_4bit_quant_type"), "nf4");
                        assert!(b(k, "bnb_4bit_use_double_quant"));
                    }
                }
                Engine::LlamaFactory => {
                    assert_eq!(s(y, "finetuning_type"), "lora");
                    if q {
                        assert_eq!(i(y, "quantization_bit"), 4);
                        assert_eq!(s(y, "quantization_method"), "bnb");
                        assert_eq!(s(y, "quantization_type"), "nf4");
                        assert!(b(y, "double_quantization"));
                    } else {
                        assert!(y["quantization_bit"].is_null());
                    }
                }
                Engine::Trl => {
                    assert!(b(y, "use_peft"));
                    if q {
                        assert!(b(y, "load_in_4bit"));
                        assert_eq!(s(y, "bnb_4bit_quant_type"), "nf4");
                        assert!(
                            b(y, "use_bnb_nested_quant"),
                            "TRL's default is off: must be on"
                        );
                    } else {
                        assert!(y["load_in_4bit"].is_null());
                    }
                }
            }
        }
        (Method::Full, Engine::Axolotl) => {
            assert!(y["adapter"].is_null() && y.get("adapter").is_some())
        }
        (Method::Full, Engine::LlamaFactory) => assert_eq!(s(y, "finetuning_type"), "full"),
        (Method::Full, Engine::Trl) => assert!(!b(y, "use_peft")),
        (m, _) => panic!("unexpected method {m:?}"),
    }
}

#[test]
fn engine_configs_carry_every_setting() {
    let m = common::bundled();
    let tmp = tempfile::tempdir().unwrap();
    let data = chat_file(tmp.path());
    for (name, cfg) in runs() {
        for e in Engine::ALL {
            let out = tmp.path().join(format!("{name}-{}", e.as_str()));
            let r = do_export(&m, e, &data, &cfg, &out);
            let y = yaml(&out.join(e.config_file()));
            check_common(e, &y, &cfg, &r);
            check_method(e, &y, &cfg);
            report_matches_file(&r, &y);
            // The launch file parses and shards by method; the README lists every difference.
            let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
            for g in &r.not_carried {
                assert!(
                    readme.contains(&g.detail),
                    "{e:?}: README lacks {}",
                    g.field
                );
            }
            assert!(readme.contains(&r.run) && readme.contains(&r.run_multi_gpu));
            let stage = if matches!(cfg.method, Method::Full) {
                3
            } else {
                2
            };
            match e {
                Engine::Trl => {
                    let a = yaml(&out.join(format!("accelerate_zero{stage}.yaml")));
                    assert_eq!(i(&a["deepspeed_config"], "zero_stage"), stage);
                }
                _ => {
                    let ds: serde_json::Value = serde_json::from_str(
                        &std::fs::read_to_string(out.join(format!("ds_zero{stage}.json"))).unwrap(),
                    )
                    .unwrap();
                    assert_eq!(ds["zero_optimization"]["stage"], stage);
                }
            }
            // The bundled model travels with the folder, loadable as a model folder here.
            LoadedModel::load(
                &ModelSource::Folder(out.join("model")),
                Default::default(),
                &Default::default(),
            )
            .unwrap();
            let listed = |f: &str| r.not_carried.iter().any(|g| g.field == f);
            assert!(listed("precision") && listed("example order"));
            assert_eq!(listed("warmup_steps"), cfg.warmup_steps > 0);
            assert_eq!(listed("grad_accum loss averaging"), cfg.grad_accum > 1);
            assert_eq!(
                listed("layers"),
                e == Engine::LlamaFactory && cfg.method.lora().is_some_and(|l| l.layers.is_some())
            );
        }
    }
}

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
        common::bundled(),
        &data,
        &tmp.path().join("run"),
        &cfg,
        None,
        None,
        &mut |e| {
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
