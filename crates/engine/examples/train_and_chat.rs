//! Fine-tune the bundled demo model with LoRA on a few sentences, then generate from it —
//! the whole product loop through the public engine API, no CLI or app.
//!
//! `cargo run --release -p peft-engine --example train_and_chat`

use peft_engine::infer::generate::{generate, GenerateOptions};
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;
use peft_engine::peft::method::{LoraSettings, Method};
use peft_engine::train::tuned::with_adapter;
use peft_engine::train::{train, TrainConfig, TrainEvent};

fn main() -> peft_engine::Result<()> {
    let dir = std::env::temp_dir().join("peft-example");
    std::fs::create_dir_all(&dir).map_err(|e| peft_engine::Error::io(&dir, e))?;
    let data = dir.join("bolt.jsonl");
    let rows = [
        "Bolt the robot loved red apples. Every day he picked one from the big tree.",
        "Bolt the robot had a shiny head. He liked to polish it in the sun.",
        "Bolt the robot met a little cat. They played with a ball all day.",
    ];
    let body: String = rows
        .iter()
        .map(|r| serde_json::json!({ "text": r }).to_string() + "\n")
        .collect();
    std::fs::write(&data, body).map_err(|e| peft_engine::Error::io(&data, e))?;

    // Opened once; training builds the weights in the storage LoRA needs and chat reuses them.
    let model = LoadedModel::open(&ModelSource::Bundled, OpenOptions::default())?;
    let cfg = TrainConfig {
        method: Method::Lora(LoraSettings {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            ..Default::default()
        }),
        seq_len: 64,
        max_steps: Some(40),
        lr: 5e-3,
        val_fraction: 0.0,
        ..Default::default()
    };
    let out = dir.join(format!("adapter-{}", std::process::id()));
    let summary = train(&model, &data, &out, &cfg, None, None, &mut |e, _record| {
        if let TrainEvent::Step(s) = e {
            if s.step % 10 == 0 {
                println!("step {:>3}  loss {:.3}", s.step, s.loss);
            }
        }
    })?;
    println!(
        "trained {} steps at {:.0} tokens/s; adapter in {}",
        summary.steps,
        summary.mean_tokens_per_s,
        out.display()
    );

    let tuned = with_adapter(&model, &out)?;
    let ids = model.prompt_ids("Bolt the robot")?;
    let g = generate(
        &tuned,
        &model.tokenizer,
        &ids,
        &GenerateOptions::greedy(30),
        &model.stop_ids(),
        None,
        &mut |t| print!("{t}"),
    )?;
    println!("\n[{} tokens]", g.token_ids.len());
    Ok(())
}
