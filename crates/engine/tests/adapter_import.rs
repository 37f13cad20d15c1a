//! Adapters trained elsewhere: the naming variants other trainers write (fixtures written by
//! Python `peft` with `scripts/make_scaleout_fixtures.py`) give PEFT's logits here; pickled
//! weights and tensors we cannot apply are refused by name; `modules_to_save` on tied
//! embeddings unties them; and an adapter folder's summary says who trained it.

mod common;

use candle_core::{Device, Tensor};
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::decoder::Decoder;
use peft_engine::peft::adapter_io::{apply_adapter, load_lora_adapter};
use peft_engine::peft::adapter_summary::summarize_adapter;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    assert!(
        p.join("adapter_config.json").exists(),
        "fixture {} is missing: it is committed; regenerate with scripts/make_scaleout_fixtures.py",
        p.display()
    );
    p
}

struct Reference {
    ids: Vec<u32>,
    position: usize,
    logits: Vec<f32>,
    effect: f32,
}

fn reference(dir: &Path) -> Reference {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference_logits.json")).unwrap())
            .unwrap();
    let nums = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    Reference {
        ids: nums("token_ids").iter().map(|&x| x as u32).collect(),
        position: v["position"].as_u64().unwrap() as usize,
        logits: nums("logits").iter().map(|&x| x as f32).collect(),
        effect: v["max_abs_adapter_effect"].as_f64().unwrap() as f32,
    }
}

fn logits_at(m: &Decoder, ids: &[u32], pos: usize) -> Vec<f32> {
    let t = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&t, &ForwardCtx::default())
        .unwrap()
        .squeeze(0)
        .unwrap()
        .get(pos)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Loads a fixture the way `--adapter DIR` does and compares with PEFT's logits.
fn matches_peft(name: &str) {
    let dir = fixture(name);
    let r = reference(&dir);
    let base = logits_at(&common::decoder(), &r.ids, r.position);
    let mut m = common::decoder();
    apply_adapter(&mut m, &dir).unwrap();
    let got = logits_at(&m, &r.ids, r.position);
    let d = max_diff(&got, &r.logits);
    let effect = max_diff(&base, &r.logits);
    eprintln!(
        "{name}: max |Δlogit| vs PEFT {d:.2e}, adapter effect {effect:.3} (PEFT: {:.3})",
        r.effect
    );
    assert!(
        effect > 0.5,
        "{name}: the adapter barely changes the logits ({effect})"
    );
    assert!(d < 1e-4, "{name}: logits differ from PEFT's by {d}");
}

#[test]
fn lora_keys_without_the_peft_prefix_give_peft_logits() {
    matches_peft("scaleout_no_prefix");
}

#[test]
fn raw_state_dict_with_adapter_name_infixes_and_modules_to_save_gives_peft_logits() {
    matches_peft("scaleout_raw_state_dict");
}

#[test]
fn modules_to_save_and_chosen_layers_give_peft_logits() {
    matches_peft("scaleout_modules_to_save");
}

fn copy_fixture(name: &str, to: &Path) -> PathBuf {
    let src = fixture(name);
    std::fs::create_dir_all(to).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), to.join(f)).unwrap();
    }
    to.to_path_buf()
}

