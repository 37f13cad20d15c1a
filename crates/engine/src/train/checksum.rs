//! Checksums of a checkpoint's files, so a damaged checkpoint (a flipped bit on disk, a file
//! edited or truncated by hand) is refused on resume instead of silently training on from
//! wrong weights.
//!
//! Format: `SHA256SUMS` in the checkpoint folder, one `<hex sha256>  <file name>` line per
//! file, which `sha256sum -c SHA256SUMS` checks too. Written last, inside the `.partial`
//! folder, before the folder is renamed into place. A checkpoint without the file (written
//! before checksums existed) loads unchecked.

use crate::error::{Error, Result};
use crate::fsutil::{sha256_file, write_atomic};
use std::path::Path;

/// The checksum file's name inside a checkpoint folder.
pub const SUMS_FILE: &str = "SHA256SUMS";

/// Writes `SHA256SUMS` for `files` (names inside `dir`).
///
/// # Errors
/// [`Error::Io`] naming the file that could not be read or written.
pub fn write_sums(dir: &Path, files: &[&str]) -> Result<()> {
    let mut text = String::new();
    for name in files {
        text.push_str(&format!("{}  {name}\n", sha256_file(&dir.join(name))?));
    }
    write_atomic(&dir.join(SUMS_FILE), text.as_bytes())
}

/// Checks every file `SHA256SUMS` lists; `Ok` when the folder has no `SHA256SUMS`.
///
/// # Errors
/// [`Error::Corrupt`] naming the file whose bytes differ from when it was written, or a
/// malformed `SHA256SUMS`; [`Error::Io`] for a listed file that is missing.
pub fn verify_sums(dir: &Path) -> Result<()> {
    let sums = dir.join(SUMS_FILE);
    if !sums.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&sums).map_err(|e| Error::io(&sums, e))?;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (want, name) = line
            .split_once("  ")
            .filter(|(h, n)| h.len() == 64 && !n.contains('/') && !n.contains(".."))
            .ok_or_else(|| Error::Corrupt {
                file: sums.display().to_string(),
                message: format!("line {}: not `<sha256>  <file>`", i + 1),
            })?;
        let path = dir.join(name);
        let got = sha256_file(&path)?;
        if got != want {
            return Err(Error::Corrupt {
                file: path.display().to_string(),
                message: format!(
                    "checksum mismatch (sha256 {got}, written as {want}): the checkpoint was \
                     damaged after it was saved; resume from another checkpoint or start again"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_known_text() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        assert_eq!(
            sha256_file(&dir.path().join("a")).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_flipped_byte_is_detected_and_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), vec![7u8; 1000]).unwrap();
        write_sums(dir.path(), &["w.bin"]).unwrap();
        verify_sums(dir.path()).unwrap();
        let mut bytes = std::fs::read(dir.path().join("w.bin")).unwrap();
        bytes[500] ^= 1;
        std::fs::write(dir.path().join("w.bin"), bytes).unwrap();
        let e = verify_sums(dir.path()).unwrap_err();
        assert_eq!(e.code(), "Corrupt");
        assert!(e.to_string().contains("w.bin"), "{e}");
    }
}
