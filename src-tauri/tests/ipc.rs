//! The shell's commands through Tauri's mock runtime and the real IPC path (the same
//! deserialisation, state and error mapping the app uses), on the bundled demo model.

use peft_studio::AppState;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{
    get_ipc_response, mock_builder, mock_context, noop_assets, MockRuntime, INVOKE_KEY,
};
use tauri::webview::InvokeRequest;
use tauri::WebviewWindow;

struct App {
    _app: tauri::App<MockRuntime>,
    webview: WebviewWindow<MockRuntime>,
    dir: tempfile::TempDir,
}

fn app() -> App {
    let dir = tempfile::tempdir().unwrap();
    let app = peft_studio::with_commands(mock_builder())
        .manage(AppState::new(dir.path().to_path_buf()))
        .build(mock_context(noop_assets()))
        .unwrap();
    let webview = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    App {
        _app: app,
        webview,
        dir,
    }
}

impl App {
    /// Invokes `cmd` like the UI does; `Err` is the `{code, message, details}` the UI gets.
    fn call<T: DeserializeOwned>(&self, cmd: &str, args: Value) -> Result<T, Value> {
        let req = InvokeRequest {
            cmd: cmd.into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            // tauri://localhost, not http://tauri.localhost: on Linux the latter is remote.
            url: "tauri://localhost".parse().unwrap(),
            body: InvokeBody::Json(args),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        };
        get_ipc_response(&self.webview, req).map(|b| b.deserialize::<T>().unwrap())
    }

