//! An opened model: config, tokenizer, chat template and the ids that stop generation, with
//! its weights materialised on demand in the storage each use needs.
//!
//! Opening reads no weights (it checks every tensor's name and shape), so the app can open a
//! model that does not fit in f32 and plan a QLoRA run for it. The first call of
//! [`LoadedModel::weights`] builds the decoder from the files in the asked storage (dense f32
//! or bf16, or NF4 block linears for QLoRA) and keeps it; later calls in the same storage share
//! it (tensors are reference-counted), so training, chat and export of one opened model read
//! the weights once. Asking for another storage replaces the kept decoder (it is rebuilt from
//! the files; decoders already handed out stay alive until their users drop them).
//!
//! What storage a use needs is decided in the engine (`Method::base_storage` for training,
//! [`LoadedModel::chat_weights`] for chat), never by a front end.

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::decoder::{Decoder, LoadOptions};
use crate::model::load::{open_model, ModelFiles, ModelSource, OpenOptions};
use crate::model::tensors::TensorSource;
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// What `peft info` and the app's model step show.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ModelInfo {
    /// The engine's description of the source (a path, `org/name@rev`, the bundled model).
    pub source: String,
    /// True for the bundled demo model.
    pub bundled: bool,
    pub architecture: String,
    pub parameters: usize,
    /// Storage type of the weights on disk (`F32`, `BF16`, `Q4_1`, …).
    pub dtype_on_disk: String,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub size_on_disk_bytes: u64,
    pub context_length: usize,
    pub vocab_size: usize,
    pub layers: usize,
    pub hidden_size: usize,
    pub has_chat_template: bool,
    /// The Jinja template used for chat and training (the engine's documented fallback when
    /// the model has none).
    pub chat_template: String,
    pub config: Config,
}

/// The decoder kept for reuse, and the storage it was built in.
struct Kept {
    storage: LoadOptions,
    decoder: Arc<Decoder>,
}

/// Dense bases above this many f32 bytes chat over Q8_0 ([`LoadedModel::generation_storage`]).
pub const Q8_0_FROM_BYTES: u64 = 64 << 20;

pub struct LoadedModel {
    pub source: ModelSource,
    pub config: Config,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub info: ModelInfo,
    /// Where the original files live, for copying tokenizer files into exports.
    pub root: Option<PathBuf>,
    tensors: Box<dyn TensorSource>,
    kept: Mutex<Option<Kept>>,
}

impl LoadedModel {
    /// Resolves `source` (downloading hub models) and checks its files; reads no weights.
    ///
    /// # Errors
    /// Whatever [`open_model`] reports, and [`Error::Tensor`] for a missing or mis-shaped
    /// tensor, naming the file at fault.
    pub fn open(source: &ModelSource, open: OpenOptions<'_>) -> Result<Self> {
        Self::from_files(open_model(source, open)?)
    }

    /// Opens `source` and builds its weights in `storage` at once (the CLI's one-shot commands).
    ///
    /// # Errors
    /// Those of [`LoadedModel::open`] and [`LoadedModel::weights`].
    pub fn load(
        source: &ModelSource,
        open: OpenOptions<'_>,
        storage: &LoadOptions,
    ) -> Result<Self> {
        let m = Self::open(source, open)?;
        m.weights(storage)?;
        Ok(m)
    }

    /// A model from resolved files (see [`LoadedModel::open`]).
    ///
    /// # Errors
    /// The template's parse error, or a tensor that is missing or mis-shaped.
    pub fn from_files(files: ModelFiles) -> Result<Self> {
        Decoder::check(&files.config, files.tensors.as_ref())?;
        let bos = files.bos_token.clone().unwrap_or_default();
        let eos = files.eos_token.clone().unwrap_or_default();
        let template = match &files.chat_template {
            Some(src) => ChatTemplate::new(src, &bos, &eos)?,
            None => ChatTemplate::fallback(&bos, &eos),
        };
        let mut tokenizer = files.tokenizer;
        if let Some(id) = template
            .end_of_turn()
            .and_then(|t| tokenizer.token_to_id(&t))
        {
            tokenizer.add_eos([id]);
        }
        let c = &files.config;
        let info = ModelInfo {
            source: files.source.describe(),
            bundled: files.source == ModelSource::Bundled,
            architecture: c.arch.as_str().to_string(),
            parameters: crate::model::count::parameter_count(c),
            dtype_on_disk: files.tensors.dtype_summary(),
            size_on_disk_bytes: files.size_on_disk,
            context_length: c.max_position_embeddings,
            vocab_size: c.vocab_size,
            layers: c.num_hidden_layers,
            hidden_size: c.hidden_size,
            has_chat_template: files.chat_template.is_some(),
            chat_template: template.source().to_string(),
            config: c.clone(),
        };
        Ok(Self {
            source: files.source,
            config: files.config,
            tokenizer,
            template,
            info,
            root: files.root,
            tensors: files.tensors,
            kept: Mutex::new(None),
        })
    }

