//! The export folder's README.md: what is in the folder, the exact install and run commands,
//! every setting and where it went, everything that differs, and how to bring the adapter back.

use crate::model::load::ModelSource;
use crate::peft::method::Method;
use crate::scaleout::{Engine, ExportReport, ExportRequest, MANIFEST, OUTPUT_DIR};

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "\\n")
}

/// The README text.
pub fn render(r: &ExportReport, req: &ExportRequest<'_>) -> String {
    let e = r.engine;
    let mut s = String::new();
    s.push_str(&format!(
        "# Continue on a GPU server with {}\n\n",
        e.label()
    ));
    s.push_str(&format!(
        "Written by PEFT Studio {} from the run planned for model `{}` on `{}` ({} method). \
         `{}` reproduces it setting for setting; the table below says where each setting went, and \
         **[What differs](#what-differs)** lists everything {} cannot do the way PEFT Studio does.\n\n",
        env!("CARGO_PKG_VERSION"),
        req.source.describe(),
        req.data.display(),
        req.train.method.name(),
        r.config_file,
        e.label()
    ));
    s.push_str("## In this folder\n\n");
    for f in &r.files {
        if f.starts_with("model/") && f != "model/config.json" {
            continue;
        }
        let what = match f.as_str() {
            "README.md" => "this file".to_string(),
            "data/train.jsonl" => format!("{} training examples", r.data.train_examples),
            "data/eval.jsonl" => format!(
                "{} validation examples (our seeded split)",
                r.data.eval_examples
            ),
            "data/dataset_info.json" => "LLaMA-Factory's registry of the two files".to_string(),
            "chat_template.jinja" => {
                "the chat template, passed to the engine explicitly".to_string()
            }
            "model/config.json" => {
                "the bundled demo model (stories260K), copied so the folder runs as is".to_string()
            }
            MANIFEST => {
                "what was exported, for PEFT Studio when the adapter comes back".to_string()
            }
            f if f == r.config_file => format!("the {} config", e.label()),
            f if f.starts_with("ds_zero") || f.starts_with("accelerate_") => {
                "multi-GPU launch file".to_string()
            }
            _ => String::new(),
        };
        let name = if f == "model/config.json" {
            "model/"
        } else {
            f.as_str()
        };
        s.push_str(&format!("- `{name}` — {what}\n"));
    }
    s.push_str("\n## Install (on the server, from this folder)\n\n```sh\n");
    for c in &r.install {
        s.push_str(c);
        s.push('\n');
    }
    s.push_str("```\n\n## Run\n\nOne GPU:\n\n```sh\n");
    s.push_str(&r.run);
    s.push_str("\n```\n\nSeveral GPUs (DeepSpeed ZeRO; set the number of processes to your GPU count):\n\n```sh\n");
    s.push_str(&r.run_multi_gpu);
    s.push_str(&format!(
        "\n```\n\nOn N GPUs each optimizer step sees N × {} × {} examples: divide the gradient \
         accumulation by N to keep the run's effective batch. The run here takes {} optimizer \
         steps on one GPU.\n\n",
        req.train.batch_size, req.train.grad_accum, r.total_steps
    ));
    let model_flag = match req.source {
        ModelSource::Bundled => "demo".to_string(),
        other => other.base_model_id(),
    };
    s.push_str("## Bring the result back\n\n");
    let result = if matches!(req.train.method, Method::Lora(_) | Method::Qlora(_)) {
        format!(
            "The adapter is written to `{OUTPUT_DIR}/` (`adapter_config.json` + \
             `adapter_model.safetensors`). Copy that folder back and open it in PEFT Studio:\n\n\
             ```sh\npeft chat --model {model_flag} --adapter {OUTPUT_DIR}\n\
             peft merge --model {model_flag} --adapter {OUTPUT_DIR} --out merged\n```\n\n\
             PEFT Studio recognises it as trained elsewhere from this folder's `{MANIFEST}`."
        )
    } else {
        format!(
            "The trained model is written to `{OUTPUT_DIR}/` as a Hugging Face folder; open it \
             in PEFT Studio as a model: `peft chat --model {OUTPUT_DIR}`."
        )
    };
    s.push_str(&result);
    s.push_str("\n\n## Settings, field by field\n\n| PEFT Studio | ");
    s.push_str(e.label());
    s.push_str(" key | value |\n|---|---|---|\n");
    for m in &r.mapped {
        s.push_str(&format!(
            "| {} | `{}` | `{}` |\n",
            md_cell(&m.ours),
            m.theirs,
            md_cell(&m.value)
        ));
    }
    s.push_str("\n## What differs\n\n");
    if r.not_carried.is_empty() {
        s.push_str("Nothing.\n");
    }
    for g in &r.not_carried {
        s.push_str(&format!("- **{}**: {}\n", g.field, g.detail));
    }
    let d = &r.data;
    s.push_str(&format!(
        "\n## Data\n\nSource format {}, written as {} rows: {} train + {} validation examples \
         (the split our trainer makes with seed {}); {} examples longer than {} tokens (the engine \
         cuts them); {} dropped for having no trained token; {} malformed rows skipped.\n",
        d.source_format,
        d.rows,
        d.train_examples,
        d.eval_examples,
        req.train.seed,
        d.truncated,
        req.train.seq_len,
        d.dropped_untrained,
        d.skipped_rows
    ));
    s.push_str(&format!("\nMappings written against {}.\n", versions(e)));
    s
}

fn versions(e: Engine) -> &'static str {
    match e {
        Engine::Axolotl => "Axolotl 0.19",
        Engine::LlamaFactory => "LLaMA-Factory 0.9.5",
        Engine::Trl => "TRL 1.16 (transformers 5, peft 0.18+)",
    }
}
