//! The model's Jinja chat template as an Ollama Go `TEMPLATE` (plus the `SYSTEM` default it
//! implies), proved equal by rendering.
//!
//! Ollama only maps a GGUF's `tokenizer.chat_template` to one of its built-in templates when
//! they are close (Levenshtein distance < 100); otherwise the model runs on a bare
//! `{{ .Prompt }}` and babbles. So an export always writes its own `TEMPLATE`, taken from
//! [`FAMILIES`] — a list of `(name, recipe)` where a recipe looks at the Jinja template's
//! renders and proposes a Go template. A proposal is accepted only if, for every probe
//! conversation the Jinja template accepts, Ollama's rendering (our `go_template` renderer with
//! Ollama's inputs: `.Messages`, `.System` = joined system messages, the `SYSTEM` default
//! prepended when a conversation has no system message) equals the Jinja rendering — minus a
//! leading BOS when the tokenizer adds BOS itself, as Ollama's and llama.cpp's runners do.
//! No accepted proposal is an error naming the families tried; extending the mapping means
//! adding a recipe.
//!
//! Families: ChatML (SmolLM2, Qwen2; a default system prompt becomes `SYSTEM`), our Alpaca
//! fallback (`template::FALLBACK_TEMPLATE`, the bundled demo), Llama 2 `[INST]` with
//! `<<SYS>>`, Mistral `[INST]` (no system role), Llama 3 headers, ChatML with Qwen3's empty
//! think block, Gemma 3's turns, Phi-3/4's role tags. Caveat: Jinja templates that
//! `strip()` message contents differ from the Go template for contents with surrounding
//! whitespace; the probes have none.

use crate::error::{Error, Result};
use crate::export::go_template::{render, GoValue};
use crate::template::{ChatTemplate, Message};
use std::collections::BTreeMap;

/// An Ollama template for one model.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct OllamaTemplate {
    /// The family whose recipe matched (`chatml`, `alpaca`, …).
    pub family: &'static str,
    /// Go template for `TEMPLATE """…"""`.
    pub template: String,
    /// `SYSTEM` default (the template's own default system prompt), if any.
    pub system: Option<String>,
}

/// What a recipe sees: the template and its renders.
pub struct Probe<'a> {
    pub template: &'a ChatTemplate,
    /// BOS text that Ollama's tokenizer adds (so the Go template must not write it), or "".
    pub implicit_bos: &'a str,
}

impl Probe<'_> {
    /// The Jinja rendering as Ollama must reproduce it (implicit BOS removed).
    pub fn jinja(&self, conv: &[Message]) -> Option<String> {
        let text = self.template.render(conv, true).ok()?;
        Some(match text.strip_prefix(self.implicit_bos) {
            Some(rest) if !self.implicit_bos.is_empty() => rest.to_string(),
            _ => text,
        })
    }
}

type Recipe = fn(&Probe) -> Option<(String, Option<String>)>;

/// Families we translate, tried in order.
pub const FAMILIES: &[(&str, Recipe)] = &[
    ("chatml", chatml),
    ("chatml-think", chatml_think),
    ("alpaca", alpaca),
    ("llama3", llama3),
    ("llama3-system", llama3_system),
    ("llama2", llama2),
    ("mistral", mistral),
    ("gemma", gemma),
    ("phi3", phi3),
];

fn u(c: &str) -> Message {
    Message::new("user", c)
}
fn a(c: &str) -> Message {
    Message::new("assistant", c)
}
fn s(c: &str) -> Message {
    Message::new("system", c)
}

/// Text a template writes before BOS-less content that it writes unconditionally at the start
/// (e.g. a BOS the tokenizer does not add), found by rendering one user turn.
fn leading(p: &Probe, marker: &str) -> Option<String> {
    let text = p.jinja(&[u("PROBE_USER")])?;
    text.find(marker).map(|i| text[..i].to_string())
}

fn chatml(p: &Probe) -> Option<(String, Option<String>)> {
    let text = p.jinja(&[u("PROBE_USER")])?;
    let head = text.find("<|im_start|>")?;
    let system = text[head..]
        .strip_prefix("<|im_start|>system\n")
        .and_then(|r| r.split_once("<|im_end|>"))
        .map(|(sys, _)| sys.to_string());
    let t = format!(
        "{}{{{{- range .Messages }}}}<|im_start|>{{{{ .Role }}}}\n{{{{ .Content }}}}<|im_end|>\n{{{{ end }}}}<|im_start|>assistant\n",
        &text[..head]
    );
    Some((t, system))
}

/// ChatML whose generation prompt opens more than the assistant header: Qwen3 with thinking
/// switched off writes an empty `<think>\n\n</think>\n\n` there (and drops it from earlier
/// turns, which the plain ChatML body already does).
fn chatml_think(p: &Probe) -> Option<(String, Option<String>)> {
    let text = p.jinja(&[u("PROBE_USER")])?;
    let opened = text.rsplit_once("<|im_start|>assistant\n")?.1;
    if opened.is_empty() {
        return None;
    }
    let (t, system) = chatml(p)?;
    Some((format!("{t}{opened}"), system))
}

