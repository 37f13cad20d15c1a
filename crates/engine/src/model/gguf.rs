//! GGUF import (`llama`, `qwen2`, `qwen3`, `gemma3`, `phi3`; per-family names and metadata in
//! [`crate::model::gguf_family`]): metadata → [`Config`], tensors → f32 tensors under
//! Hugging Face names ([`GgufSource`]), tokenizer metadata → [`crate::Tokenizer`]
//! (`model::gguf_tokenizer`). [`open_gguf`] does all three.
//!
//! Tensor names: `token_embd.weight` → `model.embed_tokens.weight`, `output_norm.weight` →
//! `model.norm.weight`, `output.weight` → `lm_head.weight` (absent ⇒ tied embeddings), and per
//! block `blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down,attn_norm,ffn_norm}`
//! → `model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, input_layernorm,
//! post_attention_layernorm}` (weights, and biases where the file has them).
//!
//! RoPE layout: llama.cpp's converter permutes the rows of q_proj and k_proj so that its
//! interleaved RoPE (pairs `(2i, 2i+1)`) computes what Hugging Face's rotate-half RoPE (pairs
//! `(i, i + d/2)`) computes on the original rows. Our decoder is rotate-half, so
//! [`GgufSource::load`] undoes that permutation ([`unpermute_rope_rows`]) for `attn_q`
//! (`n_head` heads) and `attn_k` (`n_head_kv` heads). Shapes: candle reverses GGUF's
//! fastest-first dims on read, so a tensor arrives as `[out, in]`, like `nn.Linear.weight`.
//!
//! Other families: no row permutation (llama.cpp runs them with NEOX-style RoPE, which is
//! rotate-half), and for `gemma3` every norm weight was stored as `1 + w`, so 1 is subtracted.
//!
//! Not supported: other architectures, MoE, tensor types candle 0.11 cannot dequantize (Q8_1,
//! Q8_K, the IQ* and TQ* families).
//! Writing GGUF files is not this module (see [`permute_rope_rows`] for the q/k row order).

mod types;

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::family::{self, Family};
use crate::model::gguf_family::{config_from_meta, family_of, ROPE_TENSORS};
use crate::model::gguf_tokenizer::{gguf_tokenizer, Meta};
use crate::model::tensors::TensorSource;
use crate::tokenizer::Tokenizer;
use candle_core::quantized::gguf_file::{Content, TensorInfo};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use types::{declared_alignment, dtype_supported, file_type_name, find_unknown_type, type_id_name};
pub use types::{type_name, SUPPORTED_TYPES};

/// Architectures [`open_gguf`] imports (`general.architecture`).
pub use crate::model::gguf_family::SUPPORTED_ARCHS;

/// A GGUF model ready to build our decoder from.
pub struct GgufModel {
    pub config: Config,
    pub source: GgufSource,
    pub tokenizer: Tokenizer,
    /// `tokenizer.chat_template` (Jinja), when the file has one.
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// llama.cpp's name for `general.file_type` (`Q4_1`, `Q4_K_M`, `F16`, …).
    pub file_type: String,
}

/// Opens a GGUF file: validated config, tensor source, tokenizer and chat metadata.
///
/// # Errors
/// [`Error::Io`] if the file cannot be opened; [`Error::Gguf`] naming the file for a file that
/// is not GGUF, truncated, or lacks a required metadata key (the key is named);
/// [`Error::Unsupported`] for another architecture, a tensor type candle cannot read (naming
/// the tensor), rope scaling or MoE; [`Error::Config`] from shared config validation;
/// [`Error::Tokenizer`] if the tokenizer metadata cannot be built.
pub fn open_gguf(path: &Path) -> Result<GgufModel> {
    let file = path.display().to_string();
    let content = read_content(path)?;
    let meta = Meta::new(&content.metadata, &file);
    let fam = arch_family(&meta)?;
    let source = GgufSource::from_content(path, &content)?;
    let tokenizer = gguf_tokenizer(&meta)?;
    let rope_tensor = |name: &str| -> Result<Option<Vec<f64>>> {
        if !source.tensors.contains_key(name) {
            return Ok(None);
        }
        let v = source.load(name)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Some(v.into_iter().map(f64::from).collect()))
    };
    let config = config_from_meta(fam, &meta, &source, &rope_tensor, &tokenizer)?;
    let file_type = match meta.opt_u64("general.file_type")? {
        Some(ft) => file_type_name(ft),
        None => source.dominant_type(),
    };
    Ok(GgufModel {
        chat_template: meta
            .opt_string("tokenizer.chat_template")?
            .map(String::from),
        bos_token: tokenizer.bos_id.and_then(|id| tokenizer.id_to_token(id)),
        eos_token: meta
            .opt_u64("tokenizer.ggml.eos_token_id")?
            .and_then(|id| tokenizer.id_to_token(id as u32)),
        config,
        source,
        tokenizer,
        file_type,
    })
}

