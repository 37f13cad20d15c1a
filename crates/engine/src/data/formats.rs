//! Dataset files: read JSONL, a JSON array or CSV, detect the record format once per file, and
//! normalise every row to an [`Example`].
//!
//! Formats (detected from the first readable record's keys, or from the CSV header):
//! - `{instruction, input?, output, system?}` — Alpaca; becomes a chat whose user turn is
//!   `instruction` or `instruction + "\n\n" + input`;
//! - `{messages: [{role, content}]}` — chat (OpenAI / TRL "conversational");
//! - `{conversations: [{from, value}]}` — ShareGPT (`human`/`user` → user, `gpt`/`assistant`/
//!   `model` → assistant, `system` → system);
//! - `{prompt, completion}` — raw completion, concatenated without a template (TRL semantics:
//!   the file supplies its own separators);
//! - `{question, answer}` or `{prompt, response}` — a Q&A pair, becomes a one-turn chat (these
//!   rows carry no separator, so the chat template supplies the structure);
//! - `{text}` — plain text.
//!
//! Line numbers in errors are 1-based: the file's line for JSONL, the line where the record
//! starts for CSV (the header is line 1), and the element index + 1 for a JSON array (a JSON
//! array that does not parse reports the file line serde_json stopped at).
//!
//! This module only reads and validates; rendering and tokenising are in `render`.

use crate::error::{Error, Result};
use crate::template::Message;
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;

/// The record format detected for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum DataFormat {
    Alpaca,
    Chat,
    ShareGpt,
    PromptCompletion,
    QuestionAnswer,
    Text,
}

/// One training example, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum Example {
    /// A conversation; the loss is normally taken on assistant turns only.
    Chat(Vec<Message>),
    /// Raw text: the prompt is masked, the completion trained.
    Completion { prompt: String, completion: String },
    /// Raw text, all trained.
    Text(String),
}

/// How strictly to read a file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Skip malformed rows (counting them) instead of failing on the first. Default `false`:
    /// a silently shrunken dataset is worse than an error the user can fix.
    pub skip_bad_rows: bool,
}

/// A bad row, kept for display when rows are skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct RowError {
    pub line: usize,
    pub field: String,
    pub message: String,
}

/// How many skipped-row errors a [`Dataset`] keeps.
pub const KEPT_ERRORS: usize = 5;

/// A loaded file.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub file: String,
    pub format: DataFormat,
    pub examples: Vec<Example>,
    /// The 1-based line (as above) of each example.
    pub lines: Vec<usize>,
    pub skipped: usize,
    /// The first [`KEPT_ERRORS`] skipped rows.
    pub errors: Vec<RowError>,
}

/// Reads and normalises a dataset file. The container is chosen by extension (`.jsonl`,
/// `.ndjson`, `.json`, `.csv`), a `.json` file not starting with `[` is read as JSONL, and an
/// unknown extension is sniffed from the first character.
///
/// # Errors
/// [`Error::Io`] for an unreadable file; [`Error::Data`] with file, line and field for an
/// empty file, an undetectable format, a missing CSV column, or (unless
/// [`LoadOptions::skip_bad_rows`]) the first malformed row; also when no row is usable.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let file = path.display().to_string();
    let bad = |line: usize, field: &str, message: String| Error::Data {
        file: file.clone(),
        line,
        field: field.to_string(),
        message,
    };
    if text.trim().is_empty() {
        return Err(bad(1, "(file)", "the file is empty".into()));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let first = text.trim_start().chars().next().unwrap_or(' ');
    let rows: Vec<(usize, Result<Map<String, Value>>)> = match ext.as_str() {
        "csv" => read_csv(text, &bad)?,
        _ if first == '[' => read_json_array(text, &bad)?,
        "jsonl" | "ndjson" | "json" => read_jsonl(text, &bad),
        _ if first == '{' => read_jsonl(text, &bad),
        _ => read_csv(text, &bad)?,
    };
    let mut ds = Dataset {
        file: file.clone(),
        format: DataFormat::Text,
        examples: Vec::new(),
        lines: Vec::new(),
        skipped: 0,
        errors: Vec::new(),
    };
    let mut format = None;
    for (line, row) in rows {
        let parsed = row.and_then(|obj| {
            let f = match format {
                Some(f) => f,
                None => *format.insert(detect(obj.keys().map(String::as_str), line, &bad)?),
            };
            parse_row(f, &obj, line, &bad)
        });
        match parsed {
            Ok(ex) => {
                ds.examples.push(ex);
                ds.lines.push(line);
            }
            Err(e) if opts.skip_bad_rows => {
                ds.skipped += 1;
                if let (Error::Data { field, message, .. }, true) =
                    (e, ds.errors.len() < KEPT_ERRORS)
                {
                    ds.errors.push(RowError {
                        line,
                        field,
                        message,
                    });
                }
            }
            Err(e) => return Err(e),
        }
    }
    if ds.examples.is_empty() {
        let msg = format!("no usable rows ({} skipped)", ds.skipped);
        return Err(bad(1, "(file)", msg));
    }
    ds.format = format.unwrap_or(DataFormat::Text);
    Ok(ds)
}

