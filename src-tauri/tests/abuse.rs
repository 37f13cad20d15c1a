//! The app under abuse, through its commands (Tauri's mock runtime, real IPC): a second start
//! while a run goes on, a run left `running` by an app that died and the app opened again over
//! the same data, two instances over one data folder, a GGUF export and a hub download
//! stopped half-way.
//! Each ends with the runs intact: the loss curve of the run that was abused is compared, bit
//! for bit, with the same settings trained undisturbed.

mod common;
mod fake_hub;

use common::{app, app_at, invoke, App};
use fake_hub::FakeHub;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The settings every run here trains with.
fn settings(a: &App) -> Value {
    a.settings(json!({"max_steps": 16, "eval_every": 8, "lr": 0.01}))
}

/// The undisturbed run's loss and evaluation curves (trained once, in an app of its own).
fn reference() -> &'static (Value, Value) {
    static REF: OnceLock<(Value, Value)> = OnceLock::new();
    REF.get_or_init(|| {
        let a = app();
        a.demo_data();
        let r = a.train(&settings(&a));
        (r["losses"].clone(), r["eval_losses"].clone())
    })
}

fn assert_like_reference(r: &Value) {
    assert_eq!(r["status"], "completed", "{r}");
    let (losses, evals) = reference();
    assert_eq!(
        &r["losses"], losses,
        "the loss curve differs from the undisturbed run's"
    );
    assert_eq!(&r["eval_losses"], evals, "the evaluations differ");
}

fn start_args(config: &Value, resume: Option<&str>) -> Value {
    json!({"config": config, "resumeRun": resume, "onEvent": "__CHANNEL__:2"})
}

/// Waits until the run `a` trains has saved its record (the engine's first write, made while it
/// holds the run's folder), and returns its folder.
fn wait_record(a: &App) -> PathBuf {
    let status: Value = a.ok("train_status", json!({}));
    let dir = PathBuf::from(status["dir"].as_str().unwrap());
    let t0 = Instant::now();
    while !dir.join("run.json").is_file() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no record in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    dir
}

fn list(a: &App) -> Vec<Value> {
    a.ok("runs_list", json!({}))
}

fn record_on_disk(dir: &Path) -> Value {
    let path = dir.join("run.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_second_start_is_refused_and_the_first_run_is_unharmed() {
    let a = app();
    a.demo_data();
    let s = settings(&a);
    let id = a.start(&s);
    // A new run, the same run resumed, and deleting it: each refused while it trains.
    for (cmd, args) in [
        ("train_start", start_args(&s, None)),
        ("train_start", start_args(&s, Some(&id))),
        ("run_delete", json!({"runId": id})),
    ] {
        let e = a.err(cmd, args);
        assert_eq!(e["code"], "Busy", "{cmd}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains("already running"),
            "{e}"
        );
    }
    wait_record(&a);
    let runs = list(&a);
    assert_eq!(runs.len(), 1, "a refused start left a run behind");
    assert_eq!(runs[0]["status"], "running");
    // A reloaded window re-attaches to the run (a new channel) and gets its record so far.
    let attached: Value = a.ok("train_attach", json!({"onEvent": "__CHANNEL__:3"}));
    assert_eq!(attached["id"], id.as_str(), "{attached}");
    assert_eq!(attached["status"], "running");
    let done = a.wait_run(&id);
    assert_like_reference(&done);
    // Nothing to attach to once it ended.
    let none: Value = a.ok("train_attach", json!({"onEvent": "__CHANNEL__:4"}));
    assert!(none.is_null(), "{none}");
    // The slot is free again: the next start is accepted.
    let id2 = a.start(&s);
    assert_ne!(id2, id);
    assert_like_reference(&a.wait_run(&id2));
}

#[test]
fn a_run_left_running_by_a_dead_app_is_interrupted_and_resumes_exactly() {
    let data = tempfile::tempdir().unwrap();
    let (id, dir, paused_at) = {
        let a = app_at(data.path(), tempfile::tempdir().unwrap());
        a.demo_data();
        let id = a.start(&settings(&a));
        while a.ok::<Value>("train_status", json!({}))["losses"]
            .as_array()
            .unwrap()
            .len()
            < 3
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(a.ok::<bool>("train_cancel", json!({})));
        let r = a.wait_run(&id);
        assert_eq!(r["status"], "paused", "{r}");
        let step = r["step"].as_u64().unwrap();
        assert!(step < 16, "the run ended before it could be stopped: {r}");
        (id, PathBuf::from(r["dir"].as_str().unwrap()), step)
    };
    // What a process killed mid-run leaves: its record still says `running` (it is saved so at
    // every event) and a temporary file of a write it never finished (another process id).
    let mut rec = record_on_disk(&dir);
    rec["status"] = json!("running");
    rec["finished_at"] = Value::Null;
    std::fs::write(dir.join("run.json"), rec.to_string()).unwrap();
    let stale = dir.join(".run.json.tmp-4294967");
    std::fs::write(&stale, b"{\"half\":").unwrap();

    // The app opened again over the same data.
    let b = app_at(data.path(), tempfile::tempdir().unwrap());
    let runs = list(&b);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["id"], id);
    assert_eq!(runs[0]["status"], "interrupted", "{}", runs[0]);
    assert_eq!(runs[0]["step"], paused_at);
    assert_eq!(
        record_on_disk(&dir)["status"],
        "interrupted",
        "not saved as interrupted"
    );
    // Resuming needs the run's model open; then it continues from its checkpoint.
    let e = b.err("train_start", start_args(&settings(&b), Some(&id)));
    assert_eq!(e["code"], "NoModel", "{e}");
    b.open_demo();
    let _: Value = b.ok("train_start", start_args(&settings(&b), Some(&id)));
    let done = b.wait_run(&id);
    assert_like_reference(&done);
    assert!(
        !stale.exists(),
        "the dead process's temporary file was left"
    );
    assert_eq!(list(&b)[0]["status"], "completed");
}

