//! Writing files so that a crash never leaves a half-written one in place: write to a
//! temporary name in the same folder, flush to disk, then rename over the target.

use crate::error::{Error, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Atomically writes `bytes` to `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Atomically writes pretty JSON.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, text.as_bytes())
}

/// Atomically writes tensors as safetensors (f32 or whatever dtype they have).
pub fn save_safetensors_atomic(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let tmp = tmp_path(path);
    candle_core::safetensors::save(tensors, &tmp).map_err(|e| Error::Tensor {
        file: path.display().to_string(),
        tensor: "(write)".into(),
        message: e.to_string(),
    })?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// An f32 buffer written to safetensors one tensor at a time (the optimizer's moments: for full
/// fine-tuning twice the model's size, which copying all at once would add to the peak).
pub struct F32Slice<'a> {
    pub data: &'a [f32],
    pub shape: Vec<usize>,
}

impl safetensors::View for &F32Slice<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        // safetensors is little-endian, as is every platform we build for.
        std::borrow::Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Atomically writes borrowed f32 buffers as safetensors, one tensor in memory at a time.
pub fn save_f32_atomic(path: &Path, tensors: &[(String, F32Slice<'_>)]) -> Result<()> {
    let tmp = tmp_path(path);
    safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), None, &tmp)
        .map_err(|e| Error::Tensor {
            file: path.display().to_string(),
            tensor: "(write)".into(),
            message: e.to_string(),
        })?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Loads a safetensors file into f32 CPU tensors, naming the file on error.
pub fn load_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not found"),
        ));
    }
    let map = candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| {
        Error::Tensor {
            file: path.display().to_string(),
            tensor: "(header)".into(),
            message: format!("not a readable safetensors file: {e}"),
        }
    })?;
    map.into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(candle_core::DType::F32)?)))
        .collect()
}

/// Reads and parses a JSON file, naming it on error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Replaces the folder `dir` with one that `fill` writes: `fill` writes into `<dir>.partial`,
/// which then takes `dir`'s place (the old one is moved aside and removed after), so readers
/// see the old folder or the complete new one, never a mix of both.
///
/// # Errors
/// `fill`'s error (the partial folder is removed), or I/O failures naming the folder.
pub fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = dir.with_file_name(format!("{name}.partial"));
    let old = dir.with_file_name(format!("{name}.old"));
    for stale in [&partial, &old] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(|e| Error::io(stale, e))?;
        }
    }
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    if let Err(e) = fill(&partial) {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&partial, dir).map_err(|e| Error::io(dir, e))?;
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Copies `from` to `to` through a temporary file renamed into place, so `to` is never half
/// written.
///
/// # Errors
/// I/O failures naming the file.
pub fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = tmp_path(to);
    std::fs::copy(from, &tmp).map_err(|e| Error::io(from, e))?;
    std::fs::rename(&tmp, to).map_err(|e| Error::io(to, e))
}
