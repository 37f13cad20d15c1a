//! Where a model's weights come from, one tensor at a time.
//!
//! The decoder is built by asking a [`TensorSource`] for each Hugging Face tensor name in
//! turn, so that a loader converting to a smaller storage type (bf16, NF4) never holds the
//! whole model in f32 at once. Sources: safetensors files (single or sharded, memory-mapped,
//! [`SafetensorsSource`]) and GGUF files (`model::gguf`).

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A read-only store of named tensors, loaded on demand as f32 CPU tensors.
pub trait TensorSource: Send + Sync {
    /// Names every tensor, in Hugging Face naming (`model.layers.0.self_attn.q_proj.weight`).
    fn names(&self) -> Vec<String>;
    /// Shape of a tensor without loading it.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Loads one tensor, converted to f32 on the CPU.
    ///
    /// # Errors
    /// [`Error::Tensor`] naming the file and tensor when it is missing or unreadable.
    fn load(&self, name: &str) -> Result<Tensor>;
    /// The file(s) behind this source, for error messages.
    fn label(&self) -> String;
    /// Storage type on disk, for `peft info` (`F32`, `BF16`, `Q4_1`, …).
    fn dtype_summary(&self) -> String;

    fn contains(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }

    /// The tensor in the file's own block type (`Q4_1`, `Q4_K`, …) when it is stored in one,
    /// rows in Hugging Face order, for inference without an f32 copy; `None` for float
    /// tensors and for sources without block types (safetensors).
    ///
    /// # Errors
    /// As [`TensorSource::load`].
    fn load_ggml(&self, _name: &str) -> Result<Option<candle_core::quantized::QTensor>> {
        Ok(None)
    }

    /// Bytes [`TensorSource::load_ggml`] would keep for `name` (its block type's bits per
    /// weight), without reading it; `None` where that returns `None`.
    fn ggml_bytes(&self, _name: &str) -> Option<u64> {
        None
    }
}

/// Bytes of a mapped tensor widened (and then dropped from memory) at a time; a multiple of
/// every element size.
const LOAD_CHUNK_BYTES: usize = 4 << 20;

enum Bytes {
    Mapped(Mmap),
    Static(&'static [u8]),
}

struct Shard {
    path: PathBuf,
    bytes: Bytes,
}

impl Shard {
    fn data(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped(m) => m,
            Bytes::Static(s) => s,
        }
    }

    /// Drops the mapped pages under `part` (a slice of this shard's data, already copied out)
    /// from the process: a model opened once and built in several storages keeps its files
    /// mapped, and without this every page read would stay resident beside its copy.
    fn release(&self, part: &[u8]) {
        let Bytes::Mapped(m) = &self.bytes else {
            return;
        };
        const PAGE: usize = 4096;
        let start = part.as_ptr() as usize - m.as_ptr() as usize;
        // Whole pages inside `part` only: a page shared with a neighbour tensor stays.
        let first = start.div_ceil(PAGE) * PAGE;
        let end = (start + part.len()) / PAGE * PAGE;
        #[cfg(unix)]
        if end > first {
            // SAFETY: the mapping is a read-only file mapping (`Mmap::map` of a file opened
            // read-only), so MADV_DONTNEED only drops clean pages that the kernel reads again
            // from the file on the next access: no data is lost and no reference is invalidated.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first)
            };
        }
    }
}

/// The shard files an index's `weight_map` names: at least one, each a plain file name (or
/// relative path without `..`) inside the model folder, so an index cannot make the loader
/// read files elsewhere.
fn shard_paths(
    dir: &Path,
    index: &Path,
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<PathBuf>> {
    let bad = |field: String, message: String| Error::Config {
        file: index.display().to_string(),
        field,
        message,
    };
    let mut files = Vec::new();
    for (tensor, file) in map {
        let field = format!("weight_map[\"{tensor}\"]");
        let Some(name) = file.as_str() else {
            return Err(bad(field, format!("expected a file name, found {file}")));
        };
        let inside = !name.is_empty()
            && Path::new(name)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            let msg = format!("`{name}` is not a file inside the model folder");
            return Err(bad(field, msg));
        }
        files.push(name.to_string());
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(bad("weight_map".into(), "lists no shard files".into()));
    }
    Ok(files.iter().map(|f| dir.join(f)).collect())
}

/// One or more `.safetensors` files, memory-mapped.
pub struct SafetensorsSource {
    shards: Vec<Shard>,
    /// tensor name → (shard index, dtype, shape)
    index: BTreeMap<String, (usize, safetensors::Dtype, Vec<usize>)>,
}

