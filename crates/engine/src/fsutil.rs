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

/// Removes the temporary files a killed process left in `dir` (`.<name>.tmp-<pid>` of
/// another process than this one); a missing folder is fine.
pub fn remove_stale_tmp(dir: &Path) {
    let mine = format!(".tmp-{}", std::process::id());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = name.starts_with('.') && name.contains(".tmp-") && !name.ends_with(&mine);
        if stale && e.path().is_file() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Removes the temporary files of `target` (`.<name>.tmp-<pid>` beside it) that another
/// process left: an export killed mid-write leaves one as large as the model, and the next
/// write of the same target is where it is recognised. (A second live process writing the same
/// target at that moment loses its temporary file and fails on its rename, with an error naming
/// the file; nothing under the final name is touched.)
pub fn remove_stale_tmp_of(target: &Path) {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return;
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let mine = format!(".tmp-{}", std::process::id());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && !n.ends_with(&mine) && e.path().is_file() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `tmp` with `write`, syncs it and renames it to `path`; on any failure (a full disk)
/// the temporary file is removed, so nothing half-written is left behind.
fn via_tmp(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    let done = write(&tmp)
        .and_then(|()| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&tmp, e))
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Atomically writes `bytes` to `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    via_tmp(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(tmp, e))?;
        f.sync_all().map_err(|e| Error::io(tmp, e))
    })
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
    via_tmp(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp).map_err(|e| Error::Tensor {
            file: path.display().to_string(),
            tensor: "(write)".into(),
            message: e.to_string(),
        })
    })
}

/// An f32 buffer written to safetensors one tensor at a time (the optimizer's moments: for full
/// fine-tuning twice the model's size, which copying all at once would add to the peak).
pub struct F32Slice<'a> {
    /// Borrowed from host buffers, owned when copied from a GPU.
    pub data: std::borrow::Cow<'a, [f32]>,
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
    via_tmp(path, |tmp| {
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), None, tmp)
            .map_err(|e| Error::Tensor {
                file: path.display().to_string(),
                tensor: "(write)".into(),
                message: e.to_string(),
            })
    })
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

/// Hex sha256 of a file, read in 1 MiB pieces.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
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
    if old.exists() && !dir.exists() {
        // An earlier replacement was killed between its two renames: the old folder is the
        // last complete one, so it goes back before anything is deleted.
        std::fs::rename(&old, dir).map_err(|e| Error::io(&old, e))?;
    }
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
    via_tmp(to, |tmp| {
        std::fs::copy(from, tmp)
            .map(|_| ())
            .map_err(|e| Error::io(from, e))
    })
}
