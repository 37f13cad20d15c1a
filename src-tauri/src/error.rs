//! The one error shape the UI sees: the engine's [`ErrorReport`] `{ code, message, details }`.
//! Engine errors keep their stable `Error::code`; the shell adds a few codes of its own for
//! things only it can get wrong (no model open yet, a job already running, a path outside
//! what it serves).

pub use peft_engine::error::ErrorReport as ApiError;

/// Short alias for command results.
pub type ApiResult<T> = Result<T, ApiError>;

/// A model is needed and none is open.
pub fn no_model() -> ApiError {
    ApiError::new("NoModel", "Open a model first (step 2).")
}

/// A job of this kind is already running.
pub fn busy(what: &str) -> ApiError {
    ApiError::new(
        "Busy",
        format!("{what} is already running; wait for it or stop it first."),
    )
}

/// A bug or a poisoned lock: should never reach a user, but must not panic the app.
pub fn internal(message: impl Into<String>) -> ApiError {
    ApiError::new("Internal", message)
}
