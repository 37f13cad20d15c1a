//! Fault injection on real runs of the `peft` binary: `kill -9` at several points of training
//! and checkpoint writing, then `--resume` must reproduce the uninterrupted run bit for bit;
//! a write failure (the process's file-size limit, which fails writes the way a full disk
//! does) while checkpointing or merging must give a clear error, keep the previous checkpoint
//! or merged folder intact, and leave no partial folder or temporary file behind; a checkpoint
//! with one flipped byte must be refused on resume. A GGUF export killed or run out of disk
//! keeps the earlier file whole; a hub download killed mid-file leaves only whole files under
//! the model's snapshot, and opening again finishes it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const STEPS: &str = "24";

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn dataset(dir: &Path) -> PathBuf {
    let path = dir.join("data.jsonl");
    let body: String = (0..24)
        .map(|i| {
            let text = format!(
                "Tom had {i} red kites. He flew one high in the sky with his dad, and it was fun."
            );
            serde_json::json!({ "text": text }).to_string() + "\n"
        })
        .collect();
    std::fs::write(&path, body).unwrap();
    path
}

fn train_cmd(data: &Path, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_peft"));
    c.current_dir(root())
        .args(["train", "--model", "demo", "--data"]);
    c.arg(data).arg("--out").arg(out);
    c.args([
        "--method",
        "lora",
        "--max-steps",
        STEPS,
        "--save-every",
        "1",
    ]);
    c.args(["--seq-len", "48", "--batch-size", "2", "--seed", "7"]);
    if resume {
        c.arg("--resume");
    }
    c
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `c`, run through bash with its file-size limit set to `bytes`: writes past it fail (EFBIG)
/// as they would on a full disk, instead of the process being killed by SIGXFSZ (ignored, and
/// an ignored signal stays ignored across exec). No root, no tmpfs needed.
fn with_file_size_limit(c: &Command, bytes: u64) -> Command {
    let mut b = Command::new("bash");
    // bash counts `ulimit -f` in 1024-byte blocks.
    let script = format!(
        "trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"",
        bytes / 1024
    );
    b.arg("-c")
        .arg(script)
        .arg(c.get_program())
        .args(c.get_args());
    if let Some(d) = c.get_current_dir() {
        b.current_dir(d);
    }
    b
}

/// The step of the newest complete checkpoint, if any.
fn latest_step(out: &Path) -> Option<usize> {
    let name = std::fs::read_to_string(out.join("checkpoints/latest")).ok()?;
    name.trim().strip_prefix("step-")?.parse().ok()
}

fn final_state(out: &Path) -> serde_json::Value {
    let name = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    let p = out.join("checkpoints").join(name.trim()).join("state.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Every path under `dir` that is a partial folder or a temporary file.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".partial") || name.ends_with(".old") || name.contains(".tmp-") {
                found.push(e.path());
            }
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    found
}

/// Starts training and kills it (SIGKILL) once the newest checkpoint reaches `at` (or, for
/// `at == 0`, as soon as the run folder exists: before any checkpoint).
fn train_and_kill(data: &Path, out: &Path, resume: bool, at: usize) {
    let mut child = train_cmd(data, out, resume)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let reached = if at == 0 {
            out.join("run.json").exists()
        } else {
            latest_step(out).is_some_and(|s| s >= at)
        };
        if reached || child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "training hung");
        std::thread::sleep(Duration::from_micros(500));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn kill_9_during_training_and_checkpoints_then_resume_reproduces_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let reference = tmp.path().join("reference");
    ok(train_cmd(&data, &reference, false).output().unwrap());
    let want = final_state(&reference);
    assert_eq!(want["step"], 24);

    let out = tmp.path().join("killed");
    // Before the first checkpoint, then at increasing checkpoints: each kill lands wherever
    // the run is (a step, a checkpoint being written, the `latest` pointer being replaced).
    for (i, at) in [0usize, 3, 9, 16].into_iter().enumerate() {
        train_and_kill(&data, &out, i > 0, at);
        let reached = latest_step(&out);
        assert!(
            reached.unwrap_or(0) < 24,
            "kill {i} came after the run ended"
        );
        if let Some(step) = reached {
            // The checkpoint `latest` names is complete: its checksums verify on resume below.
            assert!(out
                .join(format!("checkpoints/step-{step:06}/SHA256SUMS"))
                .exists());
        }
    }
    ok(train_cmd(&data, &out, true).output().unwrap());
    let got = final_state(&out);
    assert_eq!(got["losses"], want["losses"], "resumed losses differ");
    assert_eq!(got["step"], want["step"]);
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(reference.join("adapter_model.safetensors")).unwrap(),
        "the resumed run's adapter differs from the uninterrupted run's"
    );
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
}