/// The family `general.architecture` names.
fn arch_family(meta: &Meta) -> Result<&'static Family> {
    let arch = meta.string("general.architecture")?;
    family_of(arch).ok_or_else(|| Error::Unsupported {
        what: format!("{}: general.architecture", meta.file),
        found: arch.to_string(),
        supported: SUPPORTED_ARCHS.into(),
    })
}

/// Maps a llama.cpp tensor name of the `llama` architecture to its Hugging Face name; `None`
/// for names we do not import (other families: [`crate::model::gguf_family::hf_name`]).
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    crate::model::gguf_family::hf_name(&family::LLAMA, gguf_name)
}

/// Reorders rows HF → GGUF, as llama.cpp's converter does for q/k:
/// `w.reshape(n_heads, 2, head_dim/2, rest).swap(1, 2).reshape(w.shape)`. Works on `[out, in]`
/// weights and `[out]` biases. Exposed for the GGUF exporter and for tests.
///
/// # Errors
/// [`Error::Invalid`] when `out` is not a multiple of `2 * n_heads`.
pub fn permute_rope_rows(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    reorder_rows(w, n_heads, true)
}

/// Undoes [`permute_rope_rows`]: GGUF (interleaved RoPE) rows → HF (rotate-half) rows.
///
/// # Errors
/// [`Error::Invalid`] when `out` is not a multiple of `2 * n_heads`.
pub fn unpermute_rope_rows(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    reorder_rows(w, n_heads, false)
}

