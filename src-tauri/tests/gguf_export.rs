//! The Export step's GGUF exports through the app's commands (Tauri's mock runtime, real IPC),
//! checked by their effect on disk: a run exported as an F16 GGUF opens with the engine's GGUF
//! loader with the demo's chat template and EOS in its metadata, and, opened again by the app,
//! greedy-chats the very tokens the tuned model chats; the base goes out as an Ollama folder
//! whose Modelfile names the file, the template and the stop token, and into LM Studio's
//! layout; the adapter as a LoRA GGUF; a run is only exported over the model it trained.
//! (Stopping an export mid-way is checked in the engine, `tests/export_formats.rs`, where it
//! can be timed exactly.)

mod common;

use candle_core::quantized::gguf_file::{Content, Value as Meta};
use common::app;
use peft_engine::model::gguf::open_gguf;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn greedy(n: u32) -> Value {
    json!({"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repeat_penalty": 1.0,
           "repeat_last_n": 64, "max_new_tokens": n, "seed": 0})
}

fn export(a: &common::App, run: Option<&str>, format: &str, quant: &str, dest: &Path) -> Value {
    a.ok(
        "export_gguf",
        json!({"runId": run, "which": "final", "format": format, "quant": quant,
               "dest": dest, "onProgress": "__CHANNEL__:5"}),
    )
}

/// The GGUF file's raw metadata (candle's reader, not ours).
fn metadata(path: &Path) -> std::collections::HashMap<String, Meta> {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Content::read(&mut f).unwrap().metadata
}

/// The open model's chat template, its EOS (id and text) and every token that ends its turn.
fn demo_chat(a: &common::App) -> (String, u32, String, Vec<String>) {
    let (_, model) = a.state().current_model().unwrap();
    let eos_text = model.template.eos_token.clone();
    let eos = model.tokenizer.token_to_id(&eos_text).unwrap();
    let ends = model
        .tokenizer
        .eos_ids
        .iter()
        .map(|id| model.tokenizer.id_to_token(*id).unwrap())
        .collect();
    (model.template.source().to_string(), eos, eos_text, ends)
}

#[test]
fn a_run_exported_as_gguf_chats_the_same_tokens_when_opened_again() {
    let a = app();
    a.demo_data();
    let (template, eos, eos_text, _) = demo_chat(&a);
    let r = a.train(&a.settings(json!({"max_steps": 6, "eval_every": 3, "lr": 0.01})));
    let id = r["id"].as_str().unwrap().to_string();
    let msgs = json!([{"role": "user", "content": "Tell me a story."}]);
    let chat = |side: &str, run: Option<&str>| -> Value {
        a.ok(
            "chat_generate",
            json!({"side": side, "runId": run, "which": "final", "messages": msgs,
                   "sampling": greedy(24), "onText": "__CHANNEL__:3"}),
        )
    };
    let tuned = chat("tuned", Some(&id));
    let base = chat("base", None);
    assert_ne!(
        tuned["token_ids"], base["token_ids"],
        "the adapter changes the reply"
    );

    // F16: the engine's self-check asks for identical tokens; its report comes back.
    let out = a.dir.path().join("gguf-out");
    let x = export(&a, Some(&id), "gguf", "f16", &out);
    let check = &x["self_check"];
    assert_eq!(check["strict"], true, "{check}");
    assert!(check["problems"].as_array().unwrap().is_empty(), "{check}");
    assert_eq!(
        x["gguf"]["types"]["F16"].as_u64().map(|n| n > 0),
        Some(true),
        "{x}"
    );
    let file = PathBuf::from(x["files"][0].as_str().unwrap());
    assert!(
        file.starts_with(&out) && file.extension().unwrap() == "gguf",
        "{file:?}"
    );
    assert!(
        file.to_string_lossy().contains(&id),
        "the file is named for the run: {file:?}"
    );

    // The file on disk: the engine's GGUF loader reads the demo's chat template and EOS back,
    // and the raw keys llama.cpp reads are there.
    let g = open_gguf(&file).unwrap();
    assert_eq!(g.chat_template.as_deref(), Some(template.as_str()));
    assert_eq!(g.eos_token.as_deref(), Some(eos_text.as_str()));
    assert!(
        g.tokenizer.eos_ids.contains(&eos),
        "{:?}",
        g.tokenizer.eos_ids
    );
    assert_eq!(g.file_type, "F16");
    let meta = metadata(&file);
    assert_eq!(
        meta["tokenizer.chat_template"].to_string().unwrap(),
        &template
    );
    assert_eq!(meta["tokenizer.ggml.eos_token_id"].to_u32().unwrap(), eos);
    assert!(meta["general.name"].to_string().unwrap().contains(&id));

    // The app opens the written file as a model; its greedy reply is the tuned model's.
    let opened = a.open(file.to_str().unwrap());
    assert_eq!(opened["info"]["architecture"], "llama", "{opened}");
    let again = chat("base", None);
    assert_eq!(again["token_ids"], tuned["token_ids"], "{again} vs {tuned}");
    assert_eq!(again["text"], tuned["text"]);

    // The run trained the demo, not this file: exporting it over the GGUF is refused.
    let e = a.err(
        "export_gguf",
        json!({"runId": id, "which": "final", "format": "gguf", "quant": "q8_0",
               "dest": null, "onProgress": "__CHANNEL__:5"}),
    );
    assert_eq!(e["code"], "WrongModel", "{e}");

    // Back on the demo: the adapter as a LoRA GGUF.
    a.open_demo();
    let lora = export(
        &a,
        Some(&id),
        "gguf_adapter",
        "f32",
        &a.dir.path().join("lora-out"),
    );
    assert_eq!(lora["adapter"]["layers"], 35, "{lora}");
    let lora_file = PathBuf::from(lora["files"][0].as_str().unwrap());
    let meta = metadata(&lora_file);
    assert_eq!(meta["general.type"].to_string().unwrap(), "adapter");
    assert_eq!(meta["adapter.type"].to_string().unwrap(), "lora");
    assert!(lora["self_check"]["problems"]
        .as_array()
        .unwrap()
        .is_empty());
    // The base has no adapter to write.
    let e = a.err(
        "export_gguf",
        json!({"runId": null, "which": "final", "format": "gguf_adapter", "quant": "f32",
               "dest": a.dir.path().join("none"), "onProgress": "__CHANNEL__:5"}),
    );
    assert_eq!(e["code"], "NotSupported", "{e}");
}

