//! `peft merge`: fold an adapter into its base and write a Hugging Face model folder.

use crate::load::{load_model, ModelArgs};
use clap::Args;
use peft_engine::export::merge::{write_merged, ExportDtype};
use peft_engine::peft::adapter_io::apply_adapter;
use std::path::PathBuf;

#[derive(Args)]
pub struct MergeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The adapter folder (`peft train --out`, or a PEFT adapter from Python).
    #[arg(long)]
    adapter: PathBuf,
    /// Where to write the merged model (config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    out: PathBuf,
    /// Weight type of the merged files: f32 (exact) or bf16 (half the size).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
}

pub fn run(a: MergeArgs) -> peft_engine::Result<()> {
    let mut m = load_model(&a.model)?;
    apply_adapter(&mut m.decoder, &a.adapter)?;
    let dtype = if a.dtype == "bf16" {
        ExportDtype::Bf16
    } else {
        ExportDtype::F32
    };
    write_merged(&mut m, &a.out, dtype)?;
    eprintln!("merged model written to {}", a.out.display());
    Ok(())
}
