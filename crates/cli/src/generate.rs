//! `peft generate` and `peft chat`.

use crate::args::DeviceArgs;
use crate::load::{open_model, ModelArgs};
use clap::Args;
use peft_engine::infer::generate::{generate, GenerateOptions};
use peft_engine::model::decoder::Decoder;
use peft_engine::model::loaded::LoadedModel;
use peft_engine::template::Message;
use peft_engine::train::tuned::with_adapter;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Sampling flags shared by `generate` and `chat`.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Randomness of sampling; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    /// Sample only among the K most likely tokens (0 = no limit).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Sample only among the most likely tokens whose probabilities add up to P (1 = no limit).
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    /// Values above 1 discourage repeating recent tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Random seed, for reproducible sampling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

impl SamplingArgs {
    fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: 64,
            seed: self.seed,
        }
    }
}

/// Opens the model and builds the weights to generate with: the base with `--adapter` applied
/// (over the storage it was trained against), or the base alone.
fn load_with_adapter(
    model: &ModelArgs,
    adapter: &Option<PathBuf>,
    device: &DeviceArgs,
) -> peft_engine::Result<(LoadedModel, Arc<Decoder>)> {
    let m = open_model(model)?;
    let d = match adapter {
        Some(dir) => Arc::new(with_adapter(&m, dir)?),
        None => m.weights(&m.generation_storage(
            peft_engine::model::decoder::LoadOptions::dense(model.weight_dtype()),
        ))?,
    };
    let dev = device.device.open()?;
    let d = match dev.is_cpu() {
        true => d,
        false => Arc::new(d.on_device(&dev)?),
    };
    Ok((m, d))
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Apply a trained adapter folder (PEFT LoRA or a selective/full run) on top of the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// The prompt. An empty prompt ("") starts from the BOS token.
    #[arg(long, short, default_value = "")]
    prompt: String,
    /// Treat the prompt as a user message and render it with the model's chat template.
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object {"text", "token_ids", "prompt_tokens", "tokens_per_s"} instead
    /// of streaming text.
    #[arg(long)]
    json: bool,
}

/// A flag set by Ctrl-C, so a long generation stops cleanly instead of killing the process.
fn ctrl_c_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // A second handler registration fails harmlessly; the first one keeps working.
    let _ = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst));
    flag
}

pub fn run(a: GenerateArgs) -> peft_engine::Result<()> {
    let (m, d) = load_with_adapter(&a.model, &a.adapter, &a.device)?;
    let ids = if a.chat {
        m.chat_ids(&[Message::new("user", &a.prompt)])?
    } else {
        m.prompt_ids(&a.prompt)?
    };
    let cancel = ctrl_c_flag();
    let stdout = std::io::stdout();
    let json = a.json;
    if !json && !a.chat {
        print!("{}", a.prompt);
    }
    let mut on_text = |t: &str| {
        if !json {
            let mut out = stdout.lock();
            let _ = out.write_all(t.as_bytes());
            let _ = out.flush();
        }
    };
    let g = generate(
        &d,
        &m.tokenizer,
        &ids,
        &a.sampling.options(),
        &m.stop_ids(),
        Some(&cancel),
        &mut on_text,
    )?;
    if json {
        let v = serde_json::json!({
            "text": g.text,
            "token_ids": g.token_ids,
            "prompt_tokens": g.prompt_tokens,
            "tokens_per_s": g.tokens_per_s,
        });
        println!("{v}");
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated, {:.1} tokens/s, stop: {:?}]",
            g.prompt_tokens,
            g.token_ids.len(),
            g.tokens_per_s,
            g.stop
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Apply a trained adapter folder on top of the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// An optional system message that sets the assistant's behaviour.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn chat(a: ChatArgs) -> peft_engine::Result<()> {
    let (m, d) = load_with_adapter(&a.model, &a.adapter, &a.device)?;
    if m.template.is_fallback() {
        eprintln!("note: this model has no chat template; using PEFT Studio's fallback format.");
    }
    eprintln!("Chatting with {}. Type /reset to start over, /exit or Ctrl-D to quit; Ctrl-C stops a reply.", m.info.source);
    let cancel = ctrl_c_flag();
    let mut history: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
    let stdin = std::io::stdin();
    loop {
        eprint!("\n> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m| m.role == "system");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        let ids = m.chat_ids(&history)?;
        cancel.store(false, Ordering::SeqCst);
        let mut on_text = |t: &str| {
            print!("{t}");
            let _ = std::io::stdout().flush();
        };
        let g = generate(
            &d,
            &m.tokenizer,
            &ids,
            &a.sampling.options(),
            &m.stop_ids(),
            Some(&cancel),
            &mut on_text,
        )?;
        println!();
        history.push(Message::new("assistant", g.text.trim()));
    }
    Ok(())
}
