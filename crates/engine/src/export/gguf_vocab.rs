//! The tokenizer and chat metadata of an exported GGUF (`tokenizer.ggml.*`,
//! `tokenizer.chat_template`), derived from our in-memory Hugging Face tokenizer — the keys that
//! decide whether the exported model chats correctly in llama.cpp, Ollama and LM Studio.
//!
//! - Byte-level BPE (SmolLM2, Qwen2, Llama 3) becomes `tokenizer.ggml.model = gpt2` with
//!   `tokens`, `merges` and a `pre` name recognised from the pre-tokenizer
//!   (`model::gguf_pretok::PRE_TOKENIZERS`; an unknown one is refused rather than written as a
//!   guess that would tokenize differently).
//! - SentencePiece-style BPE with byte fallback (Llama 2, Mistral, TinyLlama) becomes
//!   `llama` with `scores`: a piece made by merge number `r` scores `-r` (llama.cpp merges the
//!   best-scoring pair first, which is the lowest rank), other pieces `-1e9`; byte pieces
//!   `<0xNN>` are BYTE, and `add_space_prefix` follows the `▁` prepend.
//! - Token types: special added tokens CONTROL (3) — llama.cpp needs that to treat
//!   `<|im_end|>` as a token that ends a turn and is not printed — other added tokens
//!   USER_DEFINED (4), the unknown token UNKNOWN (2), rows the embedding has beyond the
//!   tokenizer `[PADn]` UNUSED (5).
//! - Ids: BOS, EOS (the template's `eos_token`), EOT (the template's end-of-turn token when it
//!   differs), EOM (`<|eom_id|>` when it ends generation), padding, unknown; `add_bos_token` is
//!   measured (does encoding with special tokens prepend BOS?), not assumed.
//!
//! Not supported: WordPiece/Unigram vocabularies (`bert`, `t5` in GGUF terms).

use crate::error::{Error, Result};
use crate::model::gguf_pretok::{pre_tokenizer_name, PrePiece, PRE_TOKENIZERS};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;
use std::collections::HashMap;

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

fn unsupported(found: String) -> Error {
    Error::Unsupported {
        what: "GGUF export: tokenizer".into(),
        found,
        supported: "BPE vocabularies: byte-level (gpt2) or with byte fallback (llama)".into(),
    }
}

/// `merges` as `a b` strings, whichever of the two JSON spellings the file uses.
fn merges(model: &Json) -> Result<Vec<String>> {
    let Some(list) = model.get("merges").and_then(|m| m.as_array()) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            )),
            other => Err(unsupported(format!("a merge spelled {other}"))),
        })
        .collect()
}

/// The pieces of a Hugging Face `pre_tokenizer` that decide splitting (see [`PrePiece`]).
fn pre_pieces(pre: &Json, out: &mut Vec<std::result::Result<PrePiece, String>>) {
    match pre.get("type").and_then(|t| t.as_str()) {
        Some("Sequence") => {
            for p in pre
                .get("pretokenizers")
                .and_then(|p| p.as_array())
                .into_iter()
                .flatten()
            {
                pre_pieces(p, out);
            }
        }
        Some("ByteLevel") => out.push(Ok(
            if pre.get("use_regex").and_then(|b| b.as_bool()) != Some(false) {
                PrePiece::ByteLevelGpt2
            } else {
                PrePiece::ByteLevel
            },
        )),
        Some("Digits") if pre.get("individual_digits").and_then(|b| b.as_bool()) == Some(true) => {
            out.push(Ok(PrePiece::Digits))
        }
        Some("Split") => {
            let regex = pre
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(|r| r.as_str());
            let known = PRE_TOKENIZERS
                .iter()
                .flat_map(|(_, pieces)| pieces.iter())
                .find_map(|p| match p {
                    PrePiece::Regex(r) if Some(*r) == regex => Some(p.clone()),
                    _ => None,
                });
            out.push(known.ok_or_else(|| format!("Split on {regex:?}")));
        }
        other => out.push(Err(format!("{other:?}"))),
    }
}

/// The `tokenizer.ggml.pre` name of a byte-level tokenizer.
fn pre_name(json: &Json) -> Result<&'static str> {
    let mut pieces = Vec::new();
    if let Some(pre) = json.get("pre_tokenizer").filter(|p| !p.is_null()) {
        pre_pieces(pre, &mut pieces);
    }
    let pieces: std::result::Result<Vec<PrePiece>, String> = pieces.into_iter().collect();
    let known = PRE_TOKENIZERS.iter().map(|(n, _)| *n).collect::<Vec<_>>();
    let unknown = |what: String| Error::Unsupported {
        what: "GGUF export: tokenizer pre-tokenizer".into(),
        found: what,
        supported: format!("the splits llama.cpp calls {}", known.join(", ")),
    };
    let pieces = pieces.map_err(unknown)?;
    pre_tokenizer_name(&pieces).ok_or_else(|| unknown(format!("{pieces:?}")))
}

/// Whether SentencePiece-style normalization prepends `▁` (Llama 2's legacy normalizer, or a
/// Metaspace pre-tokenizer that prepends).
fn adds_space_prefix(json: &Json) -> bool {
    let text = json
        .get("normalizer")
        .map(|n| n.to_string())
        .unwrap_or_default();
    let meta = json
        .get("pre_tokenizer")
        .map(|n| n.to_string())
        .unwrap_or_default();
    text.contains("\"Prepend\"")
        || (meta.contains("\"Metaspace\"") && !meta.contains("\"prepend_scheme\":\"never\""))
}

