//! One entry point for every way a user names a model: the bundled demo model, a local
//! Hugging Face folder, a `.gguf` file or a hub id (`org/name[@revision]`).
//!
//! [`open_model`] resolves the source to a [`ModelFiles`]: the validated config, a
//! [`TensorSource`] to build the decoder from tensor by tensor, the tokenizer with every
//! end-of-generation id, and the chat template. Nothing is converted here; the caller picks
//! the storage type when it builds the decoder.

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::tensors::{SafetensorsSource, TensorSource};
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// The stories260K demo model compiled into the binary (works offline).
    Bundled,
    /// A folder with `config.json`, safetensors weights and `tokenizer.json`.
    Folder(PathBuf),
    /// A llama.cpp GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face hub repository, downloaded into the standard HF cache.
    Hub(crate::model::hub::HubRef),
}

/// The name a user gives for the bundled model (`--model demo`).
pub const BUNDLED_NAME: &str = "demo";

impl ModelSource {
    /// Interprets a user-supplied model name: `demo` (or empty) is the bundled model, an
    /// existing folder or `.gguf` file is used as is, anything shaped like `org/name` is a hub id.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the text is none of these, saying what was tried.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() || spec == BUNDLED_NAME || spec == "bundled" {
            return Ok(ModelSource::Bundled);
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSource::Folder(path.to_path_buf()));
        }
        if path.is_file() {
            if spec.to_ascii_lowercase().ends_with(".gguf") {
                return Ok(ModelSource::Gguf(path.to_path_buf()));
            }
            return Err(Error::invalid(
                "model",
                format!("{spec} is a file but not a .gguf file; give a model folder, a .gguf file or a hub id"),
            ));
        }
        if spec.to_ascii_lowercase().ends_with(".gguf")
            || spec.starts_with('.')
            || spec.starts_with('/')
        {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
        match crate::model::hub::HubRef::parse(spec) {
            Some(h) => Ok(ModelSource::Hub(h)),
            None => Err(Error::invalid(
                "model",
                format!("`{spec}` is not an existing folder, a .gguf file, or a hub id like org/name[@revision]"),
            )),
        }
    }

    /// What to record as `base_model_name_or_path`: a hub id or a path Python tools can open
    /// (`demo` for the bundled model).
    pub fn base_model_id(&self) -> String {
        match self {
            ModelSource::Bundled => BUNDLED_NAME.into(),
            ModelSource::Folder(p) | ModelSource::Gguf(p) => std::fs::canonicalize(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
            ModelSource::Hub(h) => h.repo.clone(),
        }
    }

    /// The text that [`ModelSource::parse`] turns back into this source (`demo`, a path,
    /// `org/name@revision`): what run records store to reopen the model.
    pub fn spec(&self) -> String {
        match self {
            ModelSource::Bundled => BUNDLED_NAME.into(),
            ModelSource::Folder(p) | ModelSource::Gguf(p) => p.display().to_string(),
            ModelSource::Hub(h) => h.to_string(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ModelSource::Bundled => "bundled demo model (stories260K)".into(),
            ModelSource::Folder(p) => p.display().to_string(),
            ModelSource::Gguf(p) => p.display().to_string(),
            ModelSource::Hub(h) => format!("{}@{}", h.repo, h.revision),
        }
    }
}

/// A resolved model, ready to build a decoder from.
pub struct ModelFiles {
    pub source: ModelSource,
    pub config: Config,
    pub tensors: Box<dyn TensorSource>,
    pub tokenizer: Tokenizer,
    /// Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Bytes of weight files on disk (0 for the bundled model's in-binary copy).
    pub size_on_disk: u64,
    /// The folder holding the files (for copying tokenizer files into exports).
    pub root: Option<PathBuf>,
}

mod bundled {
    pub const CONFIG: &str = include_str!("../../../../models/stories260K/config.json");
    pub const GENERATION: &str =
        include_str!("../../../../models/stories260K/generation_config.json");
    pub const TOKENIZER: &str = include_str!("../../../../models/stories260K/tokenizer.json");
    pub const TOKENIZER_CONFIG: &str =
        include_str!("../../../../models/stories260K/tokenizer_config.json");
    pub const WEIGHTS: &[u8] = include_bytes!("../../../../models/stories260K/model.safetensors");
}

/// Options for [`open_model`] that only matter for some sources.
#[derive(Default)]
pub struct OpenOptions<'a> {
    pub hub: crate::model::hub::HubOptions,
    /// Download progress for hub models.
    pub on_download: Option<&'a mut dyn FnMut(crate::model::hub::DownloadEvent)>,
    pub cancel: Option<&'a std::sync::atomic::AtomicBool>,
}

