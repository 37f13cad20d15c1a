//! Chat templates: the Jinja program a model ships (in `tokenizer_config.json`'s
//! `chat_template` or GGUF's `tokenizer.chat_template`) that turns a list of messages into the
//! exact prompt text the model was trained on, rendered with minijinja under Hugging Face's
//! `apply_chat_template` semantics.
//!
//! What HF provides and we mirror: the variables `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token` (and `tools`/`documents` set to `none`), the function
//! `raise_exception(msg)`, `enable_thinking` (false unless [`ChatTemplate::set_enable_thinking`]:
//! Qwen3's template then opens the reply with an empty `<think></think>` block, so chat and
//! training answer directly), a Python-style `tojson` filter (`", "`/`": "` separators, no HTML
//! escaping), Python string/dict/list methods (`.strip()`, `.items()`, …) via
//! `minijinja_contrib::pycompat`, and `trim_blocks = lstrip_blocks = true`.
//!
//! What it is not: it does not tokenise (text rendered here already holds the special tokens and
//! is encoded with `add_special = false`), and it does not provide `strftime_now` (templates
//! that use it test `is defined` and fall back to a fixed date) or tool-call message fields.

mod guard;

use crate::error::{Error, Result};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One chat turn; `role` is `system`, `user` or `assistant` (templates may accept others).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The format used when a model ships no template: Alpaca's `### Instruction:` /
/// `### Response:` headers, each assistant turn closed by the real EOS token.
///
/// Why this and not ChatML: a base model without a template has no `<|im_start|>`/`<|im_end|>`
/// tokens, so ChatML markers would be split into several ordinary pieces whose embeddings LoRA
/// cannot specialise, and generation would have to stop on a multi-token string. These headers
/// are plain words every tokenizer already has, the format is the most common one for
/// instruction-tuning base models, and ending a reply with EOS makes the model stop on an id the
/// runtime already knows. A system message is emitted as a leading paragraph.
pub const FALLBACK_TEMPLATE: &str = concat!(
    "{{ bos_token }}",
    "{% for message in messages %}",
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}",
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}",
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token }}",
    "{% if not loop.last %}{{ '\\n\\n' }}{% endif %}",
    "{% else %}{{ raise_exception('the fallback chat format has no role ' + message['role']) }}",
    "{% endif %}{% endfor %}",
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}",
);

/// Largest `tojson` indent and nesting a template may ask for (each level repeats the indent).
const MAX_JSON_INDENT: usize = 64;
const MAX_JSON_DEPTH: usize = 128;

/// Prefix that marks a minijinja error as coming from the template's own `raise_exception`.
const RAISED: &str = "raise_exception: ";

