//! The run as a TRL `trl sft --config trl.yaml` file (TRL 1.x: `ModelConfig`, `SFTConfig` and
//! `ScriptArguments` keys, which `trl sft` reads from one YAML).
//!
//! Chat rows stay `messages`; assistant-only loss uses `assistant_only_loss` with our chat
//! template wrapped in generation markers (`marked_template`), checked here against our own
//! masks on every exported example. QLoRA turns on `use_bnb_nested_quant` explicitly — TRL's
//! default is off, unlike the QLoRA recipe and ours. TRL's CLI cannot train a chosen subset of
//! weights, so selective runs are refused with a pointer to Axolotl.

use crate::data::render::{RenderOptions, Renderer, TrainOn};
use crate::error::{Error, Result};
use crate::peft::method::Method;
use crate::scaleout::axolotl::f32v;
use crate::scaleout::dataset::{jsonl, RowKind};
use crate::scaleout::marked_template::{marked_source, verify, GENERATION_TAGS};
use crate::scaleout::yaml::{Doc, Y};
use crate::scaleout::{
    hf_scheduler, launch, lora_targets, selective_name, Ctx, FieldMap, OUTPUT_DIR,
};

pub(crate) fn build(ctx: &mut Ctx) -> Result<()> {
    let cfg = ctx.cfg().clone();
    let mut d = Doc::new();
    d.comment("TRL config written by PEFT Studio (`peft recipe export --engine trl`): run with `trl sft --config trl.yaml`.");
    d.comment("Every value mirrors the run planned in PEFT Studio; README.md lists what differs.");
    d.blank();
    ctx.map(&mut d, "model", "model_name_or_path", Y::str(&ctx.base.id));
    if let Some(r) = ctx.base.revision.clone() {
        ctx.map(&mut d, "model revision", "model_revision", Y::str(r));
    }
    d.set("dtype", Y::str("bfloat16"));
    d.blank();
    method(ctx, &mut d)?;
    d.blank();
    data(ctx, &mut d)?;
    ctx.map(&mut d, "seq_len", "max_length", Y::Int(cfg.seq_len as i64));
    d.comment("ours cuts long examples at the end, as keep_start does");
    d.set("truncation_mode", Y::str("keep_start"));
    ctx.map(&mut d, "packing", "packing", Y::Bool(cfg.packing));
    if cfg.packing {
        d.comment(
            "ours keeps packed examples apart; TRL's packing does so only under flash attention",
        );
        d.set("attn_implementation", Y::str("flash_attention_2"));
    }
    d.blank();
    ctx.map(
        &mut d,
        "batch_size",
        "per_device_train_batch_size",
        Y::Int(cfg.batch_size as i64),
    );
    ctx.map(
        &mut d,
        "grad_accum",
        "gradient_accumulation_steps",
        Y::Int(cfg.grad_accum as i64),
    );
    ctx.map(&mut d, "epochs", "num_train_epochs", Y::Float(cfg.epochs));
    if let Some(s) = cfg.max_steps {
        ctx.map(&mut d, "max_steps", "max_steps", Y::Int(s as i64));
    }
    ctx.map(&mut d, "lr", "learning_rate", Y::Float(cfg.lr));
    let (sched, kwargs) = hf_scheduler(cfg.scheduler);
    ctx.map(&mut d, "scheduler", "lr_scheduler_type", Y::str(sched));
    if let Some(k) = kwargs {
        ctx.map(&mut d, "scheduler (floor 10 %)", "lr_scheduler_kwargs", k);
    }
    ctx.map(
        &mut d,
        "warmup_steps",
        "warmup_steps",
        Y::Int(cfg.warmup_steps as i64),
    );
    ctx.map(&mut d, "optimizer", "optim", Y::str("adamw_torch"));
    ctx.map(
        &mut d,
        "adamw.beta1",
        "adam_beta1",
        Y::Float(cfg.adamw.beta1),
    );
    ctx.map(
        &mut d,
        "adamw.beta2",
        "adam_beta2",
        Y::Float(cfg.adamw.beta2),
    );
    ctx.map(&mut d, "adamw.eps", "adam_epsilon", Y::Float(cfg.adamw.eps));
    ctx.map(
        &mut d,
        "weight_decay",
        "weight_decay",
        Y::Float(cfg.adamw.weight_decay),
    );
    ctx.map(
        &mut d,
        "max_grad_norm",
        "max_grad_norm",
        Y::Float(cfg.max_grad_norm),
    );
    ctx.map(&mut d, "seed", "seed", Y::Int(cfg.seed as i64));
    d.comment("TRL checkpoints gradients by default; this follows the plan");
    ctx.map(
        &mut d,
        "grad_checkpointing",
        "gradient_checkpointing",
        Y::Bool(cfg.grad_checkpointing),
    );
    d.set("bf16", Y::Bool(true));
    d.blank();
    match ctx.eval_steps() {
        Some(n) => {
            ctx.map(
                &mut d,
                "batch_size (eval)",
                "per_device_eval_batch_size",
                Y::Int(cfg.batch_size as i64),
            );
            d.set("eval_strategy", Y::str("steps"));
            let ours = if cfg.eval_every > 0 {
                "eval_every"
            } else {
                "eval_every (0: once, at the end)"
            };
            ctx.map(&mut d, ours, "eval_steps", Y::Int(n as i64));
        }
        None => {
            d.set("eval_strategy", Y::str("no"));
        }
    }
    if cfg.save_every > 0 {
        d.set("save_strategy", Y::str("steps"));
        ctx.map(
            &mut d,
            "save_every",
            "save_steps",
            Y::Int(cfg.save_every as i64),
        );
    }
    d.set("logging_steps", Y::Int(1));
    d.set("report_to", Y::str("none"));
    d.set("output_dir", Y::str(OUTPUT_DIR));
    ctx.file(ctx.req.engine.config_file(), d.to_yaml());

    let acc = launch::accelerate_file(&cfg.method);
    ctx.file(&acc, launch::accelerate_yaml(&cfg.method));
    let mut pkgs = "trl peft transformers datasets accelerate deepspeed".to_string();
    if matches!(cfg.method, Method::Qlora(_)) {
        pkgs.push_str(" bitsandbytes");
    }
    ctx.install = vec![
        "python -m venv .venv && . .venv/bin/activate".into(),
        format!("pip install {pkgs}"),
    ];
    ctx.run = "trl sft --config trl.yaml".into();
    ctx.run_multi_gpu = format!(
        "trl sft --config trl.yaml --accelerate_config {acc} --num_processes 4   # 4 = GPUs"
    );
    Ok(())
}

