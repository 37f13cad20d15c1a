//! "Continue on a GPU server": the run planned here, written as a ready folder for an
//! established trainer — Axolotl, LLaMA-Factory or TRL — with its data, chat template,
//! multi-GPU launch file and a README of exact commands.
//!
//! [`export`] maps every setting of a [`TrainConfig`] onto the engine's own field, value for
//! value, and records the mapping ([`ExportReport::mapped`]); whatever the engine cannot do the
//! same way is listed in [`ExportReport::not_carried`] (and in the folder's README), never
//! dropped silently. The data is the exact train/validation split our trainer would use
//! (`dataset`), the chat template is matched by name or passed explicitly (`lf_template`,
//! `marked_template`), and the folder is written atomically.
//!
//! What this is not: it does not run the engines, download anything, or check that the engine
//! versions on the server accept every key (the README names the versions the mappings were
//! written against).

pub mod axolotl;
pub mod dataset;
mod folder;
pub mod launch;
pub mod lf_template;
pub mod llamafactory;
pub mod marked_template;
pub mod readme;
pub mod trl;
pub mod yaml;

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::load::ModelSource;
use crate::model::loaded::LoadedModel;
use crate::peft::method::{Method, Selective};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use crate::train::schedule::Scheduler;
use crate::train::TrainConfig;
use dataset::PreparedData;
use serde::Serialize;
use std::path::{Path, PathBuf};
use yaml::{Doc, Y};

/// The manifest written into every export folder; also how an adapter brought back from the
/// engine is recognised (`peft::adapter_import`).
pub const MANIFEST: &str = crate::peft::adapter_summary::RECIPE_MANIFEST;
/// Where the engines are told to write their output, relative to the folder.
pub const OUTPUT_DIR: &str = "output";

/// The trainers we export to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(rename = "RecipeEngine"))]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Axolotl,
    LlamaFactory,
    Trl,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Engine::Axolotl, Engine::LlamaFactory, Engine::Trl];

    pub fn as_str(&self) -> &'static str {
        match self {
            Engine::Axolotl => "axolotl",
            Engine::LlamaFactory => "llamafactory",
            Engine::Trl => "trl",
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Engine::Axolotl => "Axolotl",
            Engine::LlamaFactory => "LLaMA-Factory",
            Engine::Trl => "TRL",
        }
    }

    /// The config file's name in the folder.
    pub fn config_file(&self) -> &'static str {
        match self {
            Engine::Axolotl => "axolotl.yaml",
            Engine::LlamaFactory => "llamafactory.yaml",
            Engine::Trl => "trl.yaml",
        }
    }
}

/// One trainer as a front end offers it: the value to send back, its name and the config file
/// the folder will hold.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(rename = "RecipeEngineChoice"))]
pub struct EngineChoice {
    pub engine: Engine,
    pub label: String,
    pub config_file: String,
}

impl Engine {
    /// Every trainer we export to, in the order a front end lists them.
    pub fn choices() -> Vec<EngineChoice> {
        Engine::ALL
            .iter()
            .map(|e| EngineChoice {
                engine: *e,
                label: e.label().to_string(),
                config_file: e.config_file().to_string(),
            })
            .collect()
    }
}

impl std::str::FromStr for Engine {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "axolotl" => Ok(Engine::Axolotl),
            "llamafactory" => Ok(Engine::LlamaFactory),
            "trl" => Ok(Engine::Trl),
            _ => Err(Error::invalid(
                "engine",
                format!("`{s}`: choose axolotl, llamafactory or trl"),
            )),
        }
    }
}

/// Everything an export needs: the run as it would run here.
pub struct ExportRequest<'a> {
    pub engine: Engine,
    pub source: &'a ModelSource,
    pub model_config: &'a Config,
    pub tokenizer: &'a Tokenizer,
    pub template: &'a ChatTemplate,
    pub data: &'a Path,
    pub train: &'a TrainConfig,
}

impl<'a> ExportRequest<'a> {
    /// The request for an opened model (no weights are built: an export is for models that
    /// may not fit here).
    pub fn new(
        engine: Engine,
        model: &'a LoadedModel,
        data: &'a Path,
        train: &'a TrainConfig,
    ) -> Self {
        Self {
            engine,
            source: &model.source,
            model_config: &model.config,
            tokenizer: &model.tokenizer,
            template: &model.template,
            data,
            train,
        }
    }
}

