//! A `tokenizers::Tokenizer` built from GGUF tokenizer metadata (`tokenizer.ggml.*`), and the
//! typed metadata reader ([`Meta`]) the GGUF importer shares.
//!
//! Supported `tokenizer.ggml.model`s:
//! - `gpt2`: byte-level BPE from `tokens` + `merges`, ByteLevel decoder. The pre-tokenizer
//!   follows `tokenizer.ggml.pre` the way llama.cpp does: `default`/`gpt-2`/`gpt2` (or absent):
//!   GPT-2's regex; `smollm`, `starcoder`, `refact`: single digits split off first, then GPT-2's
//!   regex; `llama-bpe`/`llama3`: Llama 3's regex (and `ignore_merges`, as its tokenizer.json);
//!   `qwen2`: Llama 3's regex with single digits.
//!   Any other `pre` is refused rather than tokenized subtly differently from the model's
//!   training.
//! - `llama`: SentencePiece BPE with byte fallback, the Llama 2 "legacy" normalizer (prepend
//!   `▁`, spaces → `▁`) and decoder; merges are rebuilt from `scores` exactly as Hugging Face's
//!   `SentencePieceExtractor` does (every split of a piece into two known pieces, ranked by the
//!   piece's score).
//!
//! Control tokens (`token_type` 3, and 2 = unknown) become special added tokens; user-defined
//! tokens (4) plain added tokens. With `tokenizer.ggml.add_bos_token` a post-processor prepends
//! BOS when encoding with special tokens. Not supported: `bert`, `t5`, `rwkv` vocabularies.

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

const SUPPORTED_MODELS: &str = "gpt2 (byte-level BPE), llama (SentencePiece BPE)";
const SUPPORTED_PRE: &str =
    "default, gpt-2, gpt2, smollm, starcoder, refact, llama-bpe, llama3, qwen2";
use crate::model::gguf_pretok::{LLAMA3_REGEX, QWEN2_REGEX};

/// Typed access to GGUF metadata; every error names the file and the key.
pub struct Meta<'a> {
    md: &'a HashMap<String, Value>,
    pub file: &'a str,
}

fn as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

impl<'a> Meta<'a> {
    pub fn new(md: &'a HashMap<String, Value>, file: &'a str) -> Self {
        Self { md, file }
    }

    fn missing(&self, key: &str) -> Error {
        Error::Gguf {
            file: self.file.into(),
            message: format!("missing metadata key `{key}`"),
        }
    }

    fn wrong(&self, key: &str, want: &str, v: &Value) -> Error {
        Error::Gguf {
            file: self.file.into(),
            message: format!(
                "metadata key `{key}`: expected {want}, found {:?}",
                v.value_type()
            ),
        }
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => as_u64(v)
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a non-negative integer", v)),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        Ok(self.opt_u64(key)?.ok_or_else(|| self.missing(key))? as usize)
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(f64::from(*x))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(v) => Err(self.wrong(key, "a float", v)),
        }
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, "a bool", v)),
        }
    }

    pub fn opt_string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    pub fn string(&self, key: &str) -> Result<&'a str> {
        self.opt_string(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a.as_slice())),
            Some(v) => Err(self.wrong(key, "an array", v)),
        }
    }

    /// An array of strings; `None` if the key is absent.
    pub fn opt_strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(items) = self.opt_array(key)? else {
            return Ok(None);
        };
        let strings = items.iter().map(|v| match v {
            Value::String(s) => Ok(s.as_str()),
            other => Err(self.wrong(key, "an array of strings", other)),
        });
        strings.collect::<Result<Vec<_>>>().map(Some)
    }

    /// An array of numbers as f32; `None` if the key is absent.
    fn opt_f32s(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(items) = self.opt_array(key)? else {
            return Ok(None);
        };
        let nums = items.iter().map(|v| match v {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            other => as_u64(other)
                .map(|x| x as f32)
                .or(match other {
                    Value::I32(x) => Some(*x as f32),
                    _ => None,
                })
                .ok_or_else(|| self.wrong(key, "an array of numbers", other)),
        });
        nums.collect::<Result<Vec<_>>>().map(Some)
    }

    /// An optional token id, checked against the vocabulary size.
    fn opt_token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        match self.opt_u64(key)? {
            Some(id) if id as usize >= n_tokens => Err(Error::Gguf {
                file: self.file.into(),
                message: format!("metadata key `{key}`: id {id} is outside the {n_tokens} tokens"),
            }),
            other => Ok(other.map(|id| id as u32)),
        }
    }
}

/// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata, with BOS
/// (`bos_token_id`) and end ids (`eos_token_id`, `eot_token_id`, `eom_token_id`) set.
///
/// # Errors
/// [`Error::Gguf`] for a missing or mistyped key, [`Error::Unsupported`] for a vocabulary
/// model or pre-tokenizer we do not implement, [`Error::Tokenizer`] if `tokenizers` rejects
/// the vocabulary (e.g. a merge naming an unknown token).
pub fn gguf_tokenizer(meta: &Meta) -> Result<Tokenizer> {
    let file = meta.file;
    let model = meta.string("tokenizer.ggml.model")?;
    let tokens = meta
        .opt_strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| meta.missing("tokenizer.ggml.tokens"))?;
    let n = tokens.len();
    let types = match meta.opt_f32s("tokenizer.ggml.token_type")? {
        Some(t) if t.len() != n => {
            return Err(Error::Gguf {
                file: file.into(),
                message: format!(
                    "metadata key `tokenizer.ggml.token_type` has {} entries for {n} tokens",
                    t.len()
                ),
            })
        }
        Some(t) => t.into_iter().map(|x| x as i32).collect(),
        None => vec![1; n],
    };
    let bos = meta.opt_token_id("tokenizer.ggml.bos_token_id", n)?;
    let tk_err = |e: tokenizers::Error| Error::Tokenizer(format!("{file}: {e}"));
    let (mut inner, default_add_bos) = match model {
        "gpt2" => (byte_level_bpe(meta, &tokens)?, false),
        "llama" => (sentencepiece_bpe(meta, &tokens)?, true),
        other => {
            return Err(Error::Unsupported {
                what: format!("{file}: tokenizer.ggml.model"),
                found: other.into(),
                supported: SUPPORTED_MODELS.into(),
            })
        }
    };
    let added = |want: &[i32], special: bool| -> Vec<AddedToken> {
        let pick = tokens.iter().zip(&types).filter(|(_, t)| want.contains(t));
        pick.map(|(tok, _)| AddedToken::from(tok.to_string(), special).normalized(false))
            .collect()
    };
    inner
        .add_special_tokens(added(&[2, 3], true))
        .map_err(tk_err)?;
    inner.add_tokens(added(&[4], false)).map_err(tk_err)?;
    let add_bos = meta
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(default_add_bos);
    if let (true, Some(id)) = (add_bos, bos) {
        let b = tokens[id as usize];
        let post = TemplateProcessing::builder()
            .try_single(vec![b, "$A"])
            .and_then(|p| p.try_pair(vec![b, "$A", b, "$B"]))
            .map_err(|e| Error::Tokenizer(format!("{file}: BOS template: {e}")))?
            .special_tokens(vec![(b.to_string(), id)])
            .build()
            .map_err(|e| Error::Tokenizer(format!("{file}: BOS template: {e}")))?;
        inner.with_post_processor(Some(post));
    }
    crate::tokenizer::check_usable(&inner, file)?;
    let mut tok = Tokenizer::new(inner);
    tok.bos_id = bos;
    for key in ["eos_token_id", "eot_token_id", "eom_token_id"] {
        let id = meta.opt_token_id(&format!("tokenizer.ggml.{key}"), n)?;
        tok.add_eos(id);
    }
    Ok(tok)
}

fn build_err(file: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{file}: {what}: {e}"))
}

