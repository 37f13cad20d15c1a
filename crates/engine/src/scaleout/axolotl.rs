//! The run as an Axolotl config (`axolotl.yaml`; field names as in Axolotl 0.19's
//! `utils/schemas/*.py`).
//!
//! Chat rows use Axolotl's `chat_template` strategy with the model's own template
//! (`tokenizer_default`) or ours passed as a Jinja file, training the assistant role and its
//! end-of-turn token. QLoRA spells out NF4 and double quantization in `bnb_config_kwargs`
//! (Axolotl's defaults are the same, but the file should say so). Selective runs become
//! `unfrozen_parameters` patterns, written for Axolotl's matcher (which anchors at the start,
//! escapes every `.` except in `.+`, so a literal dot is written plain and `.+` is the wildcard).

use crate::data::render::{RenderOptions, Renderer, TrainOn};
use crate::error::Result;
use crate::peft::method::{Method, Selective};
use crate::scaleout::dataset::{jsonl, RowKind};
use crate::scaleout::yaml::{Doc, Y};
use crate::scaleout::{hf_scheduler, last_blocks, launch, lora_targets, Ctx, FieldMap, OUTPUT_DIR};
use crate::train::schedule::Scheduler;

/// An f32 setting as the decimal the user typed (0.05, not 0.0500000007…).
pub(crate) fn f32v(x: f32) -> Y {
    Y::Float(format!("{x}").parse().unwrap_or(x as f64))
}

pub(crate) fn build(ctx: &mut Ctx) -> Result<()> {
    let cfg = ctx.cfg().clone();
    let mut d = Doc::new();
    d.comment("Axolotl config written by PEFT Studio (`peft recipe export --engine axolotl`).");
    d.comment("Every value mirrors the run planned in PEFT Studio; README.md lists what differs.");
    d.blank();
    ctx.map(&mut d, "model", "base_model", Y::str(&ctx.base.id));
    if let Some(r) = ctx.base.revision.clone() {
        ctx.map(&mut d, "model revision", "revision_of_model", Y::str(r));
    }
    d.blank();
    method(ctx, &mut d)?;
    d.blank();
    data(ctx, &mut d)?;
    d.blank();
    ctx.map(
        &mut d,
        "seq_len",
        "sequence_len",
        Y::Int(cfg.seq_len as i64),
    );
    d.comment(
        "ours cuts long examples at the end; so does `truncate` (Axolotl's default drops them)",
    );
    d.set("excess_length_strategy", Y::str("truncate"));
    ctx.map(&mut d, "packing", "sample_packing", Y::Bool(cfg.packing));
    if cfg.packing {
        d.comment("ours keeps packed examples apart (own positions, block-diagonal mask); Axolotl does under flash attention");
        d.set("flash_attention", Y::Bool(true));
    }
    d.set("pad_to_sequence_len", Y::Bool(false));
    ctx.map(
        &mut d,
        "batch_size",
        "micro_batch_size",
        Y::Int(cfg.batch_size as i64),
    );
    ctx.map(
        &mut d,
        "grad_accum",
        "gradient_accumulation_steps",
        Y::Int(cfg.grad_accum as i64),
    );
    ctx.map(&mut d, "epochs", "num_epochs", Y::Float(cfg.epochs));
    if let Some(s) = cfg.max_steps {
        ctx.map(&mut d, "max_steps", "max_steps", Y::Int(s as i64));
    }
    d.blank();
    ctx.map(&mut d, "optimizer", "optimizer", Y::str("adamw_torch"));
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
    ctx.map(&mut d, "lr", "learning_rate", Y::Float(cfg.lr));
    match cfg.scheduler {
        // Axolotl's own cosine with a floor: the same curve as ours (10 % of the peak).
        Scheduler::Cosine => {
            ctx.map(&mut d, "scheduler", "lr_scheduler", Y::str("cosine"));
            ctx.map(
                &mut d,
                "scheduler (floor 10 %)",
                "cosine_min_lr_ratio",
                Y::Float(0.1),
            );
        }
        other => {
            let (name, _) = hf_scheduler(other);
            ctx.map(&mut d, "scheduler", "lr_scheduler", Y::str(name));
        }
    }
    ctx.map(
        &mut d,
        "warmup_steps",
        "warmup_steps",
        Y::Int(cfg.warmup_steps as i64),
    );
    ctx.map(
        &mut d,
        "max_grad_norm",
        "max_grad_norm",
        Y::Float(cfg.max_grad_norm),
    );
    ctx.map(&mut d, "seed", "seed", Y::Int(cfg.seed as i64));
    ctx.map(
        &mut d,
        "grad_checkpointing",
        "gradient_checkpointing",
        Y::Bool(cfg.grad_checkpointing),
    );
    if let Some(n) = ctx.eval_steps() {
        let ours = if cfg.eval_every > 0 {
            "eval_every"
        } else {
            "eval_every (0: once, at the end)"
        };
        ctx.map(&mut d, ours, "eval_steps", Y::Int(n as i64));
    }
    if cfg.save_every > 0 {
        ctx.map(
            &mut d,
            "save_every",
            "save_steps",
            Y::Int(cfg.save_every as i64),
        );
    }
    d.blank();
    d.set("bf16", Y::str("auto"));
    d.set("logging_steps", Y::Int(1));
    d.set("output_dir", Y::str(format!("./{OUTPUT_DIR}")));
    ctx.file(ctx.req.engine.config_file(), d.to_yaml());

    let ds = launch::deepspeed_file(&cfg.method);
    ctx.file(&ds, launch::deepspeed_json(&cfg.method));
    ctx.install = vec![
        "python -m venv .venv && . .venv/bin/activate".into(),
        "pip install -U packaging setuptools wheel ninja".into(),
        "pip install --no-build-isolation \"axolotl[deepspeed]\"".into(),
    ];
    ctx.run = "axolotl train axolotl.yaml".into();
    ctx.run_multi_gpu =
        format!("axolotl train axolotl.yaml --deepspeed {ds} -- --num_processes 4   # 4 = GPUs");
    Ok(())
}

