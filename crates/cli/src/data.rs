//! `peft data inspect`: what a dataset looks like to the model.

use crate::load::{open_model, ModelArgs};
use clap::{Args, Subcommand};
use peft_engine::data::formats::LoadOptions;
use peft_engine::data::inspect::inspect;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Detected format, rows, token lengths, truncation and one rendered example.
    Inspect(InspectArgs),
}

#[derive(Args)]
pub struct InspectArgs {
    /// JSONL, JSON array or CSV file.
    file: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Sequence length to measure truncation against.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Skip malformed rows (and count them) instead of failing.
    #[arg(long)]
    skip_bad_rows: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: DataCommand) -> peft_engine::Result<()> {
    let DataCommand::Inspect(a) = cmd;
    let m = open_model(&a.model)?;
    let r = inspect(
        &a.file,
        &m.tokenizer,
        &m.template,
        a.seq_len,
        &LoadOptions {
            skip_bad_rows: a.skip_bad_rows,
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(());
    }
    let v = serde_json::to_value(&r).unwrap_or_default();
    println!("file        {}", a.file.display());
    println!("format      {}", v["format"]);
    println!("rows        {} ({} skipped)", v["rows"], v["skipped"]);
    let l = &v["lengths"];
    println!(
        "tokens      p50 {} · p95 {} · max {} · mean {:.0}",
        l["p50"],
        l["p95"],
        l["max"],
        l["mean"].as_f64().unwrap_or(0.0)
    );
    println!(
        "truncated   {} rows ({:.1} %) at {} tokens",
        v["truncated"],
        100.0 * v["truncated_share"].as_f64().unwrap_or(0.0),
        a.seq_len
    );
    if let Some(hist) = v["histogram"].as_array() {
        let max = hist
            .iter()
            .filter_map(|b| b[2].as_u64())
            .max()
            .unwrap_or(1)
            .max(1);
        for b in hist {
            let n = b[2].as_u64().unwrap_or(0);
            println!(
                "  {:>6}–{:<6} {:>6} {}",
                b[0],
                b[1],
                n,
                "█".repeat((40 * n / max) as usize)
            );
        }
    }
    if let Some(segs) = v["example"].as_array() {
        println!("example (trained text in [brackets]):");
        let mut s = String::new();
        for seg in segs {
            let t = seg["text"].as_str().unwrap_or("");
            if seg["trained"].as_bool().unwrap_or(false) {
                s.push_str(&format!("[{t}]"));
            } else {
                s.push_str(t);
            }
        }
        println!("{s}");
    }
    Ok(())
}