// Trim markers (`{{-`) only where the text before them ends in a non-space: a `{{- else }}`
// after `\n\n` would eat the newlines the Jinja template writes.
fn alpaca(p: &Probe) -> Option<(String, Option<String>)> {
    let eos = &p.template.eos_token;
    let head = leading(p, "### Instruction:")?;
    let t = format!(
        "{head}{{{{- range $i, $_ := .Messages }}}}{{{{- $last := eq (len (slice $.Messages $i)) 1 }}}}\
         {{{{- if eq .Role \"system\" }}}}{{{{ .Content }}}}\n\n\
         {{{{ else if eq .Role \"user\" }}}}### Instruction:\n{{{{ .Content }}}}\n\n\
         {{{{ else if eq .Role \"assistant\" }}}}### Response:\n{{{{ .Content }}}}{eos}{{{{ if not $last }}}}\n\n{{{{ end }}}}\
         {{{{ end }}}}{{{{ end }}}}### Response:\n"
    );
    Some((t, None))
}

fn llama3(p: &Probe) -> Option<(String, Option<String>)> {
    let head = leading(p, "<|start_header_id|>")?;
    let t = format!(
        "{head}{{{{- range .Messages }}}}<|start_header_id|>{{{{ .Role }}}}<|end_header_id|>\n\n{{{{ .Content }}}}<|eot_id|>\
         {{{{ end }}}}<|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    Some((t, None))
}

/// Llama 3.1/3.2 Instruct: a system header always written, opening with the template's own
/// lines (knowledge cutoff and date), then the system message if there is one.
fn llama3_system(p: &Probe) -> Option<(String, Option<String>)> {
    const SYS: &str = "<|start_header_id|>system<|end_header_id|>\n\n";
    let text = p.jinja(&[u("PROBE_USER")])?;
    let (head, rest) = text.split_once(SYS)?;
    let (default_lines, _) = rest.split_once("<|eot_id|>")?;
    p.jinja(&[s("PROBE_SYS"), u("PROBE_USER")])?
        .contains(&format!("{SYS}{default_lines}PROBE_SYS<|eot_id|>"))
        .then_some(())?;
    let t = format!(
        "{head}{SYS}{default_lines}{{{{ .System }}}}<|eot_id|>{{{{- range .Messages }}}}\
         {{{{ if eq .Role \"system\" }}}}{{{{ else }}}}<|start_header_id|>{{{{ .Role }}}}<|end_header_id|>\n\n{{{{ .Content }}}}<|eot_id|>{{{{ end }}}}\
         {{{{ end }}}}<|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    Some((t, None))
}

fn llama2(p: &Probe) -> Option<(String, Option<String>)> {
    let text = p.jinja(&[u("U1"), a("A1"), u("U2")])?;
    // `[INST] U1 [/INST] A1 </s><s>[INST] U2 [/INST]`: what joins an answer to the next turn.
    let (_, after) = text.split_once("A1")?;
    let (join, _) = after.split_once("[INST]")?;
    p.jinja(&[s("S"), u("U1")])?
        .contains("<<SYS>>")
        .then_some(())?;
    let head = leading(p, "[INST]")?;
    let t = format!(
        "{head}{{{{- range $i, $_ := .Messages }}}}\
         {{{{- if eq .Role \"user\" }}}}{{{{ if and $.System (eq $i 1) }}}}[INST] <<SYS>>\n{{{{ $.System }}}}\n<</SYS>>\n\n\
         {{{{ else }}}}[INST] {{{{ end }}}}{{{{ .Content }}}} [/INST]\
         {{{{- else if eq .Role \"assistant\" }}}} {{{{ .Content }}}}{join}{{{{ end }}}}{{{{ end }}}}"
    );
    Some((t, None))
}

fn mistral(p: &Probe) -> Option<(String, Option<String>)> {
    let text = p.jinja(&[u("U1"), a("A1"), u("U2")])?;
    let (_, after_u1) = text.split_once("U1 [/INST]")?;
    let (pre, after) = after_u1.split_once("A1")?;
    let (post, _) = after.split_once("[INST]")?;
    let head = leading(p, "[INST]")?;
    let t = format!(
        "{head}{{{{- range .Messages }}}}{{{{- if eq .Role \"user\" }}}}[INST] {{{{ .Content }}}} [/INST]\
         {{{{- else if eq .Role \"assistant\" }}}}{pre}{{{{ .Content }}}}{post}{{{{ end }}}}{{{{ end }}}}"
    );
    Some((t, None))
}

/// Gemma's turns: `<start_of_turn>user|model`, the system prompt folded into the first user
/// turn followed by a blank line.
fn gemma(p: &Probe) -> Option<(String, Option<String>)> {
    let head = leading(p, "<start_of_turn>")?;
    let t = format!(
        "{head}{{{{- range $i, $_ := .Messages }}}}\
         {{{{ if eq .Role \"user\" }}}}<start_of_turn>user\n{{{{ if and $.System (eq $i 1) }}}}{{{{ $.System }}}}\n\n{{{{ end }}}}{{{{ .Content }}}}<end_of_turn>\n\
         {{{{ else if eq .Role \"assistant\" }}}}<start_of_turn>model\n{{{{ .Content }}}}<end_of_turn>\n\
         {{{{ end }}}}{{{{ end }}}}<start_of_turn>model\n"
    );
    Some((t, None))
}

/// Phi-3/3.5/4-mini: `<|role|>` tags closed by `<|end|>`, with or without newlines after each
/// (read from one rendered turn).
fn phi3(p: &Probe) -> Option<(String, Option<String>)> {
    let text = p.jinja(&[u("PROBE_USER")])?;
    let (head, rest) = text.split_once("<|user|>")?;
    let (sep, rest) = rest.split_once("PROBE_USER<|end|>")?;
    let after = rest.strip_suffix(&format!("<|assistant|>{sep}"))?;
    let t = format!(
        "{head}{{{{- range .Messages }}}}<|{{{{ .Role }}}}|>{sep}{{{{ .Content }}}}<|end|>{after}{{{{ end }}}}<|assistant|>{sep}"
    );
    Some((t, None))
}

/// The conversations a proposal must reproduce.
pub fn probe_conversations() -> Vec<Vec<Message>> {
    let (u1, a1, u2, a2, u3) = (
        "Hi there, who are you?",
        "I am a helpful assistant.\nAsk me anything.",
        "List two colours.",
        "Red and blue.",
        "Thanks! One more?",
    );
    vec![
        vec![u(u1)],
        vec![s("Answer briefly."), u(u1)],
        vec![u(u1), a(a1), u(u2)],
        vec![s("Answer briefly."), u(u1), a(a1), u(u2)],
        vec![u(u1), a(a1), u(u2), a(a2), u(u3)],
    ]
}

/// Ollama's rendering of a conversation: `SYSTEM` default prepended when there is no system
/// message (Ollama's chat handler), `.System` the joined system messages (`collate`).
pub fn ollama_render(t: &OllamaTemplate, conv: &[Message]) -> std::result::Result<String, String> {
    let mut msgs: Vec<Message> = conv.to_vec();
    if let Some(sys) = &t.system {
        if msgs.first().is_none_or(|m| m.role != "system") {
            msgs.insert(0, Message::new("system", sys.clone()));
        }
    }
    let system: Vec<&str> = msgs
        .iter()
        .filter(|m| m.role == "system")
        .map(|m| m.content.as_str())
        .collect();
    let list = msgs
        .iter()
        .map(|m| {
            let mut f = BTreeMap::new();
            f.insert("Role".to_string(), GoValue::Str(m.role.clone()));
            f.insert("Content".to_string(), GoValue::Str(m.content.clone()));
            GoValue::Map(f)
        })
        .collect();
    let mut root = BTreeMap::new();
    root.insert("Messages".to_string(), GoValue::List(list));
    root.insert("System".to_string(), GoValue::Str(system.join("\n\n")));
    root.insert("Prompt".to_string(), GoValue::Str(String::new()));
    root.insert("Response".to_string(), GoValue::Str(String::new()));
    render(&t.template, &GoValue::Map(root))
}

/// Checks a proposal on every probe the Jinja template accepts; `Err` names the first
/// difference.
pub fn verify(p: &Probe, t: &OllamaTemplate) -> std::result::Result<usize, String> {
    let mut checked = 0;
    for conv in probe_conversations() {
        let Some(want) = p.jinja(&conv) else { continue };
        let got = ollama_render(t, &conv)?;
        if got != want {
            return Err(format!("Jinja renders {want:?}, Go renders {got:?}"));
        }
        checked += 1;
    }
    if checked < 2 {
        return Err(format!("only {checked} probe conversations render"));
    }
    Ok(checked)
}

/// The Ollama template equivalent to `template`. `implicit_bos` is the BOS text the tokenizer
/// adds on its own (`""` when it does not).
///
/// # Errors
/// [`Error::Unsupported`] when no family's proposal renders the same text, listing them.
pub fn ollama_template(template: &ChatTemplate, implicit_bos: &str) -> Result<OllamaTemplate> {
    let probe = Probe {
        template,
        implicit_bos,
    };
    let mut tried = Vec::new();
    for (family, recipe) in FAMILIES {
        let Some((tmpl, system)) = recipe(&probe) else {
            continue;
        };
        let t = OllamaTemplate {
            family,
            template: tmpl,
            system,
        };
        match verify(&probe, &t) {
            Ok(_) => return Ok(t),
            Err(e) => tried.push(format!("{family}: {e}")),
        }
    }
    Err(Error::Unsupported {
        what: "the model's chat template in Ollama's Go syntax".into(),
        found: if tried.is_empty() {
            "a template no family recipe recognises".into()
        } else {
            tried.join("; ")
        },
        supported: FAMILIES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", "),
    })
}
