//! `peft`: PEFT Studio's headless front end. Every command is a thin layer over
//! `peft_engine`; the desktop app calls the same functions.

mod args;
mod bench;
mod bench_generate;
mod bench_plan;
mod bench_train;
mod data;
mod export;
mod generate;
mod hardware;
mod info;
mod load;
mod merge;
mod plan;
mod recipe;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "peft",
    version,
    about = "Fine-tune open language models on your own computer (selective PEFT, LoRA, QLoRA).",
    long_about = "PEFT Studio's command line. MODEL arguments accept a local Hugging Face folder, \
a .gguf file, a hub id like org/name[@revision] (downloaded into the standard Hugging Face \
cache), or `demo` for the bundled stories260K model (the default)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, parameter count, storage type, size and context length.
    Info(info::InfoArgs),
    /// Show CPU, memory and GPUs as training sees them.
    Hardware(hardware::HardwareArgs),
    /// Estimate memory and time, and rank configurations that fit this machine.
    Plan(Box<plan::PlanArgs>),
    /// Generate text from a prompt (greedy with --temperature 0).
    Generate(generate::GenerateArgs),
    /// Chat interactively with a model, streamed, using its chat template.
    Chat(generate::ChatArgs),
    /// Fine-tune a model (LoRA, QLoRA, selective or full) on a dataset.
    Train(Box<train::TrainArgs>),
    /// Fold an adapter into its base model and write a Hugging Face model folder.
    Merge(merge::MergeArgs),
    /// Export for llama.cpp, Ollama or LM Studio (GGUF), then check the export chats alike.
    Export(Box<export::ExportArgs>),
    /// Look at a dataset the way training will see it.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Measure speed and memory.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Continue a run on a GPU server with Axolotl, LLaMA-Factory or TRL, and read adapters trained there.
    #[command(subcommand)]
    Recipe(recipe::RecipeCommand),
}

fn main() -> ExitCode {
    peft_engine::runtime::configure_cpu_threads();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Hardware(a) => hardware::run(a),
        Command::Plan(a) => plan::run(*a),
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => generate::chat(a),
        Command::Train(a) => train::run(*a),
        Command::Merge(a) => merge::run(a),
        Command::Export(a) => export::run(*a),
        Command::Data(d) => data::run(d),
        Command::Bench(b) => bench::run(b),
        Command::Recipe(r) => recipe::run(r),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