fn edit_tensors(dir: &Path, f: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) {
    let path = dir.join("adapter_model.safetensors");
    let mut st = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    f(&mut st);
    candle_core::safetensors::save(&st, &path).unwrap();
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

fn load_err(dir: &Path, trainable: bool) -> String {
    let mut m = common::decoder();
    match load_lora_adapter(&mut m, dir, trainable) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn pickled_weights_are_refused_without_being_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("scaleout_no_prefix", tmp.path());
    std::fs::remove_file(dir.join("adapter_model.safetensors")).unwrap();
    // Not a real pickle: opening it would fail differently; the refusal comes first.
    std::fs::write(dir.join("adapter_model.bin"), b"\x80\x02 not opened").unwrap();
    let err = load_err(&dir, false);
    assert!(
        err.contains("adapter_model.bin") && err.contains("pickle") && err.contains("safetensors"),
        "{err}"
    );
    let s = summarize_adapter(&dir).unwrap();
    assert!(s.weights.contains(".bin"), "{}", s.weights);
}

#[test]
fn tensors_we_cannot_apply_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    // LoRA on the embedding.
    let dir = copy_fixture("scaleout_no_prefix", &tmp.path().join("emb"));
    edit_tensors(&dir, |t| {
        let z = Tensor::zeros((2, 512), candle_core::DType::F32, &Device::Cpu).unwrap();
        t.insert(
            "base_model.model.model.embed_tokens.lora_embedding_A".into(),
            z,
        );
    });
    let err = load_err(&dir, false);
    assert!(
        err.contains("lora_embedding_A") && err.contains("embeddings"),
        "{err}"
    );
    // A full tensor not listed in modules_to_save.
    let dir = copy_fixture("scaleout_no_prefix", &tmp.path().join("unlisted"));
    edit_tensors(&dir, |t| {
        let z = Tensor::ones(64, candle_core::DType::F32, &Device::Cpu).unwrap();
        t.insert("base_model.model.model.norm.weight".into(), z);
    });
    let err = load_err(&dir, false);
    assert!(
        err.contains("model.norm.weight") && err.contains("modules_to_save"),
        "{err}"
    );
    // Two adapter names in one raw state dict.
    let dir = copy_fixture("scaleout_raw_state_dict", &tmp.path().join("two"));
    edit_tensors(&dir, |t| {
        let k = "base_model.model.model.layers.0.self_attn.v_proj.lora_A.default.weight";
        let a = t[k].clone();
        t.insert(k.replace(".default.", ".other."), a);
    });
    let err = load_err(&dir, false);
    assert!(
        err.contains("several adapters") && err.contains("other"),
        "{err}"
    );
    // Continuing to train an adapter with fully trained modules is refused, loading it is not.
    let dir = fixture("scaleout_modules_to_save");
    let err = load_err(&dir, true);
    assert!(err.contains("modules_to_save"), "{err}");
    // A modules_to_save entry without its tensor.
    let dir = copy_fixture("scaleout_modules_to_save", &tmp.path().join("missing"));
    edit_config(&dir, |c| {
        c["modules_to_save"] = serde_json::json!(["model.norm", "lm_head"])
    });
    let err = load_err(&dir, false);
    assert!(
        err.contains("lm_head") && err.contains("adapter_config.json"),
        "{err}"
    );
}

