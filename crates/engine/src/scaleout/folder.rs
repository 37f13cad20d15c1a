//! Writing an export folder atomically: every file goes into a temporary sibling folder, which
//! is then renamed into place, so a crash never leaves a half-written export; an existing folder
//! is replaced only when it is empty or an earlier export.

use super::MANIFEST;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Writes `files` under `out` atomically: into a temporary sibling first, then renamed into
/// place. An existing `out` is replaced only when empty or an earlier export (has [`MANIFEST`]).
pub(crate) fn write_folder(out: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if !empty && !out.join(MANIFEST).exists() {
            return Err(Error::invalid(
                "out",
                format!(
                    "{} exists and is not an earlier export; choose an empty or new folder",
                    out.display()
                ),
            ));
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "export".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for (rel, bytes) in files {
        let path = tmp.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    }
    if out.exists() {
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}
