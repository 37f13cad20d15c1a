//! The self-check every export ends with: does the exported model chat like the tuned one?
//!
//! For a few fixed conversations ([`default_conversations`]) both models — the tuned model in
//! memory and the exported one as our engine loads it back from disk, with its own tokenizer,
//! chat template and end-of-generation ids — render the prompt, tokenize it and generate
//! greedily for the same budget. A check fails (an [`Error::ExportCheck`], not a footnote) when:
//! - the exported template renders a different prompt, or the exported tokenizer (or BOS rule)
//!   turns it into different ids — the usual cause of "fine in the trainer, babbles after export";
//! - in strict mode (f32/f16 weights) the greedy tokens differ;
//! - "does it stop": the tuned model ended its turn within the budget and the exported one did
//!   not (a wrong EOS/EOT id or template end marker).
//!
//! For lossy types the report says how many first tokens agree; that is information, not a
//! failure, since a 4-bit model may pick a different but good word. What it is not: a quality
//! benchmark, or a check of llama.cpp itself (see the closing notes for that).

use crate::error::{Error, Result};
use crate::export::gguf::{ExportModel, ExportProgress};
use crate::export::gguf_writer::stop_if_cancelled;
use crate::infer::generate::{generate, GenerateOptions, StopReason};
use crate::template::Message;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// What to check with.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Greedy budget per conversation.
    pub max_new_tokens: usize,
    pub conversations: Vec<Vec<Message>>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            conversations: default_conversations(),
        }
    }
}

/// The fixed conversations: a greeting, an instruction, one with a system message and a
/// two-turn one (templates treat the first turn, system messages and history differently).
pub fn default_conversations() -> Vec<Vec<Message>> {
    vec![
        vec![Message::new("user", "Hello! Who are you?")],
        vec![Message::new("user", "Write one sentence about the sea.")],
        vec![
            Message::new("system", "You are a concise assistant."),
            Message::new("user", "What is two plus two?"),
        ],
        vec![
            Message::new("user", "Tell me a short story."),
            Message::new("assistant", "Once upon a time, a cat found a hat."),
            Message::new("user", "What happened next?"),
        ],
    ]
}

/// One conversation's result.
#[derive(Clone, Debug, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct PromptCheck {
    /// The last user message.
    pub prompt: String,
    pub prompt_tokens: usize,
    /// The rendered prompt and its ids (the tuned model's), for checks with other runtimes.
    pub prompt_text: String,
    pub prompt_ids: Vec<u32>,
    /// Rendered text and token ids equal.
    pub prompt_matches: bool,
    pub tuned_tokens: Vec<u32>,
    pub exported_tokens: Vec<u32>,
    /// Leading generated tokens both models agree on.
    pub agreeing_tokens: usize,
    pub tuned_stopped: bool,
    pub exported_stopped: bool,
    pub tuned_text: String,
    pub exported_text: String,
    /// Why this conversation was not run (the template refuses it), if so.
    pub skipped: Option<String>,
}

/// The self-check's result, shown to the user after an export.
#[derive(Clone, Debug, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct SelfCheckReport {
    pub file: String,
    /// Tokens must be identical (f32/f16), not just agree as far as they do.
    pub strict: bool,
    pub max_new_tokens: usize,
    pub prompts: Vec<PromptCheck>,
    /// Every failed condition, in words; empty when the check passed.
    pub problems: Vec<String>,
}

impl SelfCheckReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// One line per conversation and a verdict.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (i, p) in self.prompts.iter().enumerate() {
            if let Some(why) = &p.skipped {
                s.push_str(&format!("  {}. skipped: {why}\n", i + 1));
                continue;
            }
            let stop = |b: bool| if b { "stops" } else { "no stop" };
            s.push_str(&format!(
                "  {}. {:?}: {}/{} first tokens agree; tuned {}, exported {}\n",
                i + 1,
                p.prompt,
                p.agreeing_tokens,
                p.tuned_tokens.len().max(p.exported_tokens.len()),
                stop(p.tuned_stopped),
                stop(p.exported_stopped),
            ));
        }
        if self.passed() {
            s.push_str("  self-check passed\n");
        } else {
            for p in &self.problems {
                s.push_str(&format!("  FAILED: {p}\n"));
            }
        }
        s
    }

    /// `Err(Error::ExportCheck)` carrying the summary when the check failed.
    pub fn into_result(self) -> Result<Self> {
        if self.passed() {
            return Ok(self);
        }
        Err(Error::ExportCheck {
            file: self.file.clone(),
            message: format!("\n{}", self.summary()),
        })
    }
}