    fn kept(&self) -> Result<MutexGuard<'_, Option<Kept>>> {
        self.kept
            .lock()
            .map_err(|_| Error::invalid("model", "an earlier job crashed while building weights"))
    }

    /// The decoder in `storage`: the kept one when it was built in that storage, else built
    /// from the files (one tensor at a time) and kept in place of the previous one.
    ///
    /// # Errors
    /// [`Error::Tensor`] when a tensor cannot be read; NF4 quantization errors.
    pub fn weights(&self, storage: &LoadOptions) -> Result<Arc<Decoder>> {
        let mut kept = self.kept()?;
        if let Some(k) = kept.as_ref().filter(|k| k.storage == *storage) {
            return Ok(k.decoder.clone());
        }
        // Drop the old storage first: building the new one never needs both.
        *kept = None;
        let decoder = Arc::new(self.build_weights(storage)?);
        *kept = Some(Kept {
            storage: *storage,
            decoder: decoder.clone(),
        });
        Ok(decoder)
    }

    /// The decoder in `storage` as an owned value, for a use that replaces its tensors (full
    /// fine-tuning turns every weight into a trained copy): the kept one is handed over when
    /// nobody else holds it, so the originals are freed as their copies are made; otherwise a
    /// clone sharing the tensors, or a fresh build.
    ///
    /// # Errors
    /// Those of [`LoadedModel::weights`].
    pub fn take_weights(&self, storage: &LoadOptions) -> Result<Decoder> {
        let mut kept = self.kept()?;
        match kept.take() {
            Some(k) if k.storage == *storage => {
                Ok(Arc::try_unwrap(k.decoder).unwrap_or_else(|shared| (*shared).clone()))
            }
            other => {
                *kept = other;
                drop(kept);
                self.build_weights(storage)
            }
        }
    }

    /// A new decoder in `storage`, not kept (exports that need another storage once).
    ///
    /// # Errors
    /// Those of [`LoadedModel::weights`].
    pub fn build_weights(&self, storage: &LoadOptions) -> Result<Decoder> {
        Decoder::load(&self.config, self.tensors.as_ref(), storage)
    }

    /// The storage of the kept decoder, if one is built.
    pub fn kept_storage(&self) -> Option<LoadOptions> {
        self.kept().ok()?.as_ref().map(|k| k.storage)
    }

    /// The weights chat runs on: whatever is built (after a QLoRA run, the NF4 base it trained
    /// over), else dense f32 — a GGUF model's dense f32 replaced by its own block types
    /// ([`LoadedModel::generation_storage`]).
    ///
    /// # Errors
    /// Those of [`LoadedModel::weights`].
    pub fn chat_weights(&self) -> Result<Arc<Decoder>> {
        let storage = self.kept_storage().unwrap_or_default();
        self.weights(&self.generation_storage(storage))
    }

    /// The storage generation uses where `base` would otherwise be built: a GGUF file's own
    /// block types kept as they are; a dense base of more than [`Q8_0_FROM_BYTES`] in f32 as
    /// Q8_0 (a quarter of the bytes through the quantized kernels: measured on SmolLM2-135M,
    /// 2.6× the f32 decode speed with the greedy tokens of our test prompts unchanged,
    /// `tests/q8_chat.rs`; a model that small stays f32, where per-op overhead, not memory,
    /// sets the speed: the 1 MB bundled model decodes at 0.9× in Q8_0); `base` unchanged for
    /// NF4 (a QLoRA adapter corrects that base).
    pub fn generation_storage(&self, base: LoadOptions) -> LoadOptions {
        if base.quantize.is_some() {
            return base;
        }
        let f32_bytes = 4 * self.info.parameters as u64;
        LoadOptions {
            keep_gguf_types: matches!(self.source, ModelSource::Gguf(_)),
            q8_0: f32_bytes > Q8_0_FROM_BYTES,
            ..base
        }
    }

    /// Bytes of the block linears as the GGUF file stores them, when every one of them is in
    /// a block type the engine keeps (`LoadOptions::keep_gguf_types`); `None` for other
    /// sources and for GGUFs with float (or unusable) linears. QLoRA over such a file trains
    /// over these bytes, and the planner counts them.
    pub fn gguf_linear_bytes(&self) -> Option<u64> {
        if !matches!(self.source, ModelSource::Gguf(_)) {
            return None;
        }
        let mut total = 0u64;
        for l in 0..self.config.num_hidden_layers {
            for (path, ..) in crate::model::count::block_linears(&self.config) {
                total += self
                    .tensors
                    .ggml_bytes(&format!("model.layers.{l}.{path}.weight"))?;
            }
        }
        Some(total)
    }

    /// Bytes `name` keeps in its GGUF block type (`LoadOptions::keep_gguf_types`), if it does.
    pub fn gguf_tensor_bytes(&self, name: &str) -> Option<u64> {
        self.tensors.ggml_bytes(name)
    }

    /// Forgets the kept decoder (its memory is freed once no job holds it).
    pub fn release_weights(&self) {
        if let Ok(mut k) = self.kept() {
            *k = None;
        }
    }

    /// Ids of a plain prompt; an empty prompt starts from BOS.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Ok(self.tokenizer.bos_id.into_iter().collect());
        }
        self.tokenizer.encode(prompt, true)
    }

    /// Ids of a conversation rendered with the chat template, ready for the assistant's turn.
    pub fn chat_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        self.tokenizer.encode(&text, false)
    }

    /// Every id that ends generation.
    pub fn stop_ids(&self) -> Vec<u32> {
        self.tokenizer.eos_ids.clone()
    }
}
