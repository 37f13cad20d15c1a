//! A summary of an adapter folder's settings for the run history: method, rank, alpha,
//! targets, base model, and which trainer produced it when that can be told from the files
//! trainers leave next to the adapter.
//!
//! Evidence, strongest first: the `peft_studio_recipe.json` of a `peft recipe export` folder
//! (in the adapter folder or up to two levels above, where the engines' `output/` and
//! `output/checkpoint-N/` land); our own checkpoints; LLaMA-Factory's `training_args.yaml` /
//! `trainer_log.jsonl`; the model card's tags (`axolotl`, `llama-factory`, `trl`), which the
//! trainers write into `README.md`. Whether the base was 4-bit (QLoRA) is not in
//! `adapter_config.json`; it is read from the same files when they say so.
//!
//! Reading a summary never loads tensors and never fails on a pickled `.bin` (it is reported).

use crate::error::Result;
use crate::fsutil::read_json;
use crate::peft::adapter_config::{read_adapter_config, ADAPTER_WEIGHTS};
use crate::peft::adapter_import::BIN_WEIGHTS;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The manifest `peft recipe export` writes into its folder (`scaleout`).
pub const RECIPE_MANIFEST: &str = "peft_studio_recipe.json";

/// What the run history shows for an imported adapter.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdapterSummary {
    /// `lora`, or `qlora` when the files say the base was 4-bit.
    pub method: String,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub rslora: bool,
    /// `target_modules` as written (a list, or PEFT's regex/`all-linear` string).
    pub targets: Vec<String>,
    pub layers: Option<Vec<usize>>,
    pub modules_to_save: Vec<String>,
    pub base_model: Option<String>,
    /// `axolotl`, `llamafactory`, `trl`, `peft-studio`, or `None` when nothing says.
    pub engine: Option<String>,
    /// The file that told us.
    pub engine_evidence: Option<String>,
    /// True unless the folder is one of our own training outputs.
    pub trained_elsewhere: bool,
    /// `safetensors`, `pickle (.bin): convert before loading`, or `missing`.
    pub weights: String,
    /// The export manifest this adapter came back to, if any.
    pub recipe: Option<PathBuf>,
}

/// Reads `dir/adapter_config.json` (and what lies around it) into a summary.
///
/// # Errors
/// What [`read_adapter_config`] reports: a missing or unreadable config, or an adapter kind we
/// cannot apply.
pub fn summarize_adapter(dir: &Path) -> Result<AdapterSummary> {
    let cfg = read_adapter_config(dir)?;
    let targets = match &cfg.target_modules {
        serde_json::Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        serde_json::Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    };
    let layers = match &cfg.layers_to_transform {
        Some(serde_json::Value::Array(a)) => Some(
            a.iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as usize)
                .collect(),
        ),
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| vec![v as usize]),
        _ => None,
    };
    let weights = if dir.join(ADAPTER_WEIGHTS).exists() {
        "safetensors"
    } else if dir.join(BIN_WEIGHTS).exists() {
        "pickle (.bin): convert to safetensors before loading"
    } else {
        "missing"
    };
    let mut s = AdapterSummary {
        method: "lora".into(),
        rank: cfg.r,
        alpha: cfg.lora_alpha,
        dropout: cfg.lora_dropout,
        rslora: cfg.use_rslora,
        targets,
        layers,
        modules_to_save: cfg.modules_to_save.clone().unwrap_or_default(),
        base_model: cfg.base_model_name_or_path.clone(),
        engine: None,
        engine_evidence: None,
        trained_elsewhere: true,
        weights: weights.into(),
        recipe: None,
    };
    detect(dir, &mut s);
    Ok(s)
}

fn found(s: &mut AdapterSummary, engine: &str, evidence: &Path) {
    s.engine = Some(engine.to_string());
    s.engine_evidence = Some(evidence.display().to_string());
}

fn detect(dir: &Path, s: &mut AdapterSummary) {
    let mut up = Some(dir);
    for _ in 0..3 {
        let Some(d) = up else { break };
        let manifest = d.join(RECIPE_MANIFEST);
        if let Ok(m) = read_json::<serde_json::Value>(&manifest) {
            if let Some(e) = m.get("engine").and_then(|e| e.as_str()) {
                found(s, e, &manifest);
            }
            if m.get("method").and_then(|v| v.as_str()) == Some("qlora") {
                s.method = "qlora".into();
            }
            s.recipe = Some(manifest);
            return;
        }
        up = d.parent();
    }
    if dir.join("checkpoints").join("latest").exists() {
        found(s, "peft-studio", &dir.join("checkpoints"));
        s.trained_elsewhere = false;
        return;
    }
    let text = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let lf_args = text("training_args.yaml");
    if !lf_args.is_empty() || dir.join("trainer_log.jsonl").exists() {
        let ev = if lf_args.is_empty() {
            "trainer_log.jsonl"
        } else {
            "training_args.yaml"
        };
        found(s, "llamafactory", &dir.join(ev));
        if yaml_line(&lf_args, "quantization_bit").as_deref() == Some("4") {
            s.method = "qlora".into();
        }
        return;
    }
    let card = text("README.md");
    let tags = card_tags(&card);
    for (tag, engine) in [
        ("axolotl", "axolotl"),
        ("llama-factory", "llamafactory"),
        ("trl", "trl"),
    ] {
        if tags.iter().any(|t| t == tag) {
            found(s, engine, &dir.join("README.md"));
            // Axolotl embeds its config in the card.
            if yaml_line(&card, "load_in_4bit").as_deref() == Some("true")
                || yaml_line(&card, "adapter").as_deref() == Some("qlora")
            {
                s.method = "qlora".into();
            }
            return;
        }
    }
}

/// The value of `key: value` on a line of its own (simple YAML), unquoted.
fn yaml_line(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(':')?;
        (k.trim() == key).then(|| v.trim().trim_matches(['"', '\'']).to_string())
    })
}

/// The `tags:` list of a model card's YAML front matter.
fn card_tags(card: &str) -> Vec<String> {
    let Some(front) = card
        .strip_prefix("---")
        .and_then(|r| r.split("\n---").next())
    else {
        return Vec::new();
    };
    let mut tags = Vec::new();
    let mut in_tags = false;
    for line in front.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("tags:") {
            in_tags = true;
            // Flow style: tags: [a, b]
            let rest = rest.trim();
            if rest.starts_with('[') {
                tags.extend(
                    rest.trim_matches(['[', ']'])
                        .split(',')
                        .map(|x| x.trim().trim_matches(['"', '\'']).to_string()),
                );
                in_tags = false;
            }
        } else if in_tags {
            match t.strip_prefix("- ") {
                Some(tag) => tags.push(tag.trim().trim_matches(['"', '\'']).to_string()),
                None if t.is_empty() => {}
                None => in_tags = false,
            }
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_tags_and_yaml_lines() {
        let card = "---\nbase_model: x\nlibrary_name: peft\ntags:\n- base_model:adapter:x\n- lora\n- sft\n- trl\n---\n# card\n";
        assert_eq!(
            card_tags(card),
            ["base_model:adapter:x", "lora", "sft", "trl"]
        );
        assert_eq!(
            card_tags("---\ntags: [axolotl, \"generated_from_trainer\"]\n---\n"),
            ["axolotl", "generated_from_trainer"]
        );
        assert!(card_tags("no front matter").is_empty());
        assert_eq!(
            yaml_line("a: 1\nquantization_bit: 4\n", "quantization_bit").as_deref(),
            Some("4")
        );
    }
}