/// `gpt2` vocabularies: byte-level BPE.
fn byte_level_bpe(meta: &Meta, tokens: &[&str]) -> Result<tokenizers::Tokenizer> {
    let file = meta.file;
    let merges = meta
        .opt_strings("tokenizer.ggml.merges")?
        .ok_or_else(|| meta.missing("tokenizer.ggml.merges"))?;
    let merges = merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(Error::Gguf {
                file: file.into(),
                message: format!("metadata key `tokenizer.ggml.merges`: `{m}` is not `a b`"),
            }),
        })
        .collect::<Result<Vec<_>>>()?;
    let pre = meta.opt_string("tokenizer.ggml.pre")?.unwrap_or("default");
    let byte_level = ByteLevel::new(false, true, true);
    let (pre_tokenizer, ignore_merges): (PreTokenizerWrapper, bool) = match pre {
        "default" | "gpt-2" | "gpt2" => (byte_level.into(), false),
        "smollm" | "starcoder" | "refact" => {
            let seq = PreSequence::new(vec![Digits::new(true).into(), byte_level.into()]);
            (seq.into(), false)
        }
        "llama-bpe" | "llama3" | "qwen2" => {
            let regex = if pre == "qwen2" {
                QWEN2_REGEX
            } else {
                LLAMA3_REGEX
            };
            let split = Split::new(
                SplitPattern::Regex(regex.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| build_err(file, "pre-tokenizer regex", e))?;
            let seq = PreSequence::new(vec![split.into(), byte_level.use_regex(false).into()]);
            (seq.into(), pre != "qwen2")
        }
        other => {
            return Err(Error::Unsupported {
                what: format!("{file}: tokenizer.ggml.pre"),
                found: other.into(),
                supported: SUPPORTED_PRE.into(),
            })
        }
    };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab(tokens), merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| build_err(file, "BPE model", e))?;
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(pre_tokenizer));
    t.with_decoder(Some(ByteLevel::default()));
    Ok(t)
}

/// `llama` vocabularies: SentencePiece BPE as Hugging Face's `LlamaTokenizerFast` (legacy).
fn sentencepiece_bpe(meta: &Meta, tokens: &[&str]) -> Result<tokenizers::Tokenizer> {
    let file = meta.file;
    let n = tokens.len();
    // Without scores, id order stands in for rank (how SentencePiece numbers BPE pieces).
    let scores = meta
        .opt_f32s("tokenizer.ggml.scores")?
        .unwrap_or_else(|| (0..n).map(|i| -(i as f32)).collect());
    if scores.len() != n {
        return Err(Error::Gguf {
            file: file.into(),
            message: format!(
                "`tokenizer.ggml.scores` has {} entries for {n} tokens",
                scores.len()
            ),
        });
    }
    let vocab = vocab(tokens);
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        let mut local: Vec<(&str, &str, f32)> = piece
            .char_indices()
            .skip(1)
            .map(|(i, _)| piece.split_at(i))
            .filter(|(l, r)| vocab.contains_key(*l) && vocab.contains_key(*r))
            .map(|(l, r)| (l, r, scores[id]))
            .collect();
        local.sort_by_key(|(l, r, _)| (vocab[*l], vocab[*r]));
        merges.extend(local);
    }
    // Stable, like Python's sorted(reverse=True): equal scores keep piece order.
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    let merges = merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect();
    let unk = meta
        .opt_token_id("tokenizer.ggml.unknown_token_id", n)?
        .unwrap_or(0);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(u) = tokens.get(unk as usize) {
        builder = builder.unk_token(u.to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| build_err(file, "BPE model", e))?;
    let prefix = meta
        .opt_bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let replace = |a: &str, b: &str| Replace::new(a, b).map_err(|e| build_err(file, "replace", e));
    let mut normalizers = vec![replace(" ", "\u{2581}")?.into()];
    let mut decoders = vec![
        replace("\u{2581}", " ")?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if prefix {
        normalizers.insert(0, Prepend::new("\u{2581}".into()).into());
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| build_err(file, "normalizer", e))?;
    t.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(t)
}

fn vocab(tokens: &[&str]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect()
}