#[test]
fn the_base_goes_to_ollama_and_lm_studio_with_its_template_and_stop_token() {
    let a = app();
    a.open_demo();
    let (template, eos, eos_text, ends) = demo_chat(&a);

    let ollama = a.dir.path().join("ollama-out");
    let o = export(&a, None, "ollama", "q8_0", &ollama);
    assert_eq!(o["self_check"]["strict"], false);
    assert!(
        o["self_check"]["problems"].as_array().unwrap().is_empty(),
        "{o}"
    );
    let gguf = PathBuf::from(o["files"][0].as_str().unwrap());
    assert_eq!(gguf.parent(), Some(ollama.as_path()));
    let g = open_gguf(&gguf).unwrap();
    assert_eq!(g.file_type, "Q8_0");
    assert_eq!(g.chat_template.as_deref(), Some(template.as_str()));
    assert_eq!(g.eos_token.as_deref(), Some(eos_text.as_str()));
    assert!(
        g.tokenizer.eos_ids.contains(&eos),
        "{:?}",
        g.tokenizer.eos_ids
    );

    // The Modelfile: FROM the file beside it, the engine's Go template, a stop per end token.
    let modelfile = std::fs::read_to_string(ollama.join("Modelfile")).unwrap();
    let lines: Vec<&str> = modelfile.lines().collect();
    let name = gguf.file_name().unwrap().to_str().unwrap();
    assert!(
        lines.contains(&format!("FROM ./{name}").as_str()),
        "{modelfile}"
    );
    let go = o["ollama_template"]["template"].as_str().unwrap();
    assert!(!go.is_empty());
    assert!(
        modelfile.contains(&format!("TEMPLATE \"\"\"{go}\"\"\"\n")),
        "{modelfile}"
    );
    for end in &ends {
        let stop = format!("PARAMETER stop \"{end}\"");
        assert!(lines.contains(&stop.as_str()), "{stop}: {modelfile}");
    }
    let create = format!(
        "ollama create stories260k -f {}",
        ollama.join("Modelfile").display()
    );
    assert_eq!(o["next_steps"][0], create.as_str(), "{o}");
    assert!(std::fs::read_to_string(ollama.join("README.md"))
        .unwrap()
        .contains(&create));

    // LM Studio: publisher/model/file under the models folder, template in the metadata.
    let root = a.dir.path().join("lms");
    let l = export(&a, None, "lmstudio", "q4_k_m", &root);
    let want = root.join("peft-studio/stories260k/stories260k-Q4_K_M.gguf");
    assert_eq!(l["files"][0], want.to_str().unwrap(), "{l}");
    assert!(
        l["self_check"]["problems"].as_array().unwrap().is_empty(),
        "{l}"
    );
    let g = open_gguf(&want).unwrap();
    assert_eq!(g.file_type, "Q4_K_M");
    assert_eq!(g.chat_template.as_deref(), Some(template.as_str()));
    // Each export freed its cancel slot (else the second would have been refused as busy):
    // with none running, there is nothing to stop.
    assert!(!a.ok::<bool>("export_gguf_cancel", json!({})));
}