type Bad<'a> = dyn Fn(usize, &str, String) -> Error + 'a;
type Rows = Vec<(usize, Result<Map<String, Value>>)>;

fn as_object(v: Value, line: usize, bad: &Bad) -> Result<Map<String, Value>> {
    match v {
        Value::Object(o) => Ok(o),
        other => Err(bad(
            line,
            "(row)",
            format!("expected a JSON object, found {}", kind(&other)),
        )),
    }
}

fn read_jsonl(text: &str, bad: &Bad) -> Rows {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let row = serde_json::from_str::<Value>(l)
                .map_err(|e| bad(i + 1, "(json)", format!("invalid JSON: {e}")))
                .and_then(|v| as_object(v, i + 1, bad));
            (i + 1, row)
        })
        .collect()
}

fn read_json_array(text: &str, bad: &Bad) -> Result<Rows> {
    let items: Vec<Value> = serde_json::from_str(text).map_err(|e| {
        bad(
            e.line().max(1),
            "(json)",
            format!("invalid JSON array: {e}"),
        )
    })?;
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i + 1, as_object(v, i + 1, bad)))
        .collect())
}

/// CSV cells are strings; a `messages`/`conversations` cell holding JSON is parsed, so chat
/// data can travel in a spreadsheet.
fn read_csv(text: &str, bad: &Bad) -> Result<Rows> {
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| bad(1, "(header)", format!("unreadable CSV header: {e}")))?
        .clone();
    let names: Vec<String> = headers.iter().map(|h| h.trim().to_string()).collect();
    // A missing column is a file-level error on the header line, not one error per row.
    detect(names.iter().map(String::as_str), 1, bad)?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let row = match record {
            Ok(rec) => {
                let line = rec.position().map_or(0, |p| p.line() as usize);
                let mut obj = Map::new();
                for (name, cell) in names.iter().zip(rec.iter()) {
                    let value = match name.as_str() {
                        "messages" | "conversations" => serde_json::from_str(cell)
                            .unwrap_or_else(|_| Value::String(cell.to_string())),
                        _ => Value::String(cell.to_string()),
                    };
                    obj.insert(name.clone(), value);
                }
                (line, Ok(obj))
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                (
                    line,
                    Err(bad(line, "(csv)", format!("unreadable record: {e}"))),
                )
            }
        };
        rows.push(row);
    }
    Ok(rows)
}