#[test]
fn a_full_disk_while_checkpointing_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let reference = tmp.path().join("reference");
    ok(train_cmd(&data, &reference, false).output().unwrap());

    let out = tmp.path().join("run");
    train_and_kill(&data, &out, false, 5);
    let before = latest_step(&out).expect("a checkpoint before the disk fills");
    let ckpt = out.join(format!("checkpoints/step-{before:06}"));
    let trainable = std::fs::metadata(ckpt.join("trainable.safetensors"))
        .unwrap()
        .len();
    let record = std::fs::metadata(out.join("run.json")).unwrap().len();
    // Room for the run record but not for the next checkpoint's weights.
    let limit = (trainable / 2).max(record * 4);
    assert!(
        limit < trainable,
        "checkpoint too small for this test: {trainable} bytes"
    );

    let o = with_file_size_limit(&train_cmd(&data, &out, true), limit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "training past a full disk succeeded");
    assert!(err.contains("error:") && !err.contains("panicked"), "{err}");
    assert!(err.contains("too large") || err.contains("space"), "{err}");
    assert_eq!(
        latest_step(&out),
        Some(before),
        "the previous checkpoint was replaced"
    );
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));

    // Nothing was lost: the same run, resumed with room to write, ends as if never stopped.
    ok(train_cmd(&data, &out, true).output().unwrap());
    assert_eq!(
        final_state(&out)["losses"],
        final_state(&reference)["losses"]
    );
}

#[test]
fn a_full_disk_while_merging_keeps_the_previous_merge_and_no_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let run = tmp.path().join("run");
    ok(train_cmd(&data, &run, false).output().unwrap());
    let merged = tmp.path().join("merged");
    let merge = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_peft"));
        c.current_dir(root())
            .args(["merge", "--model", "demo", "--adapter"]);
        c.arg(&run).arg("--out").arg(&merged);
        c
    };
    ok(merge().output().unwrap());
    let weights = std::fs::read(merged.join("model.safetensors")).unwrap();

    let o = with_file_size_limit(&merge(), weights.len() as u64 / 2)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "merging past a full disk succeeded");
    assert!(err.contains("error:") && !err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(merged.join("model.safetensors")).unwrap(),
        weights,
        "the earlier merged model was damaged"
    );
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
}

#[test]
fn a_checkpoint_with_one_flipped_byte_is_refused_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let out = tmp.path().join("run");
    train_and_kill(&data, &out, false, 4);
    let step = latest_step(&out).unwrap();
    let file = out.join(format!("checkpoints/step-{step:06}/trainable.safetensors"));
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 7;
    bytes[at] ^= 0x10;
    std::fs::write(&file, bytes).unwrap();
    let o = train_cmd(&data, &out, true).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a damaged checkpoint was resumed");
    assert!(
        err.contains("trainable.safetensors") && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn kill_9_during_merge_leaves_a_complete_folder_and_the_next_merge_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let run = tmp.path().join("run");
    ok(train_cmd(&data, &run, false).output().unwrap());
    let merged = tmp.path().join("merged");
    let merge = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_peft"));
        c.current_dir(root())
            .args(["merge", "--model", "demo", "--adapter"]);
        c.arg(&run).arg("--out").arg(&merged);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    ok(merge().output().unwrap());
    let weights = std::fs::read(merged.join("model.safetensors")).unwrap();
    let t = Instant::now();
    ok(merge().output().unwrap());
    let took = t.elapsed();
    for i in 0..6u32 {
        let mut child = merge().spawn().unwrap();
        std::thread::sleep(took * i / 6);
        let _ = child.kill();
        let _ = child.wait();
        // Either the folder is complete (old or new: the same bytes), or a kill between the
        // two renames left the previous one as `merged.old`, which the next merge restores.
        match std::fs::read(merged.join("model.safetensors")) {
            Ok(b) => assert_eq!(b, weights, "kill {i}: a half-written merged model"),
            Err(_) => assert!(
                tmp.path().join("merged.old").is_dir(),
                "kill {i}: merge lost"
            ),
        }
    }
    ok(merge().output().unwrap());
    assert_eq!(
        std::fs::read(merged.join("model.safetensors")).unwrap(),
        weights
    );
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
}