impl SafetensorsSource {
    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    ///
    /// # Errors
    /// Missing files, a truncated file or a malformed header, each naming the file.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.exists() {
            Self::open(&[single])
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
                path: index.clone(),
                message: e.to_string(),
            })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Config {
                    file: index.display().to_string(),
                    field: "weight_map".into(),
                    message: "missing or not an object".into(),
                })?;
            Self::open(&shard_paths(dir, &index, map)?)
        } else {
            Err(Error::io(
                single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the model folder",
                ),
            ))
        }
    }

    /// Opens the given safetensors files.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::new();
        for path in paths {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the file is opened read-only; a concurrent writer would be a user error
            // that at worst yields wrong numbers, which is what every mmap loader accepts.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            shards.push(Shard {
                path: path.clone(),
                bytes: Bytes::Mapped(mmap),
            });
        }
        Self::index(shards)
    }

    /// A safetensors file compiled into the binary (the bundled demo model).
    pub fn from_static(label: &str, bytes: &'static [u8]) -> Result<Self> {
        Self::index(vec![Shard {
            path: PathBuf::from(label),
            bytes: Bytes::Static(bytes),
        }])
    }

    fn index(shards: Vec<Shard>) -> Result<Self> {
        let mut index = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            let st =
                safetensors::SafeTensors::deserialize(shard.data()).map_err(|e| Error::Tensor {
                    file: shard.path.display().to_string(),
                    tensor: "(header)".into(),
                    message: format!(
                        "not a readable safetensors file (truncated or corrupt?): {e}"
                    ),
                })?;
            for (name, view) in st.tensors() {
                index.insert(name, (i, view.dtype(), view.shape().to_vec()));
            }
        }
        Ok(Self { shards, index })
    }
}

impl TensorSource for SafetensorsSource {
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.index.get(name).map(|(_, _, s)| s.clone())
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let (i, _, _) = self.index.get(name).ok_or_else(|| Error::Tensor {
            file: self.label(),
            tensor: name.into(),
            message: "missing".into(),
        })?;
        let shard = &self.shards[*i];
        let err = |message: String| Error::Tensor {
            file: shard.path.display().to_string(),
            tensor: name.into(),
            message,
        };
        let st =
            safetensors::SafeTensors::deserialize(shard.data()).map_err(|e| err(e.to_string()))?;
        let view = st.tensor(name).map_err(|e| err(e.to_string()))?;
        let (size, widen): (usize, fn(&[u8]) -> f32) = match view.dtype() {
            safetensors::Dtype::F32 => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            safetensors::Dtype::F16 => (2, |b| {
                half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
            }),
            safetensors::Dtype::BF16 => (2, |b| {
                half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
            }),
            safetensors::Dtype::F64 => (8, |b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }),
            other => return Err(err(format!("unsupported dtype {other:?} (F32, F16, BF16)"))),
        };
        let data = view.data();
        let n: usize = view.shape().iter().product();
        if data.len() != n * size {
            return Err(err(format!(
                "{} bytes for {n} elements of {:?}",
                data.len(),
                view.dtype()
            )));
        }
        // Widened straight from the mapping a few MiB at a time, each run's pages dropped as
        // soon as it is read: the process never holds the tensor twice (mapped pages plus a
        // copy plus the f32 result was 2–2.5× the result at the largest tensor).
        let mut out = Vec::with_capacity(n);
        for part in data.chunks(LOAD_CHUNK_BYTES) {
            out.extend(part.chunks_exact(size).map(widen));
            shard.release(part);
        }
        shard.release(data); // the pages straddling two runs
        Ok(Tensor::from_vec(out, view.shape(), &Device::Cpu)?)
    }

    fn label(&self) -> String {
        match self.shards.as_slice() {
            [one] => one.path.display().to_string(),
            [] => "(no safetensors files)".to_string(),
            many => format!(
                "{} (+{} shards)",
                many[0].path.display(),
                many.len().saturating_sub(1)
            ),
        }
    }

    fn dtype_summary(&self) -> String {
        let mut kinds: Vec<String> = self
            .index
            .values()
            .map(|(_, d, _)| format!("{d:?}"))
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds.join("+")
    }
}

/// An in-memory source, for tests and for models built in code.
pub struct MemorySource {
    pub tensors: BTreeMap<String, Tensor>,
    pub label: String,
}

impl TensorSource for MemorySource {
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.dims().to_vec())
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::Tensor {
            file: self.label.clone(),
            tensor: name.into(),
            message: "missing".into(),
        })?;
        Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    }
    fn label(&self) -> String {
        self.label.clone()
    }
    fn dtype_summary(&self) -> String {
        "F32".into()
    }
}
