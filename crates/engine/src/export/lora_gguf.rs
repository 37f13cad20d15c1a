//! A LoRA adapter as a llama.cpp adapter GGUF (`llama-cli --lora`, `convert_lora_to_gguf.py`'s
//! format, loader `src/llama-adapter.cpp`), and reading one back for the self-check.
//!
//! Keys: `general.architecture` (the base's — llama.cpp refuses a mismatch), `general.type =
//! adapter`, `adapter.type = lora`, `adapter.lora.alpha` (f32). Tensors: the base tensor's GGUF
//! name plus `.lora_a` (`A: [r, in]`, ggml `ne = [in, r]`) and `.lora_b` (`B: [out, r]`,
//! `ne = [r, out]`). llama.cpp scales by `alpha / r` with `r` read from B, so one `alpha`
//! expresses every scale: rsLoRA's `alpha/√r` is written as `alpha·√r`, and a layer whose scale
//! differs from the first layer's has its B multiplied by the ratio. For interleaved-RoPE
//! architectures the rows of q/k's B are permuted like the base rows (`permute_rope_rows`),
//! since `B·A` adds to permuted rows.
//!
//! Refused, with the reason: no LoRA attached (selective/full fine-tunes change base weights,
//! which this format cannot carry: export a merged GGUF), a merged adapter, an `lm_head` LoRA
//! on tied embeddings (llama.cpp#9065), quantized adapter types. DoRA and `modules_to_save`
//! never get this far (the PEFT reader refuses them).

use crate::error::{Error, Result};
use crate::export::gguf::ExportProgress;
use crate::export::gguf_quant::{encode, GgufQuant};
use crate::export::gguf_writer::{stop_if_cancelled, write_gguf, TensorHeader};
use crate::model::decoder::Decoder;
use crate::model::gguf::{permute_rope_rows, unpermute_rope_rows};
use crate::model::gguf_arch;
use crate::model::lora::Lora;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// What [`write_lora_gguf`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct LoraGgufSummary {
    pub path: PathBuf,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub bytes: u64,
    /// Adapted layers (two tensors each).
    pub layers: usize,
    pub alpha: f32,
    pub rank: usize,
}

fn refuse(found: impl Into<String>) -> Error {
    Error::Unsupported {
        what: "LoRA adapter as GGUF".into(),
        found: found.into(),
        supported: "LoRA adapters on the linear layers of the blocks (or an untied lm_head)".into(),
    }
}

/// `(Hugging Face module path, LoRA)` of every attached adapter, lm_head last.
fn adapters(d: &Decoder) -> Result<Vec<(String, Lora)>> {
    let mut out = Vec::new();
    let mut d2 = d.clone();
    for (path, lin) in d2.linears_mut() {
        if let Some(l) = &lin.lora {
            if lin.merged {
                return Err(refuse(format!(
                    "{path}: the adapter is merged into the base (unmerge it first)"
                )));
            }
            out.push((path, l.clone()));
        }
    }
    if let Some(l) = d.lm_head.as_ref().and_then(|h| h.lora.clone()) {
        out.push(("lm_head".into(), l));
    }
    if out.is_empty() {
        return Err(refuse(
            "no LoRA adapter attached: a selective or full fine-tune changes base weights, \
             which a LoRA GGUF cannot carry — export a merged GGUF (--format gguf) instead",
        ));
    }
    Ok(out)
}

