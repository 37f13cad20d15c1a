//! `peft recipe`: continue a run on a GPU server with an established trainer
//! (`export`), read an adapter folder trained there (`inspect`), and bring it back as a run
//! (`import`) for `peft chat|generate|merge --adapter`.

use crate::load::ModelArgs;
use crate::train::TrainArgs;
use clap::{Args, Subcommand, ValueEnum};
use peft_engine::peft::adapter_summary::summarize_adapter;
use peft_engine::scaleout::{export, Engine, ExportRequest};
use peft_engine::train::import::import_adapter;
use peft_engine::train::RunOrigin;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum RecipeCommand {
    /// Write the run (same flags as `peft train`) as a ready folder for Axolotl, LLaMA-Factory or
    /// TRL: config, data split, chat template, multi-GPU launch file and a README of commands.
    Export(Box<ExportArgs>),
    /// Show an adapter folder's settings and which trainer produced it.
    Inspect(InspectArgs),
    /// Bring an adapter trained elsewhere back as a run folder (checked against --model), marked
    /// as trained elsewhere; then use it with `--adapter OUT` in chat, generate and merge.
    Import(ImportArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EngineArg {
    Axolotl,
    Llamafactory,
    Trl,
}

impl From<EngineArg> for Engine {
    fn from(e: EngineArg) -> Self {
        match e {
            EngineArg::Axolotl => Engine::Axolotl,
            EngineArg::Llamafactory => Engine::LlamaFactory,
            EngineArg::Trl => Engine::Trl,
        }
    }
}

#[derive(Args)]
#[command(mut_arg("out", |a| a
    .required(true)
    .default_value(None::<&str>)
    .help("Folder to write the export into (an earlier export there is replaced)")))]
pub struct ExportArgs {
    /// The trainer to continue with.
    #[arg(long, value_enum)]
    engine: EngineArg,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Args)]
pub struct InspectArgs {
    /// An adapter folder (adapter_config.json + weights).
    dir: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The adapter folder the trainer wrote (adapter_config.json + adapter_model.safetensors).
    dir: PathBuf,
    /// The run folder to create (new or empty).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Print the run record as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(c: RecipeCommand) -> peft_engine::Result<()> {
    match c {
        RecipeCommand::Export(a) => run_export(*a),
        RecipeCommand::Inspect(a) => run_inspect(a),
        RecipeCommand::Import(a) => run_import(a),
    }
}

fn run_export(a: ExportArgs) -> peft_engine::Result<()> {
    let t = &a.train;
    if t.resume {
        return Err(peft_engine::Error::invalid(
            "resume",
            "an export starts the run afresh on the server; drop --resume",
        ));
    }
    let mut cfg = t.config()?;
    let model = crate::load::open_model(&t.model)?;
    if t.plan.is_some() {
        cfg = crate::plan::auto_train_config(&model, &t.data, cfg, t.size.packing, t.bf16_compute)?;
    }
    let r = export(
        &ExportRequest::new(a.engine.into(), &model, &t.data, &cfg),
        &t.out,
    )?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r)
                .map_err(|e| peft_engine::Error::invalid("json", e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "wrote {} for {}: {} ({} train / {} validation examples, {} steps on one GPU)",
        r.out_dir.display(),
        r.engine.label(),
        r.config_file,
        r.data.train_examples,
        r.data.eval_examples,
        r.total_steps
    );
    println!(
        "{} settings mapped field by field; what differs ({}):",
        r.mapped.len(),
        r.not_carried.len()
    );
    for g in &r.not_carried {
        println!("  - {}: {}", g.field, g.detail);
    }
    println!("\non the server, in {}:", r.out_dir.display());
    for c in &r.install {
        println!("  {c}");
    }
    println!("  {}", r.run);
    println!("  # several GPUs: {}", r.run_multi_gpu);
    println!("\nREADME.md in the folder has the full table and how to bring the adapter back.");
    Ok(())
}

fn run_inspect(a: InspectArgs) -> peft_engine::Result<()> {
    let s = summarize_adapter(&a.dir)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s)
                .map_err(|e| peft_engine::Error::invalid("json", e.to_string()))?
        );
        return Ok(());
    }
    let who = match (&s.engine, s.trained_elsewhere) {
        (_, false) => "trained here (PEFT Studio)".to_string(),
        (Some(e), true) => format!("trained elsewhere with {e}"),
        (None, true) => "trained elsewhere (trainer not recorded)".to_string(),
    };
    println!("{}: {who}", a.dir.display());
    if let Some(ev) = &s.engine_evidence {
        println!("  evidence: {ev}");
    }
    println!(
        "  {} r={} alpha={} dropout={} rslora={} targets={:?}",
        s.method, s.rank, s.alpha, s.dropout, s.rslora, s.targets
    );
    if let Some(l) = &s.layers {
        println!("  layers: {l:?}");
    }
    if !s.modules_to_save.is_empty() {
        println!("  fully trained modules: {:?}", s.modules_to_save);
    }
    println!(
        "  base model: {}",
        s.base_model.as_deref().unwrap_or("(not recorded)")
    );
    println!("  weights: {}", s.weights);
    Ok(())
}

fn run_import(a: ImportArgs) -> peft_engine::Result<()> {
    let model = crate::load::open_model(&a.model)?;
    let r = import_adapter(&model, &a.dir, &a.out)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r)
                .map_err(|e| peft_engine::Error::invalid("json", e.to_string()))?
        );
        return Ok(());
    }
    if let RunOrigin::Imported {
        engine, settings, ..
    } = &r.origin
    {
        println!(
            "imported {} as run {} over {} (trained elsewhere{}): {settings}",
            a.dir.display(),
            r.dir.display(),
            r.model,
            engine
                .as_deref()
                .map(|e| format!(" with {e}"))
                .unwrap_or_default()
        );
    }
    if let Some((step, loss)) = r.losses.last() {
        println!(
            "  its log: {} steps, last loss {loss:.4} at step {step}",
            r.step
        );
    }
    let (d, m) = (r.dir.display(), &r.model);
    println!("  chat:  peft chat --model {m} --adapter {d}");
    println!("  merge: peft merge --model {m} --adapter {d} --out MERGED_DIR");
    Ok(())
}
