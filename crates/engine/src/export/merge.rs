//! Merging an adapter into its base and writing a Hugging Face model folder that our loader
//! and Python `transformers` both load.
//!
//! The merged weights are written in f32 (or bf16 on request) — never re-quantized: folding a
//! light fine-tune into a 4-bit base and quantizing again erases most of the change, so a
//! QLoRA base is dequantized first.

use crate::error::{Error, Result};
use crate::fsutil::{save_safetensors_atomic, write_atomic, write_json_atomic};
use crate::model::decoder::Decoder;
use crate::model::loaded::LoadedModel;
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Folds every attached LoRA adapter into its base weight; returns how many were merged.
///
/// # Errors
/// [`Error::Invalid`] when adapters are already merged: merging again would add each delta a
/// second time. Call [`unmerge_adapters`] first.
pub fn merge_adapters(model: &mut Decoder) -> Result<usize> {
    let already = model.linears_mut().iter().filter(|(_, l)| l.merged).count();
    if already > 0 {
        return Err(Error::invalid(
            "merge",
            format!("{already} adapters are already merged; merging again would add their deltas twice (unmerge first)"),
        ));
    }
    merge_pending(model)
}

/// Merges the adapters not merged yet (none twice).
fn merge_pending(model: &mut Decoder) -> Result<usize> {
    let mut n = 0;
    for (_, lin) in model.linears_mut() {
        if lin.lora.is_some() && !lin.merged {
            lin.merge()?;
            n += 1;
        }
    }
    Ok(n)
}

/// Reverses [`merge_adapters`].
pub fn unmerge_adapters(model: &mut Decoder) -> Result<usize> {
    let mut n = 0;
    for (_, lin) in model.linears_mut() {
        if lin.merged {
            lin.unmerge()?;
            n += 1;
        }
    }
    Ok(n)
}

/// Storage type of written weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ExportDtype {
    #[default]
    F32,
    Bf16,
}

/// Merges adapters (those not merged already) in `decoder` and writes `config.json`,
/// `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` (with the chat template) and
/// `generation_config.json` of `model` into `dir`.
///
/// The chat template is written even when it is our fallback: the model was fine-tuned in
/// that format, so `transformers`, Ollama or llama.cpp must prompt it the same way. The folder
/// is written as `<dir>.partial` and renamed into place, so a failed or killed export never
/// leaves a half-written model under `dir`.
///
/// # Errors
/// [`Error::Invalid`] when `dir` exists, is not empty and does not look like a model folder
/// (nothing of the user's is overwritten); I/O failures naming the file; tokenizer
/// serialization failures.
pub fn write_merged(
    model: &LoadedModel,
    decoder: &mut Decoder,
    dir: &Path,
    dtype: ExportDtype,
) -> Result<()> {
    let foreign = std::fs::read_dir(dir)
        .map(|mut rd| rd.next().is_some())
        .unwrap_or(false)
        && !dir.join("config.json").is_file();
    if foreign {
        return Err(Error::invalid(
            "out",
            format!(
                "{} exists and holds files that are not a model export; choose a new or empty folder",
                dir.display()
            ),
        ));
    }
    // NF4 bases (QLoRA) first: `named_tensors_mut` lists only dense weights, so an NF4 layer
    // without an adapter would otherwise be missing from the export.
    decoder.dequantize_all()?;
    merge_pending(decoder)?;
    crate::fsutil::replace_dir(dir, |tmp| write_folder(model, decoder, tmp, dtype))
}

fn write_folder(
    model: &LoadedModel,
    decoder: &mut Decoder,
    dir: &Path,
    dtype: ExportDtype,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in decoder.named_tensors_mut() {
        let t = t.detach().to_dtype(DType::F32)?;
        let t = match dtype {
            ExportDtype::F32 => t,
            ExportDtype::Bf16 => t.to_dtype(DType::BF16)?,
        };
        tensors.insert(name, t);
    }
    let mut config = decoder.config.to_hf_json();
    config["torch_dtype"] = serde_json::json!(match dtype {
        ExportDtype::F32 => "float32",
        ExportDtype::Bf16 => "bfloat16",
    });
    save_safetensors_atomic(&dir.join("model.safetensors"), &tensors)?;
    write_json_atomic(&dir.join("config.json"), &config)?;
    let tok_json = model
        .tokenizer
        .inner
        .to_string(false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    write_atomic(&dir.join("tokenizer.json"), tok_json.as_bytes())?;
    let mut tc = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": decoder.config.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
    });
    if !model.template.bos_token.is_empty() {
        tc["bos_token"] = serde_json::json!(model.template.bos_token);
    }
    if !model.template.eos_token.is_empty() {
        tc["eos_token"] = serde_json::json!(model.template.eos_token);
    }
    tc["chat_template"] = serde_json::json!(model.template.source());
    write_json_atomic(&dir.join("tokenizer_config.json"), &tc)?;
    let gen = serde_json::json!({
        "bos_token_id": model.tokenizer.bos_id,
        "eos_token_id": model.tokenizer.eos_ids,
    });
    write_json_atomic(&dir.join("generation_config.json"), &gen)
}
