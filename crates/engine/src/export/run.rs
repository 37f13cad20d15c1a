//! One call per export format — what `peft export` and the app's Export step run: write the
//! files, then the self-check (`export::selfcheck`); a failed check is the call's error.
//!
//! Formats: a merged GGUF file; a LoRA adapter GGUF; an Ollama folder (merged GGUF +
//! Modelfile + README with the `ollama create` command); LM Studio's layout; a merged Hugging
//! Face folder ([`export_hf`], which needs the model mutably because it merges in place).

use crate::error::{Error, Result};
use crate::export::gguf::{write_merged_gguf, ExportModel, ExportProgress, GgufSummary};
use crate::export::gguf_quant::GgufQuant;
use crate::export::gguf_writer::stop_if_cancelled;
use crate::export::lora_gguf::{attach_lora_gguf, write_lora_gguf, LoraGgufSummary};
use crate::export::merge::{unmerge_adapters, write_merged, ExportDtype};
use crate::export::ollama::{lmstudio_path, safe_name, write_ollama_files};
use crate::export::ollama_template::{ollama_template, OllamaTemplate};
use crate::export::selfcheck::{check_exported, compare, CheckOptions, SelfCheckReport};
use crate::model::decoder::Decoder;
use crate::model::load::ModelSource;
use crate::model::loaded::LoadedModel;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// One merged `.gguf` file (llama.cpp, LM Studio, Ollama, …).
    Gguf,
    /// The LoRA adapter alone as a llama.cpp adapter `.gguf` (`--lora`).
    GgufAdapter,
    /// A folder for `ollama create`.
    Ollama,
    /// The merged GGUF in LM Studio's `publisher/model/` layout under a models folder.
    Lmstudio,
    /// A merged Hugging Face folder (safetensors).
    Hf,
}

impl ExportFormat {
    /// The format's name on the command line and over IPC (`gguf_adapter`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Gguf => "gguf",
            ExportFormat::GgufAdapter => "gguf_adapter",
            ExportFormat::Ollama => "ollama",
            ExportFormat::Lmstudio => "lmstudio",
            ExportFormat::Hf => "hf",
        }
    }
}

/// Settings of one export.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    pub format: ExportFormat,
    pub quant: GgufQuant,
    /// A `.gguf` file path or a folder (formats that write one file); the folder to fill
    /// (Ollama, HF); LM Studio's models folder (LM Studio).
    pub out: PathBuf,
    /// Model name (`general.name`, file names, the Ollama tag).
    pub name: String,
    /// LM Studio publisher folder.
    pub publisher: String,
    pub check: CheckOptions,
    /// Set (from another thread) to stop the export: looked at between tensors and between
    /// self-check conversations. Stopped while writing, no file appears under its final name;
    /// stopped while checking, the written file stays, unchecked.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// What an export produced, and its self-check.
#[derive(Clone, Debug, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ExportReport {
    pub format: ExportFormat,
    pub files: Vec<PathBuf>,
    pub gguf: Option<GgufSummary>,
    pub adapter: Option<LoraGgufSummary>,
    pub ollama_template: Option<OllamaTemplate>,
    pub self_check: SelfCheckReport,
    /// What to run next (e.g. the `ollama create` command).
    pub next_steps: Vec<String>,
}

/// The name an export of `source` gets (`general.name`, file names, the Ollama tag): the
/// model's file or repository name, then `-tag` (the run or adapter folder) when one is given.
pub fn default_name(source: &ModelSource, tag: Option<&str>) -> String {
    let text = |s: Option<&std::ffi::OsStr>| s.map(|s| s.to_string_lossy().into_owned());
    let base = match source {
        ModelSource::Bundled => "stories260k".to_string(),
        ModelSource::Folder(p) => text(p.file_name()).unwrap_or_default(),
        ModelSource::Gguf(p) => text(p.file_stem()).unwrap_or_default(),
        ModelSource::Hub(h) => h.repo.rsplit('/').next().unwrap_or_default().to_string(),
    };
    let name = match tag.filter(|t| !t.is_empty()) {
        Some(t) => format!("{base}-{t}"),
        None => base,
    };
    safe_name(&name)
}

/// `out` itself when it names a `.gguf` file, else `out/file`.
fn gguf_path(out: &Path, file: &str) -> PathBuf {
    let is_file = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if is_file {
        out.to_path_buf()
    } else {
        out.join(file)
    }
}

/// Token strings that end the model's turn, for `PARAMETER stop`.
fn stop_strings(m: &ExportModel) -> Vec<String> {
    let mut stops: Vec<String> = m
        .tokenizer
        .eos_ids
        .iter()
        .filter_map(|id| m.tokenizer.id_to_token(*id))
        .collect();
    stops.dedup();
    stops
}

/// The BOS text the tokenizer adds by itself (so a Go template must not write it).
fn implicit_bos(m: &ExportModel) -> Result<String> {
    let Some(bos) = m.tokenizer.bos_id else {
        return Ok(String::new());
    };
    let with = m.tokenizer.encode("Hello", true)?;
    let without = m.tokenizer.encode("Hello", false)?;
    Ok(
        if with.first() == Some(&bos) && without.first() != Some(&bos) {
            m.tokenizer.id_to_token(bos).unwrap_or_default()
        } else {
            String::new()
        },
    )
}

