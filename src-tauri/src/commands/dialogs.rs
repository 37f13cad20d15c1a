//! Native file dialogs (rfd over GTK), parented to the app window. They only return what the
//! user picked; the command that uses the path validates it.

use crate::error::ApiResult;
use serde::Deserialize;
use tauri::{Runtime, Window};
use ts_rs::TS;

/// What the dialog is for (decides folder vs file and the filters).
#[derive(Debug, Clone, Copy, Deserialize, TS, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PickWhat {
    ModelFolder,
    GgufFile,
    Dataset,
    ExportFolder,
    /// An adapter folder trained elsewhere, to import as a run.
    AdapterFolder,
}

/// Shows a native dialog; `null` when the user cancels.
#[tauri::command]
pub async fn pick_path<R: Runtime>(window: Window<R>, what: PickWhat) -> ApiResult<Option<String>> {
    let dialog = rfd::AsyncFileDialog::new().set_parent(&window);
    let picked = match what {
        PickWhat::ModelFolder => {
            dialog
                .set_title("Choose a model folder")
                .pick_folder()
                .await
        }
        PickWhat::AdapterFolder => {
            dialog
                .set_title("Choose an adapter folder (adapter_config.json)")
                .pick_folder()
                .await
        }
        PickWhat::ExportFolder => {
            dialog
                .set_title("Choose where to export")
                .pick_folder()
                .await
        }
        PickWhat::GgufFile => {
            dialog
                .set_title("Choose a GGUF file")
                .add_filter("GGUF model", &["gguf"])
                .pick_file()
                .await
        }
        PickWhat::Dataset => {
            dialog
                .set_title("Choose a dataset")
                .add_filter("Datasets", &["jsonl", "json", "ndjson", "csv"])
                .add_filter("All files", &["*"])
                .pick_file()
                .await
        }
    };
    Ok(picked.map(|f| f.path().display().to_string()))
}