fn reorder_rows(w: &Tensor, n_heads: usize, to_gguf: bool) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let out = dims.first().copied().unwrap_or(0);
    if n_heads == 0 || out % (2 * n_heads) != 0 {
        return Err(Error::invalid(
            "n_heads",
            format!("{out} rows do not split into {n_heads} heads of even size"),
        ));
    }
    let rest = w.elem_count() / out;
    let half = out / n_heads / 2;
    // HF order is (head, 2, half): first half of each head, then second half; GGUF interleaves
    // them as (head, half, 2). Swapping the two middle axes converts either way.
    let from = if to_gguf {
        (n_heads, 2, half, rest)
    } else {
        (n_heads, half, 2, rest)
    };
    Ok(w.reshape(from)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

struct Entry {
    gguf_name: String,
    dtype: GgmlDType,
    shape: Vec<usize>,
    offset: u64,
    /// Heads to unpermute rows over (q: n_head, k: n_head_kv), `None` for other tensors.
    rope_heads: Option<usize>,
    /// Stored as `1 + w` (Gemma's norms): subtract 1 on load.
    minus_one: bool,
}

/// The tensors of one GGUF file, under Hugging Face names. Holds only the index: each
/// [`TensorSource::load`] reopens the file, reads that one tensor and dequantizes it to f32.
pub struct GgufSource {
    path: PathBuf,
    data_offset: u64,
    tensors: BTreeMap<String, Entry>,
}

impl GgufSource {
    /// Opens a GGUF file's tensor index (reads the header; no tensor data).
    ///
    /// # Errors
    /// As [`open_gguf`], minus the config and tokenizer checks.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_content(path, &read_content(path)?)
    }

    /// Builds the index from an already-read header, checking every tensor's type and that
    /// its bytes lie inside the file (a truncated download fails here, not mid-load).
    pub fn from_content(path: &Path, content: &Content) -> Result<Self> {
        let file = path.display().to_string();
        let meta = Meta::new(&content.metadata, &file);
        let fam = arch_family(&meta)?;
        let arch = fam.gguf_arch;
        let n_head = meta.usize(&format!("{arch}.attention.head_count"))?;
        let n_head_kv = meta
            .opt_u64(&format!("{arch}.attention.head_count_kv"))?
            .map_or(n_head, |v| v as usize);
        let file_len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        let mut tensors = BTreeMap::new();
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for gguf_name in names {
            let info = &content.tensor_infos[gguf_name];
            if !dtype_supported(info.ggml_dtype) {
                return Err(Error::Unsupported {
                    what: format!("{file}: tensor `{gguf_name}` type"),
                    found: type_name(info.ggml_dtype).into(),
                    supported: SUPPORTED_TYPES.into(),
                });
            }
            // Checked: a crafted header can declare dims whose product overflows.
            let elems = info
                .shape
                .dims()
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d));
            let elems = elems.unwrap_or(usize::MAX);
            let block = info.ggml_dtype.block_size();
            let bytes = (elems / block).saturating_mul(info.ggml_dtype.type_size()) as u64;
            let start = content.tensor_data_offset.saturating_add(info.offset);
            if !elems.is_multiple_of(block) || start.saturating_add(bytes) > file_len {
                return Err(Error::Gguf {
                    file,
                    message: format!(
                        "tensor `{gguf_name}` ({} elements of {}) needs bytes {start}..{} but the \
                         file has {file_len} bytes: truncated or corrupt",
                        elems,
                        type_name(info.ggml_dtype),
                        start.saturating_add(bytes)
                    ),
                });
            }
            if ROPE_TENSORS.contains(&gguf_name.as_str()) {
                // Not decoder weights: RoPE scaling, read by `config_from_meta`.
                tensors.insert(gguf_name.clone(), entry(gguf_name, info, None, false));
                continue;
            }
            let Some(hf) = crate::model::gguf_family::hf_name(fam, gguf_name) else {
                let known: Vec<&str> = fam.gguf_block.iter().map(|(g, _)| *g).collect();
                return Err(Error::Unsupported {
                    what: format!("{file}: tensor `{gguf_name}`"),
                    found: format!("a tensor name the {arch} importer does not know"),
                    supported: format!(
                        "token_embd, output_norm, output, blk.N.{{{}}}",
                        known.join(",")
                    ),
                });
            };
            let rope_heads = match fam.gguf_permuted_qk {
                true if gguf_name.contains(".attn_q.") => Some(n_head),
                true if gguf_name.contains(".attn_k.") => Some(n_head_kv),
                _ => None,
            };
            let minus_one = fam.gguf_norm_plus_one && hf.ends_with("norm.weight");
            tensors.insert(hf, entry(gguf_name, info, rope_heads, minus_one));
        }
        Ok(Self {
            path: path.to_path_buf(),
            data_offset: content.tensor_data_offset,
            tensors,
        })
    }

    /// Storage type of a tensor (Hugging Face name), in llama.cpp spelling (`Q4_K`).
    pub fn tensor_type(&self, name: &str) -> Option<&'static str> {
        self.tensors.get(name).map(|e| type_name(e.dtype))
    }

    /// The GGUF name a Hugging Face name was imported from.
    pub fn gguf_name(&self, name: &str) -> Option<&str> {
        self.tensors.get(name).map(|e| e.gguf_name.as_str())
    }

    /// The type holding the most weights, for files without `general.file_type`.
    fn dominant_type(&self) -> String {
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for e in self.tensors.values() {
            *count.entry(type_name(e.dtype)).or_default() += e.shape.iter().product::<usize>();
        }
        let best = count.into_iter().max_by_key(|(_, n)| *n);
        best.map_or_else(|| "unknown".into(), |(t, _)| t.to_string())
    }
}

fn entry(gguf_name: &str, info: &TensorInfo, rope_heads: Option<usize>, minus_one: bool) -> Entry {
    Entry {
        gguf_name: gguf_name.to_string(),
        dtype: info.ggml_dtype,
        shape: info.shape.dims().to_vec(),
        offset: info.offset,
        rope_heads,
        minus_one,
    }
}