fn method(ctx: &mut Ctx, d: &mut Doc) -> Result<()> {
    let cfg = ctx.cfg().clone();
    match &cfg.method {
        Method::Lora(l) | Method::Qlora(l) => {
            ctx.map(d, "method", "use_peft", Y::Bool(true));
            ctx.map(d, "rank", "lora_r", Y::Int(l.rank as i64));
            ctx.map(d, "alpha", "lora_alpha", Y::number(l.alpha));
            ctx.map(d, "dropout", "lora_dropout", f32v(l.dropout));
            let targets = lora_targets(ctx)?;
            // TRL turns a one-element list into a string, which PEFT reads as a regular
            // expression matched against the whole module name: write one that means what we mean.
            let alternatives = targets.join("|");
            let value = match &l.layers {
                Some(layers) => {
                    let idx: Vec<String> = layers.iter().map(|i| i.to_string()).collect();
                    d.comment("one regular expression (PEFT full-matches it): the targets in the chosen blocks only");
                    Y::strs(&[format!(
                        r"model\.layers\.({})\..*\.({alternatives})",
                        idx.join("|")
                    )])
                }
                None if targets.len() == 1 => Y::strs(&[format!(r".*\.({alternatives})")]),
                None => Y::strs(&targets),
            };
            let ours = if l.layers.is_some() {
                "targets + layers"
            } else {
                "targets"
            };
            ctx.map(d, ours, "lora_target_modules", value);
            ctx.map(d, "rslora", "use_rslora", Y::Bool(l.rslora));
            if matches!(cfg.method, Method::Qlora(_)) {
                ctx.map(
                    d,
                    "method (qlora: 4-bit base)",
                    "load_in_4bit",
                    Y::Bool(true),
                );
                ctx.map(
                    d,
                    "method (qlora: NF4)",
                    "bnb_4bit_quant_type",
                    Y::str("nf4"),
                );
                d.comment("double quantization: TRL's default is false, the QLoRA recipe (and ours) uses it");
                ctx.map(
                    d,
                    "method (qlora: double quantization on)",
                    "use_bnb_nested_quant",
                    Y::Bool(true),
                );
            }
        }
        Method::Full => ctx.map(d, "method", "use_peft", Y::Bool(false)),
        Method::Selective { what } => return Err(Error::Unsupported {
            what: "selective training with TRL's `trl sft`".into(),
            found: selective_name(what),
            supported:
                "lora, qlora and full; export to Axolotl (unfrozen_parameters) for selective runs"
                    .into(),
        }),
    }
    Ok(())
}

