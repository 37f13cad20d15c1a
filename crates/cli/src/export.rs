//! `peft export`: take the tuned model home — a merged GGUF, a LoRA adapter GGUF, an Ollama
//! folder, LM Studio's layout or a merged Hugging Face folder — then print the self-check
//! (`peft_engine::export::run`; a failed check is an error).

use crate::load::{open_model, ModelArgs};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use peft_engine::export::gguf::ExportProgress;
use peft_engine::export::gguf_quant::GgufQuant;
use peft_engine::export::run::{ExportFormat, ExportReport, ExportRequest};
use peft_engine::export::selfcheck::CheckOptions;
use peft_engine::train::tuned::export_tuned;
use std::path::PathBuf;

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The adapter folder (`peft train --out`, or a PEFT adapter); without it the base is exported.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "gguf")]
    format: ExportFormat,
    /// Weight type of GGUF files (q4_k_m is llama.cpp's per-tensor mix; adapters: f32/f16/bf16).
    #[arg(long, value_enum, default_value = "f16")]
    quant: GgufQuant,
    /// A .gguf file or a folder (gguf, gguf-adapter), the folder to fill (ollama, hf), or LM
    /// Studio's models folder (lmstudio).
    #[arg(long)]
    out: PathBuf,
    /// Model name (file names, general.name, the Ollama tag); default: from the model and adapter.
    #[arg(long)]
    name: Option<String>,
    /// LM Studio publisher folder.
    #[arg(long, default_value = "peft-studio")]
    publisher: String,
    /// Tokens each self-check conversation may generate.
    #[arg(long, default_value_t = 32)]
    check_tokens: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ExportArgs) -> peft_engine::Result<()> {
    let m = open_model(&a.model)?;
    let req = ExportRequest {
        format: a.format,
        quant: a.quant,
        out: a.out.clone(),
        // Empty: the engine names it for the model and adapter.
        name: a.name.clone().unwrap_or_default(),
        publisher: a.publisher.clone(),
        check: CheckOptions {
            max_new_tokens: a.check_tokens,
            ..CheckOptions::default()
        }, // Ctrl-C ends the process; the temporary file is never renamed into place.
        cancel: None,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut on_progress = |p: ExportProgress| {
        if p.stage == "checking" {
            bar.set_style(
                ProgressStyle::with_template("{msg:24} [{bar:30}] {pos}/{len}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
        }
        bar.set_length(p.total);
        bar.set_position(p.done);
        bar.set_message(format!("{} {}", p.stage, p.item));
    };
    let report = export_tuned(&m, a.adapter.as_deref(), &req, &mut on_progress)?;
    bar.finish_and_clear();
    print_report(&report, a.json);
    Ok(())
}

fn print_report(r: &ExportReport, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        );
        return;
    }
    for f in &r.files {
        println!("wrote {}", f.display());
    }
    if let Some(g) = &r.gguf {
        let types: Vec<String> = g.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
        println!(
            "  {} tensors ({}), {:.1} MiB, {} fallback type(s)",
            g.tensors,
            types.join(", "),
            g.bytes as f64 / (1024.0 * 1024.0),
            g.fallbacks
        );
    }
    if let Some(ad) = &r.adapter {
        println!(
            "  {} adapted layers, rank {}, alpha {}",
            ad.layers, ad.rank, ad.alpha
        );
    }
    if let Some(t) = &r.ollama_template {
        println!("  Ollama template: {} family", t.family);
    }
    let c = &r.self_check;
    println!(
        "self-check ({}, {} tokens per conversation):",
        if c.strict {
            "tokens must be identical"
        } else {
            "quantized: first tokens compared"
        },
        c.max_new_tokens
    );
    print!("{}", c.summary());
    for s in &r.next_steps {
        println!("next: {s}");
    }
}
