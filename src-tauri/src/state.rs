//! What the shell remembers between commands: the open model, the inspected dataset, the last
//! hardware scan, the running job and one cancel token per kind of long job. Everything here
//! is an engine value or a token; the shell computes nothing from it.

use crate::error::{internal, no_model, ApiResult};
use crate::train_update::TrainUpdate;
use peft_engine::data::inspect::DatasetReport;
use peft_engine::hardware::Hardware;
use peft_engine::model::decoder::Decoder;
use peft_engine::model::loaded::LoadedModel;
use peft_engine::plan::Throughput;
use peft_engine::train::{RunRecord, WhichAdapter};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use tauri::ipc::Channel;

/// The model the wizard works on, opened once: training, chat and export all use it (the
/// engine builds its weights in the storage each use needs and keeps them).
pub struct ModelSlot {
    /// What the user typed or picked (`demo`, a folder, a .gguf, `org/name`).
    pub spec: String,
    pub model: Arc<LoadedModel>,
}

/// The dataset the wizard works on.
pub struct DatasetSlot {
    pub path: PathBuf,
    pub report: DatasetReport,
}

/// A training run in progress (or just finished), so the Train step can re-attach.
pub struct TrainJob {
    pub run_id: String,
    pub cancel: Arc<AtomicBool>,
    /// Cleared by the training thread when it ends.
    pub running: Arc<AtomicBool>,
    /// The engine's record of the run, as of its last event.
    pub record: Arc<Mutex<RunRecord>>,
    /// Where progress goes: the view that started the run, or the one that re-attached after a
    /// reload of the window (`train_attach`).
    pub events: Arc<Mutex<Channel<TrainUpdate>>>,
}

/// The tuned model for chat: base + one run's adapter.
pub struct TunedSlot {
    pub run_id: String,
    pub which: WhichAdapter,
    pub decoder: Arc<Decoder>,
}

/// Managed state of the app.
pub struct AppState {
    /// Run history, the demo dataset copy and default export folders live here.
    pub data_dir: PathBuf,
    pub model: Mutex<Option<ModelSlot>>,
    pub tuned: Mutex<Option<TunedSlot>>,
    pub dataset: Mutex<Option<DatasetSlot>>,
    pub hardware: Mutex<Option<Hardware>>,
    /// Measured once per app start (a third of a second), for the plan's time estimate.
    pub throughput: Mutex<Option<Throughput>>,
    pub download_cancel: Mutex<Option<Arc<AtomicBool>>>,
    pub train: Mutex<Option<TrainJob>>,
    /// One token per streaming chat reply (tuned and base run side by side).
    pub chat_cancel: Mutex<Vec<Arc<AtomicBool>>>,
    /// The GGUF export in progress (one at a time), to stop it.
    pub export_cancel: Mutex<Option<Arc<AtomicBool>>>,
}

impl AppState {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            model: Mutex::new(None),
            tuned: Mutex::new(None),
            dataset: Mutex::new(None),
            hardware: Mutex::new(None),
            throughput: Mutex::new(None),
            download_cancel: Mutex::new(None),
            train: Mutex::new(None),
            chat_cancel: Mutex::new(Vec::new()),
            export_cancel: Mutex::new(None),
        }
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.data_dir.join("runs")
    }

    /// The open model and what the user called it.
    pub fn current_model(&self) -> ApiResult<(String, Arc<LoadedModel>)> {
        let slot = lock(&self.model)?;
        let m = slot.as_ref().ok_or_else(no_model)?;
        Ok((m.spec.clone(), m.model.clone()))
    }
}

/// Locks a mutex, turning a poisoned lock (a panicked job) into an error instead of a panic.
pub fn lock<T>(m: &Mutex<T>) -> ApiResult<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| internal("an earlier job crashed; restart the app"))
}