fn data(ctx: &mut Ctx, d: &mut Doc) -> Result<()> {
    let cfg = ctx.cfg().clone();
    ctx.file("data/train.jsonl", jsonl(&ctx.data.train));
    d.comment("the folder holds train.jsonl and (if validating) eval.jsonl; `datasets` maps eval.* to the test split");
    ctx.map(d, "data (train split)", "dataset_name", Y::str("data"));
    d.set("dataset_train_split", Y::str("train"));
    if !ctx.data.eval.is_empty() {
        ctx.file("data/eval.jsonl", jsonl(&ctx.data.eval));
        d.set("dataset_test_split", Y::str("test"));
        ctx.mapped.push(FieldMap {
            ours: "val_fraction".into(),
            theirs: "dataset_test_split".into(),
            value: format!("data/eval.jsonl ({} examples)", ctx.data.eval.len()),
        });
    }
    match ctx.data.kind {
        RowKind::Chat => chat(ctx, d, cfg.train_on)?,
        RowKind::Completion => {
            d.comment(
                "prompt/completion rows: the loss is on the completion (TRL appends EOS, as we do)",
            );
            ctx.map(
                d,
                "train_on (completion only)",
                "completion_only_loss",
                Y::Bool(true),
            );
        }
        RowKind::Text => {
            d.comment("plain text: every token trains (TRL appends EOS, as we do)");
            d.set("dataset_text_field", Y::str("text"));
        }
    }
    Ok(())
}

fn chat(ctx: &mut Ctx, d: &mut Doc, train_on: TrainOn) -> Result<()> {
    let t = ctx.req.template;
    match train_on {
        TrainOn::Assistant => {
            let r = Renderer::new(ctx.req.tokenizer, t, RenderOptions::default())?;
            let marker = r.end_of_turn_marker().map(str::to_string);
            let src = marked_source(t, marker.as_deref(), GENERATION_TAGS.0, GENERATION_TAGS.1);
            ctx.file("chat_template.jinja", src);
            d.comment("our chat template with {% generation %} markers around each trained reply");
            ctx.map(
                d,
                "chat template",
                "chat_template_path",
                Y::str("chat_template.jinja"),
            );
            ctx.map(d, "train_on", "assistant_only_loss", Y::Bool(true));
            let mut all = ctx.data.train.clone();
            all.extend(ctx.data.eval.iter().cloned());
            let v = verify(t, ctx.req.tokenizer, &all)?;
            if v.differing > 0 {
                ctx.gap(
                    "train_on assistant",
                    format!(
                        "TRL's assistant mask differs from ours on {} of {} conversations ({})",
                        v.differing,
                        v.examples,
                        v.first.unwrap_or_default()
                    ),
                );
            }
        }
        TrainOn::All => {
            ctx.file("chat_template.jinja", t.source().to_string());
            d.comment("the chat template we render with");
            ctx.map(
                d,
                "chat template",
                "chat_template_path",
                Y::str("chat_template.jinja"),
            );
            ctx.map(d, "train_on", "assistant_only_loss", Y::Bool(false));
        }
    }
    Ok(())
}