#[test]
fn two_instances_over_one_data_folder_keep_each_others_runs() {
    let data = tempfile::tempdir().unwrap();
    let a = app_at(data.path(), tempfile::tempdir().unwrap());
    let b = app_at(data.path(), tempfile::tempdir().unwrap());
    a.demo_data();
    b.demo_data();
    let id_a = a.start(&settings(&a));
    let dir_a = wait_record(&a);
    // The other instance sees a run it does not train: still running (another process holds
    // it), not interrupted, and neither resumable nor deletable from there.
    let seen = list(&b);
    let run_a = seen.iter().find(|r| r["id"] == id_a).expect("run listed");
    assert_eq!(run_a["status"], "running", "{run_a}");
    for (cmd, args) in [
        ("train_start", start_args(&settings(&b), Some(&id_a))),
        ("run_delete", json!({"runId": id_a})),
    ] {
        let e = b.err(cmd, args);
        assert_eq!(e["code"], "Busy", "{cmd}: {e}");
        assert!(e["message"].as_str().unwrap().contains("another"), "{e}");
    }
    assert!(
        dir_a.join("run.json").is_file(),
        "the other instance deleted the run"
    );
    // Both train at once, each into its own run.
    let id_b = b.start(&settings(&b));
    assert_ne!(id_a, id_b);
    let (ra, rb) = (a.wait_run(&id_a), b.wait_run(&id_b));
    assert_like_reference(&ra);
    assert_like_reference(&rb);
    // Each instance lists both runs, completed, from readable records.
    for app in [&a, &b] {
        let runs = list(app);
        assert_eq!(runs.len(), 2);
        assert!(runs.iter().all(|r| r["status"] == "completed"), "{runs:?}");
    }
    assert_eq!(record_on_disk(&dir_a)["status"], "completed");
}

