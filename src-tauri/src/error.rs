//! The one error shape the UI sees: `{ code, message, details }`. Engine errors keep their
//! stable [`peft_engine::Error::code`]; the shell adds a few codes of its own for things only
//! it can get wrong (no model loaded yet, a job already running, a path outside what it serves).

use serde::{Deserialize, Serialize};
use ts_rs::TS;

/// An error crossing the IPC boundary.
#[derive(Debug, Clone, Serialize, Deserialize, TS, PartialEq)]
pub struct ApiError {
    /// Stable, machine-readable (`BadDataset`, `Hub`, `NoModel`, `Busy`, `BadPath`, …).
    pub code: String,
    /// One sentence for the user, naming the file/line/field at fault when there is one.
    pub message: String,
    /// Extra context (the cause chain), or null.
    pub details: Option<String>,
}

/// Short alias for command results.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// A model is needed and none is open.
    pub fn no_model() -> Self {
        Self::new("NoModel", "Open a model first (step 2).")
    }

    /// A job of this kind is already running.
    pub fn busy(what: &str) -> Self {
        Self::new(
            "Busy",
            format!("{what} is already running; wait for it or stop it first."),
        )
    }

    /// A bug or a poisoned lock: should never reach a user, but must not panic the app.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("Internal", message)
    }
}

impl From<peft_engine::Error> for ApiError {
    fn from(e: peft_engine::Error) -> Self {
        let mut details = Vec::new();
        let mut source = std::error::Error::source(&e);
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

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