impl TensorSource for GgufSource {
    fn names(&self) -> Vec<String> {
        let decoder = |n: &&String| n.starts_with("model.") || n.starts_with("lm_head.");
        self.tensors.keys().filter(decoder).cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|e| e.shape.clone())
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let err = |message: String| Error::Tensor {
            file: self.label(),
            tensor: name.into(),
            message,
        };
        let (e, q) = self.read(name)?;
        let what = format!("GGUF `{}` ({})", e.gguf_name, type_name(e.dtype));
        let t = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|c| err(format!("dequantizing {what}: {c}")))?;
        if e.minus_one {
            return Ok((t - 1.0)?);
        }
        match e.rope_heads {
            Some(heads) => unpermute_rope_rows(&t, heads).map_err(|x| err(x.to_string())),
            None => Ok(t),
        }
    }

    fn label(&self) -> String {
        self.path.display().to_string()
    }

    fn load_ggml(&self, name: &str) -> Result<Option<QTensor>> {
        if self.ggml_bytes(name).is_none() {
            return Ok(None); // kept dense (a missing tensor is named by the dense load)
        }
        let (e, q) = self.read(name)?;
        let Some(heads) = e.rope_heads else {
            return Ok(Some(q));
        };
        let err = |message: String| Error::Tensor {
            file: self.label(),
            tensor: name.into(),
            message,
        };
        let order = unpermute_order(e.shape[0], heads).map_err(|x| err(x.to_string()))?;
        let q = crate::quant::ggml::reorder_rows(&q, &order)
            .map_err(|c| err(format!("reordering rows of `{}`: {c}", e.gguf_name)))?;
        Ok(Some(q))
    }

    fn ggml_bytes(&self, name: &str) -> Option<u64> {
        let e = self.tensors.get(name)?;
        let float = matches!(e.dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        // The quantized kernels need every row to be whole blocks (a crafted file can store a
        // tensor whose rows straddle blocks); such a tensor loads dense instead.
        let whole_rows = e.shape.len() == 2 && e.shape[1] % e.dtype.block_size() == 0;
        if float || e.minus_one || !whole_rows {
            return None;
        }
        let n: usize = e.shape.iter().product();
        Some((n / e.dtype.block_size() * e.dtype.type_size()) as u64)
    }

    fn dtype_summary(&self) -> String {
        let mut kinds: Vec<&str> = self.tensors.values().map(|e| type_name(e.dtype)).collect();
        kinds.sort();
        kinds.dedup();
        kinds.join("+")
    }
}

impl GgufSource {
    /// One tensor as stored in the file (block type, GGUF row order).
    fn read(&self, name: &str) -> Result<(&Entry, QTensor)> {
        let err = |message: String| Error::Tensor {
            file: self.label(),
            tensor: name.into(),
            message,
        };
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| err("missing".into()))?;
        let info = TensorInfo {
            ggml_dtype: e.dtype,
            shape: e.shape.clone().into(),
            offset: e.offset,
        };
        let mut f = std::fs::File::open(&self.path).map_err(|io| Error::io(&self.path, io))?;
        let q = info
            .read(&mut f, self.data_offset, &Device::Cpu)
            .map_err(|c| {
                err(format!(
                    "reading GGUF `{}` ({}): {c}",
                    e.gguf_name,
                    type_name(e.dtype)
                ))
            })?;
        Ok((e, q))
    }
}

/// The row order [`unpermute_rope_rows`] produces, as source row indices: row `i` of the
/// result is row `order[i]` of the GGUF tensor (for moving quantized rows without
/// dequantizing them).
///
/// # Errors
/// [`Error::Invalid`] when `out` is not a multiple of `2 * n_heads`.
pub fn unpermute_order(out: usize, n_heads: usize) -> Result<Vec<usize>> {
    if n_heads == 0 || !out.is_multiple_of(2 * n_heads) {
        return Err(Error::invalid(
            "n_heads",
            format!("{out} rows do not split into {n_heads} heads of even size"),
        ));
    }
    let half = out / n_heads / 2;
    let mut order = Vec::with_capacity(out);
    for h in 0..n_heads {
        for j in 0..2 {
            for i in 0..half {
                order.push(h * 2 * half + i * 2 + j);
            }
        }
    }
    Ok(order)
}

/// Reads the GGUF header; a read failure becomes [`Error::Gguf`] naming the file, and an unknown
/// tensor type becomes [`Error::Unsupported`] naming the tensor (found by our own header scan,
/// since candle's message does not say which tensor).
fn read_content(path: &Path) -> Result<Content> {
    let file = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    if let Ok(Some(a)) = declared_alignment(path) {
        // candle divides by it (0 would panic); GGUF requires a power of two.
        if a <= 0 || (a as u64).count_ones() != 1 {
            return Err(Error::Gguf {
                file,
                message: format!("metadata key `general.alignment` is {a}: not a power of two"),
            });
        }
    }
    Content::read(&mut BufReader::new(f)).map_err(|e| {
        if let Ok(Some((tensor, id))) = find_unknown_type(path) {
            return Error::Unsupported {
                what: format!("{file}: tensor `{tensor}` type"),
                found: format!("{} (ggml type {id})", type_id_name(id)),
                supported: SUPPORTED_TYPES.into(),
            };
        }
        Error::Gguf {
            file,
            message: format!("not a readable GGUF file: {e}"),
        }
    })
}
