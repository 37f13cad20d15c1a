//! A streaming, atomic GGUF v3 writer: the header (metadata and every tensor's name, shape,
//! type and offset — all known from shapes and types before any tensor is computed) goes out
//! first, then each tensor's bytes as the caller produces them, one tensor at a time. So a
//! model is never held twice in memory, unlike `candle_core::quantized::gguf_file::write`,
//! which takes every tensor at once.
//!
//! Atomic: everything goes to a hidden temporary file in the destination folder, which is
//! synced and renamed over the final name only after the last tensor; on any error (including
//! one from the tensor producer) the temporary file is removed, and a killed process leaves at
//! most a `.name.tmp-PID` file, never a half file under the final name.
//!
//! Layout (GGUF v3, little-endian, 32-byte alignment as llama.cpp's default — so no
//! `general.alignment` key is written): magic, version, tensor count, KV count, KVs, tensor
//! infos (dims fastest-first, i.e. candle's shape reversed), padding, tensor data each padded
//! to 32 bytes.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Tensor data alignment (llama.cpp's `GGUF_DEFAULT_ALIGNMENT`).
pub const ALIGNMENT: u64 = 32;

/// One tensor as the header describes it.
#[derive(Clone, Debug)]
pub struct TensorHeader {
    pub name: String,
    /// candle order (`[out, in]` for a linear weight).
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
}

impl TensorHeader {
    /// Bytes of the tensor's data (without padding).
    ///
    /// # Errors
    /// [`Error::Invalid`] when the row length is not a multiple of the type's block size.
    pub fn bytes(&self) -> Result<u64> {
        let cols = self.shape.last().copied().unwrap_or(1);
        let elems: usize = self.shape.iter().product();
        let block = self.dtype.block_size();
        if !cols.is_multiple_of(block) {
            return Err(Error::invalid(
                "tensor type",
                format!(
                    "`{}`: rows of {cols} do not split into {}-element blocks of {:?}",
                    self.name, block, self.dtype
                ),
            ));
        }
        Ok((elems / block * self.dtype.type_size()) as u64)
    }
}

fn ggml_type_id(d: GgmlDType) -> u32 {
    match d {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

fn value_type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            let ty = items.first().map_or(4, value_type_id);
            if items.iter().any(|i| value_type_id(i) != ty) {
                return Err(Error::invalid(
                    "gguf metadata",
                    format!("`{key}`: an array must hold values of one type"),
                ));
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, key, i)?;
            }
        }
    }
    Ok(())
}

fn pad_to(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// The header bytes (up to the aligned start of the tensor data) and each tensor's size.
///
/// # Errors
/// A mixed-type array, or a tensor whose rows do not split into blocks of its type.
pub fn header_bytes(
    metadata: &[(String, Value)],
    tensors: &[TensorHeader],
) -> Result<(Vec<u8>, Vec<u64>)> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut out, k);
        out.extend_from_slice(&value_type_id(v).to_le_bytes());
        put_value(&mut out, k, v)?;
    }
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for t in tensors {
        let size = t.bytes()?;
        put_string(&mut out, &t.name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        out.extend_from_slice(&ggml_type_id(t.dtype).to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset += pad_to(size);
        sizes.push(size);
    }
    let len = out.len() as u64;
    out.resize(pad_to(len) as usize, 0);
    Ok((out, sizes))
}

/// Total file size the writer will produce.
///
/// # Errors
/// As [`header_bytes`].
pub fn file_size(metadata: &[(String, Value)], tensors: &[TensorHeader]) -> Result<u64> {
    let (header, sizes) = header_bytes(metadata, tensors)?;
    Ok(header.len() as u64 + sizes.iter().map(|s| pad_to(*s)).sum::<u64>())
}

/// Removes the temporary file unless [`TempFile::commit`] renamed it.
pub struct TempFile {
    tmp: PathBuf,
    target: PathBuf,
    done: bool,
}

impl TempFile {
    /// A hidden temporary name beside `target` (same folder, so the rename is atomic).
    pub fn beside(target: &Path) -> Self {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        Self {
            tmp: target.with_file_name(format!(".{name}.tmp-{}", std::process::id())),
            target: target.to_path_buf(),
            done: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the temporary file over the target.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// [`Error::Cancelled`] once `cancel` is set: long exports look between tensors and
/// conversations.
///
/// # Errors
/// [`Error::Cancelled`].
pub fn stop_if_cancelled(cancel: Option<&AtomicBool>) -> Result<()> {
    match cancel {
        Some(c) if c.load(Ordering::Relaxed) => Err(Error::Cancelled),
        _ => Ok(()),
    }
}

/// Writes a GGUF file at `path`: header first, then `produce(i)` for tensor `i` in order (its
/// bytes, which must be exactly `tensors[i]`'s size). `on_tensor(i, bytes_written, total)`
/// is called after each tensor.
///
/// # Errors
/// [`Error::Io`] naming the file; any error `produce` returns (the temporary file is removed
/// and nothing appears under `path`); [`Error::Invalid`] when a produced tensor has the wrong
/// size.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[TensorHeader],
    produce: &mut dyn FnMut(usize) -> Result<Vec<u8>>,
    on_tensor: &mut dyn FnMut(usize, u64, u64),
) -> Result<u64> {
    let (header, sizes) = header_bytes(metadata, tensors)?;
    let total = header.len() as u64 + sizes.iter().map(|s| pad_to(*s)).sum::<u64>();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    // What a killed export of this file left behind goes first.
    crate::fsutil::remove_stale_tmp_of(path);
    let tmp = TempFile::beside(path);
    let file = std::fs::File::create(tmp.path()).map_err(|e| Error::io(tmp.path(), e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = |e: std::io::Error| Error::io(tmp.path(), e);
    w.write_all(&header).map_err(io)?;
    let mut written = header.len() as u64;
    for (i, t) in tensors.iter().enumerate() {
        let bytes = produce(i)?;
        if bytes.len() as u64 != sizes[i] {
            return Err(Error::invalid(
                "gguf tensor",
                format!(
                    "`{}`: produced {} bytes, the header says {}",
                    t.name,
                    bytes.len(),
                    sizes[i]
                ),
            ));
        }
        w.write_all(&bytes).map_err(io)?;
        let padded = pad_to(sizes[i]);
        w.write_all(&vec![0u8; (padded - sizes[i]) as usize])
            .map_err(io)?;
        written += padded;
        on_tensor(i, written, total);
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    tmp.commit()?;
    Ok(written)
}