fn method(ctx: &mut Ctx, d: &mut Doc) -> Result<()> {
    let cfg = ctx.cfg().clone();
    match &cfg.method {
        Method::Lora(l) | Method::Qlora(l) => {
            let q = matches!(cfg.method, Method::Qlora(_));
            ctx.map(
                d,
                "method",
                "adapter",
                Y::str(if q { "qlora" } else { "lora" }),
            );
            if q {
                ctx.map(
                    d,
                    "method (qlora: 4-bit base)",
                    "load_in_4bit",
                    Y::Bool(true),
                );
                ctx.map(
                    d,
                    "method (qlora: NF4, double quantization on)",
                    "bnb_config_kwargs",
                    Y::map(vec![
                        ("bnb_4bit_quant_type", Y::str("nf4")),
                        ("bnb_4bit_use_double_quant", Y::Bool(true)),
                    ]),
                );
            }
            ctx.map(d, "rank", "lora_r", Y::Int(l.rank as i64));
            if l.alpha.fract() != 0.0 {
                ctx.gap("alpha", format!("Axolotl's lora_alpha is an integer; {} will be rejected — round it and keep alpha/r in mind", l.alpha));
            }
            ctx.map(d, "alpha", "lora_alpha", Y::number(l.alpha));
            ctx.map(d, "dropout", "lora_dropout", f32v(l.dropout));
            let targets = lora_targets(ctx)?;
            ctx.map(d, "targets", "lora_target_modules", Y::strs(&targets));
            if let Some(layers) = &l.layers {
                let v = Y::List(layers.iter().map(|&i| Y::Int(i as i64)).collect());
                ctx.map(d, "layers", "peft_layers_to_transform", v);
            }
            ctx.map(d, "rslora", "peft_use_rslora", Y::Bool(l.rslora));
        }
        Method::Full => {
            d.comment("no adapter: every weight trains (full fine-tuning)");
            ctx.map(d, "method", "adapter", Y::Null);
        }
        Method::Selective { what } => {
            d.comment("no adapter: only the weights matching these patterns train");
            ctx.map(d, "method", "adapter", Y::Null);
            let pats = unfrozen_patterns(ctx, what);
            ctx.map(d, "selective", "unfrozen_parameters", Y::strs(&pats));
        }
    }
    Ok(())
}

/// Patterns for Axolotl's `unfrozen_parameters` matcher (see the module docs).
pub(crate) fn unfrozen_patterns(ctx: &Ctx, what: &Selective) -> Vec<String> {
    match what {
        Selective::Bias => vec![".+.bias$".into()],
        Selective::Norm => vec![".+layernorm.weight$".into(), "model.norm.weight$".into()],
        Selective::LastBlocks(n) => {
            let idx: Vec<String> = last_blocks(ctx, *n).iter().map(|i| i.to_string()).collect();
            vec![format!("model.layers.({}).", idx.join("|"))]
        }
        Selective::Modules(p) => p.split(',').map(|g| glob_pattern(g.trim())).collect(),
    }
}

/// Our glob (`*` any run; no `*`: matches anywhere) as an Axolotl pattern.
fn glob_pattern(glob: &str) -> String {
    let esc = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                '\\' | '^' | '$' | '|' | '?' | '+' | '(' | ')' | '[' | ']' | '{' | '}' => {
                    format!("\\{c}")
                }
                c => c.to_string(),
            })
            .collect()
    };
    if glob.contains('*') {
        let parts: Vec<String> = glob.split('*').map(esc).collect();
        format!("{}$", parts.join("(.+)?"))
    } else {
        format!("(.+)?{}", esc(glob))
    }
}