/// Writes the decoder's attached LoRA adapters as a llama.cpp adapter GGUF at `out`
/// (atomically). `dtype` is F32, F16 or BF16.
///
/// # Errors
/// [`Error::Unsupported`] for what the format cannot carry (see the module docs) or a quantized
/// `dtype`; I/O errors naming the file.
pub fn write_lora_gguf(
    d: &Decoder,
    dtype: GgufQuant,
    name: &str,
    out: &Path,
    cancel: Option<&AtomicBool>,
    on_progress: &mut dyn FnMut(ExportProgress),
) -> Result<LoraGgufSummary> {
    let ggml = match dtype {
        GgufQuant::F32 => GgmlDType::F32,
        GgufQuant::F16 => GgmlDType::F16,
        GgufQuant::Bf16 => GgmlDType::BF16,
        other => {
            return Err(refuse(format!(
            "adapter tensors in {} (LoRA ranks are too small for quantized blocks; use f16 or f32)",
            other.label()
        )))
        }
    };
    let c = &d.config;
    let row = gguf_arch::for_config(c)?;
    let list = adapters(d)?;
    if list.iter().any(|(p, _)| p == "lm_head") && d.lm_head.is_none() {
        return Err(refuse("a LoRA on lm_head of a model with tied embeddings"));
    }
    let (first_scale, first_rank) = (list[0].1.scale, list[0].1.rank());
    let alpha = first_scale * first_rank as f64;
    let mut headers = Vec::new();
    let mut items: Vec<(String, Tensor, Option<usize>, f64)> = Vec::new();
    for (path, lora) in &list {
        let base = row
            .gguf_name(&format!("{path}.weight"))
            .ok_or_else(|| refuse(format!("{path}: no GGUF name")))?;
        let heads = row.rope_heads(&base, c.num_attention_heads, c.num_key_value_heads);
        let factor = lora.scale * lora.rank() as f64 / alpha;
        for (suffix, t) in [("lora_a", &lora.a), ("lora_b", &lora.b)] {
            let name = format!("{base}.{suffix}");
            headers.push(TensorHeader {
                name: name.clone(),
                shape: t.dims().to_vec(),
                dtype: ggml,
            });
            let is_b = suffix == "lora_b";
            items.push((
                name,
                t.clone(),
                heads.filter(|_| is_b),
                if is_b { factor } else { 1.0 },
            ));
        }
    }
    let s = |v: &str| Value::String(v.to_string());
    let metadata = vec![
        ("general.architecture".to_string(), s(row.name())),
        ("general.type".into(), s("adapter")),
        ("general.name".into(), s(name)),
        ("general.file_type".into(), Value::U32(dtype.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        ("adapter.type".into(), s("lora")),
        ("adapter.lora.alpha".into(), Value::F32(alpha as f32)),
    ];
    let mut produce = |i: usize| -> Result<Vec<u8>> {
        stop_if_cancelled(cancel)?;
        let (name, t, heads, factor) = &items[i];
        let mut t = t.detach().to_dtype(DType::F32)?;
        if (*factor - 1.0).abs() > 1e-12 {
            t = (t * *factor)?;
        }
        if let Some(h) = heads {
            t = permute_rope_rows(&t, *h)?;
        }
        encode(name, &t, ggml)
    };
    let mut on_tensor = |i: usize, done: u64, total: u64| {
        on_progress(ExportProgress {
            stage: "writing",
            done,
            total,
            item: headers[i].name.clone(),
        })
    };
    let bytes = write_gguf(
        out,
        &metadata,
        &headers.clone(),
        &mut produce,
        &mut on_tensor,
    )?;
    Ok(LoraGgufSummary {
        path: out.to_path_buf(),
        bytes,
        layers: list.len(),
        alpha: alpha as f32,
        rank: first_rank,
    })
}

/// Reads a LoRA GGUF and attaches its adapters to a copy of `base` (whose own adapters are
/// dropped), undoing the q/k permutation and taking `scale = alpha / r` as llama.cpp does.
/// For the self-check: generation through the result is what llama.cpp computes with
/// `--lora`.
///
/// # Errors
/// [`Error::Gguf`] naming the file for a missing key, another architecture, a tensor name
/// that is not a base tensor's, or mismatched shapes.
pub fn attach_lora_gguf(base: &Decoder, path: &Path) -> Result<Decoder> {
    let file = path.display().to_string();
    let bad = |message: String| Error::Gguf {
        file: file.clone(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let content = Content::read(&mut f).map_err(|e| bad(format!("not a readable GGUF: {e}")))?;
    let md = &content.metadata;
    let get_str = |k: &str| md.get(k).and_then(|v| v.to_string().ok()).cloned();
    let c = &base.config;
    let row = gguf_arch::for_config(c)?;
    if get_str("general.type").as_deref() != Some("adapter")
        || get_str("adapter.type").as_deref() != Some("lora")
    {
        return Err(bad(
            "not a LoRA adapter (general.type / adapter.type)".into()
        ));
    }
    if get_str("general.architecture").as_deref() != Some(row.name()) {
        return Err(bad(format!(
            "adapter architecture {:?}, base is {}",
            get_str("general.architecture"),
            row.name()
        )));
    }
    let alpha = md
        .get("adapter.lora.alpha")
        .and_then(|v| v.to_f32().ok())
        .ok_or_else(|| bad("missing adapter.lora.alpha".into()))?;
    let mut d = base.clone();
    let mut load = |name: &str| -> Result<Option<Tensor>> {
        if !content.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        let q = content
            .tensor(&mut f, name, &Device::Cpu)
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        Ok(Some(q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?))
    };
    let mut used = 0;
    let mut targets: Vec<(String, &mut crate::model::linear::Linear)> = d.linears_mut();
    for (path, lin) in targets.iter_mut() {
        lin.lora = None;
        lin.merged = false;
        let gname = row
            .gguf_name(&format!("{path}.weight"))
            .ok_or_else(|| bad(format!("{path}: no GGUF name")))?;
        let (a, b) = match (
            load(&format!("{gname}.lora_a"))?,
            load(&format!("{gname}.lora_b"))?,
        ) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => continue,
            _ => return Err(bad(format!("{gname}: only one of lora_a / lora_b"))),
        };
        let (o, i) = lin.dims();
        let r = b.dims()[1];
        if a.dims() != [r, i] || b.dims() != [o, r] {
            return Err(bad(format!(
                "{gname}: lora_a {:?} / lora_b {:?} do not fit the base [{o}, {i}]",
                a.dims(),
                b.dims()
            )));
        }
        let b = match row.rope_heads(&gname, c.num_attention_heads, c.num_key_value_heads) {
            Some(h) => unpermute_rope_rows(&b, h)?,
            None => b,
        };
        lin.lora = Some(Lora {
            a,
            b,
            scale: f64::from(alpha) / r as f64,
            dropout: 0.0,
            stream: used as u64,
        });
        used += 1;
    }
    let expected = content
        .tensor_infos
        .keys()
        .filter(|k| k.ends_with(".lora_a"))
        .count();
    if used != expected {
        return Err(bad(format!(
            "{expected} adapted tensors in the file, {used} match this model's block layers"
        )));
    }
    Ok(d)
}