/// One of our settings and the engine key it went to.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(rename = "RecipeField"))]
pub struct FieldMap {
    pub ours: String,
    pub theirs: String,
    pub value: String,
}

/// Something the engine will not do as we do, and what it does instead.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(rename = "RecipeGap"))]
pub struct Gap {
    pub field: String,
    pub detail: String,
}

/// The data that went into the folder.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(rename = "RecipeData"))]
pub struct DataSummary {
    pub source_format: String,
    pub rows: String,
    pub train_examples: usize,
    pub eval_examples: usize,
    pub dropped_untrained: usize,
    pub truncated: usize,
    pub skipped_rows: usize,
}

/// What [`export`] wrote and how faithfully.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(rename = "RecipeReport"))]
pub struct ExportReport {
    pub engine: Engine,
    pub out_dir: PathBuf,
    /// Files written, relative to `out_dir`.
    pub files: Vec<String>,
    pub config_file: String,
    pub base_model: String,
    pub mapped: Vec<FieldMap>,
    pub not_carried: Vec<Gap>,
    pub data: DataSummary,
    /// Optimizer steps of the run on one GPU (as here).
    pub total_steps: usize,
    pub install: Vec<String>,
    pub run: String,
    pub run_multi_gpu: String,
}

/// Where the engine gets the base model.
#[derive(Clone, Debug)]
pub(crate) struct BaseModel {
    pub id: String,
    pub revision: Option<String>,
}

/// Shared state while one engine's folder is built.
pub(crate) struct Ctx<'a> {
    pub req: &'a ExportRequest<'a>,
    pub data: PreparedData,
    pub base: BaseModel,
    pub total_steps: usize,
    pub mapped: Vec<FieldMap>,
    pub gaps: Vec<Gap>,
    /// Relative path → contents.
    pub files: Vec<(String, Vec<u8>)>,
    pub install: Vec<String>,
    pub run: String,
    pub run_multi_gpu: String,
}

impl Ctx<'_> {
    /// Sets `key` and records that our `ours` setting went there.
    pub fn map(&mut self, doc: &mut Doc, ours: &str, key: &str, value: Y) {
        self.mapped.push(FieldMap {
            ours: ours.to_string(),
            theirs: key.to_string(),
            value: value.display(),
        });
        doc.set(key, value);
    }

    pub fn gap(&mut self, field: &str, detail: impl Into<String>) {
        self.gaps.push(Gap {
            field: field.to_string(),
            detail: detail.into(),
        });
    }

    pub fn file(&mut self, path: &str, contents: impl Into<Vec<u8>>) {
        self.files.push((path.to_string(), contents.into()));
    }

    pub fn cfg(&self) -> &TrainConfig {
        self.req.train
    }

    /// Validation every N steps, or once at the end (N = the run's steps); `None` without a
    /// validation set.
    pub fn eval_steps(&self) -> Option<usize> {
        if self.data.eval.is_empty() {
            None
        } else if self.cfg().eval_every > 0 {
            Some(self.cfg().eval_every)
        } else {
            Some(self.total_steps)
        }
    }
}

