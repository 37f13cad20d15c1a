//! "Continue on a GPU server" and back through the app's IPC: the recipe export writes the
//! engine's folder for the wizard's model, dataset and settings; an adapter trained elsewhere
//! (a fixture written by Python `peft`) imports as a run that chats and exports like ours.

mod common;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/engine/tests/fixtures")
        .join(name);
    assert!(
        p.join("adapter_config.json").exists(),
        "fixture {} is missing: it is committed (scripts/make_scaleout_fixtures.py)",
        p.display()
    );
    p
}

/// Reads a YAML file of the export folder with an independent parser.
fn yaml(path: &Path) -> serde_yaml::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} not written: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn num(doc: &serde_yaml::Value, key: &str) -> f64 {
    doc[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` missing or not a number: {:?}", doc[key]))
}

fn strs(doc: &serde_yaml::Value, key: &str) -> Vec<String> {
    doc[key]
        .as_sequence()
        .unwrap_or_else(|| panic!("`{key}` missing or not a list: {:?}", doc[key]))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_engine_list_is_the_engines() {
    let a = common::app();
    let list: Vec<Value> = a.ok("recipe_engines", json!({}));
    let ids: Vec<&str> = list.iter().map(|c| c["engine"].as_str().unwrap()).collect();
    assert_eq!(ids, ["axolotl", "llamafactory", "trl"]);
    assert_eq!(list[1]["label"], "LLaMA-Factory");
    assert_eq!(list[2]["config_file"], "trl.yaml");
}

#[test]
fn recipe_export_writes_the_engine_folder_for_the_wizards_run() {
    let a = common::app();
    // No dataset chosen yet: a clear error, nothing written.
    a.open_demo();
    // Settings unlike the demo's defaults, so each value read back is the one sent (the
    // dropout exact in f32, as the engine stores it).
    let cfg = a.settings(json!({
        "method": {"kind": "lora", "rank": 6, "alpha": 12.0, "dropout": 0.25,
                   "targets": ["q_proj", "v_proj"], "layers": null, "rslora": true},
        "lr": 0.0021, "seq_len": 96, "batch_size": 2, "grad_accum": 3,
        "warmup_steps": 2, "max_steps": 3, "seed": 7, "grad_checkpointing": true,
    }));
    let e = a.err(
        "recipe_export",
        json!({"engine": "trl", "config": cfg, "dest": null}),
    );
    assert_eq!(e["code"], "NoDataset");

    let data = a.demo_data();
    let dest = a.dir.path().join("to-server");
    let r: Value = a.ok(
        "recipe_export",
        json!({"engine": "trl", "config": cfg, "dest": dest.to_str().unwrap()}),
    );
    assert_eq!(r["engine"], "trl");
    assert_eq!(r["total_steps"], 3);
    assert!(r["data"]["train_examples"].as_u64().unwrap() > 0, "{r}");
    // Every file the report lists is there.
    for f in r["files"].as_array().unwrap() {
        let p = dest.join(f.as_str().unwrap());
        assert!(p.is_file(), "{} listed but missing", p.display());
    }
    // The config parses and carries the settings sent, value for value.
    let y = yaml(&dest.join("trl.yaml"));
    assert_eq!(num(&y, "learning_rate"), 0.0021);
    assert_eq!(num(&y, "lora_r"), 6.0);
    assert_eq!(num(&y, "lora_alpha"), 12.0);
    assert_eq!(num(&y, "lora_dropout"), 0.25);
    assert_eq!(strs(&y, "lora_target_modules"), ["q_proj", "v_proj"]);
    assert_eq!(y["use_rslora"], serde_yaml::Value::Bool(true));
    assert_eq!(y["use_peft"], serde_yaml::Value::Bool(true));
    assert_eq!(num(&y, "max_length"), 96.0);
    assert_eq!(num(&y, "per_device_train_batch_size"), 2.0);
    assert_eq!(num(&y, "gradient_accumulation_steps"), 3.0);
    assert_eq!(num(&y, "warmup_steps"), 2.0);
    assert_eq!(num(&y, "max_steps"), 3.0);
    assert_eq!(num(&y, "seed"), 7.0);
    assert_eq!(y["gradient_checkpointing"], serde_yaml::Value::Bool(true));
    // The report's mapping names the same values.
    let mapped = r["mapped"].as_array().unwrap();
    let lr = mapped
        .iter()
        .find(|m| m["theirs"] == "learning_rate")
        .unwrap();
    assert_eq!(lr["ours"], "lr");
    // The manifest records the model, the dataset and the exact settings.
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(dest.join("peft_studio_recipe.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["model"], "bundled demo model (stories260K)");
    assert_eq!(m["data"], data);
    assert_eq!(m["train_config"], cfg);

    // Without a destination it goes to the app's exports folder; Axolotl's keys hold the
    // same run.
    let r: Value = a.ok(
        "recipe_export",
        json!({"engine": "axolotl", "config": cfg, "dest": null}),
    );
    let out = PathBuf::from(r["out_dir"].as_str().unwrap());
    assert_eq!(out, a.dir.path().join("exports/recipe-axolotl"));
    let y = yaml(&out.join("axolotl.yaml"));
    assert_eq!(num(&y, "learning_rate"), 0.0021);
    assert_eq!(num(&y, "lora_r"), 6.0);
    assert_eq!(num(&y, "lora_alpha"), 12.0);
    assert_eq!(strs(&y, "lora_target_modules"), ["q_proj", "v_proj"]);
    assert_eq!(num(&y, "sequence_len"), 96.0);
    assert_eq!(num(&y, "micro_batch_size"), 2.0);
    assert_eq!(num(&y, "gradient_accumulation_steps"), 3.0);
    assert_eq!(num(&y, "seed"), 7.0);

    // A bad destination is refused with the path named, and nothing is written there.
    let e = a.err(
        "recipe_export",
        json!({"engine": "llamafactory", "config": cfg, "dest": "relative/dir"}),
    );
    assert!(
        e["message"].as_str().unwrap().contains("relative/dir"),
        "{e}"
    );
}

#[test]
fn an_imported_adapter_is_a_run_that_chats_and_merges() {
    let a = common::app();
    // No model open: refused.
    let src = fixture("scaleout_modules_to_save");
    let e = a.err("adapter_import", json!({"dir": src.to_str().unwrap()}));
    assert_eq!(e["code"], "NoModel");
    a.open_demo();
    // A folder that is not an adapter: the error names the missing file.
    let e = a.err(
        "adapter_import",
        json!({"dir": a.dir.path().to_str().unwrap()}),
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("adapter_config.json"),
        "{e}"
    );

    let r: Value = a.ok("adapter_import", json!({"dir": src.to_str().unwrap()}));
    assert_eq!(r["status"], "completed");
    assert_eq!(r["origin"]["kind"], "imported");
    assert_eq!(r["config"]["method"]["rank"], 2);
    let id = r["id"].as_str().unwrap();
    let runs: Vec<Value> = a.ok("runs_list", json!({}));
    assert!(runs.iter().any(|x| x["id"] == id));

    // It chats: the tuned side is the base with this adapter attached.
    let sampling = json!({"max_new_tokens": 6, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
        "repeat_penalty": 1.0, "repeat_last_n": 64, "seed": 1});
    let msgs = json!([{"role": "user", "content": "Tell me a story."}]);
    let g: Value = a.ok(
        "chat_generate",
        json!({"side": "tuned", "runId": id, "which": "final", "messages": msgs,
               "sampling": sampling, "onText": "__CHANNEL__:3"}),
    );
    assert!(!g["token_ids"].as_array().unwrap().is_empty(), "{g}");
    {
        let state = a.state();
        let tuned = state.tuned.lock().unwrap();
        let t = tuned.as_ref().expect("the tuned weights are kept");
        assert_eq!(t.run_id, id);
        let s = t.decoder.storage_report();
        // The fixture adapts o_proj and down_proj of blocks 3 and 4.
        assert_eq!(s.adapted_linears, 4, "{s:?}");
    }

    // And exports like a run of ours: the merged model folder.
    let dest = a.dir.path().join("merged");
    let x: Value = a.ok(
        "export_run",
        json!({"runId": id, "which": "final", "kind": "merged", "dest": dest.to_str().unwrap()}),
    );
    let names: Vec<&str> = x["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"model.safetensors"), "{names:?}");
}