/// Runs one export of `m` (the decoder carrying its adapter) as `req` says.
///
/// # Errors
/// [`Error::Unsupported`] for what a format cannot carry (named), I/O errors naming the file,
/// [`Error::ExportCheck`] when the exported model does not chat like `m`;
/// [`Error::Cancelled`] once `req.cancel` is set;
/// [`Error::Invalid`] for [`ExportFormat::Hf`] (use [`export_hf`]).
pub fn export(
    m: &ExportModel,
    req: &ExportRequest,
    on_progress: &mut dyn FnMut(ExportProgress),
) -> Result<ExportReport> {
    let file = format!("{}-{}.gguf", safe_name(&req.name), req.quant.label());
    let strict = req.quant.is_lossless();
    let cancel = req.cancel.as_deref();
    let report = |files: Vec<PathBuf>, check: SelfCheckReport| ExportReport {
        format: req.format,
        files,
        gguf: None,
        adapter: None,
        ollama_template: None,
        self_check: check,
        next_steps: Vec::new(),
    };
    match req.format {
        ExportFormat::Gguf | ExportFormat::Lmstudio => {
            let path = if req.format == ExportFormat::Gguf {
                gguf_path(&req.out, &file)
            } else {
                lmstudio_path(&req.out, &req.publisher, &req.name, &file)
            };
            let summary = write_merged_gguf(m, req.quant, &path, cancel, on_progress)?;
            let check = check_exported(m, &path, strict, &req.check, cancel, on_progress)?;
            let mut r = report(vec![path.clone()], check);
            r.gguf = Some(summary);
            r.next_steps.push(match req.format {
                ExportFormat::Gguf => format!("llama-cli -m {} -cnv", path.display()),
                _ => format!(
                    "open LM Studio: the model appears under {}/{} (or `lms import {}`)",
                    safe_name(&req.publisher),
                    safe_name(&req.name),
                    path.display()
                ),
            });
            Ok(r)
        }
        ExportFormat::Ollama => {
            // The template first: refuse before writing gigabytes.
            let t = ollama_template(m.template, &implicit_bos(m)?)?;
            let stops = stop_strings(m);
            let path = req.out.join(&file);
            let summary = write_merged_gguf(m, req.quant, &path, cancel, on_progress)?;
            let check = check_exported(m, &path, strict, &req.check, cancel, on_progress)?;
            let tag = safe_name(&req.name);
            let context = m.decoder.config.max_position_embeddings.min(8192);
            let cmd = write_ollama_files(&req.out, &tag, &file, &t, &stops, context)?;
            let files = vec![path, req.out.join("Modelfile"), req.out.join("README.md")];
            let mut r = report(files, check);
            r.gguf = Some(summary);
            r.ollama_template = Some(t);
            r.next_steps.push(cmd);
            r.next_steps.push(format!("ollama run {tag}"));
            Ok(r)
        }
        ExportFormat::GgufAdapter => {
            let file = format!("{}-lora-{}.gguf", safe_name(&req.name), req.quant.label());
            let path = gguf_path(&req.out, &file);
            let summary =
                write_lora_gguf(m.decoder, req.quant, &req.name, &path, cancel, on_progress)?;
            let attached = attach_lora_gguf(m.decoder, &path)?;
            let exported = ExportModel {
                decoder: &attached,
                ..*m
            };
            let check = compare(m, &exported, &path, strict, &req.check, cancel, on_progress)?;
            let mut r = report(vec![path.clone()], check.into_result()?);
            r.adapter = Some(summary);
            r.next_steps.push(format!(
                "llama-cli -m BASE.gguf --lora {} -cnv   (BASE.gguf: the base model as GGUF)",
                path.display()
            ));
            Ok(r)
        }
        ExportFormat::Hf => Err(Error::invalid(
            "format",
            "a Hugging Face folder is written by export_hf (it merges the model in place)",
        )),
    }
}

/// Writes a merged Hugging Face folder of `model` with `decoder` (its weights with the adapter
/// attached; `export::merge::write_merged`, f32), checks it by loading it back, and unmerges
/// the decoder again.
///
/// # Errors
/// As [`write_merged`]; [`Error::ExportCheck`] when the folder does not chat like the model;
/// [`Error::Cancelled`] when `cancel` is set before the folder is written or during the check.
pub fn export_hf(
    model: &LoadedModel,
    decoder: &mut Decoder,
    out: &Path,
    name: &str,
    check: &CheckOptions,
    cancel: Option<&AtomicBool>,
    on_progress: &mut dyn FnMut(ExportProgress),
) -> Result<ExportReport> {
    stop_if_cancelled(cancel)?;
    write_merged(model, decoder, out, ExportDtype::F32)?;
    let result = check_exported(
        &ExportModel::of(model, decoder, name),
        out,
        true,
        check,
        cancel,
        on_progress,
    );
    unmerge_adapters(decoder)?;
    let files = ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .map(|f| out.join(f))
        .collect();
    Ok(ExportReport {
        format: ExportFormat::Hf,
        files,
        gguf: None,
        adapter: None,
        ollama_template: None,
        self_check: result?,
        next_steps: vec![format!(
            "AutoModelForCausalLM.from_pretrained({:?})",
            out.display().to_string()
        )],
    })
}
