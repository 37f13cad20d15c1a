//! What each method the app offers does to the model, checked through the app's commands
//! (Tauri's mock runtime, real IPC): LoRA leaves the base bit for bit and trains adapters;
//! QLoRA trains over an NF4 base (and in the memory of a `peft train` run); selective tuning
//! changes only the chosen weights; full tuning changes all of them. Chat with an adapter and
//! both exports are checked against independent computations.

mod common;

use common::app;
use peft_engine::fsutil::load_safetensors;
use peft_engine::model::decoder::{Decoder, LoadOptions};
use peft_engine::model::load::ModelSource;
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::adapter_io::{ADAPTER_WEIGHTS, DELTA_WEIGHTS};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every named tensor's f32 bits.
fn snapshot(d: &Decoder) -> BTreeMap<String, Vec<u32>> {
    let mut d = d.clone();
    d.named_tensors_mut()
        .into_iter()
        .map(|(n, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (n, v.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

fn dense_base(a: &common::App) -> BTreeMap<String, Vec<u32>> {
    let (_, model) = a.state().current_model().unwrap();
    snapshot(&model.weights(&LoadOptions::default()).unwrap())
}

fn run_dir(r: &Value) -> PathBuf {
    PathBuf::from(r["dir"].as_str().unwrap())
}

/// Six steps at a high learning rate with `method` (`null`: keep the demo's LoRA).
fn short(method: Value) -> Value {
    let mut s = json!({"max_steps": 6, "eval_every": 3, "lr": 0.01});
    if !method.is_null() {
        s["method"] = method;
    }
    s
}

#[test]
fn lora_leaves_the_base_bit_identical_and_trains_only_adapters() {
    let a = app();
    a.demo_data();
    let before = dense_base(&a);
    let r = a.train(&a.settings(json!({"max_steps": 6, "eval_every": 3, "lr": 0.01})));
    let st = &r["storage"];
    assert_eq!(
        (st["dense_linears"].as_u64(), st["nf4_linears"].as_u64()),
        (Some(35), Some(0)),
        "{st}"
    );
    assert_eq!(st["adapted_linears"], 35);
    assert_eq!(dense_base(&a), before, "LoRA changed a base weight");
    // The adapters did train: every B left zero.
    let adapter = load_safetensors(&run_dir(&r).join(ADAPTER_WEIGHTS)).unwrap();
    let b = adapter
        .iter()
        .filter(|(n, _)| n.contains("lora_B"))
        .map(|(_, t)| {
            t.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(f32::INFINITY, f32::min);
    assert!(b > 0.0, "an adapter's B stayed zero");
}

#[test]
fn qlora_trains_over_an_nf4_base() {
    let a = app();
    a.demo_data();
    let mut s = a.settings(short(json!(null)));
    s["method"]["kind"] = json!("qlora");
    let r = a.train(&s);
    let st = &r["storage"];
    // All 35 block projections are NF4 during the run; the tied head is the dense embedding.
    assert_eq!(
        (st["nf4_linears"].as_u64(), st["dense_linears"].as_u64()),
        (Some(35), Some(0)),
        "{st}"
    );
    assert_eq!(st["adapted_linears"], 35);
    // The opened model now keeps the NF4 base the run trained over (no f32 copy beside it).
    let (_, model) = a.state().current_model().unwrap();
    assert_eq!(
        model.kept_storage(),
        Some(LoadOptions::nf4(Default::default()))
    );
    let losses = r["losses"].as_array().unwrap();
    assert!(losses[5][1].as_f64() < losses[0][1].as_f64(), "{losses:?}");
}

/// The app's "bf16 compute": the run keeps LoRA's base in bf16 (about half the bytes) and its
/// losses follow the f32 run's closely without being them; the plan estimates the bf16 base;
/// the record keeps the setting, so a resume computes the same way.
#[test]
fn bf16_compute_keeps_the_base_in_bf16_and_follows_the_f32_losses() {
    let a = app();
    a.demo_data();
    let s = a.settings(short(json!(null)));
    let mut b = s.clone();
    b["bf16_compute"] = json!(true);
    let est = |cfg: &Value| -> u64 {
        let e: Value = a.ok("plan_estimate", json!({"config": cfg}));
        e["estimate"]["peak_bytes"].as_u64().unwrap()
    };
    assert!(est(&b) < est(&s), "the plan does not see the bf16 base");
    let (f, h) = (a.train(&s), a.train(&b));
    let bytes = |r: &Value| r["storage"]["base_bytes"].as_f64().unwrap();
    let ratio = bytes(&h) / bytes(&f);
    assert!(
        (0.5..0.55).contains(&ratio),
        "bf16 base is {ratio:.3} of f32's"
    );
    // The Train step says how the run computes.
    let how = h["storage"]["compute_dtype"].as_str().unwrap();
    assert!(how.starts_with("f32 with bf16 products"), "{how}");
    assert_eq!(f["storage"]["compute_dtype"], "f32");
    let (lf, lh) = (
        f["losses"].as_array().unwrap(),
        h["losses"].as_array().unwrap(),
    );
    assert_eq!(lf.len(), lh.len());
    let mut differs = false;
    for (x, y) in lf.iter().zip(lh) {
        let (x, y) = (x[1].as_f64().unwrap(), y[1].as_f64().unwrap());
        assert!((x - y).abs() <= 0.02 * x, "bf16 loss {y} against f32's {x}");
        differs |= x != y;
    }
    assert!(differs, "bf16 compute changed nothing");
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir(&h).join("run.json")).unwrap())
            .unwrap();
    assert_eq!(rec["config"]["bf16_compute"], true, "{}", rec["config"]);
}

/// Names and values of a selective/full run's changed tensors, with the base's.
fn delta_vs_base(
    a: &common::App,
    r: &Value,
) -> (BTreeMap<String, Vec<u32>>, BTreeMap<String, Vec<u32>>) {
    let delta: BTreeMap<String, Vec<u32>> = load_safetensors(&run_dir(r).join(DELTA_WEIGHTS))
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (n, v.iter().map(|x| x.to_bits()).collect())
        })
        .collect();
    (delta, dense_base(a))
}

#[test]
fn selective_changes_only_the_chosen_weights() {
    let a = app();
    a.demo_data();
    let before = dense_base(&a);
    let r = a.train(&a.settings(short(json!({"kind": "selective", "what": "norm"}))));
    assert_eq!(r["storage"]["adapted_linears"], 0);
    let (delta, after) = delta_vs_base(&a, &r);
    assert_eq!(after, before, "the opened model's weights changed");
    let norms: Vec<&String> = before
        .keys()
        .filter(|n| n.ends_with("layernorm.weight") || *n == "model.norm.weight")
        .collect();
    assert_eq!(
        delta.keys().collect::<Vec<_>>(),
        norms,
        "only norm weights are written"
    );
    for (n, v) in &delta {
        assert_ne!(v, &before[n], "{n} did not change");
    }
}

#[test]
fn full_fine_tuning_changes_every_weight() {
    let a = app();
    a.demo_data();
    let before = dense_base(&a);
    let r = a.train(&a.settings(short(json!({"kind": "full"}))));
    assert_eq!(r["storage"]["trainable_linears"], 35);
    let (delta, _) = delta_vs_base(&a, &r);
    assert_eq!(
        delta.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (n, v) in &delta {
        assert_ne!(v, &before[n], "{n} did not change");
    }
    // The base the app chats with is the original model, rebuilt from its files.
    assert_eq!(dense_base(&a), before);
}

#[test]
fn chat_with_an_adapter_equals_the_merged_model_and_the_merge_is_base_plus_delta() {
    let a = app();
    a.demo_data();
    let mut s = a.settings(short(json!(null)));
    s["method"]["rslora"] = json!(true);
    let r = a.train(&s);
    let id = r["id"].as_str().unwrap();
    let sampling = json!({"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repeat_penalty": 1.0, "repeat_last_n": 64, "max_new_tokens": 24, "seed": 0});
    let msgs = json!([{"role": "user", "content": "Tell me a story."}]);
    let tuned: Value = a.ok("chat_generate", json!({"side": "tuned", "runId": id, "which": "final", "messages": msgs, "sampling": sampling, "onText": "__CHANNEL__:3"}));
    let base: Value = a.ok("chat_generate", json!({"side": "base", "runId": null, "which": "final", "messages": msgs, "sampling": sampling, "onText": "__CHANNEL__:4"}));
    assert_ne!(tuned["token_ids"], base["token_ids"]);

    let dest = a.dir.path().join("merged");
    let _: Value = a.ok(
        "export_run",
        json!({"runId": id, "which": "final", "kind": "merged", "dest": dest}),
    );
    // Merged weights = base + (alpha/√r)·B·A, computed here in f64 from the adapter file.
    let adapter = load_safetensors(&run_dir(&r).join(ADAPTER_WEIGHTS)).unwrap();
    let merged = load_safetensors(&dest.join("model.safetensors")).unwrap();
    let (_, model) = a.state().current_model().unwrap();
    let mut base_w = model.build_weights(&LoadOptions::default()).unwrap();
    let base_t: BTreeMap<String, candle_core::Tensor> = base_w
        .named_tensors_mut()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect();
    let rank = s["method"]["rank"].as_f64().unwrap();
    let scale = s["method"]["alpha"].as_f64().unwrap() / rank.sqrt();
    let path = "model.layers.2.mlp.down_proj";
    let mat = |n: &str| {
        let t = &adapter[&format!("base_model.model.{path}.{n}.weight")];
        (
            t.dims2().unwrap(),
            t.to_dtype(candle_core::DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
        )
    };
    let ((r_, inp), av) = mat("lora_A");
    let ((out, _), bv) = mat("lora_B");
    let w0 = base_t[&format!("{path}.weight")]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let w1 = merged[&format!("{path}.weight")]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut worst = 0f64;
    for o in 0..out {
        for i in 0..inp {
            let d: f64 = (0..r_).map(|k| bv[o * r_ + k] * av[k * inp + i]).sum();
            let want = w0[o * inp + i] as f64 + scale * d;
            worst = worst.max((w1[o * inp + i] as f64 - want).abs());
        }
    }
    assert!(worst < 1e-5, "merged weight off by {worst}");

    // The merged folder, opened as a model of its own, answers what the tuned chat answered.
    let m = LoadedModel::open(&ModelSource::Folder(dest), Default::default()).unwrap();
    let d = m.weights(&LoadOptions::default()).unwrap();
    let msgs = vec![peft_engine::template::Message::new(
        "user",
        "Tell me a story.",
    )];
    let opts: peft_engine::infer::generate::GenerateOptions =
        serde_json::from_value(sampling).unwrap();
    let g = peft_engine::infer::generate::generate(
        &d,
        &m.tokenizer,
        &m.chat_ids(&msgs).unwrap(),
        &opts,
        &m.stop_ids(),
        None,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(json!(g.token_ids), tuned["token_ids"]);
}

/// A Llama-shaped model of ~3.3M parameters (13 MB in f32, 1.7 MB in NF4) in a folder, with
/// the bundled tokenizer: big enough that an f32 copy of it would show in a QLoRA run's peak.
fn medium_model(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stories260K");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(root.join(f), dir.join(f)).unwrap();
    }
    let (h, i, layers, vocab) = (256usize, 688usize, 4usize, 512usize);
    let config = json!({
        "model_type": "llama", "vocab_size": vocab, "hidden_size": h, "intermediate_size": i,
        "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 4,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut tensors = std::collections::HashMap::new();
    let mut put = |name: String, shape: &[usize], seed: u64| {
        let t = if shape.len() == 1 {
            candle_core::Tensor::ones(shape, candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap()
        } else {
            peft_engine::test_support::normal(shape, seed, 0.02)
        };
        tensors.insert(name, t);
    };
    put("model.embed_tokens.weight".into(), &[vocab, h], 1);
    put("model.norm.weight".into(), &[h], 2);
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let seed = 100 * (l as u64 + 1);
        for (n, shape) in [
            ("self_attn.q_proj", [h, h]),
            ("self_attn.k_proj", [h, h]),
            ("self_attn.v_proj", [h, h]),
            ("self_attn.o_proj", [h, h]),
            ("mlp.gate_proj", [i, h]),
            ("mlp.up_proj", [i, h]),
            ("mlp.down_proj", [h, i]),
        ] {
            put(format!("{p}.{n}.weight"), &shape, seed + n.len() as u64);
        }
        put(format!("{p}.input_layernorm.weight"), &[h], 0);
        put(format!("{p}.post_attention_layernorm.weight"), &[h], 0);
    }
    peft_engine::fsutil::save_safetensors_atomic(&dir.join("model.safetensors"), &tensors).unwrap();
}

/// The `peft` binary of this workspace (built by `cargo test --workspace`, else built here).
fn peft_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("peft");
    if !bin.is_file() {
        let ok = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "peft-cli", "--bin", "peft"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap()
            .success();
        assert!(ok && bin.is_file(), "could not build {}", bin.display());
    }
    bin
}

/// QLoRA through the app adds what `peft train --method qlora` adds with the same settings, to
/// within 10 %: the app neither holds an f32 copy of the base nor loads it twice. Both sides
/// are separate processes (peak RSS is per process) measured the same way, by the engine: the
/// high-water mark less the resident memory when training began (the model opened, no weights
/// built in either).
#[test]
fn qlora_peak_memory_matches_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    medium_model(&model);
    let data = tmp.path().join("data.jsonl");
    let row = "Tom had a red kite. He flew it high in the sky with his dad. ".repeat(6);
    let rows: String = (0..12)
        .map(|i| json!({ "text": format!("{i} {row}") }).to_string() + "\n")
        .collect();
    std::fs::write(&data, rows).unwrap();

    let exe = std::env::current_exe().unwrap();
    let probe = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/qlora_memory_probe");
    assert!(
        probe.is_file(),
        "{} is built by `cargo test`",
        probe.display()
    );
    let out = std::process::Command::new(&probe)
        .arg(&model)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(app["nf4_linears"], 28, "{app}");

    let out = std::process::Command::new(peft_binary())
        .args([
            "train",
            "--method",
            "qlora",
            "--max-steps",
            "4",
            "--seq-len",
            "64",
            "--val-fraction",
            "0",
            "--dropout",
            "0",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("cli-out"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "peak memory 40.1 MiB (42048512 bytes), 20951040 bytes before training"
    let nums: Vec<u64> = text
        .lines()
        .find(|l| l.starts_with("peak memory"))
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    let (cli_peak, cli_base) = (nums[nums.len() - 2], nums[nums.len() - 1]);
    let cli = cli_peak - cli_base;
    let app_growth = app["peak_rss"].as_u64().unwrap() - app["baseline_rss"].as_u64().unwrap();
    let ratio = app_growth as f64 / cli as f64;
    eprintln!("QLoRA growth: app {app_growth} B, CLI {cli} B, ratio {ratio:.3}");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "app {app_growth} B vs CLI {cli} B"
    );
}
