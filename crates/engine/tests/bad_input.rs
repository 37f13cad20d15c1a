//! Bad model files give errors that name the file and the field or tensor — never a panic.

use peft_engine::model::decoder::LoadOptions;
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use peft_engine::Config;
use std::path::{Path, PathBuf};

fn stories() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260K")
}

/// A copy of the bundled model folder that a test can break.
fn copy_model(dir: &Path) -> PathBuf {
    let out = dir.join("model");
    std::fs::create_dir_all(&out).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(stories().join(f), out.join(f)).unwrap();
    }
    out
}

fn open_err(dir: &Path) -> String {
    match LoadedModel::load(
        &ModelSource::Folder(dir.to_path_buf()),
        OpenOptions::default(),
        &LoadOptions::default(),
    ) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

#[test]
fn config_errors_name_the_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(tmp.path());

    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let e = open_err(&dir);
    assert!(e.contains("config.json"), "{e}");

    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("config.json"), "{e}");

    std::fs::copy(stories().join("config.json"), dir.join("config.json")).unwrap();
    edit_config(&dir, |v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    let e = open_err(&dir);
    assert!(
        e.contains("config.json") && e.contains("hidden_size") && e.contains("missing"),
        "{e}"
    );

    edit_config(&dir, |v| {
        v["hidden_size"] = 64.into();
        v["model_type"] = "gpt_neox".into();
    });
    let e = open_err(&dir);
    assert!(
        e.contains("gpt_neox") && e.contains("llama, mistral, qwen2"),
        "{e}"
    );

    edit_config(&dir, |v| {
        v["model_type"] = "llama".into();
        v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    });
    let e = open_err(&dir);
    assert!(e.contains("rope scaling") && e.contains("yarn"), "{e}");

    edit_config(&dir, |v| {
        v["rope_scaling"] = serde_json::Value::Null;
        v["num_key_value_heads"] = 3.into();
    });
    let e = open_err(&dir);
    assert!(e.contains("num_key_value_heads"), "{e}");
}

#[test]
fn tensor_errors_name_the_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(tmp.path());
    // Truncated weights file.
    let full = std::fs::read(stories().join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &full[..full.len() / 2]).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("model.safetensors"), "{e}");

    // A config that expects a bigger MLP: every mlp tensor is mis-shaped.
    std::fs::write(dir.join("model.safetensors"), &full).unwrap();
    edit_config(&dir, |v| v["intermediate_size"] = 180.into());
    let e = open_err(&dir);
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[172, 64]"),
        "{e}"
    );

    // A config that expects more layers than the file has.
    edit_config(&dir, |v| {
        v["intermediate_size"] = 172.into();
        v["num_hidden_layers"] = 6.into();
    });
    let e = open_err(&dir);
    assert!(
        e.contains("model.layers.5.") && e.contains("missing"),
        "{e}"
    );

    // No weights at all.
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn config_variants_parse() {
    // rope_parameters (transformers ≥ 4.56) instead of rope_theta; head_dim given; eos list.
    let c = Config::from_json(
        r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":32,
        "rope_parameters":{"rope_theta":500000.0,"rope_type":"default"},
        "tie_word_embeddings":true,"eos_token_id":[1,7]}"#,
        "t",
    )
    .unwrap();
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(c.head_dim, 32);
    assert_eq!(c.q_dim(), 128);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.eos_token_ids, vec![1, 7]);
    // Qwen2 has q/k/v biases whatever the file says; Mistral has none.
    let q = Config::from_json(r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2}"#, "q").unwrap();
    assert!(q.qkv_bias && !q.o_bias);
    assert_eq!(q.num_key_value_heads, 2);
}

#[test]
fn model_names_that_are_nothing_get_a_clear_error() {
    let e = ModelSource::parse("definitely not a model")
        .unwrap_err()
        .to_string();
    assert!(e.contains("hub id"), "{e}");
    let e = ModelSource::parse("./missing-folder")
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing-folder"), "{e}");
    assert_eq!(ModelSource::parse("demo").unwrap(), ModelSource::Bundled);
    assert!(matches!(
        ModelSource::parse("HuggingFaceTB/SmolLM2-135M-Instruct@main").unwrap(),
        ModelSource::Hub(_)
    ));
}
