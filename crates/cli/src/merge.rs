//! `peft merge`: fold an adapter into its base and write a Hugging Face model folder.

use crate::load::{open_model, ModelArgs};
use clap::Args;
use peft_engine::export::merge::{write_merged, ExportDtype};
use peft_engine::model::decoder::LoadOptions;
use peft_engine::peft::adapter_io::apply_adapter;
use std::path::PathBuf;

#[derive(Args)]
pub struct MergeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The adapter folder (`peft train --out`, its `best/`, or a PEFT adapter from Python).
    #[arg(long)]
    adapter: PathBuf,
    /// Where to write the merged model (config.json, model.safetensors, tokenizer files); a
    /// new or empty folder, or an earlier export to replace.
    #[arg(long)]
    out: PathBuf,
    /// Weight type of the merged files: f32 (exact) or bf16 (half the size).
    #[arg(long, value_enum, default_value_t = ExportDtype::F32)]
    dtype: ExportDtype,
}

pub fn run(a: MergeArgs) -> peft_engine::Result<()> {
    let m = open_model(&a.model)?;
    // The full-precision base, whatever the adapter trained over: a merged model is never
    // written from 4-bit weights.
    let mut d = m.build_weights(&LoadOptions::default())?;
    apply_adapter(&mut d, &a.adapter)?;
    write_merged(&m, &mut d, &a.out, a.dtype)?;
    eprintln!("merged model written to {}", a.out.display());
    Ok(())
}
