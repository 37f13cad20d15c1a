//! The `peft` binary as a user runs it.

use std::process::Command;

fn peft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap()
}

#[test]
fn generate_json_greedy_on_the_bundled_model() {
    let out = peft(&[
        "generate",
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["text"].as_str().unwrap().starts_with("Once upon a time"));
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 12);
    assert_eq!(v["prompt_tokens"], 1);
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn info_reports_the_bundled_model() {
    let out = peft(&["info", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["parameters"], 260_032);
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["context_length"], 512);
}

#[test]
fn bad_model_arguments_fail_with_a_message_not_a_panic() {
    for (arg, needle) in [
        ("/nonexistent/model.gguf", "/nonexistent/model.gguf"),
        ("Cargo.toml", "not a .gguf"),
        ("not a model", "hub id"),
    ] {
        let out = peft(&["info", "--model", arg]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{arg}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
