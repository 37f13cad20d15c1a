//! Merged GGUF export: base + attached adapter → one llama.cpp model file, written streaming
//! and atomically ([`write_merged_gguf`]).
//!
//! Per tensor, in llama.cpp's order: take the decoder's weight (an NF4 base is dequantized), add
//! the attached LoRA's `scale·B·A` if it is not merged (the decoder itself is not changed, so
//! the tuned model stays usable, e.g. for the self-check), permute q/k rows when the
//! architecture's RoPE is interleaved and store Gemma's norms as `1 + w` (`model::gguf_arch`),
//! encode in the planned type
//! (`export::gguf_quant`) and write; then drop it. Peak extra memory is about one tensor.
//!
//! Metadata: `general.*` (architecture, type, name, file type, quantization version), the
//! architecture's hyper-parameters (`GgufArch::hparams`) and the tokenizer and chat keys
//! (`export::gguf_vocab`). RoPE scaling that llama.cpp keeps as tensors (Llama 3's
//! `rope_freqs.weight`, Phi-3's `rope_factors_*`) is written first, as f32.
//!
//! Not here: adapters as GGUF (`export::lora_gguf`), Ollama/LM Studio layouts
//! (`export::ollama`), checking the result (`export::selfcheck`).

use crate::error::{Error, Result};
use crate::export::gguf_quant::{encode, tensor_type, GgufQuant, TensorRole};
use crate::export::gguf_vocab::tokenizer_metadata;
use crate::export::gguf_writer::{stop_if_cancelled, write_gguf, TensorHeader};
use crate::model::decoder::Decoder;
use crate::model::gguf::permute_rope_rows;
use crate::model::gguf_arch::{self, GgufArch};
use crate::model::linear::Linear;
use crate::model::loaded::LoadedModel;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// The parts of a tuned model an export reads. The decoder carries the adapter: a LoRA attached
/// to its linears (merged on the fly) or a selective/full delta already in its weights.
#[derive(Clone, Copy)]
pub struct ExportModel<'a> {
    pub decoder: &'a Decoder,
    pub tokenizer: &'a Tokenizer,
    pub template: &'a ChatTemplate,
    /// `general.name`.
    pub name: &'a str,
}

impl<'a> ExportModel<'a> {
    /// The tokenizer and template of an opened model with `decoder` (its weights with the
    /// adapter attached, e.g. `train::tuned::with_adapter`), named `name`.
    pub fn of(m: &'a LoadedModel, decoder: &'a Decoder, name: &'a str) -> Self {
        Self {
            decoder,
            tokenizer: &m.tokenizer,
            template: &m.template,
            name,
        }
    }
}

/// Progress of a long export step.
#[derive(Clone, Debug, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ExportProgress {
    /// `writing`, `checking`.
    pub stage: &'static str,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub done: u64,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub total: u64,
    /// The tensor just written or the prompt just checked.
    pub item: String,
}

/// One tensor of the plan.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub gguf_name: String,
    pub hf_name: String,
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
    /// The row length did not fit the planned type (llama.cpp's fallback was applied).
    pub fallback: bool,
}

/// What [`write_merged_gguf`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct GgufSummary {
    pub path: PathBuf,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub bytes: u64,
    pub tensors: usize,
    /// Tensors that took a fallback type.
    pub fallbacks: usize,
    /// Tensor count per GGUF type (`Q4_K`: 60, …).
    pub types: BTreeMap<String, usize>,
    pub quant: GgufQuant,
}

