//! A thin wrapper over `tokenizers::Tokenizer` that knows the model's special ids.
//!
//! Conventions (as in Hugging Face): plain prompts are encoded with the tokenizer's own
//! post-processor (which may prepend BOS); text rendered from a chat template already holds
//! its special tokens and is encoded without adding any.

mod guard;

use crate::error::{Error, Result};
pub use guard::contained_panics;
use guard::guarded;
use std::path::Path;

/// Token ids and each token's byte range in the encoded text.
pub type IdsAndOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// A tokenizer and the ids that matter for generation.
#[derive(Clone)]
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    /// Every id that ends generation (config, generation_config and template end-of-turn).
    pub eos_ids: Vec<u32>,
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] naming the file when it cannot be read or parsed.
    pub fn from_file(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        guard::sanitize(&mut json, &label)?;
        let inner = guarded(&label, || {
            tokenizers::Tokenizer::from_bytes(json.to_string())
        })?
        .map_err(|e| Error::Tokenizer(format!("{label}: {e}")))?;
        check_usable(&inner, &label)?;
        Ok(Self::new(inner))
    }

    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        Self {
            inner,
            bos_id: None,
            eos_ids: Vec::new(),
        }
    }

    /// Encodes text; `add_special` runs the tokenizer's post-processor (BOS for Llama 2).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text, add_special)?.0)
    }

    /// Encodes text and returns each token's byte range in `text` too.
    pub fn encode_with_offsets(&self, text: &str, add_special: bool) -> Result<IdsAndOffsets> {
        let enc = guarded("encode", || self.inner.encode(text, add_special))?
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Decodes ids, dropping special tokens when `skip_special` (and ids it does not know).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        // Filtered here as the crate would, so its decoders never see an empty list.
        let specials = self.inner.get_added_tokens_decoder();
        let kept: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| self.inner.id_to_token(*id).is_some())
            .filter(|id| !(skip_special && specials.get(id).is_some_and(|t| t.special)))
            .collect();
        if kept.is_empty() {
            return Ok(String::new());
        }
        guarded("decode", || self.inner.decode(&kept, skip_special))?
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Adds ids that end generation, keeping the list unique.
    pub fn add_eos(&mut self, ids: impl IntoIterator<Item = u32>) {
        for id in ids {
            if !self.eos_ids.contains(&id) {
                self.eos_ids.push(id);
            }
        }
    }
}

/// Uses a freshly loaded tokenizer once (encode and decode of a probe text, and decoding every
/// id of its vocabulary), so a file that loads but makes the `tokenizers` crate panic on use
/// is refused when it is opened, naming it, rather than in the middle of a run. Ordinary
/// errors (a word-level vocabulary without the probe's words) are left to the call that
/// meets them, where they are reported as errors anyway.
pub fn check_usable(inner: &tokenizers::Tokenizer, label: &str) -> Result<()> {
    const PROBE: &str = "Hello, world! 123 \u{e9}\u{4e2d}\u{1f600}\n\t  end";
    guarded(label, || {
        for add_special in [false, true] {
            if let Ok(enc) = inner.encode(PROBE, add_special) {
                let _ = inner.decode(enc.get_ids(), false);
            }
        }
        let n = inner.get_vocab_size(true) as u32;
        let ids: Vec<u32> = (0..n)
            .filter(|&id| inner.id_to_token(id).is_some())
            .collect();
        for chunk in ids.chunks(4096) {
            let _ = inner.decode(chunk, false);
        }
    })
    .map_err(|e| match e {
        Error::Tokenizer(m) => Error::Tokenizer(format!("unusable tokenizer: {m}")),
        other => other,
    })
}
