//! What stands between a `tokenizer.json` from anywhere and the `tokenizers` crate, whose
//! loader and decoders panic on some malformed but parseable files (found by the fuzz suite,
//! `tests/fuzz/tokenizer.rs`):
//! - checks before loading: a `Strip` decoder with `stop > 0` (it indexes past the start of a
//!   short token), BPE merges shorter than `continuing_subword_prefix` (a length underflow);
//! - `truncation` and `padding` are dropped: the engine truncates itself (`data::render`), and
//!   the crate's truncation panics when `stride >= max_length`;
//! - ids are filtered before decoding, so a decoder never sees an empty token list (`BPEDecoder`
//!   subtracts one from its length);
//! - every call runs under [`guarded`], which turns a remaining panic into
//!   [`Error::Tokenizer`], counted per thread ([`contained_panics`]) and not printed.

use crate::error::{Error, Result};
use serde_json::Value;
use std::cell::Cell;
use std::sync::Once;

thread_local! {
    static IN_GUARD: Cell<bool> = const { Cell::new(false) };
    static CONTAINED: Cell<usize> = const { Cell::new(0) };
}

/// Panics inside the `tokenizers` crate that [`guarded`] turned into errors on this thread
/// (installing the hook that keeps them quiet, if no call has yet).
pub fn contained_panics() -> usize {
    quiet_hook();
    CONTAINED.with(Cell::get)
}

/// Keeps the default panic message quiet for panics that [`guarded`] reports as errors; every
/// other panic goes to the hook that was installed before.
fn quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_GUARD.with(Cell::get) {
                prev(info);
            }
        }));
    });
}

/// Runs a call into the `tokenizers` crate, turning a panic inside it into
/// [`Error::Tokenizer`] (`what` names the file or the operation).
pub(super) fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    quiet_hook();
    let was = IN_GUARD.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_GUARD.with(|g| g.set(was));
    r.map_err(|p| {
        CONTAINED.with(|c| c.set(c.get() + 1));
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Error::Tokenizer(format!("{what}: the tokenizer failed internally: {msg}"))
    })
}

/// Checks a parsed `tokenizer.json` for what makes the `tokenizers` crate panic, and drops its
/// `truncation` and `padding`.
///
/// # Errors
/// [`Error::Tokenizer`] naming the file and the field.
pub(super) fn sanitize(json: &mut Value, file: &str) -> Result<()> {
    let bad = |field: &str, msg: &str| Error::Tokenizer(format!("{file}: `{field}`: {msg}"));
    if let Some(obj) = json.as_object_mut() {
        obj.insert("truncation".into(), Value::Null);
        obj.insert("padding".into(), Value::Null);
    }
    if let Some(d) = json.get("decoder") {
        check_decoders(d, "decoder", &bad)?;
    }
    let model = &json["model"];
    if model["type"] == "BPE" {
        let prefix = model["continuing_subword_prefix"]
            .as_str()
            .unwrap_or("")
            .len();
        if let Some(merges) = model["merges"].as_array() {
            for (i, m) in merges.iter().enumerate() {
                let second = match m {
                    Value::String(s) => s.split_once(' ').map(|(_, b)| b.len()),
                    Value::Array(p) => p.get(1).and_then(Value::as_str).map(str::len),
                    _ => None,
                };
                if second.is_some_and(|b| b < prefix) {
                    return Err(bad(
                        &format!("model.merges[{i}]"),
                        "the second token is shorter than continuing_subword_prefix",
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_decoders(d: &Value, at: &str, bad: &dyn Fn(&str, &str) -> Error) -> Result<()> {
    if d["type"] == "Strip" && d["stop"].as_u64().is_some_and(|s| s > 0) {
        return Err(bad(
            &format!("{at}.stop"),
            "a Strip decoder that strips from the end is not supported (it fails on short tokens)",
        ));
    }
    if let Some(list) = d["decoders"].as_array() {
        for (i, inner) in list.iter().enumerate() {
            check_decoders(inner, &format!("{at}.decoders[{i}]"), bad)?;
        }
    }
    Ok(())
}