/// A tensor of the decoder by Hugging Face name.
enum Item<'a> {
    Plain(&'a Tensor),
    Weight(&'a Linear),
    Bias(&'a Tensor),
}

fn lookup<'a>(d: &'a Decoder, hf: &str) -> Option<Item<'a>> {
    match hf {
        "model.embed_tokens.weight" => return Some(Item::Plain(&d.embed_tokens)),
        "model.norm.weight" => return Some(Item::Plain(&d.norm)),
        "lm_head.weight" => return d.lm_head.as_ref().map(Item::Weight),
        _ => {}
    }
    let (n, rest) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    let b = d.layers.get(n.parse::<usize>().ok()?)?;
    let (path, suffix) = rest.rsplit_once('.')?;
    let lin = match (path, suffix) {
        ("input_layernorm", "weight") => return Some(Item::Plain(&b.input_layernorm)),
        ("post_attention_layernorm", "weight") => {
            return Some(Item::Plain(&b.post_attention_layernorm))
        }
        ("pre_feedforward_layernorm", "weight") => {
            return b.pre_feedforward_layernorm.as_ref().map(Item::Plain)
        }
        ("post_feedforward_layernorm", "weight") => {
            return b.post_feedforward_layernorm.as_ref().map(Item::Plain)
        }
        ("self_attn.q_norm", "weight") => return b.self_attn.q_norm.as_ref().map(Item::Plain),
        ("self_attn.k_norm", "weight") => return b.self_attn.k_norm.as_ref().map(Item::Plain),
        (_, "weight" | "bias") => b.linear(path)?,
        _ => return None,
    };
    match suffix {
        "weight" => Some(Item::Weight(lin)),
        "bias" => lin.bias.as_ref().map(Item::Bias),
        _ => None,
    }
}

/// The decoder's tensor under `hf` as f32, with an unmerged LoRA folded in.
///
/// # Errors
/// [`Error::Tensor`] when the decoder has no such tensor; candle failures.
pub fn merged_tensor(d: &Decoder, hf: &str) -> Result<Tensor> {
    let missing = || Error::Tensor {
        file: "(model in memory)".into(),
        tensor: hf.into(),
        message: "missing".into(),
    };
    Ok(match lookup(d, hf).ok_or_else(missing)? {
        Item::Plain(t) | Item::Bias(t) => t.detach().to_dtype(DType::F32)?,
        Item::Weight(lin) => {
            let w = lin.dense_weight()?.detach();
            match lin.lora.as_ref().filter(|_| !lin.merged) {
                Some(lora) => (w + lora.delta_weight()?)?,
                None => w,
            }
        }
    })
}

fn shape_of(d: &Decoder, hf: &str) -> Option<Vec<usize>> {
    Some(match lookup(d, hf)? {
        Item::Plain(t) | Item::Bias(t) => t.dims().to_vec(),
        Item::Weight(l) => {
            let (o, i) = l.dims();
            vec![o, i]
        }
    })
}

/// Every tensor an export of `d` writes, in llama.cpp's order, with the type `quant` gives it.
///
/// # Errors
/// [`Error::Tensor`] if the decoder lacks a tensor its config promises.
pub fn plan(d: &Decoder, quant: GgufQuant) -> Result<Vec<PlannedTensor>> {
    let c = &d.config;
    let row = gguf_arch::for_config(c)?;
    let mut planned: Vec<PlannedTensor> = row
        .rope_tensors(c)
        .into_iter()
        .map(|(name, v)| PlannedTensor {
            gguf_name: name.into(),
            hf_name: name.into(),
            shape: vec![v.len()],
            dtype: GgmlDType::F32,
            fallback: false,
        })
        .collect();
    let mut names: Vec<String> = vec!["model.embed_tokens.weight".into()];
    for n in 0..c.num_hidden_layers {
        for (_, hf) in row.family.gguf_block {
            for suffix in ["weight", "bias"] {
                let name = format!("model.layers.{n}.{hf}.{suffix}");
                if suffix == "weight" || lookup(d, &name).is_some() {
                    names.push(name);
                }
            }
        }
    }
    names.push("model.norm.weight".into());
    let tied = d.lm_head.is_none();
    if !tied {
        names.push("lm_head.weight".into());
    }
    let weights: Result<Vec<PlannedTensor>> = names
        .into_iter()
        .map(|hf| {
            let gguf_name = row.gguf_name(&hf).ok_or_else(|| Error::Unsupported {
                what: format!("GGUF export of tensor `{hf}`"),
                found: format!("no {} name for it", row.name()),
                supported: "the tensors of Family::gguf_block".into(),
            })?;
            let shape = shape_of(d, &hf).ok_or_else(|| Error::Tensor {
                file: "(model in memory)".into(),
                tensor: hf.clone(),
                message: "missing".into(),
            })?;
            let role = TensorRole {
                name: &gguf_name,
                shape: &shape,
                n_layers: c.num_hidden_layers,
                tied_output: tied,
            };
            let (dtype, fallback) = tensor_type(quant, &role);
            Ok(PlannedTensor {
                gguf_name,
                hf_name: hf,
                shape,
                dtype,
                fallback,
            })
        })
        .collect();
    planned.extend(weights?);
    Ok(planned)
}

