//! Every path the UI sends is checked here before the engine sees it: it must exist, be the
//! expected kind (file or folder), and is canonicalised so symlinks and `..` cannot make the
//! backend touch something other than what the user picked. Paths the shell creates itself
//! (run folders, exports) are derived from the app data dir and run ids the engine checks
//! to be plain names (`train::history::check_id`).

use crate::error::{ApiError, ApiResult};
use std::path::{Path, PathBuf};

/// What a path must be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    File,
    Dir,
}

/// Canonicalises `raw` and checks it is an existing file or folder.
///
/// # Errors
/// `BadPath` for an empty, relative, missing or wrong-kind path.
pub fn existing(raw: &str, kind: Kind) -> ApiResult<PathBuf> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(ApiError::new("BadPath", "No path given."));
    }
    let p = Path::new(raw);
    if !p.is_absolute() {
        return Err(ApiError::new(
            "BadPath",
            format!("{raw}: expected an absolute path"),
        ));
    }
    let canon = p
        .canonicalize()
        .map_err(|e| ApiError::new("BadPath", format!("{raw}: {e}")))?;
    let ok = match kind {
        Kind::File => canon.is_file(),
        Kind::Dir => canon.is_dir(),
    };
    if !ok {
        let want = if kind == Kind::File {
            "a file"
        } else {
            "a folder"
        };
        return Err(ApiError::new("BadPath", format!("{raw} is not {want}")));
    }
    Ok(canon)
}

/// A folder to write into: an absolute path whose parent exists (the folder itself may not).
///
/// # Errors
/// `BadPath` for a relative path, one whose parent is missing, or an existing non-folder.
pub fn output_dir(raw: &str) -> ApiResult<PathBuf> {
    let p = Path::new(raw.trim());
    if !p.is_absolute() {
        return Err(ApiError::new(
            "BadPath",
            format!("{raw}: expected an absolute path"),
        ));
    }
    let name = p
        .file_name()
        .ok_or_else(|| ApiError::new("BadPath", format!("{raw}: no folder name")))?;
    let parent = p
        .parent()
        .and_then(|d| d.canonicalize().ok())
        .filter(|d| d.is_dir())
        .ok_or_else(|| {
            ApiError::new(
                "BadPath",
                format!("{raw}: the parent folder does not exist"),
            )
        })?;
    let out = parent.join(name);
    if out.exists() && !out.is_dir() {
        return Err(ApiError::new(
            "BadPath",
            format!("{raw} exists and is not a folder"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_relative_missing_and_traversing_paths() {
        assert_eq!(existing("", Kind::File).unwrap_err().code, "BadPath");
        assert_eq!(
            existing("data.jsonl", Kind::File).unwrap_err().code,
            "BadPath"
        );
        assert_eq!(
            existing("/no/such/file", Kind::File).unwrap_err().code,
            "BadPath"
        );
        assert_eq!(existing("/", Kind::File).unwrap_err().code, "BadPath");
    }

    #[test]
    fn canonicalises_dot_dot() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("f.jsonl"), "{}").unwrap();
        let raw = dir.path().join("a/../f.jsonl");
        let p = existing(raw.to_str().unwrap(), Kind::File).unwrap();
        assert_eq!(p, dir.path().canonicalize().unwrap().join("f.jsonl"));
    }
}
