//! The concrete defects issue 17 found, each as a reproducer: sizes in headers that drove
//! allocations, files that panicked, inputs that took minutes. Each must now end quickly in a
//! clear error naming the file and field/line (or, where the input is legal, work without
//! the allocation).

use peft_engine::data::formats::{load, LoadOptions};
use peft_engine::data::render::{RenderOptions, Renderer};
use peft_engine::model::decoder::LoadOptions as Storage;
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use peft_engine::model::tensors::SafetensorsSource;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn stories() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260K")
}

fn copy_model(dir: &Path) -> PathBuf {
    let out = dir.join("model");
    std::fs::create_dir_all(&out).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(stories().join(f), out.join(f)).unwrap();
    }
    out
}

fn set_config(dir: &Path, key: &str, value: serde_json::Value) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(p, v.to_string()).unwrap();
}

fn open(dir: &Path) -> peft_engine::Result<LoadedModel> {
    LoadedModel::load(
        &ModelSource::Folder(dir.to_path_buf()),
        OpenOptions::default(),
        &Storage::default(),
    )
}

#[test]
fn a_16m_token_context_loads_without_building_gigabytes_of_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(tmp.path());
    set_config(&dir, "max_position_embeddings", serde_json::json!(1 << 24));
    let before = peft_engine::memory::rss_bytes().unwrap();
    let m = open(&dir).unwrap();
    let grown = peft_engine::memory::rss_bytes()
        .unwrap()
        .saturating_sub(before);
    // Uncapped, the tables for 2^24 positions would take 2^24 x 8 x 4 B = 512 MiB, plus
    // the intermediates that build them.
    assert!(grown < 400 << 20, "loading grew RSS by {grown} bytes");
    let ids = m.prompt_ids("Once upon a time").unwrap();
    assert!(!ids.is_empty());
}

#[test]
fn sizes_no_real_model_has_are_refused_by_name() {
    for (key, value) in [
        (
            "max_position_embeddings",
            serde_json::json!((1u64 << 24) + 1),
        ),
        ("num_hidden_layers", serde_json::json!(1u64 << 40)),
        ("hidden_size", serde_json::json!(1u64 << 40)),
        ("vocab_size", serde_json::json!(u64::MAX)),
        ("intermediate_size", serde_json::json!(1u64 << 33)),
        ("rope_theta", serde_json::json!(-1.0)),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_model(tmp.path());
        set_config(&dir, key, value);
        let e = match open(&dir) {
            Ok(_) => panic!("{key}: loaded"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("config.json") && e.contains(key), "{key}: {e}");
    }
}

#[test]
fn a_gguf_with_alignment_0_is_refused_not_a_panic() {
    // Minimal GGUF (v1: u32 lengths, v3: u64): no tensors, one metadata key
    // `general.alignment` = 0 (u32), which candle would divide by.
    for version in [1u32, 3] {
        let len = |n: u64, b: &mut Vec<u8>| {
            if version == 1 {
                b.extend((n as u32).to_le_bytes())
            } else {
                b.extend(n.to_le_bytes())
            }
        };
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        len(0, &mut b);
        len(1, &mut b);
        let key = b"general.alignment";
        len(key.len() as u64, &mut b);
        b.extend(key);
        b.extend(4u32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("align0.gguf");
        std::fs::write(&path, b).unwrap();
        let e = peft_engine::model::gguf::open_gguf(&path)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("align0.gguf") && e.contains("general.alignment"),
            "v{version}: {e}"
        );
    }
}

#[test]
fn shard_indexes_that_list_nothing_or_point_outside_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("model.safetensors.index.json");
    for (map, field) in [
        (serde_json::json!({}), "weight_map"),
        (
            serde_json::json!({"a": "../../etc/passwd"}),
            "weight_map[\"a\"]",
        ),
        (serde_json::json!({"a": "/etc/passwd"}), "weight_map[\"a\"]"),
        (serde_json::json!({"a": 3}), "weight_map[\"a\"]"),
    ] {
        std::fs::write(&index, serde_json::json!({ "weight_map": map }).to_string()).unwrap();
        let e = SafetensorsSource::open_dir(tmp.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("index.json") && e.contains(field), "{e}");
    }
}

fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn huge_rows_and_endless_conversations_are_refused_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let big = "x".repeat(peft_engine::limits::MAX_ROW_BYTES + 1);
    let ok_row = serde_json::json!({"text": "fine"}).to_string();
    let body = format!("{ok_row}\n{}\n", serde_json::json!({ "text": big }));
    let p = write(tmp.path(), "big.jsonl", body.as_bytes());
    let e = load(&p, &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("big.jsonl:2"), "{e}");

    let turns: Vec<_> = (0..20_000)
        .map(|i| serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "hi"}))
        .collect();
    let body = serde_json::json!({ "messages": turns }).to_string();
    let p = write(tmp.path(), "long.jsonl", body.as_bytes());
    let t = Instant::now();
    let e = load(&p, &LoadOptions::default()).unwrap_err().to_string();
    assert!(
        e.contains("long.jsonl:1") && e.contains("20000 turns"),
        "{e}"
    );
    assert!(t.elapsed().as_secs() < 30);
}

#[test]
fn a_conversation_of_2000_turns_renders_in_linear_time() {
    // Locating each assistant turn renders the conversation before it; past the truncation
    // point that is skipped, so this takes milliseconds instead of re-rendering 2000 prefixes.
    let m = LoadedModel::open(&ModelSource::Bundled, OpenOptions::default()).unwrap();
    let msgs: Vec<_> = (0..2000)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            peft_engine::template::Message::new(role, format!("turn {i}"))
        })
        .collect();
    let r = Renderer::new(&m.tokenizer, &m.template, RenderOptions::default()).unwrap();
    let ex = peft_engine::data::formats::Example::Chat(msgs);
    let (t, _) = r.build(&ex).unwrap();
    assert_eq!(t.input_ids.len(), 512);
    assert!(t.trained_tokens() > 0);
}

#[test]
fn broken_utf8_names_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mut body = b"{\"text\": \"ok\"}\n{\"text\": \"bad ".to_vec();
    body.push(0xff);
    body.extend(b"\"}\n");
    let p = write(tmp.path(), "enc.jsonl", &body);
    let e = load(&p, &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("enc.jsonl:2") && e.contains("UTF-8"), "{e}");
}