fn first_difference(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Greedy reply of `m` to an already tokenized prompt.
fn reply(m: &ExportModel, ids: &[u32], budget: usize) -> Result<(Vec<u32>, bool, String)> {
    let g = generate(
        m.decoder,
        m.tokenizer,
        ids,
        &GenerateOptions::greedy(budget),
        &m.tokenizer.eos_ids,
        None,
        &mut |_| {},
    )?;
    Ok((g.token_ids, g.stop == StopReason::EndOfText, g.text))
}

/// Compares `exported` against `tuned` on `opts`' conversations. `file` names the export in the
/// report. Returns the report whether or not it passed (see [`SelfCheckReport::into_result`]).
///
/// # Errors
/// Generation failures (not check failures); [`Error::Cancelled`] once `cancel` is set
/// (looked at before each conversation).
pub fn compare(
    tuned: &ExportModel,
    exported: &ExportModel,
    file: &Path,
    strict: bool,
    opts: &CheckOptions,
    cancel: Option<&AtomicBool>,
    on_progress: &mut dyn FnMut(ExportProgress),
) -> Result<SelfCheckReport> {
    let mut prompts = Vec::new();
    let mut problems = Vec::new();
    let total = opts.conversations.len() as u64;
    for (i, conv) in opts.conversations.iter().enumerate() {
        stop_if_cancelled(cancel)?;
        let n = i + 1;
        let prompt = conv
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let mut check = PromptCheck {
            prompt: prompt.clone(),
            prompt_tokens: 0,
            prompt_text: String::new(),
            prompt_ids: Vec::new(),
            prompt_matches: false,
            tuned_tokens: Vec::new(),
            exported_tokens: Vec::new(),
            agreeing_tokens: 0,
            tuned_stopped: false,
            exported_stopped: false,
            tuned_text: String::new(),
            exported_text: String::new(),
            skipped: None,
        };
        let tuned_text = match tuned.template.render(conv, true) {
            Ok(t) => t,
            Err(e) => {
                check.skipped = Some(format!("the model's chat template refuses it: {e}"));
                prompts.push(check);
                continue;
            }
        };
        let exported_text = match exported.template.render(conv, true) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!(
                    "conversation {n}: the exported chat template fails: {e}"
                ));
                prompts.push(check);
                continue;
            }
        };
        if tuned_text != exported_text {
            problems.push(format!(
                "conversation {n}: the exported chat template renders {exported_text:?}, the tuned model's {tuned_text:?}"
            ));
        }
        let tuned_ids = tuned.tokenizer.encode(&tuned_text, false)?;
        let exported_ids = exported.tokenizer.encode(&exported_text, false)?;
        if tuned_ids != exported_ids {
            let k = first_difference(&tuned_ids, &exported_ids);
            problems.push(format!(
                "conversation {n}: the exported tokenizer gives different prompt ids from position {k} \
                 (tuned {:?}, exported {:?})",
                tuned_ids.get(k),
                exported_ids.get(k)
            ));
        }
        check.prompt_matches = tuned_text == exported_text && tuned_ids == exported_ids;
        check.prompt_tokens = tuned_ids.len();
        check.prompt_text = tuned_text.clone();
        check.prompt_ids = tuned_ids.clone();
        let (t_ids, t_stop, t_text) = reply(tuned, &tuned_ids, opts.max_new_tokens)?;
        let (e_ids, e_stop, e_text) = reply(exported, &exported_ids, opts.max_new_tokens)?;
        check.agreeing_tokens = first_difference(&t_ids, &e_ids);
        if strict && (t_ids != e_ids || t_stop != e_stop) {
            problems.push(format!(
                "conversation {n}: greedy tokens differ from position {} (tuned {:?}, exported {:?})",
                check.agreeing_tokens, t_text, e_text
            ));
        }
        if t_stop && !e_stop {
            problems.push(format!(
                "conversation {n}: the tuned model ends its turn after {} tokens but the exported \
                 one does not stop within {} (end-of-turn ids {:?} vs {:?})",
                t_ids.len(),
                opts.max_new_tokens,
                tuned.tokenizer.eos_ids,
                exported.tokenizer.eos_ids
            ));
        }
        (check.tuned_tokens, check.tuned_stopped, check.tuned_text) = (t_ids, t_stop, t_text);
        (
            check.exported_tokens,
            check.exported_stopped,
            check.exported_text,
        ) = (e_ids, e_stop, e_text);
        prompts.push(check);
        on_progress(ExportProgress {
            stage: "checking",
            done: n as u64,
            total,
            item: prompt,
        });
    }
    if prompts.iter().all(|p| p.skipped.is_some()) {
        problems.push("no conversation could be rendered with the model's chat template".into());
    }
    Ok(SelfCheckReport {
        file: file.display().to_string(),
        strict,
        max_new_tokens: opts.max_new_tokens,
        prompts,
        problems,
    })
}

/// Loads an exported model (a `.gguf` file or a Hugging Face folder) with our engine and
/// [`compare`]s it with `tuned`; a failed check is an error.
///
/// # Errors
/// Loading errors naming the file; [`Error::ExportCheck`] with the report's summary when the
/// check fails; [`Error::Cancelled`] as [`compare`].
pub fn check_exported(
    tuned: &ExportModel,
    path: &Path,
    strict: bool,
    opts: &CheckOptions,
    cancel: Option<&AtomicBool>,
    on_progress: &mut dyn FnMut(ExportProgress),
) -> Result<SelfCheckReport> {
    use crate::model::decoder::LoadOptions;
    use crate::model::load::{ModelSource, OpenOptions};
    let source = if path.is_dir() {
        ModelSource::Folder(path.to_path_buf())
    } else {
        ModelSource::Gguf(path.to_path_buf())
    };
    let loaded = crate::model::loaded::LoadedModel::open(&source, OpenOptions::default())?;
    let decoder = loaded.build_weights(&LoadOptions::default())?;
    let exported = ExportModel::of(&loaded, &decoder, tuned.name);
    compare(tuned, &exported, path, strict, opts, cancel, on_progress)?.into_result()
}