/// The exported GGUF files under `dir` (name → bytes), and whatever else is there.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = if p.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_stopped_export_leaves_the_previous_one_intact_and_nothing_half_written() {
    let a = app();
    a.open_demo();
    let dest = a.dir.path().join("gguf");
    let args = json!({"runId": null, "which": "final", "format": "gguf", "quant": "f32",
                      "dest": dest, "onProgress": "__CHANNEL__:5"});
    let first: Value = a.ok("export_gguf", args.clone());
    let before = files(&dest);
    assert!(
        before.iter().any(|(n, _)| n.ends_with(".gguf")),
        "no GGUF written: {first}"
    );
    // The same export again, stopped as soon as it runs (from another thread, as the UI's
    // Stop button does while the export command is pending).
    let w = a.webview.clone();
    let export = std::thread::spawn(move || invoke(&w, "export_gguf", args));
    let t0 = Instant::now();
    while !a.ok::<bool>("export_gguf_cancel", json!({})) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the export never started"
        );
        assert!(
            !export.is_finished(),
            "the export ended before it could be stopped"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let e = export
        .join()
        .unwrap()
        .expect_err("a stopped export reported success");
    assert_eq!(e["code"], "Cancelled", "{e}");
    assert_eq!(
        files(&dest),
        before,
        "the earlier export changed, or temp files remain"
    );
    // Nothing is left holding the export slot.
    assert!(!a.ok::<bool>("export_gguf_cancel", json!({})));
    let again: Value = a.ok(
        "export_gguf",
        json!({"runId": null, "which": "final", "format": "gguf",
        "quant": "f32", "dest": dest, "onProgress": "__CHANNEL__:5"}),
    );
    assert_eq!(files(&dest), before, "{again}");
}

/// Every file under `dir`, recursively (symlinks followed), with its bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(tree(&p));
        } else if p.is_file() {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

#[test]
fn a_download_stopped_mid_way_keeps_what_arrived_and_opening_again_finishes_it() {
    let hub = FakeHub::start("org/tiny");
    let cache = tempfile::tempdir().unwrap();
    // Only this test uses the hub, and only through these (the others open the bundled demo).
    std::env::set_var("HF_ENDPOINT", hub.endpoint());
    std::env::set_var("HF_HUB_CACHE", cache.path());
    std::env::remove_var("HF_HUB_OFFLINE");
    hub.delay_ms.store(250, Ordering::SeqCst);
    let a = app();
    let w = a.webview.clone();
    let open_args = json!({"spec": "org/tiny", "onProgress": "__CHANNEL__:1"});
    let args = open_args.clone();
    let open = std::thread::spawn(move || invoke(&w, "model_open", args));
    let t0 = Instant::now();
    while hub.served.lock().unwrap().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the download never started"
        );
        assert!(
            !open.is_finished(),
            "the download ended before it could be stopped"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // While it downloads: a second open is refused, then Stop.
    let e = a.err(
        "model_open",
        json!({"spec": "demo", "onProgress": "__CHANNEL__:1"}),
    );
    assert_eq!(e["code"], "Busy", "{e}");
    assert!(a.ok::<bool>("model_cancel_download", json!({})));
    let e = open
        .join()
        .unwrap()
        .expect_err("a stopped download opened the model");
    assert_eq!(e["code"], "Cancelled", "{e}");
    assert!(a.ok::<Value>("model_current", json!({})).is_null());
    let first = hub.served.lock().unwrap().clone();
    // What is in the cache's snapshot is whole: each file equals the original.
    let snapshot = tree(&cache.path().join("models--org--tiny").join("snapshots"));
    for (path, bytes) in &snapshot {
        let name = path.file_name().unwrap();
        let original = std::fs::read(fake_hub::model_dir().join(name)).unwrap();
        assert!(
            bytes == &original,
            "{}: a partial file in the snapshot",
            path.display()
        );
    }
    // Opening again finishes it, without fetching again what had arrived.
    hub.delay_ms.store(0, Ordering::SeqCst);
    let opened: Value = a.ok("model_open", open_args);
    assert_eq!(opened["spec"], "org/tiny", "{opened}");
    let all = hub.served.lock().unwrap().clone();
    let second = &all[first.len()..];
    assert!(
        !second.is_empty(),
        "the stop came after the last file: {all:?}"
    );
    let kept: Vec<String> = snapshot
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        second.iter().all(|f| !kept.contains(f)),
        "a file already downloaded was fetched again: second {second:?}, kept {kept:?}"
    );
    assert!(
        !a.ok::<bool>("model_cancel_download", json!({})),
        "the download slot stayed taken"
    );
}
