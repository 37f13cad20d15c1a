//! PEFT Studio's desktop shell: Tauri commands that translate between the wizard (`ui/`) and
//! `peft_engine`, nothing more. See `commands/` (one module per wizard step), `state.rs` (what
//! is remembered between commands) and `bindings.rs` (the TypeScript types, generated from the
//! engine's types and the few wrappers the shell adds).

pub mod bindings;
pub mod commands;
pub mod error;
pub mod paths;
pub mod state;
pub mod train_update;

pub use error::{ApiError, ApiResult};
pub use state::AppState;

use tauri::{Manager, Runtime};

/// Registers every command on `builder` with `state` managed (the app passes one rooted in its
/// data folder; tests pass one in a temporary folder and Tauri's mock runtime).
pub fn with_commands<R: Runtime>(builder: tauri::Builder<R>) -> tauri::Builder<R> {
    builder.invoke_handler(tauri::generate_handler![
        commands::hardware::hardware_scan,
        commands::model::model_open,
        commands::model::model_cancel_download,
        commands::model::model_current,
        commands::data::data_demo_path,
        commands::data::data_inspect,
        commands::plan::plan_recommend,
        commands::plan::plan_estimate,
        commands::train::train_start,
        commands::train::train_cancel,
        commands::train::train_status,
        commands::train::train_attach,
        commands::train::runs_list,
        commands::train::run_delete,
        commands::chat::chat_generate,
        commands::chat::chat_stop,
        commands::export::export_run,
        commands::scaleout::recipe_engines,
        commands::scaleout::recipe_export,
        commands::scaleout::adapter_import,
        commands::gguf_export::export_gguf,
        commands::gguf_export::export_gguf_cancel,
        commands::dialogs::pick_path,
        app_info,
    ])
}

/// Facts the UI shows at start and in the footer.
#[derive(serde::Serialize, ts_rs::TS)]
pub struct AppInfo {
    pub version: String,
    /// Where runs, the demo dataset and exports are kept.
    pub data_dir: String,
    /// The preselected starting point that works offline.
    pub default_model: String,
    /// Settings that make the bundled demo learn visibly in about a minute on a laptop CPU.
    pub demo_settings: peft_engine::train::TrainConfig,
}

#[tauri::command]
fn app_info(state: tauri::State<'_, AppState>) -> AppInfo {
    AppInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        data_dir: state.data_dir.display().to_string(),
        default_model: peft_engine::model::load::BUNDLED_NAME.into(),
        demo_settings: peft_engine::train::TrainConfig::demo(),
    }
}

/// Where the app keeps its files: `$PEFT_STUDIO_DATA_DIR` when set (tests, portable use), else
/// the platform's app data folder.
fn data_dir<R: Runtime>(app: &tauri::App<R>) -> std::path::PathBuf {
    std::env::var_os("PEFT_STUDIO_DATA_DIR")
        .map(Into::into)
        .or_else(|| app.path().app_data_dir().ok())
        .unwrap_or_else(|| std::env::temp_dir().join("peft-studio"))
}

/// Starts the desktop app.
pub fn run() {
    peft_engine::runtime::configure_cpu_threads();
    with_commands(tauri::Builder::default())
        .setup(|app| {
            let dir = data_dir(app);
            std::fs::create_dir_all(&dir)?;
            app.manage(AppState::new(dir));
            Ok(())
        })
        .run(tauri::generate_context!())
        .expect("error while running PEFT Studio");
}
