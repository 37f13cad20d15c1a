//! The app through Tauri's mock runtime and the real IPC path (the same deserialisation, state
//! and error mapping the app uses): shared by the shell's tests and the memory probe example.
#![allow(dead_code)]

use peft_studio::AppState;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{
    get_ipc_response, mock_builder, mock_context, noop_assets, MockRuntime, INVOKE_KEY,
};
use tauri::webview::InvokeRequest;
use tauri::{Manager, WebviewWindow};

pub struct App {
    pub app: tauri::App<MockRuntime>,
    pub webview: WebviewWindow<MockRuntime>,
    pub dir: tempfile::TempDir,
}

pub fn app() -> App {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    app_at(&data, dir)
}

/// An app whose data lives in `data_dir` (an app opened again, or a second instance over the
/// same data); `dir` is its own scratch folder.
pub fn app_at(data_dir: &std::path::Path, dir: tempfile::TempDir) -> App {
    let app = peft_studio::with_commands(mock_builder())
        .manage(AppState::new(data_dir.to_path_buf()))
        .build(mock_context(noop_assets()))
        .unwrap();
    let webview = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    App { app, webview, dir }
}

/// Invokes `cmd` on `webview` like the UI does (from any thread: a command that blocks, an
/// export or a download, can be stopped from another).
pub fn invoke(
    webview: &WebviewWindow<MockRuntime>,
    cmd: &str,
    args: Value,
) -> Result<Value, Value> {
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
    get_ipc_response(webview, req).map(|b| b.deserialize::<Value>().unwrap())
}

impl App {
    /// Invokes `cmd` like the UI does; `Err` is the `{code, message, details}` the UI gets.
    pub fn call<T: DeserializeOwned>(&self, cmd: &str, args: Value) -> Result<T, Value> {
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

    pub fn ok<T: DeserializeOwned>(&self, cmd: &str, args: Value) -> T {
        self.call(cmd, args)
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    pub fn err(&self, cmd: &str, args: Value) -> Value {
        match self.call::<Value>(cmd, args) {
            Ok(v) => panic!("{cmd} succeeded with {v}"),
            Err(e) => e,
        }
    }

    /// The shell's managed state, to look at what the engine holds (tests only).
    pub fn state(&self) -> tauri::State<'_, AppState> {
        self.app.state::<AppState>()
    }

    pub fn open(&self, spec: &str) -> Value {
        self.ok(
            "model_open",
            json!({"spec": spec, "onProgress": "__CHANNEL__:1"}),
        )
    }

    pub fn open_demo(&self) -> Value {
        self.open("demo")
    }

    /// Opens the demo model and inspects the bundled dataset; returns its path.
    pub fn demo_data(&self) -> String {
        self.open_demo();
        let path: String = self.ok("data_demo_path", json!({}));
        let _: Value = self.ok(
            "data_inspect",
            json!({"path": path, "maxLen": 128, "skipBadRows": false}),
        );
        path
    }

    /// The shell's demo settings with `changes` merged in (JSON merge of top-level keys).
    pub fn settings(&self, changes: Value) -> Value {
        let mut s: Value = self.ok::<Value>("app_info", json!({}))["demo_settings"].clone();
        for (k, v) in changes.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    }

    pub fn start(&self, config: &Value) -> String {
        let rec: Value = self.ok(
            "train_start",
            json!({"config": config, "resumeRun": null, "onEvent": "__CHANNEL__:2"}),
        );
        rec["id"].as_str().unwrap().to_string()
    }

    /// Waits until run `id` stops running and returns its record.
    pub fn wait_run(&self, id: &str) -> Value {
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
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Trains `config` to the end and returns the final record.
    pub fn train(&self, config: &Value) -> Value {
        let id = self.start(config);
        let r = self.wait_run(&id);
        assert_eq!(r["status"], "completed", "{r}");
        r
    }
}
