//! A model ready to use: decoder + tokenizer + chat template + the ids that stop generation.
//! This is what the CLI and the app hold; training and export take its parts.

use crate::error::Result;
use crate::infer::template::{ChatTemplate, Message};
use crate::model::config::Config;
use crate::model::decoder::{Decoder, LoadOptions};
use crate::model::load::{open_model, ModelFiles, ModelSource, OpenOptions};
use crate::tokenizer::Tokenizer;

/// What `peft info` and the app's model step show.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    pub source: String,
    pub architecture: String,
    pub parameters: usize,
    /// Storage type of the weights on disk (`F32`, `BF16`, `Q4_1`, …).
    pub dtype_on_disk: String,
    pub size_on_disk_bytes: u64,
    pub context_length: usize,
    pub vocab_size: usize,
    pub layers: usize,
    pub hidden_size: usize,
    pub has_chat_template: bool,
    pub config: Config,
}

pub struct LoadedModel {
    pub source: ModelSource,
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub info: ModelInfo,
    /// Where the original files live, for copying tokenizer files into exports.
    pub root: Option<std::path::PathBuf>,
}

impl LoadedModel {
    /// Resolves `source` and builds the decoder with `load` options.
    ///
    /// # Errors
    /// Whatever [`open_model`] or [`Decoder::load`] report, naming the file at fault.
    pub fn load(source: &ModelSource, open: OpenOptions<'_>, load: &LoadOptions) -> Result<Self> {
        let files = open_model(source, open)?;
        Self::from_files(files, load)
    }

    pub fn from_files(files: ModelFiles, load: &LoadOptions) -> Result<Self> {
        let decoder = Decoder::load(&files.config, files.tensors.as_ref(), load)?;
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
            architecture: c.arch.as_str().to_string(),
            parameters: crate::model::count::parameter_count(c),
            dtype_on_disk: files.tensors.dtype_summary(),
            size_on_disk_bytes: files.size_on_disk,
            context_length: c.max_position_embeddings,
            vocab_size: c.vocab_size,
            layers: c.num_hidden_layers,
            hidden_size: c.hidden_size,
            has_chat_template: files.chat_template.is_some(),
            config: c.clone(),
        };
        Ok(Self {
            source: files.source,
            decoder,
            tokenizer,
            template,
            info,
            root: files.root,
        })
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