/// The temporary files GGUF exports left beside `file`.
fn gguf_temps(file: &Path) -> Vec<String> {
    let prefix = format!(".{}.tmp-", file.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[test]
fn kill_9_during_gguf_export_keeps_the_previous_file_and_the_next_export_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("demo.gguf");
    let export = |out: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_peft"));
        c.current_dir(root()).args([
            "export",
            "--model",
            "demo",
            "--format",
            "gguf",
            "--quant",
            "f32",
            "--check-tokens",
            "4",
            "--out",
        ]);
        c.arg(out).stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    let t = Instant::now();
    ok(export(&gguf).output().unwrap());
    let took = t.elapsed();
    let bytes = std::fs::read(&gguf).unwrap();
    // Killed at six points of its duration (writing, renaming, self-checking): the file under
    // the final name is always the complete earlier export (the same bytes as a new one).
    let mut killed_with_temp = 0;
    for i in 0..6u32 {
        let mut child = export(&gguf).spawn().unwrap();
        std::thread::sleep(took * i / 6);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            std::fs::read(&gguf).unwrap(),
            bytes,
            "kill {i}: the earlier export was damaged"
        );
        // Each export removes what the one killed before it left: never more than one.
        let temps = gguf_temps(&gguf);
        assert!(
            temps.len() <= 1,
            "kill {i}: temporary files pile up: {temps:?}"
        );
        killed_with_temp += temps.len();
    }
    // A first export killed before it could finish leaves nothing under the final name.
    let fresh = tmp.path().join("fresh.gguf");
    let mut child = export(&fresh).spawn().unwrap();
    let t0 = Instant::now();
    while gguf_temps(&fresh).is_empty() && child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(60), "export hung");
        std::thread::sleep(Duration::from_micros(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    match std::fs::read(&fresh) {
        Ok(b) => assert_eq!(b, bytes, "a half-written GGUF under the final name"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
    }
    ok(export(&gguf).output().unwrap());
    ok(export(&fresh).output().unwrap());
    assert_eq!(std::fs::read(&gguf).unwrap(), bytes);
    assert_eq!(std::fs::read(&fresh).unwrap(), bytes);
    assert!(gguf_temps(&gguf).is_empty() && gguf_temps(&fresh).is_empty());
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?} ({killed_with_temp} kills left a temporary file)",
        leftovers(tmp.path())
    );
}

#[test]
fn a_full_disk_during_gguf_export_keeps_the_previous_file_and_leaves_no_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("demo.gguf");
    let export = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_peft"));
        c.current_dir(root()).args([
            "export",
            "--model",
            "demo",
            "--format",
            "gguf",
            "--quant",
            "f32",
            "--check-tokens",
            "4",
            "--out",
        ]);
        c.arg(&gguf);
        c
    };
    ok(export().output().unwrap());
    let bytes = std::fs::read(&gguf).unwrap();
    // The disk fills half way through the new file.
    let o = with_file_size_limit(&export(), bytes.len() as u64 / 2)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "exporting past a full disk succeeded");
    assert!(err.contains("error:") && !err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(&gguf).unwrap(),
        bytes,
        "the earlier export was damaged"
    );
    assert!(gguf_temps(&gguf).is_empty(), "{:?}", gguf_temps(&gguf));
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
}

// The app's fake hub (std only), shared through its path.
#[path = "../../../src-tauri/tests/fake_hub/mod.rs"]
#[allow(dead_code)]
mod fake_hub;

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

#[test]
fn kill_9_during_a_hub_download_keeps_only_whole_files_and_opening_again_finishes_it() {
    let hub = fake_hub::FakeHub::start("org/tiny");
    let cache = tempfile::tempdir().unwrap();
    let info = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_peft"));
        c.current_dir(root())
            .args(["info", "--model", "org/tiny"])
            .env("HF_ENDPOINT", hub.endpoint())
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_HOME", cache.path().join("home"))
            .env_remove("HF_HUB_OFFLINE");
        c
    };
    // Each file's body is held back, so the kill lands in the middle of the download.
    hub.delay_ms.store(300, std::sync::atomic::Ordering::SeqCst);
    let mut child = info()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while hub.served.lock().unwrap().len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the download stalled"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the download ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    let snapshots = cache.path().join("models--org--tiny").join("snapshots");
    let whole = |what: &str| {
        for (path, bytes) in files_under(&snapshots) {
            let name = path.file_name().unwrap();
            let original = std::fs::read(fake_hub::model_dir().join(name)).unwrap();
            assert!(
                bytes == original,
                "{what}: {} is not the whole file",
                path.display()
            );
        }
    };
    whole("after the kill");

    // Opening again finishes it (the held-back bodies no longer wait).
    hub.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    let o = ok(info().output().unwrap());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("llama"), "{text}");
    whole("after opening again");
    let names: Vec<_> = files_under(&snapshots)
        .into_iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for needed in ["config.json", "model.safetensors"] {
        assert!(
            names.iter().any(|n| n == needed),
            "{needed} missing: {names:?}"
        );
    }
    assert!(
        leftovers(cache.path()).is_empty(),
        "{:?}",
        leftovers(cache.path())
    );
}