/// A Python-free check of the tied-embedding rule: replacing `lm_head` on a tied model scales
/// the logits exactly as a scaled head must (`h·(sE)ᵀ = s·h·Eᵀ`), and leaves the input embedding
/// alone; replacing `embed_tokens` keeps the old matrix as the head.
#[test]
fn modules_to_save_on_tied_embeddings_unties_them() {
    let tmp = tempfile::tempdir().unwrap();
    let r = reference(&fixture("scaleout_no_prefix"));
    let mut lora_only = common::decoder();
    apply_adapter(&mut lora_only, &fixture("scaleout_no_prefix")).unwrap();
    let want = logits_at(&lora_only, &r.ids, r.position);
    let embed = common::decoder().embed_tokens;

    let dir = copy_fixture("scaleout_no_prefix", &tmp.path().join("head"));
    edit_config(&dir, |c| {
        c["modules_to_save"] = serde_json::json!(["lm_head"])
    });
    edit_tensors(&dir, |t| {
        t.insert(
            "base_model.model.lm_head.weight".into(),
            (&embed * 1.5).unwrap(),
        );
    });
    let mut m = common::decoder();
    assert!(m.lm_head.is_none(), "the bundled model ties its embeddings");
    apply_adapter(&mut m, &dir).unwrap();
    let got = logits_at(&m, &r.ids, r.position);
    let scaled: Vec<f32> = want.iter().map(|x| x * 1.5).collect();
    assert!(
        max_diff(&got, &scaled) < 1e-4,
        "{}",
        max_diff(&got, &scaled)
    );
    let same = (&m.embed_tokens - &embed)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(same.to_scalar::<f32>().unwrap(), 0.0);

    let dir = copy_fixture("scaleout_no_prefix", &tmp.path().join("embed"));
    edit_config(&dir, |c| {
        c["modules_to_save"] = serde_json::json!(["embed_tokens"])
    });
    edit_tensors(&dir, |t| {
        t.insert(
            "base_model.model.model.embed_tokens.weight".into(),
            (&embed * 2.0).unwrap(),
        );
    });
    let mut m = common::decoder();
    apply_adapter(&mut m, &dir).unwrap();
    let head = m.lm_head.as_ref().expect("untied").dense_weight().unwrap();
    let d = (&head - &embed).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(
        d.to_scalar::<f32>().unwrap(),
        0.0,
        "the head keeps the original matrix"
    );
    let d = (&m.embed_tokens - (&embed * 2.0).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn summary_reads_settings_and_names_the_trainer() {
    let s = summarize_adapter(&fixture("scaleout_modules_to_save")).unwrap();
    assert_eq!((s.rank, s.alpha, s.rslora), (2, 4.0, false));
    assert_eq!(s.targets, ["o_proj", "down_proj"]);
    assert_eq!(s.layers, Some(vec![3, 4]));
    assert_eq!(s.modules_to_save, ["model.norm"]);
    assert_eq!(s.base_model.as_deref(), Some("models/stories260K"));
    assert_eq!((s.engine.as_deref(), s.trained_elsewhere), (None, true));
    assert_eq!(s.method, "lora");
    assert_eq!(s.weights, "safetensors");
    assert!(
        summarize_adapter(&fixture("scaleout_raw_state_dict"))
            .unwrap()
            .rslora
    );

    let tmp = tempfile::tempdir().unwrap();
    // TRL's model card.
    let dir = copy_fixture("scaleout_no_prefix", &tmp.path().join("trl"));
    std::fs::write(
        dir.join("README.md"),
        "---\nbase_model: ./model\nlibrary_name: peft\ntags:\n- base_model:adapter:./model\n- lora\n- sft\n- transformers\n- trl\n---\n\n# Model Card\n",
    )
    .unwrap();
    let s = summarize_adapter(&dir).unwrap();
    assert_eq!(s.engine.as_deref(), Some("trl"));
    assert!(s.engine_evidence.unwrap().ends_with("README.md"));
    // LLaMA-Factory's saved arguments, with a 4-bit base.
    let dir = copy_fixture("scaleout_no_prefix", &tmp.path().join("lf"));
    std::fs::write(
        dir.join("training_args.yaml"),
        "finetuning_type: lora\nquantization_bit: 4\n",
    )
    .unwrap();
    let s = summarize_adapter(&dir).unwrap();
    assert_eq!(
        (s.engine.as_deref(), s.method.as_str()),
        (Some("llamafactory"), "qlora")
    );
    // Axolotl's card embeds its config.
    let dir = copy_fixture("scaleout_no_prefix", &tmp.path().join("ax"));
    std::fs::write(
        dir.join("README.md"),
        "---\ntags:\n- axolotl\n- generated_from_trainer\n---\n<details><summary>See axolotl config</summary>\n\n```yaml\nadapter: qlora\nload_in_4bit: true\n```\n",
    )
    .unwrap();
    let s = summarize_adapter(&dir).unwrap();
    assert_eq!(
        (s.engine.as_deref(), s.method.as_str()),
        (Some("axolotl"), "qlora")
    );
    // Brought back into an export folder: `<export>/output/checkpoint-10`.
    let export = tmp.path().join("export");
    let dir = copy_fixture("scaleout_no_prefix", &export.join("output/checkpoint-10"));
    std::fs::write(
        export.join("peft_studio_recipe.json"),
        r#"{"engine": "trl", "method": "qlora"}"#,
    )
    .unwrap();
    let s = summarize_adapter(&dir).unwrap();
    assert_eq!(
        (s.engine.as_deref(), s.method.as_str()),
        (Some("trl"), "qlora")
    );
    assert!(s.recipe.is_some() && s.trained_elsewhere);
}
