//! `peft export` as a user runs it, on the bundled model with the PEFT adapter fixture.

use std::process::Command;

fn peft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap()
}

/// A fresh folder under the system temp dir (removed by the caller).
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("peft-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const ADAPTER: &str = "crates/engine/tests/fixtures/peft_lora_stories";

#[test]
fn export_ollama_folder_and_print_the_self_check() {
    let dir = scratch("ollama");
    let out = dir.join("ollama");
    let out_s = out.to_str().unwrap();
    let r = peft(&[
        "export",
        "--adapter",
        ADAPTER,
        "--format",
        "ollama",
        "--quant",
        "q8_0",
        "--out",
        out_s,
        "--check-tokens",
        "8",
    ]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{}{stdout}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(stdout.contains("self-check passed"), "{stdout}");
    assert!(
        stdout.contains("next: ollama create stories260k-peft_lora_stories -f"),
        "{stdout}"
    );
    assert!(out.join("Modelfile").exists());
    assert!(out.join("stories260k-peft_lora_stories-Q8_0.gguf").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn export_adapter_gguf_as_json_and_refuse_bad_flags() {
    let dir = scratch("adapter");
    let path = dir.join("a.gguf");
    let r = peft(&[
        "export",
        "--adapter",
        ADAPTER,
        "--format",
        "gguf-adapter",
        "--quant",
        "f32",
        "--out",
        path.to_str().unwrap(),
        "--check-tokens",
        "8",
        "--json",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["format"], "gguf_adapter");
    assert!(v["self_check"]["problems"].as_array().unwrap().is_empty());
    assert!(path.exists());

    let r = peft(&["export", "--format", "zip", "--out", "x"]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("gguf-adapter"));
    // A quantized adapter is refused with the reason, not a panic.
    let r = peft(&[
        "export",
        "--adapter",
        ADAPTER,
        "--format",
        "gguf-adapter",
        "--quant",
        "q4_k_m",
        "--out",
        path.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("f16 or f32"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
