//! The TypeScript types of everything that crosses the IPC boundary, generated with ts-rs into
//! `ui/src/lib/bindings/` and checked in: the engine's own types (its `ts` feature) and the
//! few wrappers the shell adds around them. Nothing is hand-copied. `cargo test -p peft-studio bindings` fails when the
//! checked-in files are stale; `UPDATE_BINDINGS=1` with the same command rewrites them.

use std::path::{Path, PathBuf};
use ts_rs::TS;

/// The checked-in bindings folder.
pub fn bindings_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui/src/lib/bindings")
}

/// Writes every type (and what it references) into `dir`.
///
/// # Errors
/// ts-rs's export error (I/O) as text.
pub fn export_all(dir: &Path) -> Result<(), String> {
    use crate::commands::*;
    macro_rules! export {
        ($($t:ty),* $(,)?) => {{ $( <$t>::export_all_to(dir).map_err(|e| e.to_string())?; )* }};
    }
    export!(
        crate::error::ApiError,
        crate::AppInfo,
        hardware::HardwareView,
        model::OpenedModel,
        peft_engine::model::hub::DownloadEvent,
        data::DatasetView,
        plan::PlanView,
        peft_engine::plan::Candidate,
        peft_engine::train::TrainConfig,
        peft_engine::train::RunRecord,
        train::TrainUpdate,
        chat::ChatSide,
        peft_engine::template::Message,
        peft_engine::infer::generate::GenerateOptions,
        peft_engine::infer::generate::Generation,
        peft_engine::train::WhichAdapter,
        export::ExportKind,
        export::ExportResult,
        peft_engine::export::run::ExportFormat,
        peft_engine::export::gguf_quant::GgufQuant,
        peft_engine::export::run::ExportReport,
        peft_engine::export::gguf::ExportProgress,
        dialogs::PickWhat,
        peft_engine::scaleout::Engine,
        peft_engine::scaleout::EngineChoice,
        peft_engine::scaleout::ExportReport,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_dir(dir: &Path) -> std::collections::BTreeMap<String, String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".ts"))
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            std::fs::read_to_string(e.path()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn bindings_are_fresh() {
        let fresh = tempfile::tempdir().unwrap();
        export_all(fresh.path()).unwrap();
        if std::env::var_os("UPDATE_BINDINGS").is_some() {
            let dir = bindings_dir();
            std::fs::create_dir_all(&dir).unwrap();
            for name in read_dir(&dir).keys() {
                std::fs::remove_file(dir.join(name)).unwrap();
            }
            for (name, text) in read_dir(fresh.path()) {
                std::fs::write(dir.join(name), text).unwrap();
            }
        }
        let want = read_dir(fresh.path());
        let have = read_dir(&bindings_dir());
        for (name, text) in &want {
            assert_eq!(
                have.get(name),
                Some(text),
                "ui/src/lib/bindings/{name} is stale: run `make bindings` and commit the result"
            );
        }
        for name in have.keys() {
            assert!(
                want.contains_key(name),
                "ui/src/lib/bindings/{name} is no longer generated: delete it"
            );
        }
    }
}
