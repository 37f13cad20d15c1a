//! `peft info`: what a model is.

use crate::load::{open_model, ModelArgs};
use clap::Args;
use peft_engine::memory::format_bytes;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InfoArgs) -> peft_engine::Result<()> {
    let m = open_model(&a.model)?;
    let i = &m.info;
    if a.json {
        println!("{}", serde_json::to_string_pretty(i).unwrap_or_default());
        return Ok(());
    }
    println!("model          {}", i.source);
    println!("architecture   {}", i.architecture);
    println!(
        "parameters     {} ({:.1} M)",
        i.parameters,
        i.parameters as f64 / 1e6
    );
    println!("dtype on disk  {}", i.dtype_on_disk);
    println!("size on disk   {}", format_bytes(i.size_on_disk_bytes));
    println!("context        {} tokens", i.context_length);
    println!("layers         {} × hidden {}", i.layers, i.hidden_size);
    println!("vocabulary     {}", i.vocab_size);
    println!(
        "chat template  {}",
        if i.has_chat_template {
            "yes"
        } else {
            "no (fallback format)"
        }
    );
    Ok(())
}
