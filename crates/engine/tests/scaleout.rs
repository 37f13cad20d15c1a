//! "Continue on a GPU server": golden tests of the Axolotl, LLaMA-Factory and TRL configs for
//! LoRA, QLoRA (rsLoRA, chosen layers) and full runs — each written file is parsed back with a
//! YAML parser and every mapped value compared with our settings, the launch file and README
//! checked. The data side is in `scaleout_data.rs`.

mod common;
#[path = "scaleout_common/mod.rs"]
mod sc;

use peft_engine::model::load::ModelSource;
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::method::Method;
use peft_engine::scaleout::{Engine, ExportReport};
use peft_engine::train::schedule::Scheduler;
use peft_engine::train::TrainConfig;
use sc::*;
use serde_yaml::Value;

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
            for f in [
                e.config_file(),
                "data/train.jsonl",
                "model/",
                "peft_studio_recipe.json",
            ] {
                assert!(
                    readme.contains(&format!("- `{f}` — ")),
                    "{e:?}: README does not list {f}"
                );
            }
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

/// Sample packing carries over as each engine's packing that keeps examples apart (as ours
/// does): Axolotl's `sample_packing` under flash attention, LLaMA-Factory's `neat_packing`,
/// TRL's `packing` with flash attention 2; off, each engine's packing stays off.
#[test]
fn packing_maps_to_each_engines_packing_without_cross_attention() {
    let m = common::bundled();
    let tmp = tempfile::tempdir().unwrap();
    let data = chat_file(tmp.path());
    for packing in [true, false] {
        let cfg = TrainConfig {
            packing,
            ..runs()[0].1.clone()
        };
        for e in Engine::ALL {
            let out = tmp.path().join(format!("{packing}-{}", e.as_str()));
            let r = do_export(&m, e, &data, &cfg, &out);
            let y = yaml(&out.join(e.config_file()));
            let (key, isolating) = match e {
                Engine::Axolotl => ("sample_packing", &y["flash_attention"]),
                Engine::LlamaFactory => ("packing", &y["neat_packing"]),
                Engine::Trl => ("packing", &y["attn_implementation"]),
            };
            assert_eq!(b(&y, key), packing, "{e:?}");
            assert_eq!(!isolating.is_null(), packing, "{e:?}: {isolating:?}");
            if packing {
                assert!(matches!(isolating.as_bool(), Some(true) | None), "{e:?}");
            }
            assert!(
                r.mapped
                    .iter()
                    .any(|f| f.ours == "packing" && f.theirs == key),
                "{e:?}: the report lists the packing field"
            );
        }
    }
}