/// Picks the format from a record's keys (or a CSV header).
fn detect<'k>(keys: impl Iterator<Item = &'k str>, line: usize, bad: &Bad) -> Result<DataFormat> {
    let keys: Vec<&str> = keys.collect();
    let has = |k: &str| keys.contains(&k);
    let need = |f: DataFormat, k: &str| {
        if has(k) {
            Ok(f)
        } else {
            Err(bad(line, k, format!("missing (a {f:?} record needs it)")))
        }
    };
    if has("messages") {
        Ok(DataFormat::Chat)
    } else if has("conversations") {
        Ok(DataFormat::ShareGpt)
    } else if has("instruction") {
        need(DataFormat::Alpaca, "output")
    } else if has("prompt") && has("response") && !has("completion") {
        Ok(DataFormat::QuestionAnswer)
    } else if has("prompt") {
        need(DataFormat::PromptCompletion, "completion")
    } else if has("question") {
        need(DataFormat::QuestionAnswer, "answer")
    } else if has("text") {
        Ok(DataFormat::Text)
    } else {
        Err(bad(
            line,
            "(row)",
            format!(
                "cannot tell the format from fields {keys:?}; expected one of \
                 instruction/output, messages, conversations, prompt/completion, \
                 question/answer, prompt/response, text"
            ),
        ))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn parse_row(f: DataFormat, obj: &Map<String, Value>, line: usize, bad: &Bad) -> Result<Example> {
    let text_at = |v: Option<&Value>, field: &str, required: bool| -> Result<String> {
        match v {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) if !required => Ok(String::new()),
            None => Err(bad(line, field, "missing".into())),
            Some(other) => Err(bad(
                line,
                field,
                format!("expected a string, found {}", kind(other)),
            )),
        }
    };
    let text = |field: &str, required: bool| text_at(obj.get(field), field, required);
    let pair = |q: &str, a: &str| -> Result<Example> {
        Ok(Example::Chat(vec![
            Message::new("user", text(q, true)?),
            Message::new("assistant", text(a, true)?),
        ]))
    };
    match f {
        DataFormat::Alpaca => {
            let (instruction, input) = (text("instruction", true)?, text("input", false)?);
            let output = text("output", true)?;
            let system = text("system", false)?;
            let user = if input.trim().is_empty() {
                instruction
            } else {
                format!("{instruction}\n\n{input}")
            };
            let mut msgs = Vec::with_capacity(3);
            if !system.trim().is_empty() {
                msgs.push(Message::new("system", system));
            }
            msgs.push(Message::new("user", user));
            msgs.push(Message::new("assistant", output));
            Ok(Example::Chat(msgs))
        }
        DataFormat::Chat | DataFormat::ShareGpt => {
            let share = f == DataFormat::ShareGpt;
            let (list, role_key, text_key) = if share {
                ("conversations", "from", "value")
            } else {
                ("messages", "role", "content")
            };
            let turns = match obj.get(list) {
                Some(Value::Array(a)) => a,
                Some(other) => {
                    let msg = format!("expected a list of turns, found {}", kind(other));
                    return Err(bad(line, list, msg));
                }
                None => return Err(bad(line, list, "missing".into())),
            };
            let mut msgs = Vec::with_capacity(turns.len());
            for (i, turn) in turns.iter().enumerate() {
                let at = |k: &str| format!("{list}[{i}].{k}");
                let Value::Object(t) = turn else {
                    let msg = format!("expected an object, found {}", kind(turn));
                    return Err(bad(line, &format!("{list}[{i}]"), msg));
                };
                let role = text_at(t.get(role_key), &at(role_key), true)?;
                let content = text_at(t.get(text_key), &at(text_key), true)?;
                let role = if share {
                    match role.as_str() {
                        "human" | "user" => "user",
                        "gpt" | "assistant" | "model" | "chatgpt" | "bard" => "assistant",
                        "system" => "system",
                        other => {
                            let msg = format!("unknown speaker `{other}` (human, gpt, system)");
                            return Err(bad(line, &at(role_key), msg));
                        }
                    }
                    .to_string()
                } else if role.trim().is_empty() {
                    return Err(bad(line, &at(role_key), "empty role".into()));
                } else {
                    role
                };
                msgs.push(Message::new(role, content));
            }
            if !msgs.iter().any(|m| m.role == "assistant") {
                let msg = "no assistant turn to learn from".to_string();
                return Err(bad(line, list, msg));
            }
            Ok(Example::Chat(msgs))
        }
        DataFormat::PromptCompletion => Ok(Example::Completion {
            prompt: text("prompt", true)?,
            completion: text("completion", true)?,
        }),
        DataFormat::QuestionAnswer if obj.contains_key("question") => pair("question", "answer"),
        DataFormat::QuestionAnswer => pair("prompt", "response"),
        DataFormat::Text => Ok(Example::Text(text("text", true)?)),
    }
}
