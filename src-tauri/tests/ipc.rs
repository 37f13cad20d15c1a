//! The shell's commands through Tauri's mock runtime and the real IPC path, on the bundled demo
//! model: each wizard step, errors with their codes, and the whole train → pause → resume →
//! chat → export flow. What each training method does to the model is `tests/methods.rs`.

mod common;

use common::app;
use serde_json::{json, Value};
use std::time::Duration;

#[test]
fn app_starts_with_the_demo_defaults() {
    let a = app();
    let info: Value = a.ok("app_info", json!({}));
    assert_eq!(info["default_model"], "demo");
    assert_eq!(info["demo_settings"]["method"]["kind"], "lora");
    // No model yet: null, and commands that need one answer with a coded error.
    assert!(a.ok::<Value>("model_current", json!({})).is_null());
    let e = a.err("plan_estimate", json!({"config": info["demo_settings"]}));
    assert_eq!(e["code"], "NoModel");
}

#[test]
fn hardware_scan_works_without_a_gpu() {
    let a = app();
    let hw: Value = a.ok("hardware_scan", json!({}));
    assert!(hw["hardware"]["cpu"]["logical_cores"].as_u64().unwrap() >= 1);
    assert!(hw["verdict"]["summary"]
        .as_str()
        .unwrap()
        .starts_with("Training runs on the"));
    // Without a GPU the note is a sentence for a person, not a library loader's error.
    for n in hw["hardware"]["gpu"]["notes"].as_array().unwrap() {
        let n = n.as_str().unwrap();
        assert!(!n.contains("libloading") && !n.contains(".so"), "{n}");
    }
}

#[test]
fn model_open_reports_facts_and_rejects_bad_sources() {
    let a = app();
    let m = a.open_demo();
    assert_eq!(m["info"]["bundled"], true);
    assert_eq!(m["info"]["architecture"], "llama");
    assert_eq!(m["info"]["context_length"], 512);
    assert!(m["info"]["chat_template"]
        .as_str()
        .unwrap()
        .contains("### Response"));
    // Opening reads no weights: the engine builds them when a use needs them.
    let (_, model) = a.state().current_model().unwrap();
    assert!(model.kept_storage().is_none());
    let current: Value = a.ok("model_current", json!({}));
    assert_eq!(current["spec"], "demo");

    let e = a.err(
        "model_open",
        json!({"spec": "/no/such/model", "onProgress": "__CHANNEL__:1"}),
    );
    assert_eq!(e["code"], "BadPath");
    let e = a.err(
        "model_open",
        json!({"spec": "relative/../path", "onProgress": "__CHANNEL__:1"}),
    );
    assert!(
        e["code"] == "BadPath" || e["code"] == "InvalidSetting",
        "{e}"
    );
    // Offline and not cached: a hub error saying so, and the app keeps working.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let e = a.err(
        "model_open",
        json!({"spec": "nobody/not-a-model", "onProgress": "__CHANNEL__:1"}),
    );
    assert_eq!(e["code"], "Hub");
    assert!(e["message"].as_str().unwrap().contains("offline"), "{e}");
}

