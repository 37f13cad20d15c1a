//! The bundled demo dataset (`datasets/bolt-stories.jsonl`, CC0): 56 chat rows asking for a
//! story and answering with a very short one about Bolt, a robot who loves apples. Small and
//! uniform enough that the bundled stories260K model learns the style in about a minute on a
//! CPU, which is what the app's preselected offline fine-tune → chat relies on.
//!
//! It is compiled in so the demo works without the source tree; [`write_demo_dataset`] puts it
//! on disk because the data loader reads files.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// File name the dataset is written under.
pub const DEMO_DATASET_NAME: &str = "bolt-stories.jsonl";

/// The dataset's JSONL text.
pub const DEMO_DATASET: &str = include_str!("../../../../datasets/bolt-stories.jsonl");

/// Writes the dataset as `dir/bolt-stories.jsonl` (creating `dir`) unless an identical copy is
/// already there, and returns the file's path.
///
/// # Errors
/// [`Error::Io`] naming the folder or file that could not be written.
pub fn write_demo_dataset(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(DEMO_DATASET_NAME);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(DEMO_DATASET) {
        std::fs::write(&path, DEMO_DATASET).map_err(|e| Error::io(&path, e))?;
    }
    Ok(path)
}