    fn ok<T: DeserializeOwned>(&self, cmd: &str, args: Value) -> T {
        self.call(cmd, args)
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    fn err(&self, cmd: &str, args: Value) -> Value {
        match self.call::<Value>(cmd, args) {
            Ok(v) => panic!("{cmd} succeeded with {v}"),
            Err(e) => e,
        }
    }

    fn open_demo(&self) -> Value {
        self.ok(
            "model_open",
            json!({"spec": "demo", "onProgress": "__CHANNEL__:1"}),
        )
    }

    fn demo_data(&self) -> String {
        self.open_demo();
        let path: String = self.ok("data_demo_path", json!({}));
        let _: Value = self.ok(
            "data_inspect",
            json!({"path": path, "maxLen": 128, "skipBadRows": false}),
        );
        path
    }

    fn wait_run(&self, id: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let r: Value = self.ok("train_status", json!({}));
            assert_eq!(r["id"], id);
            if r["status"] != "running" {
                return r;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "training did not finish"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn app_starts_with_the_demo_defaults() {
    let a = app();
    let info: Value = a.ok("app_info", json!({}));
    assert_eq!(info["default_model"], "demo");
    assert_eq!(info["demo_settings"]["method"], "lora");
    // No model yet: null, and commands that need one answer with a coded error.
    assert!(a.ok::<Value>("model_current", json!({})).is_null());
    let e = a.err("plan_estimate", json!({"settings": info["demo_settings"]}));
    assert_eq!(e["code"], "NoModel");
}

#[test]
fn hardware_scan_works_without_a_gpu() {
    let a = app();
    let hw: Value = a.ok("hardware_scan", json!({}));
    assert!(hw["logical_cores"].as_u64().unwrap() >= 1);
    assert!(hw["summary"]
        .as_str()
        .unwrap()
        .starts_with("Training runs on the"));
}

#[test]
fn model_open_reports_facts_and_rejects_bad_sources() {
    let a = app();
    let m = a.open_demo();
    assert_eq!(m["bundled"], true);
    assert_eq!(m["architecture"], "llama");
    assert_eq!(m["context_length"], 512);
    assert!(m["chat_template"]
        .as_str()
        .unwrap()
        .contains("### Response"));
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
    assert_eq!(r["format"], "Chat");
    assert_eq!(r["rows"], 56);
    assert_eq!(r["bundled"], true);
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
    let info: Value = a.ok("app_info", json!({}));
    let plan: Value = a.ok("plan_recommend", json!({"base": info["demo_settings"]}));
    assert_eq!(plan["device"], "cpu");
    let best = &plan["candidates"][0];
    assert_eq!(best["estimate"]["fits"], true);
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
    let sum: u64 = best["estimate"]["bands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, best["estimate"]["peak_bytes"].as_u64().unwrap());

    let mut s = best["settings"].clone();
    let small: Value = a.ok("plan_estimate", json!({"settings": s}));
    s["seq_len"] = json!(512);
    s["batch_size"] = json!(64);
    let big: Value = a.ok("plan_estimate", json!({"settings": s}));
    assert!(big["peak_bytes"].as_u64() > small["peak_bytes"].as_u64());
}

#[test]
fn train_pause_resume_chat_and_export_on_the_demo() {
    let a = app();
    a.demo_data();
    let e = a.err(
        "train_start",
        json!({"settings": {}, "resumeRun": null, "onEvent": "__CHANNEL__:2"}),
    );
    // Malformed arguments are refused by Tauri before the command runs (a plain string).
    assert!(e.as_str().unwrap().contains("missing field"), "{e}");

    // Pause right away: the engine checkpoints and the run is resumable.
    let mut s: Value = a.ok::<Value>("app_info", json!({}))["demo_settings"].clone();
    s["max_steps"] = json!(60);
    let rec: Value = a.ok(
        "train_start",
        json!({"settings": s, "resumeRun": null, "onEvent": "__CHANNEL__:2"}),
    );
    let id = rec["id"].as_str().unwrap().to_string();
    let busy = a.err(
        "train_start",
        json!({"settings": s, "resumeRun": null, "onEvent": "__CHANNEL__:2"}),
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
    assert!(paused_at < 60);
    let e = a.err("chat_generate", json!({"side": "tuned", "runId": id, "messages": [{"role": "user", "content": "hi"}],
        "sampling": {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repeat_penalty": 1.0, "max_new_tokens": 5, "seed": 0}, "onText": "__CHANNEL__:3"}));
    assert_eq!(e["code"], "NoRun");

    let _: Value = a.ok(
        "train_start",
        json!({"settings": s, "resumeRun": id, "onEvent": "__CHANNEL__:2"}),
    );
    let done = a.wait_run(&id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["step"], 60);
    let losses = done["losses"].as_array().unwrap();
    assert_eq!(
        losses.len(),
        60,
        "one point per step across pause and resume"
    );
    let first = losses[0][1].as_f64().unwrap();
    let last = losses[59][1].as_f64().unwrap();
    assert!(last < first, "loss went down: {first} → {last}");
    let runs: Vec<Value> = a.ok("runs_list", json!({}));
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "completed");

    // Chat: tuned and base on the same prompt.
    let sampling = json!({"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repeat_penalty": 1.0, "max_new_tokens": 40, "seed": 0});
    let msgs = json!([{"role": "user", "content": "Tell me a story."}]);
    let tuned: Value = a.ok("chat_generate", json!({"side": "tuned", "runId": id, "messages": msgs, "sampling": sampling, "onText": "__CHANNEL__:3"}));
    let base: Value = a.ok("chat_generate", json!({"side": "base", "runId": null, "messages": msgs, "sampling": sampling, "onText": "__CHANNEL__:4"}));
    assert!(tuned["tokens"].as_u64().unwrap() > 0);
    assert_ne!(tuned["text"], base["text"], "the adapter changes the reply");
    assert_eq!(a.ok::<u32>("chat_stop", json!({})), 0);

    // Export: adapter files and a merged folder.
    let x: Value = a.ok(
        "export_run",
        json!({"runId": id, "kind": "adapter", "dest": null}),
    );
    let dir = std::path::PathBuf::from(x["dir"].as_str().unwrap());
    assert!(dir.join("adapter_config.json").is_file());
    assert!(dir.join("adapter_model.safetensors").is_file());
    let dest = a.dir.path().join("merged-out");
    let m: Value = a.ok(
        "export_run",
        json!({"runId": id, "kind": "merged", "dest": dest}),
    );
    assert!(m["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "model.safetensors"));
    let e = a.err(
        "export_run",
        json!({"runId": "../../etc", "kind": "adapter", "dest": null}),
    );
    assert_eq!(e["code"], "BadPath");

    let _: Value = a.ok("run_delete", json!({"runId": id}));
    assert!(a.ok::<Vec<Value>>("runs_list", json!({})).is_empty());
}