fn data(ctx: &mut Ctx, d: &mut Doc) -> Result<()> {
    let cfg = ctx.cfg().clone();
    let kind = ctx.data.kind;
    // The model's own template (Axolotl reads it from tokenizer_config.json) or ours passed as
    // a file. Set on each dataset too: Axolotl gives a dataset without one `tokenizer_default`,
    // which would win over the top-level choice.
    let own_template = !ctx.req.template.is_fallback()
        && !matches!(ctx.req.source, crate::model::load::ModelSource::Gguf(_));
    let entry = |path: &str, split: bool| -> Y {
        let mut m: Vec<(&str, Y)> = vec![("path", Y::str(path)), ("ds_type", Y::str("json"))];
        if split {
            m.push(("split", Y::str("train")));
        }
        match kind {
            RowKind::Chat => {
                m.push(("type", Y::str("chat_template")));
                if own_template {
                    m.push(("chat_template", Y::str("tokenizer_default")));
                } else {
                    m.push(("chat_template", Y::str("jinja")));
                    m.push(("chat_template_jinja", Y::str("chat_template.jinja")));
                }
                m.push(("field_messages", Y::str("messages")));
                m.push((
                    "message_property_mappings",
                    Y::map(vec![
                        ("role", Y::str("role")),
                        ("content", Y::str("content")),
                    ]),
                ));
                let roles: &[&str] = match cfg.train_on {
                    TrainOn::Assistant => &["assistant"],
                    TrainOn::All => &["system", "user", "assistant"],
                };
                m.push(("roles_to_train", Y::strs(roles)));
                let eos = if cfg.train_on == TrainOn::All {
                    "all"
                } else {
                    "turn"
                };
                m.push(("train_on_eos", Y::str(eos)));
            }
            RowKind::Text => {
                m.push(("type", Y::str("completion")));
                m.push(("field", Y::str("text")));
            }
            RowKind::Completion => m.push((
                "type",
                Y::map(vec![
                    ("field_instruction", Y::str("prompt")),
                    ("field_output", Y::str("completion")),
                    ("format", Y::str("{instruction}")),
                    ("no_input_format", Y::str("{instruction}")),
                ]),
            )),
        }
        Y::map(m)
    };
    if kind == RowKind::Chat {
        let t = ctx.req.template;
        if own_template {
            d.comment("the model's own chat template (tokenizer_config.json), as we render it");
            ctx.map(
                d,
                "chat template",
                "chat_template",
                Y::str("tokenizer_default"),
            );
        } else {
            d.comment("the chat template we render with, passed explicitly");
            ctx.map(d, "chat template", "chat_template", Y::str("jinja"));
            ctx.map(
                d,
                "chat template",
                "chat_template_jinja",
                Y::str("chat_template.jinja"),
            );
            ctx.file("chat_template.jinja", t.source().to_string());
        }
        let r = Renderer::new(ctx.req.tokenizer, t, RenderOptions::default())?;
        if let Some(m) = r.end_of_turn_marker() {
            if m != t.eos_token {
                ctx.map(
                    d,
                    "end-of-turn token (trained)",
                    "eot_tokens",
                    Y::strs(&[m]),
                );
            }
        }
        match cfg.train_on {
            TrainOn::Assistant => ctx.gap(
                "train_on assistant",
                "Axolotl locates each assistant turn itself (rendering the conversation with and \
                 without it) and trains its content plus the end-of-turn token: whitespace around \
                 a reply can be assigned differently than here, and an empty reply trains nothing \
                 (ours trains its end-of-turn token)",
            ),
            TrainOn::All => ctx.gap(
                "train_on all",
                "roles_to_train lists every role, so Axolotl trains every message and EOS token, \
                 but not the role headers the template writes (ours trains every token)",
            ),
        }
    }
    if kind == RowKind::Completion {
        d.set("train_on_inputs", Y::Bool(false));
        ctx.gap(
            "prompt/completion rows",
            "Axolotl tokenizes the prompt and the completion separately (ours tokenizes the joined \
             text once), so tokens at the boundary can differ",
        );
    }
    ctx.file("data/train.jsonl", jsonl(&ctx.data.train));
    ctx.map(
        d,
        "data (train split)",
        "datasets",
        Y::List(vec![entry("data/train.jsonl", false)]),
    );
    if !ctx.data.eval.is_empty() {
        ctx.file("data/eval.jsonl", jsonl(&ctx.data.eval));
        d.comment(&format!(
            "our seeded validation split (val_fraction {}), written out",
            cfg.val_fraction
        ));
        d.set(
            "test_datasets",
            Y::List(vec![entry("data/eval.jsonl", true)]),
        );
        ctx.mapped.push(FieldMap {
            ours: "val_fraction".into(),
            theirs: "test_datasets".into(),
            value: format!("data/eval.jsonl ({} examples)", ctx.data.eval.len()),
        });
    } else {
        ctx.map(d, "val_fraction", "val_set_size", Y::Float(0.0));
    }
    d.set("dataset_prepared_path", Y::str("last_run_prepared"));
    Ok(())
}
