//! The engine's one error type. Every variant names what was wrong and where (file, line,
//! field or tensor), so a user reading it knows what to fix; the app maps [`Error::code`] to a
//! stable string at its IPC boundary.

use std::path::PathBuf;

/// Errors raised anywhere in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file that does not parse, or a field with the wrong type.
    #[error("{path}: {message}")]
    Json { path: PathBuf, message: String },
    /// A config value that parses but is not acceptable (missing, out of range, inconsistent).
    #[error("{file}: field `{field}`: {message}")]
    Config {
        file: String,
        field: String,
        message: String,
    },
    /// An architecture, rope scaling, tensor type or format we do not implement.
    #[error("{what} is not supported: {found}. Supported: {supported}")]
    Unsupported {
        what: String,
        found: String,
        supported: String,
    },
    /// A tensor that is missing, has the wrong shape or cannot be read.
    #[error("{file}: tensor `{tensor}`: {message}")]
    Tensor {
        file: String,
        tensor: String,
        message: String,
    },
    /// A GGUF file that cannot be read or lacks a required key.
    #[error("{file}: {message}")]
    Gguf { file: String, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// Downloading from the Hugging Face hub failed.
    #[error("hub: {repo}: {message}")]
    Hub { repo: String, message: String },
    /// A dataset row or file that cannot be used; `line` is 1-based.
    #[error("{file}:{line}: {field}: {message}")]
    Data {
        file: String,
        line: usize,
        field: String,
        message: String,
    },
    /// A bad argument to an engine call (flag values, settings).
    #[error("invalid setting `{name}`: {message}")]
    Invalid { name: String, message: String },
    /// A file whose bytes are not what was written (a checksum mismatch).
    #[error("{file}: {message}")]
    Corrupt { file: String, message: String },
    /// An exported model failed its self-check (it would not chat like the tuned model).
    #[error("{file}: export self-check failed: {message}")]
    ExportCheck { file: String, message: String },
    /// The caller cancelled a long job.
    #[error("cancelled")]
    Cancelled,
    /// A numerical failure inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Short alias used across the engine.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A stable machine-readable code for front ends (the app's `{code, message, details}`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Io { .. } => "Io",
            Error::Json { .. } => "BadJson",
            Error::Config { .. } => "BadConfig",
            Error::Unsupported { .. } => "NotSupported",
            Error::Tensor { .. } => "BadTensor",
            Error::Gguf { .. } => "BadGguf",
            Error::Tokenizer(_) => "Tokenizer",
            Error::Template(_) => "ChatTemplate",
            Error::Hub { .. } => "Hub",
            Error::Data { .. } => "BadDataset",
            Error::Invalid { .. } => "InvalidSetting",
            Error::Corrupt { .. } => "Corrupt",
            Error::ExportCheck { .. } => "ExportCheckFailed",
            Error::Cancelled => "Cancelled",
            Error::Candle(_) => "Compute",
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn invalid(name: &str, message: impl Into<String>) -> Self {
        Error::Invalid {
            name: name.to_string(),
            message: message.into(),
        }
    }
}

/// An error as front ends show and store it: a stable `code` (see [`Error::code`]), one
/// sentence naming what is wrong and where, and the cause chain when there is one. Run records
/// keep it; the app sends it over IPC unchanged.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ErrorReport {
    /// Stable, machine-readable (`BadDataset`, `Hub`, `NoModel`, `Busy`, `BadPath`, …).
    pub code: String,
    /// One sentence for the user, naming the file/line/field at fault when there is one.
    pub message: String,
    /// Extra context (the cause chain), or null.
    pub details: Option<String>,
}

impl ErrorReport {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
            details: None,
        }
    }
}

impl From<&Error> for ErrorReport {
    fn from(e: &Error) -> Self {
        let mut details = Vec::new();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            details.push(s.to_string());
            source = s.source();
        }
        Self {
            code: e.code().to_string(),
            message: e.to_string(),
            details: (!details.is_empty()).then(|| details.join("\n")),
        }
    }
}

impl From<Error> for ErrorReport {
    fn from(e: Error) -> Self {
        Self::from(&e)
    }
}

impl std::fmt::Display for ErrorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
