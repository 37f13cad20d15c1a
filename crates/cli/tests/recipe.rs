//! `peft recipe export` / `inspect` / `import` as a user runs them (the engine's own tests check
//! the configs field by field and the imported adapter's logits).

use std::path::PathBuf;
use std::process::Command;

fn peft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("peft-recipe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

#[test]
fn export_takes_the_train_flags_and_writes_the_folder() {
    let out = scratch("export");
    let o = out.to_str().unwrap();
    let run = peft(&[
        "recipe",
        "export",
        "--engine",
        "llamafactory",
        "--out",
        o,
        "--data",
        "datasets/bolt-stories.jsonl",
        "--method",
        "qlora",
        "--rank",
        "4",
        "--rslora",
        "--lr",
        "0.0003",
        "--max-steps",
        "7",
        "--json",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(r["engine"], "llamafactory");
    assert_eq!(r["total_steps"], 7);
    let yaml = std::fs::read_to_string(out.join("llamafactory.yaml")).unwrap();
    for line in [
        "lora_rank: 4",
        "use_rslora: true",
        "learning_rate: 0.0003",
        "max_steps: 7",
        "double_quantization: true",
    ] {
        assert!(yaml.contains(line), "missing `{line}` in\n{yaml}");
    }
    assert!(out.join("README.md").exists() && out.join("data/dataset_info.json").exists());
    // Without --out it is an error, not a folder named after a default.
    let run = peft(&[
        "recipe",
        "export",
        "--engine",
        "trl",
        "--data",
        "datasets/bolt-stories.jsonl",
    ]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--out"));
    let run = peft(&[
        "recipe",
        "export",
        "--engine",
        "trl",
        "--out",
        o,
        "--data",
        "datasets/bolt-stories.jsonl",
        "--resume",
    ]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("resume"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn inspect_summarises_an_adapter_trained_elsewhere() {
    let run = peft(&[
        "recipe",
        "inspect",
        "crates/engine/tests/fixtures/scaleout_modules_to_save",
        "--json",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        (s["rank"].as_u64(), s["trained_elsewhere"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(s["modules_to_save"][0], "model.norm");
}

#[test]
fn import_makes_a_run_that_generates_as_the_adapter_does() {
    let fixture = "crates/engine/tests/fixtures/scaleout_modules_to_save";
    let out = scratch("import");
    let o = out.to_str().unwrap();
    let run = peft(&["recipe", "import", fixture, "--out", o, "--json"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(r["status"], "completed");
    assert_eq!(r["origin"]["kind"], "imported");
    assert_eq!(r["config"]["method"]["kind"], "lora");
    assert_eq!(r["config"]["method"]["rank"], 2);
    assert!(out.join("run.json").exists() && out.join("adapter_model.safetensors").exists());
    // The run folder generates exactly what the adapter folder it came from does.
    let gen = |adapter: &str| {
        let g = peft(&[
            "generate",
            "--adapter",
            adapter,
            "--prompt",
            "Once upon a time",
            "--temperature",
            "0",
            "--max-new-tokens",
            "12",
            "--json",
        ]);
        assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
        let v: serde_json::Value = serde_json::from_slice(&g.stdout).unwrap();
        v["token_ids"].clone()
    };
    assert_eq!(gen(o), gen(fixture));
    // Importing into the same (now full) folder again is refused, naming it.
    let again = peft(&["recipe", "import", fixture, "--out", o]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds files"));
    let _ = std::fs::remove_dir_all(&out);
}
