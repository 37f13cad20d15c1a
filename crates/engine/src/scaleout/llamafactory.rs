//! The run as a LLaMA-Factory config (`llamafactory.yaml` plus `data/dataset_info.json`; field
//! names as in LLaMA-Factory 0.9.5's `hparams/*.py`).
//!
//! Chat rows are registered as ShareGPT-style `messages` with role/content tags; the chat
//! format is the registered `template:` that renders like the model's template
//! (`lf_template`). QLoRA sets `quantization_type: nf4` and `double_quantization: true`
//! explicitly. Selective training exists only as "freeze" tuning of the last N blocks.

use crate::data::render::TrainOn;
use crate::error::{Error, Result};
use crate::peft::method::{Method, Selective};
use crate::scaleout::axolotl::f32v;
use crate::scaleout::dataset::{jsonl, non_alternating, RowKind};
use crate::scaleout::lf_template::match_template;
use crate::scaleout::yaml::{Doc, Y};
use crate::scaleout::{
    hf_scheduler, launch, lora_targets, selective_name, Ctx, FieldMap, OUTPUT_DIR,
};
use serde_json::json;

pub(crate) fn build(ctx: &mut Ctx) -> Result<()> {
    let cfg = ctx.cfg().clone();
    let mut d = Doc::new();
    d.comment(
        "LLaMA-Factory config written by PEFT Studio (`peft recipe export --engine llamafactory`).",
    );
    d.comment("Every value mirrors the run planned in PEFT Studio; README.md lists what differs.");
    d.blank();
    d.comment("### model");
    ctx.map(&mut d, "model", "model_name_or_path", Y::str(&ctx.base.id));
    if let Some(r) = ctx.base.revision.clone() {
        ctx.map(&mut d, "model revision", "model_revision", Y::str(r));
    }
    d.blank();
    d.comment("### method");
    let stage = if ctx.data.kind == RowKind::Text {
        "pt"
    } else {
        "sft"
    };
    d.set("stage", Y::str(stage));
    d.set("do_train", Y::Bool(true));
    method(ctx, &mut d)?;
    d.blank();
    d.comment("### dataset");
    data(ctx, &mut d)?;
    ctx.map(&mut d, "seq_len", "cutoff_len", Y::Int(cfg.seq_len as i64));
    ctx.map(&mut d, "packing", "packing", Y::Bool(cfg.packing));
    if cfg.packing {
        d.comment("ours keeps packed examples apart; neat_packing is LLaMA-Factory's packing without cross-attention");
        d.set("neat_packing", Y::Bool(true));
        d.set("flash_attn", Y::str("fa2"));
    }
    d.set("overwrite_cache", Y::Bool(true));
    d.blank();
    d.comment("### train");
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
    d.comment("LLaMA-Factory checkpoints gradients unless told not to");
    ctx.map(
        &mut d,
        "grad_checkpointing",
        "disable_gradient_checkpointing",
        Y::Bool(!cfg.grad_checkpointing),
    );
    d.set("bf16", Y::Bool(true));
    d.blank();
    d.comment("### eval");
    if let Some(n) = ctx.eval_steps() {
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
    d.blank();
    d.comment("### output");
    d.set("output_dir", Y::str(OUTPUT_DIR));
    d.set("logging_steps", Y::Int(1));
    if cfg.save_every > 0 {
        ctx.map(
            &mut d,
            "save_every",
            "save_steps",
            Y::Int(cfg.save_every as i64),
        );
    }
    d.set("plot_loss", Y::Bool(true));
    d.set("overwrite_output_dir", Y::Bool(true));
    d.set("report_to", Y::str("none"));
    ctx.file(ctx.req.engine.config_file(), d.to_yaml());

    let ds = launch::deepspeed_file(&cfg.method);
    ctx.file(&ds, launch::deepspeed_json(&cfg.method));
    let mut install = vec!["python -m venv .venv && . .venv/bin/activate".to_string()];
    let extras = if matches!(cfg.method, Method::Qlora(_)) {
        "torch,metrics,deepspeed,bitsandbytes"
    } else {
        "torch,metrics,deepspeed"
    };
    install.push(format!("pip install \"llamafactory[{extras}]\""));
    ctx.install = install;
    ctx.run = "llamafactory-cli train llamafactory.yaml".into();
    ctx.run_multi_gpu = format!(
        "FORCE_TORCHRUN=1 NPROC_PER_NODE=4 llamafactory-cli train llamafactory.yaml deepspeed={ds}   # 4 = GPUs"
    );
    Ok(())
}

fn method(ctx: &mut Ctx, d: &mut Doc) -> Result<()> {
    let cfg = ctx.cfg().clone();
    match &cfg.method {
        Method::Lora(l) | Method::Qlora(l) => {
            ctx.map(d, "method", "finetuning_type", Y::str("lora"));
            ctx.map(d, "rank", "lora_rank", Y::Int(l.rank as i64));
            ctx.map(d, "alpha", "lora_alpha", Y::number(l.alpha));
            ctx.map(d, "dropout", "lora_dropout", f32v(l.dropout));
            let targets = lora_targets(ctx)?;
            ctx.map(d, "targets", "lora_target", Y::str(targets.join(",")));
            ctx.map(d, "rslora", "use_rslora", Y::Bool(l.rslora));
            if let Some(layers) = &l.layers {
                ctx.gap(
                    "layers",
                    format!(
                        "LLaMA-Factory cannot restrict LoRA to blocks {layers:?}: it adapts the \
                         targets in every block (export to Axolotl or TRL to keep the restriction)"
                    ),
                );
            }
            if matches!(cfg.method, Method::Qlora(_)) {
                ctx.map(
                    d,
                    "method (qlora: 4-bit base)",
                    "quantization_bit",
                    Y::Int(4),
                );
                ctx.map(
                    d,
                    "method (qlora: bitsandbytes)",
                    "quantization_method",
                    Y::str("bnb"),
                );
                ctx.map(d, "method (qlora: NF4)", "quantization_type", Y::str("nf4"));
                ctx.map(
                    d,
                    "method (qlora: double quantization on)",
                    "double_quantization",
                    Y::Bool(true),
                );
            }
        }
        Method::Full => ctx.map(d, "method", "finetuning_type", Y::str("full")),
        Method::Selective {
            what: Selective::LastBlocks(n),
        } => {
            ctx.map(d, "method", "finetuning_type", Y::str("freeze"));
            ctx.map(
                d,
                "selective (last N blocks)",
                "freeze_trainable_layers",
                Y::Int(*n as i64),
            );
            ctx.map(
                d,
                "selective (every tensor of them)",
                "freeze_trainable_modules",
                Y::str("all"),
            );
        }
        Method::Selective { what } => return Err(Error::Unsupported {
            what: "selective training in LLaMA-Factory".into(),
            found: selective_name(what),
            supported:
                "last:N (its freeze tuning); export to Axolotl for bias, norm or module patterns"
                    .into(),
        }),
    }
    Ok(())
}

fn data(ctx: &mut Ctx, d: &mut Doc) -> Result<()> {
    let cfg = ctx.cfg().clone();
    let kind = ctx.data.kind;
    let info = |file: &str| match kind {
        RowKind::Chat => json!({
            "file_name": file,
            "formatting": "sharegpt",
            "columns": { "messages": "messages" },
            "tags": {
                "role_tag": "role", "content_tag": "content",
                "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"
            }
        }),
        RowKind::Completion => json!({
            "file_name": file,
            "columns": { "prompt": "prompt", "response": "completion" }
        }),
        RowKind::Text => json!({ "file_name": file, "columns": { "prompt": "text" } }),
    };
    let mut registry = serde_json::Map::new();
    registry.insert("peft_studio_train".into(), info("train.jsonl"));
    ctx.file("data/train.jsonl", jsonl(&ctx.data.train));
    d.set("dataset_dir", Y::str("data"));
    ctx.map(
        d,
        "data (train split)",
        "dataset",
        Y::str("peft_studio_train"),
    );
    if !ctx.data.eval.is_empty() {
        registry.insert("peft_studio_eval".into(), info("eval.jsonl"));
        ctx.file("data/eval.jsonl", jsonl(&ctx.data.eval));
        d.comment(&format!(
            "our seeded validation split (val_fraction {}), written out",
            cfg.val_fraction
        ));
        d.set("eval_dataset", Y::str("peft_studio_eval"));
        ctx.mapped.push(FieldMap {
            ours: "val_fraction".into(),
            theirs: "eval_dataset".into(),
            value: format!("data/eval.jsonl ({} examples)", ctx.data.eval.len()),
        });
    }
    let registry = serde_json::to_string_pretty(&serde_json::Value::Object(registry))
        .expect("json serialises");
    ctx.file("data/dataset_info.json", registry + "\n");
    match kind {
        RowKind::Chat => {
            let m = match_template(ctx.req.template);
            match m.name {
                Some(name) => {
                    d.comment(if m.exact {
                        "the registered template that renders exactly like the model's"
                    } else {
                        "the nearest registered template (README.md says what differs)"
                    });
                    ctx.map(d, "chat template", "template", Y::str(name));
                }
                None => {
                    d.comment("template: left out on purpose (see README.md)");
                }
            }
            d.comment(
                "the model template's own default system prompt (\"\" turns LLaMA-Factory's off)",
            );
            ctx.map(
                d,
                "chat template (default system prompt)",
                "default_system",
                Y::str(&m.default_system),
            );
            if let Some(diff) = m.difference {
                ctx.gap("chat template", diff);
            }
            let bad = non_alternating(&ctx.data.train) + non_alternating(&ctx.data.eval);
            if bad > 0 {
                ctx.gap(
                    "conversation shape",
                    format!("{bad} conversations do not alternate user/assistant after an optional system turn (or do not end with the assistant); LLaMA-Factory skips them"),
                );
            }
            ctx.gap(
                "tokenization and masking",
                "LLaMA-Factory tokenizes each template slot separately (with a SentencePiece \
                 tokenizer such as Llama 2's or Mistral's that adds a space token before each \
                 reply) and trains each reply's whole assistant slot, including text the template \
                 writes after the end-of-turn token (e.g. the newline after <|im_end|>)",
            );
        }
        RowKind::Completion => {
            d.comment("prompt/completion rows are concatenated as they are");
            ctx.map(d, "chat template", "template", Y::str("empty"));
            ctx.gap("prompt/completion rows", "LLaMA-Factory's `empty` template appends no EOS after the completion (ours trains one)");
        }
        RowKind::Text => {
            d.comment("plain text: LLaMA-Factory's pre-training stage trains every token");
        }
    }
    if kind != RowKind::Text {
        ctx.map(
            d,
            "train_on",
            "train_on_prompt",
            Y::Bool(cfg.train_on == TrainOn::All),
        );
        d.set("mask_history", Y::Bool(false));
    }
    if ctx.data.truncated > 0 {
        ctx.gap(
            "seq_len",
            format!(
                "{} examples are longer than seq_len: LLaMA-Factory shortens prompt and response in \
                 proportion, ours cuts the end",
                ctx.data.truncated
            ),
        );
    }
    Ok(())
}
