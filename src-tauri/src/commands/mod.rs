//! The IPC commands, one module per wizard step. Each one parses its arguments, calls the
//! engine and maps the result to a DTO; long jobs run on blocking threads with a cancel
//! token in [`crate::state::AppState`] and stream over a `tauri::ipc::Channel`.

pub mod chat;
pub mod data;
pub mod dialogs;
pub mod export;
pub mod gguf_export;
pub mod hardware;
pub mod model;
pub mod plan;
pub mod scaleout;
pub mod train;

/// Runs blocking engine work off the async runtime's worker threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::error::ApiResult<T> + Send + 'static,
) -> crate::error::ApiResult<T> {
    tauri::async_runtime::spawn_blocking(f)
        .await
        .map_err(|e| crate::error::internal(format!("background job failed: {e}")))?
}