/// A compiled chat template with the special-token strings it refers to.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    pub bos_token: String,
    pub eos_token: String,
    is_fallback: bool,
    /// Passed to the template as `enable_thinking` (Qwen3); false by default.
    enable_thinking: bool,
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("is_fallback", &self.is_fallback)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template.
    ///
    /// # Errors
    /// [`Error::Template`] when the source does not parse.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", py_tojson);
        guard::harden(&mut env);
        guard::refuse_namespace_cycles(source).map_err(Error::Template)?;
        env.add_template_owned("chat", source.to_string())
            .map_err(template_error)?;
        Ok(Self {
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            is_fallback: false,
            enable_thinking: false,
            env,
        })
    }

    /// The documented [`FALLBACK_TEMPLATE`] for models without a template of their own.
    pub fn fallback(bos_token: &str, eos_token: &str) -> Self {
        let mut t = Self::new(FALLBACK_TEMPLATE, bos_token, eos_token)
            .expect("the built-in fallback template parses");
        t.is_fallback = true;
        t
    }

    /// Reads `chat_template`, `bos_token` and `eos_token` from a `tokenizer_config.json`.
    /// `chat_template` may be a string or a list of `{name, template}` (the one named `default`
    /// wins, else the first); tokens may be strings or `{content: ...}` objects. Without a
    /// template the result is [`ChatTemplate::fallback`].
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Json`] for an unreadable file, [`Error::Template`] for a
    /// template that does not parse.
    pub fn from_tokenizer_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let token = |key: &str| match json.get(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Object(o)) => o
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        let (bos, eos) = (token("bos_token"), token("eos_token"));
        let source = match json.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|v| v.as_str()) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        };
        match source {
            Some(s) => Self::new(&s, &bos, &eos),
            None => Ok(Self::fallback(&bos, &eos)),
        }
    }

    /// Reads `tokenizer.chat_template` and the BOS/EOS token strings (via
    /// `tokenizer.ggml.{bos,eos}_token_id` into `tokenizer.ggml.tokens`) from GGUF metadata.
    /// Without a template the result is [`ChatTemplate::fallback`].
    ///
    /// # Errors
    /// [`Error::Template`] for a template that does not parse.
    pub fn from_gguf_metadata(
        md: &std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
    ) -> Result<Self> {
        let token = |key: &str| -> String {
            let id = md.get(key).and_then(|v| v.to_u32().ok());
            let tokens = md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok());
            match (id, tokens) {
                (Some(id), Some(tokens)) => tokens
                    .get(id as usize)
                    .and_then(|t| t.to_string().ok())
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            }
        };
        let (bos, eos) = (
            token("tokenizer.ggml.bos_token_id"),
            token("tokenizer.ggml.eos_token_id"),
        );
        match md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
        {
            Some(src) => Self::new(src, &bos, &eos),
            None => Ok(Self::fallback(&bos, &eos)),
        }
    }

    /// Lets templates with a thinking switch (Qwen3) open the reply for reasoning.
    pub fn set_enable_thinking(&mut self, on: bool) {
        self.enable_thinking = on;
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when this is the built-in fallback rather than the model's own template.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    /// Renders messages to prompt text, ending with the assistant header when
    /// `add_generation_prompt`.
    ///
    /// # Errors
    /// [`Error::Template`]: the template's own `raise_exception` message verbatim, or the
    /// minijinja error (kind, detail, line).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(template_error)?;
        // Rendered into a bounded writer: a template's output is limited like its run time.
        let mut out = guard::Limited(Vec::new());
        let (rendered, late) = guard::with_deadline(|| {
            tmpl.render_captured_to(
                minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => &self.bos_token,
                    eos_token => &self.eos_token,
                    tools => Value::from(()),
                    documents => Value::from(()),
                    enable_thinking => self.enable_thinking,
                },
                &mut out,
            )
            .map(|_| ())
        });
        if late {
            return Err(Error::Template(format!(
                "rendering ran longer than {} s and was stopped; the template loops too much",
                crate::limits::TEMPLATE_SECONDS
            )));
        }
        rendered.map_err(template_error)?;
        String::from_utf8(out.0).map_err(|e| Error::Template(e.to_string()))
    }

    /// Guesses the string that ends an assistant turn, so generation can stop on it and
    /// training can teach it: a known marker the template writes (`<|im_end|>`, `<|eot_id|>`,
    /// `<|end|>`, `<end_of_turn>`), else EOS when the template writes `eos_token` (Llama 2,
    /// Mistral, the fallback), else a literal `</s>`, else EOS; `None` when nothing is known.
    pub fn end_of_turn(&self) -> Option<String> {
        const MARKERS: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];
        if let Some(m) = MARKERS.iter().find(|m| self.source.contains(*m)) {
            return Some(m.to_string());
        }
        if self.source.contains("eos_token") && !self.eos_token.is_empty() {
            return Some(self.eos_token.clone());
        }
        if self.source.contains("</s>") {
            return Some("</s>".to_string());
        }
        (!self.eos_token.is_empty()).then(|| self.eos_token.clone())
    }
}

/// HF's `raise_exception`: aborts rendering with the template author's message.
fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{msg}"),
    ))
}

/// Maps a minijinja error to [`Error::Template`]; a `raise_exception` keeps its bare message
/// because that message is written for the user ("Conversation roles must alternate ...").
fn template_error(e: minijinja::Error) -> Error {
    if let Some(msg) = e.detail().and_then(|d| d.strip_prefix(RAISED)) {
        return Error::Template(msg.to_string());
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::Template(msg)
}

/// HF's `tojson`: Python `json.dumps(x, ensure_ascii=False, indent=indent,
/// sort_keys=sort_keys)`. minijinja's own filter differs (compact separators, HTML escaping of
/// `<>&'`), which would change the prompt text that tool-calling templates produce.
fn py_tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(usize::try_from(v)?),
        None => None,
    };
    if indent.is_some_and(|n| n > MAX_JSON_INDENT) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson indent over {MAX_JSON_INDENT} is not allowed in templates"),
        ));
    }
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    // Accepted for HF compatibility; output is always non-ASCII-preserving, default separators.
    let _ = kwargs.get::<Option<Value>>("ensure_ascii")?;
    let _ = kwargs.get::<Option<Value>>("separators")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, indent, sort_keys, 0)?;
    Ok(Value::from(out))
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    // A lazily repeated list (`[s] * n`) would otherwise be written out whole.
    if out.len() > crate::limits::TEMPLATE_OUTPUT_BYTES {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "tojson would build more than {} MiB; templates are limited",
                crate::limits::TEMPLATE_OUTPUT_BYTES >> 20
            ),
        ));
    }
    // A namespace can hold itself: bound the depth instead of overflowing the stack.
    if depth > MAX_JSON_DEPTH {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: value nested deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    // Python's separators: ", " and ": " without indent, "," plus newline with indent.
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => {
            out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).unwrap())
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(&k.to_string()).unwrap());
                out.push_str(": ");
                write_json(out, &v.get_item(k)?, indent, sort_keys, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, sort_keys, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
    }
    Ok(())
}