/// Builds the folder for `req.engine` in `out` (replacing an earlier export there).
///
/// # Errors
/// A method the engine cannot run at all (e.g. selective training in TRL's CLI), data that
/// does not load or render (file, line, field), and I/O failures naming the path; `out`
/// existing with other content is refused.
pub fn export(req: &ExportRequest<'_>, out: &Path) -> Result<ExportReport> {
    let data = dataset::prepare(req.data, req.tokenizer, req.template, req.train)?;
    let total_steps = data.total_steps(req.train);
    let mut ctx = Ctx {
        req,
        base: BaseModel {
            id: String::new(),
            revision: None,
        },
        data,
        total_steps,
        mapped: Vec::new(),
        gaps: Vec::new(),
        files: Vec::new(),
        install: Vec::new(),
        run: String::new(),
        run_multi_gpu: String::new(),
    };
    ctx.base = base_model(&mut ctx)?;
    common_gaps(&mut ctx);
    match req.engine {
        Engine::Axolotl => axolotl::build(&mut ctx)?,
        Engine::LlamaFactory => llamafactory::build(&mut ctx)?,
        Engine::Trl => trl::build(&mut ctx)?,
    }
    let summary = DataSummary {
        source_format: format!("{:?}", ctx.data.format),
        rows: format!("{:?}", ctx.data.kind).to_lowercase(),
        train_examples: ctx.data.train.len(),
        eval_examples: ctx.data.eval.len(),
        dropped_untrained: ctx.data.dropped_untrained,
        truncated: ctx.data.truncated,
        skipped_rows: ctx.data.skipped_rows,
    };
    let mut report = ExportReport {
        engine: req.engine,
        out_dir: out.to_path_buf(),
        files: Vec::new(),
        config_file: req.engine.config_file().to_string(),
        base_model: ctx.base.id.clone(),
        mapped: ctx.mapped.clone(),
        not_carried: ctx.gaps.clone(),
        data: summary,
        total_steps,
        install: ctx.install.clone(),
        run: ctx.run.clone(),
        run_multi_gpu: ctx.run_multi_gpu.clone(),
    };
    report.files = ctx.files.iter().map(|(p, _)| p.clone()).collect();
    report
        .files
        .extend(["README.md".to_string(), MANIFEST.to_string()]);
    let readme = readme::render(&report, req);
    ctx.file("README.md", readme);
    let manifest = serde_json::json!({
        "written_by": format!("PEFT Studio {}", env!("CARGO_PKG_VERSION")),
        "engine": req.engine,
        "model": req.source.describe(),
        "base_model": ctx.base.id,
        "data": req.data.display().to_string(),
        "method": req.train.method.name(),
        "train_config": req.train,
        "report": &report,
    });
    let manifest = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::invalid("manifest", e.to_string()))?;
    ctx.file(MANIFEST, manifest);
    folder::write_folder(out, &ctx.files)?;
    Ok(report)
}

/// The base model for the engine: a hub id as is; the bundled demo copied into `model/`; a
/// local folder by path, and a GGUF by the hub id its metadata names (both listed).
fn base_model(ctx: &mut Ctx) -> Result<BaseModel> {
    Ok(match ctx.req.source {
        ModelSource::Hub(h) => BaseModel {
            id: h.repo.clone(),
            revision: (h.revision != "main").then(|| h.revision.clone()),
        },
        ModelSource::Bundled => {
            for (name, bytes) in crate::model::load::bundled_files() {
                ctx.file(&format!("model/{name}"), bytes.to_vec());
            }
            BaseModel {
                id: "./model".into(),
                revision: None,
            }
        }
        ModelSource::Folder(p) => {
            let id = ctx.req.source.base_model_id();
            ctx.gap(
                "base model",
                format!(
                    "{} is a local folder: the config points at this path. Copy the folder to the \
                     server at the same path, or replace the path with the model's hub id.",
                    p.display()
                ),
            );
            BaseModel { id, revision: None }
        }
        ModelSource::Gguf(p) => {
            let hint = gguf_hub_hint(p);
            let id = hint
                .clone()
                .unwrap_or_else(|| "REPLACE-WITH-HUB-ID".to_string());
            ctx.gap(
                "base model",
                match hint {
                    Some(h) => format!(
                        "{} is a GGUF file, which these engines do not train from; `{h}` is the \
                         hub id its metadata names — check it is the unquantized original.",
                        p.display()
                    ),
                    None => format!(
                        "{} is a GGUF file, which these engines do not train from, and its \
                         metadata names no hub id: replace REPLACE-WITH-HUB-ID with the original \
                         (unquantized) model's id.",
                        p.display()
                    ),
                },
            );
            BaseModel { id, revision: None }
        }
    })
}

/// A hub id from GGUF metadata: a `huggingface.co` URL if one is recorded, else llama.cpp's
/// naming convention `organization/basename-size_label-finetune`.
fn gguf_hub_hint(path: &Path) -> Option<String> {
    use candle_core::quantized::gguf_file::Content;
    let mut f = std::fs::File::open(path).ok()?;
    let c = Content::read(&mut f).ok()?;
    let get = |k: &str| c.metadata.get(k).and_then(|v| v.to_string().ok()).cloned();
    for key in [
        "general.source.huggingface.repository",
        "general.base_model.0.repo_url",
        "general.source.url",
        "general.url",
    ] {
        if let Some(v) = get(key) {
            let id = v
                .trim_start_matches("https://huggingface.co/")
                .trim_end_matches('/');
            if id.split('/').count() == 2 && !id.contains(':') {
                return Some(id.to_string());
            }
        }
    }
    let (org, base) = (get("general.organization")?, get("general.basename")?);
    let mut name = base;
    for k in ["general.size_label", "general.finetune"] {
        if let Some(v) = get(k) {
            name = format!("{name}-{v}");
        }
    }
    Some(format!("{}/{name}", org.replace(' ', "")))
}