#[test]
fn data_inspect_reports_the_demo_dataset_and_errors_with_lines() {
    let a = app();
    let e = a.err(
        "data_inspect",
        json!({"path": "/etc/hostname", "maxLen": 128, "skipBadRows": false}),
    );
    assert_eq!(e["code"], "NoModel");
    a.open_demo();
    let path: String = a.ok("data_demo_path", json!({}));
    let r: Value = a.ok(
        "data_inspect",
        json!({"path": path, "maxLen": 128, "skipBadRows": false}),
    );
    assert_eq!(r["bundled"], true);
    let r = &r["report"];
    assert_eq!(r["format"], "Chat");
    assert_eq!(r["rows"], 56);
    assert_eq!(r["truncated"], 0);
    assert!(r["example"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["trained"] == true && s["text"].as_str().unwrap().contains("Bolt")));

    let bad = a.dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{not json\n").unwrap();
    let e = a.err(
        "data_inspect",
        json!({"path": bad, "maxLen": 128, "skipBadRows": false}),
    );
    assert_eq!(e["code"], "BadDataset");
    assert!(e["message"].as_str().unwrap().contains(":2:"), "{e}");
    let e = a.err(
        "data_inspect",
        json!({"path": "data.jsonl", "maxLen": 128, "skipBadRows": false}),
    );
    assert_eq!(e["code"], "BadPath");
}

#[test]
fn plan_recommends_and_estimates_edits_live() {
    let a = app();
    a.demo_data();
    let base = a.settings(json!({}));
    let plan: Value = a.ok("plan_recommend", json!({"base": base}));
    let rec = &plan["recommendation"];
    assert_eq!(rec["device"], "cpu");
    let best = &rec["candidates"][0];
    assert_eq!(best["fits"], true);
    let bands: Vec<&str> = best["estimate"]["bands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["band"].as_str().unwrap())
        .collect();
    assert_eq!(
        bands,
        [
            "weights",
            "adapters",
            "optimizer",
            "activations",
            "logits",
            "overhead"
        ]
    );
    // Bands are the engine's grouping of its own lines: they add up to the peak exactly.
    let sum: u64 = best["estimate"]["bands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, best["estimate"]["peak_bytes"].as_u64().unwrap());
    // Each candidate comes with the full settings it stands for, the user's others kept.
    let cfg = &plan["configs"][0];
    assert_eq!(cfg["seq_len"], best["request"]["seq_len"]);
    assert_eq!(cfg["method"], best["request"]["method"]);
    assert_eq!(cfg["lr"], base["lr"]);

    let mut s = cfg.clone();
    let small: Value = a.ok("plan_estimate", json!({"config": s}));
    s["seq_len"] = json!(512);
    s["batch_size"] = json!(64);
    let big: Value = a.ok("plan_estimate", json!({"config": s}));
    assert!(big["estimate"]["peak_bytes"].as_u64() > small["estimate"]["peak_bytes"].as_u64());
    // QLoRA plans 4-bit weights.
    s["method"]["kind"] = json!("qlora");
    let q: Value = a.ok("plan_estimate", json!({"config": s}));
    assert!(q["estimate"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "base_weights.nf4"));
}

/// Packing is the engine's call when recommending: a dataset of short chats packs (and the
/// candidate's settings carry it), the bundled stories do not; an estimate keeps the user's
/// own choice.
#[test]
fn the_plan_packs_short_examples_and_estimates_keep_the_users_packing() {
    let a = app();
    a.demo_data();
    let base = a.settings(json!({}));
    let plan: Value = a.ok("plan_recommend", json!({"base": base}));
    let packing = |v: &Value| v["packing"].as_bool().unwrap_or(false);
    assert!(!packing(
        &plan["recommendation"]["candidates"][0]["request"]
    ));
    assert!(!packing(&plan["configs"][0]));

    let short = a.dir.path().join("short.jsonl");
    let mut rows = String::new();
    for i in 0..200 {
        rows.push_str(&format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"hi {i}\"}}, {{\"role\": \"assistant\", \"content\": \"Bolt ran.\"}}]}}\n"));
    }
    let long = "Bolt ran to the hill and back again. ".repeat(12);
    // A tenth of the rows long, so the sequence (95 % coverage) fits several short ones.
    for _ in 0..24 {
        rows.push_str(&format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"tell\"}}, {{\"role\": \"assistant\", \"content\": \"{long}\"}}]}}\n"));
    }
    std::fs::write(&short, rows).unwrap();
    let _: Value = a.ok(
        "data_inspect",
        json!({"path": short, "maxLen": 512, "skipBadRows": false}),
    );
    let plan: Value = a.ok("plan_recommend", json!({"base": base}));
    let best = &plan["recommendation"]["candidates"][0];
    assert!(packing(&best["request"]), "{}", best["reason"]);
    assert!(packing(&plan["configs"][0]));
    // The user's settings are estimated as they are, packing off included.
    let mut s = plan["configs"][0].clone();
    s["packing"] = json!(false);
    let e: Value = a.ok("plan_estimate", json!({"config": s}));
    assert!(!packing(&e["request"]));
    s["packing"] = json!(true);
    let e: Value = a.ok("plan_estimate", json!({"config": s}));
    assert!(packing(&e["request"]));
}

#[test]
fn the_plan_computes_in_bf16_where_the_cpu_has_amx_unless_the_user_unticks_it() {
    use peft_engine::model::decoder::WeightDtype;
    let a = app();
    a.demo_data();
    let f32_dtype = serde_json::to_value(WeightDtype::F32).unwrap();
    for amx in [true, false] {
        let mut hw = peft_engine::hardware::Hardware::assumed(8 << 30, None);
        hw.cpu.features.amx_bf16 = amx;
        // Without AMX, a CPU without AVX512-BF16 either (with it, the choice would follow this
        // machine's measured bf16 rate: `plan::recommend::bf16_pays`).
        hw.cpu.features.avx512_bf16 &= amx;
        *a.state().hardware.lock().unwrap() = Some(hw);
        let base = a.settings(json!({"device": "cpu"}));
        let p: Value = a.ok("plan_recommend", json!({"base": base}));
        let cfg = &p["configs"][0];
        let on = |v: &Value| v["bf16_compute"].as_bool().unwrap_or(false);
        assert_eq!(on(cfg), amx, "{cfg}");
        assert_eq!(on(&p["recommendation"]["candidates"][0]["request"]), amx);
        // The settings keep their stored-weight choice; the bf16 base follows the compute one.
        assert_eq!(cfg["weight_dtype"], f32_dtype, "{cfg}");
        if amx {
            // The plan editor's settings with the box unticked: estimated, and kept, in f32.
            let mut off = cfg.clone();
            off["bf16_compute"] = json!(false);
            let est: Value = a.ok("plan_estimate", json!({"config": off}));
            assert!(!on(&est["request"]), "{}", est["request"]);
            assert_eq!(est["request"]["weight_dtype"], f32_dtype);
            let mut on_again = off.clone();
            on_again["bf16_compute"] = json!(true);
            let est_on: Value = a.ok("plan_estimate", json!({"config": on_again}));
            assert!(on(&est_on["request"]));
            let peak = |e: &Value| e["estimate"]["peak_bytes"].as_u64().unwrap();
            assert!(
                peak(&est_on) < peak(&est),
                "the bf16 base is the smaller plan"
            );
        }
    }
}

#[test]
fn plan_budgets_the_device_the_user_picks() {
    let a = app();
    a.demo_data();
    // A described machine: 8 GiB of RAM and a 6 GiB GPU (planned for whatever this build has).
    *a.state().hardware.lock().unwrap() = Some(peft_engine::hardware::Hardware::assumed(
        8 << 30,
        Some(6 << 30),
    ));
    let base = a.settings(json!({}));
    let auto: Value = a.ok("plan_recommend", json!({"base": base}));
    assert_eq!(auto["recommendation"]["device"], "cuda");
    assert_eq!(auto["recommendation"]["available_bytes"], 6u64 << 30);
    let choices: Vec<&str> = auto["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["choice"].as_str().unwrap())
        .collect();
    assert_eq!(choices, ["auto", "cpu", "cuda:0"]);
    let mut on_cpu = base.clone();
    on_cpu["device"] = json!("cpu");
    let p: Value = a.ok("plan_recommend", json!({"base": on_cpu}));
    assert_eq!(p["recommendation"]["device"], "cpu");
    assert_eq!(p["recommendation"]["available_bytes"], 8u64 << 30);
    // Each candidate's settings keep the choice: the run trains where it was planned.
    assert_eq!(p["configs"][0]["device"], "cpu");
    let e: Value = a.ok("plan_estimate", json!({"config": p["configs"][0]}));
    assert_eq!(e["request"]["device"], "cpu");
}

#[test]
fn train_pause_resume_chat_and_export_on_the_demo() {
    let a = app();
    a.demo_data();
    let e = a.err(
        "train_start",
        json!({"config": {}, "resumeRun": null, "onEvent": "__CHANNEL__:2"}),
    );
    // Malformed arguments are refused by Tauri before the command runs (a plain string).
    assert!(e.as_str().unwrap().contains("missing field"), "{e}");
    let bad = a.settings(json!({"seq_len": 0}));
    let e = a.err(
        "train_start",
        json!({"config": bad, "resumeRun": null, "onEvent": "__CHANNEL__:2"}),
    );
    assert_eq!(e["code"], "InvalidSetting");

    // Pause right away: the engine checkpoints and the run is resumable.
    let s = a.settings(json!({"max_steps": 40, "eval_every": 10}));
    let id = a.start(&s);
    let busy = a.err(
        "train_start",
        json!({"config": s, "resumeRun": null, "onEvent": "__CHANNEL__:2"}),
    );
    assert_eq!(busy["code"], "Busy");
    while a.ok::<Value>("train_status", json!({}))["losses"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(a.ok::<bool>("train_cancel", json!({})));
    let paused = a.wait_run(&id);
    assert_eq!(paused["status"], "paused", "{paused}");
    let paused_at = paused["step"].as_u64().unwrap();
    assert!(paused_at < 40);
    let e = a.err("chat_generate", json!({"side": "tuned", "runId": id, "which": "final", "messages": [{"role": "user", "content": "hi"}],
        "sampling": {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repeat_penalty": 1.0, "repeat_last_n": 64, "max_new_tokens": 5, "seed": 0}, "onText": "__CHANNEL__:3"}));
    assert_eq!(e["code"], "NoRun");

    let _: Value = a.ok(
        "train_start",
        json!({"config": s, "resumeRun": id, "onEvent": "__CHANNEL__:2"}),
    );
    let done = a.wait_run(&id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["step"], 40);
    let losses = done["losses"].as_array().unwrap();
    assert_eq!(
        losses.len(),
        40,
        "one point per step across pause and resume"
    );
    let first = losses[0][1].as_f64().unwrap();
    let last = losses[39][1].as_f64().unwrap();
    assert!(last < first, "loss went down: {first} → {last}");
    // The best evaluation is kept, and the memory figures compare like with like.
    let best = &done["best"];
    assert!(best["step"].as_u64().unwrap() % 10 == 0, "{best}");
    let mem = &done["memory"];
    assert_eq!(
        mem["planned_growth_bytes"].as_u64().unwrap(),
        mem["planned_peak_bytes"].as_u64().unwrap() - mem["already_loaded_bytes"].as_u64().unwrap()
    );
    let runs: Vec<Value> = a.ok("runs_list", json!({}));
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "completed");

    // Chat: tuned (final and best) and base on the same prompt.
    let sampling = json!({"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repeat_penalty": 1.0, "repeat_last_n": 64, "max_new_tokens": 40, "seed": 0});
    let msgs = json!([{"role": "user", "content": "Tell me a story."}]);
    let tuned: Value = a.ok("chat_generate", json!({"side": "tuned", "runId": id, "which": "final", "messages": msgs, "sampling": sampling, "onText": "__CHANNEL__:3"}));
    let base: Value = a.ok("chat_generate", json!({"side": "base", "runId": null, "which": "final", "messages": msgs, "sampling": sampling, "onText": "__CHANNEL__:4"}));
    let _: Value = a.ok("chat_generate", json!({"side": "tuned", "runId": id, "which": "best", "messages": msgs, "sampling": sampling, "onText": "__CHANNEL__:3"}));
    assert!(!tuned["token_ids"].as_array().unwrap().is_empty());
    assert_ne!(tuned["text"], base["text"], "the adapter changes the reply");
    assert_eq!(a.ok::<u32>("chat_stop", json!({})), 0);

    // Export: adapter files and a merged folder.
    let x: Value = a.ok(
        "export_run",
        json!({"runId": id, "which": "final", "kind": "adapter", "dest": null}),
    );
    let dir = std::path::PathBuf::from(x["dir"].as_str().unwrap());
    assert!(dir.join("adapter_config.json").is_file());
    assert!(dir.join("adapter_model.safetensors").is_file());
    let dest = a.dir.path().join("merged-out");
    let m: Value = a.ok(
        "export_run",
        json!({"runId": id, "which": "best", "kind": "merged", "dest": dest}),
    );
    assert!(m["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "model.safetensors"));
    let e = a.err(
        "export_run",
        json!({"runId": "../../etc", "which": "final", "kind": "adapter", "dest": null}),
    );
    assert_eq!(e["code"], "InvalidSetting");

    let _: Value = a.ok("run_delete", json!({"runId": id}));
    assert!(a.ok::<Vec<Value>>("runs_list", json!({})).is_empty());
}