/// `tokenizer.*` metadata for a model whose embedding has `n_vocab` rows.
///
/// # Errors
/// [`Error::Unsupported`] for a vocabulary or pre-tokenizer GGUF cannot carry;
/// [`Error::Invalid`] when the tokenizer has more tokens than the embedding has rows.
pub fn tokenizer_metadata(
    tok: &Tokenizer,
    template: &ChatTemplate,
    n_vocab: usize,
) -> Result<Vec<(String, Value)>> {
    let text = tok
        .inner
        .to_string(false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let json: Json = serde_json::from_str(&text).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let model = &json["model"];
    let kind = model["type"].as_str().unwrap_or_default();
    if kind != "BPE" {
        return Err(unsupported(format!("a {kind} model")));
    }
    let byte_fallback = model["byte_fallback"].as_bool().unwrap_or(false);
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![NORMAL; n_vocab];
    let mut put = |id: usize, text: &str, ty: Option<i32>| -> Result<()> {
        if id >= n_vocab {
            return Err(Error::invalid(
                "tokenizer",
                format!("token {id} ({text:?}) is beyond the embedding's {n_vocab} rows"),
            ));
        }
        tokens[id] = Some(text.to_string());
        if let Some(t) = ty {
            types[id] = t;
        }
        Ok(())
    };
    for (text, id) in model["vocab"].as_object().into_iter().flatten() {
        let id = id.as_u64().unwrap_or(u64::MAX) as usize;
        let byte =
            byte_fallback && text.len() == 6 && text.starts_with("<0x") && text.ends_with('>');
        put(id, text, byte.then_some(BYTE))?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let id = added["id"].as_u64().unwrap_or(u64::MAX) as usize;
        let content = added["content"].as_str().unwrap_or_default();
        let special = added["special"].as_bool().unwrap_or(false);
        put(
            id,
            content,
            Some(if special { CONTROL } else { USER_DEFINED }),
        )?;
    }
    let unk = model["unk_token"].as_str().and_then(|u| tok.token_to_id(u));
    if let Some(u) = unk {
        types[u as usize] = UNKNOWN;
    }
    let mut tokens_out = Vec::with_capacity(n_vocab);
    for (i, t) in tokens.into_iter().enumerate() {
        tokens_out.push(Value::String(t.unwrap_or_else(|| {
            types[i] = UNUSED;
            format!("[PAD{i}]")
        })));
    }
    let merges = merges(model)?;
    let mut kv: Vec<(String, Value)> = Vec::new();
    let s = |v: &str| Value::String(v.to_string());
    if byte_fallback {
        kv.push(("tokenizer.ggml.model".into(), s("llama")));
        kv.push(("tokenizer.ggml.pre".into(), s("default")));
        kv.push(("tokenizer.ggml.tokens".into(), Value::Array(tokens_out)));
        let vocab: HashMap<&str, usize> = model["vocab"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(t, id)| (t.as_str(), id.as_u64().unwrap_or(0) as usize))
            .collect();
        let mut scores = vec![-1e9f32; n_vocab];
        for (rank, m) in merges.iter().enumerate().rev() {
            if let Some(&id) = vocab.get(m.replacen(' ', "", 1).as_str()) {
                scores[id] = -(rank as f32);
            }
        }
        kv.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ));
        kv.push((
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(adds_space_prefix(&json)),
        ));
    } else {
        if !text.contains("\"ByteLevel\"") {
            return Err(unsupported(
                "a BPE model that is neither byte-level nor byte-fallback".into(),
            ));
        }
        kv.push(("tokenizer.ggml.model".into(), s("gpt2")));
        kv.push(("tokenizer.ggml.pre".into(), s(pre_name(&json)?)));
        kv.push(("tokenizer.ggml.tokens".into(), Value::Array(tokens_out)));
        kv.push((
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.into_iter().map(Value::String).collect()),
        ));
    }
    kv.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.into_iter().map(Value::I32).collect()),
    ));
    kv.extend(special_ids(tok, template, &json, unk)?);
    kv.push((
        "tokenizer.chat_template".into(),
        Value::String(template.source().to_string()),
    ));
    Ok(kv)
}

/// BOS/EOS/EOT/EOM/padding/unknown ids and the add-BOS/EOS rules.
fn special_ids(
    tok: &Tokenizer,
    template: &ChatTemplate,
    json: &Json,
    unk: Option<u32>,
) -> Result<Vec<(String, Value)>> {
    let id_of = |t: &str| (!t.is_empty()).then(|| tok.token_to_id(t)).flatten();
    let eos = id_of(&template.eos_token).or(tok.eos_ids.first().copied());
    let eot = template
        .end_of_turn()
        .and_then(|t| id_of(&t))
        .filter(|id| Some(*id) != eos);
    let eom = tok
        .token_to_id("<|eom_id|>")
        .filter(|id| tok.eos_ids.contains(id));
    let pad = json
        .get("padding")
        .and_then(|p| p.get("pad_id"))
        .and_then(|p| p.as_u64())
        .map(|p| p as u32)
        .or(eos);
    let mut kv = Vec::new();
    let mut put = |key: &str, id: Option<u32>| {
        if let Some(id) = id {
            kv.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    };
    put("bos_token_id", tok.bos_id);
    put("eos_token_id", eos);
    put("eot_token_id", eot);
    put("eom_token_id", eom);
    put("padding_token_id", pad);
    put("unknown_token_id", unk);
    let probe = "Hello";
    let plain = tok.encode(probe, false)?;
    let special = tok.encode(probe, true)?;
    let add_bos = tok.bos_id.is_some()
        && special.first() == tok.bos_id.as_ref()
        && plain.first() != special.first();
    let add_eos = special.len() > plain.len() && eos.is_some() && special.last() == eos.as_ref();
    kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
    kv.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(add_eos)));
    Ok(kv)
}