/// Differences every engine shares (Hugging Face Trainer semantics).
fn common_gaps(ctx: &mut Ctx) {
    let cfg = ctx.cfg().clone();
    ctx.gap(
        "example order",
        "the engine shuffles the training examples with its own sampler (seeded with `seed`), so \
         the order differs from ours; the examples themselves are the same",
    );
    ctx.gap(
        "precision",
        "ours computes in f32 on the CPU; the export trains in bf16 mixed precision (the GPU \
         standard) — set bf16 false (and fp16 true on GPUs without bf16, e.g. T4) to change it",
    );
    if cfg.warmup_steps > 0 {
        ctx.gap(
            "warmup_steps",
            format!(
                "the same {} steps of linear warmup, but Hugging Face schedules start at 0 on the \
                 first step where ours starts at lr/{0}",
                cfg.warmup_steps
            ),
        );
    }
    if cfg.grad_accum > 1 {
        ctx.gap(
            "grad_accum loss averaging",
            "ours averages the loss of each micro-batch; the Trainer weights every trained token \
             of the optimizer step equally (the same when micro-batches hold equal token counts)",
        );
    }
    if cfg.adamw.weight_decay > 0.0 && matches!(cfg.method, Method::Full | Method::Selective { .. })
    {
        ctx.gap(
            "weight_decay",
            "the Trainer does not decay biases and norm weights; ours decays every trained tensor",
        );
    }
    if cfg.adapter_dtype == crate::peft::adapter_io::AdapterDtype::Bf16 {
        ctx.gap(
            "adapter_dtype",
            "the engine saves the adapter in its training dtype (f32 LoRA weights); loading here \
             accepts it as is",
        );
    }
    if cfg.save_every == 0 {
        ctx.gap(
            "save_every",
            "ours checkpoints only at the end (and when stopped); the engine keeps its default \
             checkpoint interval",
        );
    }
    if ctx.data.skipped_rows > 0 {
        let n = ctx.data.skipped_rows;
        ctx.gap(
            "skip_bad_rows",
            format!("{n} malformed rows were skipped here and are not in the exported data"),
        );
    }
    if ctx.data.dropped_untrained > 0 {
        let n = ctx.data.dropped_untrained;
        ctx.gap(
            "dropped examples",
            format!(
                "{n} examples with no trained token within seq_len are left out, as our trainer \
                 leaves them out"
            ),
        );
    }
}

/// The projections LoRA adapts, resolved and sorted.
pub(crate) fn lora_targets(ctx: &Ctx) -> Result<Vec<String>> {
    match ctx.cfg().method.lora() {
        Some(l) => l.resolved_targets(),
        None => Ok(Vec::new()),
    }
}

/// Hugging Face's scheduler for ours: cosine decays to 10 % of the peak here, which is
/// `cosine_with_min_lr` with `min_lr_rate: 0.1`.
pub(crate) fn hf_scheduler(s: Scheduler) -> (&'static str, Option<Y>) {
    match s {
        Scheduler::Cosine => (
            "cosine_with_min_lr",
            Some(Y::map(vec![("min_lr_rate", Y::Float(0.1))])),
        ),
        Scheduler::Linear => ("linear", None),
        Scheduler::Constant => ("constant_with_warmup", None),
    }
}

/// The block indices a selective `last:N` run trains.
pub(crate) fn last_blocks(ctx: &Ctx, n: usize) -> Vec<usize> {
    let layers = ctx.req.model_config.num_hidden_layers;
    (layers.saturating_sub(n)..layers).collect()
}

/// The selection a selective run makes, for messages.
pub(crate) fn selective_name(s: &Selective) -> String {
    match s {
        Selective::Bias => "bias".into(),
        Selective::Norm => "norm".into(),
        Selective::LastBlocks(n) => format!("last:{n}"),
        Selective::Modules(p) => format!("modules:{p}"),
    }
}
