//! The run's data, written out for another engine: exactly the examples our trainer would use
//! (same file reading, same drop rule, same seeded train/validation split), in row shapes both
//! the engines and our own loader read natively.
//!
//! Row shapes, chosen per the source file's format:
//! - chat-like sources (alpaca, messages, ShareGPT, question/answer) → `{"messages": [{role,
//!   content}]}`: the roles our loader produced, so every engine renders the same turns with a
//!   chat template (an alpaca row becomes system/user/assistant, as it does for our trainer —
//!   not the engines' own alpaca prompt format, which would add text we never trained on);
//! - prompt/completion → `{"prompt", "completion"}` (prompt masked, completion trained);
//! - text → `{"text"}` (all trained).
//!
//! What this is not: it renders nothing for the engines; each engine module says how the engine
//! is told to render and mask these rows.

use crate::data::batch::split;
use crate::data::formats::{load, DataFormat, Example, LoadOptions};
use crate::data::render::{RenderOptions, Renderer};
use crate::error::{Error, Result};
use crate::template::{ChatTemplate, Message};
use crate::train::TrainConfig;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;

/// The shape every row of the exported files has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    Chat,
    Completion,
    Text,
}

/// What the export holds and what our trainer would have done with the same inputs.
#[derive(Clone, Debug)]
pub struct PreparedData {
    pub format: DataFormat,
    pub kind: RowKind,
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    /// Examples our trainer drops (no trained token left within `seq_len`); not exported.
    pub dropped_untrained: usize,
    /// Kept examples longer than `seq_len` (exported whole: the engine cuts them).
    pub truncated: usize,
    /// Malformed rows skipped with `skip_bad_rows` (not exported).
    pub skipped_rows: usize,
}

impl PreparedData {
    /// Optimizer steps of the run, computed as our trainer does.
    pub fn total_steps(&self, cfg: &TrainConfig) -> usize {
        total_steps(self.train.len(), cfg)
    }
}

/// Optimizer steps for `train_examples`, as `train()` computes them.
pub fn total_steps(train_examples: usize, cfg: &TrainConfig) -> usize {
    let micro_per_epoch = train_examples.div_ceil(cfg.batch_size.max(1));
    match cfg.max_steps {
        Some(s) => s,
        None => ((cfg.epochs * micro_per_epoch as f64) / cfg.grad_accum.max(1) as f64)
            .ceil()
            .max(1.0) as usize,
    }
}

/// Reads `data` and selects the examples exactly as `train()` does: load (with
/// `skip_bad_rows`), render with `seq_len`/`train_on`, drop examples without a trained token or
/// shorter than two tokens, then split the survivors with `batch::split(n, val_fraction, seed)`.
///
/// # Errors
/// What loading or rendering reports (file, line, field), and [`Error::Data`] when no example
/// is left.
pub fn prepare(
    data: &Path,
    tokenizer: &crate::tokenizer::Tokenizer,
    template: &ChatTemplate,
    cfg: &TrainConfig,
) -> Result<PreparedData> {
    let ds = load(
        data,
        &LoadOptions {
            skip_bad_rows: cfg.skip_bad_rows,
        },
    )?;
    let renderer = Renderer::new(
        tokenizer,
        template,
        RenderOptions {
            max_len: cfg.seq_len,
            train_on: cfg.train_on,
        },
    )?;
    let (mut kept, mut dropped, mut truncated) = (Vec::new(), 0, 0);
    for ex in ds.examples {
        let t = renderer.tokenize(&ex)?;
        truncated += t.truncated() as usize;
        if t.trained_tokens() == 0 || t.input_ids.len() < 2 {
            dropped += 1;
            continue;
        }
        kept.push(ex);
    }
    if kept.is_empty() {
        return Err(Error::Data {
            file: data.display().to_string(),
            line: 0,
            field: "(all rows)".into(),
            message: format!(
                "no example has trained tokens within seq_len {}",
                cfg.seq_len
            ),
        });
    }
    let (tr, va) = split(kept.len(), cfg.val_fraction, cfg.seed)?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| kept[i].clone()).collect::<Vec<_>>();
    let kind = match ds.format {
        DataFormat::PromptCompletion => RowKind::Completion,
        DataFormat::Text => RowKind::Text,
        _ => RowKind::Chat,
    };
    Ok(PreparedData {
        format: ds.format,
        kind,
        train: pick(&tr),
        eval: pick(&va),
        dropped_untrained: dropped,
        truncated,
        skipped_rows: ds.skipped,
    })
}

/// One exported row.
pub fn row(ex: &Example) -> Value {
    match ex {
        Example::Chat(msgs) => json!({ "messages": msgs.iter().map(message).collect::<Vec<_>>() }),
        Example::Completion { prompt, completion } => {
            json!({ "prompt": prompt, "completion": completion })
        }
        Example::Text(t) => json!({ "text": t }),
    }
}

fn message(m: &Message) -> Value {
    json!({ "role": m.role, "content": m.content })
}

/// JSON Lines text of `examples`.
pub fn jsonl(examples: &[Example]) -> String {
    let mut out = String::new();
    for ex in examples {
        out.push_str(&row(ex).to_string());
        out.push('\n');
    }
    out
}

/// Chat examples LLaMA-Factory's ShareGPT reader would skip: after an optional leading system
/// turn, roles must alternate user, assistant, … and end with an assistant turn.
pub fn non_alternating(examples: &[Example]) -> usize {
    examples
        .iter()
        .filter(|ex| match ex {
            Example::Chat(msgs) => {
                let turns = match msgs.first() {
                    Some(m) if m.role == "system" => &msgs[1..],
                    _ => &msgs[..],
                };
                let alternates = turns
                    .iter()
                    .enumerate()
                    .all(|(i, m)| m.role == if i % 2 == 0 { "user" } else { "assistant" });
                !(alternates && !turns.is_empty() && turns.len() % 2 == 0)
            }
            _ => false,
        })
        .count()
}

/// Chat examples with more than one assistant turn.
pub fn multi_turn(examples: &[Example]) -> usize {
    examples
        .iter()
        .filter(|ex| {
            matches!(ex, Example::Chat(m) if m.iter().filter(|m| m.role == "assistant").count() > 1)
        })
        .count()
}
