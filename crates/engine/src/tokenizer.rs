//! A thin wrapper over `tokenizers::Tokenizer` that knows the model's special ids.
//!
//! Conventions (as in Hugging Face): plain prompts are encoded with the tokenizer's own
//! post-processor (which may prepend BOS); text rendered from a chat template already holds
//! its special tokens and is encoded without adding any.

use crate::error::{Error, Result};
use std::path::Path;

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
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
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
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids, dropping special tokens when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
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