/// Every metadata key of a merged export.
///
/// # Errors
/// As [`tokenizer_metadata`].
pub fn model_metadata(m: &ExportModel, quant: GgufQuant) -> Result<Vec<(String, Value)>> {
    let c = &m.decoder.config;
    let row = gguf_arch::for_config(c)?;
    let s = |v: &str| Value::String(v.to_string());
    let mut kv = vec![
        ("general.architecture".to_string(), s(row.name())),
        ("general.type".into(), s("model")),
        ("general.name".into(), s(m.name)),
        ("general.file_type".into(), Value::U32(quant.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    kv.extend(row.hparams(c));
    kv.extend(tokenizer_metadata(m.tokenizer, m.template, c.vocab_size)?);
    Ok(kv)
}

/// The tensor's bytes as the file stores it: merged, row-permuted for interleaved RoPE, `1 + w`
/// for Gemma's norms, encoded; RoPE scaling tensors from the config.
fn tensor_bytes(d: &Decoder, row: &GgufArch, t: &PlannedTensor) -> Result<Vec<u8>> {
    let c = &d.config;
    if let Some((_, v)) = row
        .rope_tensors(c)
        .into_iter()
        .find(|(n, _)| *n == t.gguf_name)
    {
        let n = v.len();
        return encode(
            &t.gguf_name,
            &Tensor::from_vec(v, n, &Device::Cpu)?,
            t.dtype,
        );
    }
    let mut w = merged_tensor(d, &t.hf_name)?;
    if row.plus_one(&t.hf_name) {
        w = (w + 1.0)?;
    }
    if let Some(heads) = row.rope_heads(&t.gguf_name, c.num_attention_heads, c.num_key_value_heads)
    {
        w = permute_rope_rows(&w, heads)?;
    }
    encode(&t.gguf_name, &w, t.dtype)
}

/// Writes base + adapter as one GGUF model file at `out` (atomically: a temporary file renamed
/// at the end), calling `on_progress` after each tensor and stopping before the next one once
/// `cancel` is set.
///
/// # Errors
/// [`Error::Unsupported`] for a tokenizer GGUF cannot describe; I/O errors naming the file;
/// candle failures; [`Error::Cancelled`]. On any error no file appears under `out`.
pub fn write_merged_gguf(
    m: &ExportModel,
    quant: GgufQuant,
    out: &Path,
    cancel: Option<&AtomicBool>,
    on_progress: &mut dyn FnMut(ExportProgress),
) -> Result<GgufSummary> {
    let d = m.decoder;
    let row = gguf_arch::for_config(&d.config)?;
    let planned = plan(d, quant)?;
    let metadata = model_metadata(m, quant)?;
    let headers: Vec<TensorHeader> = planned
        .iter()
        .map(|t| TensorHeader {
            name: t.gguf_name.clone(),
            shape: t.shape.clone(),
            dtype: t.dtype,
        })
        .collect();
    let mut produce = |i: usize| {
        stop_if_cancelled(cancel)?;
        tensor_bytes(d, row, &planned[i])
    };
    let mut on_tensor = |i: usize, done: u64, total: u64| {
        on_progress(ExportProgress {
            stage: "writing",
            done,
            total,
            item: planned[i].gguf_name.clone(),
        })
    };
    let bytes = write_gguf(out, &metadata, &headers, &mut produce, &mut on_tensor)?;
    let mut types = BTreeMap::new();
    for t in &planned {
        *types
            .entry(crate::model::gguf::type_name(t.dtype).to_string())
            .or_default() += 1;
    }
    Ok(GgufSummary {
        path: out.to_path_buf(),
        bytes,
        tensors: planned.len(),
        fallbacks: planned.iter().filter(|t| t.fallback).count(),
        types,
        quant,
    })
}