/// Resolves a model source (downloading hub models first).
///
/// # Errors
/// Any file that is missing or malformed, named in the error; hub failures as [`Error::Hub`].
pub fn open_model(source: &ModelSource, opts: OpenOptions<'_>) -> Result<ModelFiles> {
    match source {
        ModelSource::Bundled => open_bundled(),
        ModelSource::Folder(dir) => open_folder(dir, source.clone()),
        ModelSource::Gguf(path) => open_gguf_file(path),
        ModelSource::Hub(h) => {
            let mut noop = |_e: crate::model::hub::DownloadEvent| {};
            let cb: &mut dyn FnMut(crate::model::hub::DownloadEvent) = match opts.on_download {
                Some(cb) => cb,
                None => &mut noop,
            };
            let dir = crate::model::hub::download_model(h, &opts.hub, cb, opts.cancel)?;
            open_folder(&dir, source.clone())
        }
    }
}

fn open_bundled() -> Result<ModelFiles> {
    let config = Config::from_json(bundled::CONFIG, "bundled:config.json")?;
    let inner = tokenizers::Tokenizer::from_bytes(bundled::TOKENIZER.as_bytes())
        .map_err(|e| Error::Tokenizer(format!("bundled tokenizer.json: {e}")))?;
    let mut tokenizer = Tokenizer::new(inner);
    let tc = TokenizerConfig::parse(bundled::TOKENIZER_CONFIG, "bundled:tokenizer_config.json")?;
    let gen_eos = generation_eos(bundled::GENERATION, "bundled:generation_config.json")?;
    finish_tokenizer(&mut tokenizer, &config, &tc, &gen_eos);
    Ok(ModelFiles {
        source: ModelSource::Bundled,
        tensors: Box::new(SafetensorsSource::from_static(
            "bundled:model.safetensors",
            bundled::WEIGHTS,
        )?),
        config,
        tokenizer,
        chat_template: tc.chat_template,
        bos_token: tc.bos_token,
        eos_token: tc.eos_token,
        size_on_disk: bundled::WEIGHTS.len() as u64,
        root: None,
    })
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Opens a Hugging Face model folder.
pub fn open_folder(dir: &Path, source: ModelSource) -> Result<ModelFiles> {
    let config = Config::from_file(&dir.join("config.json"))?;
    let tensors = SafetensorsSource::open_dir(dir)?;
    let mut tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.exists() {
        TokenizerConfig::parse(&read_text(&tc_path)?, &tc_path.display().to_string())?
    } else {
        TokenizerConfig::default()
    };
    let gen_path = dir.join("generation_config.json");
    let gen_eos = if gen_path.exists() {
        generation_eos(&read_text(&gen_path)?, &gen_path.display().to_string())?
    } else {
        Vec::new()
    };
    finish_tokenizer(&mut tokenizer, &config, &tc, &gen_eos);
    let size_on_disk = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    Ok(ModelFiles {
        source,
        config,
        tensors: Box::new(tensors),
        tokenizer,
        chat_template: tc.chat_template,
        bos_token: tc.bos_token,
        eos_token: tc.eos_token,
        size_on_disk,
        root: Some(dir.to_path_buf()),
    })
}

fn open_gguf_file(path: &Path) -> Result<ModelFiles> {
    let g = crate::model::gguf::open_gguf(path)?;
    let size_on_disk = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(ModelFiles {
        source: ModelSource::Gguf(path.to_path_buf()),
        config: g.config,
        tensors: Box::new(g.source),
        tokenizer: g.tokenizer,
        chat_template: g.chat_template,
        bos_token: g.bos_token,
        eos_token: g.eos_token,
        size_on_disk,
        root: None,
    })
}

fn finish_tokenizer(t: &mut Tokenizer, c: &Config, tc: &TokenizerConfig, gen_eos: &[u32]) {
    t.bos_id = c
        .bos_token_id
        .or_else(|| tc.bos_token.as_deref().and_then(|b| t.token_to_id(b)));
    let from_tc = tc.eos_token.as_deref().and_then(|e| t.token_to_id(e));
    t.add_eos(c.eos_token_ids.iter().copied());
    t.add_eos(gen_eos.iter().copied());
    t.add_eos(from_tc);
}

/// The parts of `tokenizer_config.json` we use.
#[derive(Default, Debug)]
pub struct TokenizerConfig {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl TokenizerConfig {
    /// `chat_template` may be a string or a list of `{name, template}` (the `default` one is
    /// used); special tokens may be strings or `{content: ...}` objects.
    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Json {
            path: file.into(),
            message: e.to_string(),
        })?;
        let token = |key: &str| -> Option<String> {
            match v.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
                _ => None,
            }
        };
        let chat_template = match v.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            _ => None,
        };
        Ok(Self {
            chat_template,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
        })
    }
}

fn generation_eos(text: &str, file: &str) -> Result<Vec<u32>> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Json {
        path: file.into(),
        message: e.to_string(),
    })?;
    Ok(match v.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    })
}
