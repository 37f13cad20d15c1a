//! The fine-tuning methods and how each one decides what trains.
//!
//! Freezing is structural: a trainable tensor is a candle `Var` (collected in
//! [`Trainable`], which is exactly what the optimizer sees); everything else is a plain tensor
//! that goes through frozen ops and never gets a gradient.
//! - **Full**: every tensor of the model.
//! - **Selective**: a name filter over tensor paths — biases (BitFit), norm weights, the last
//!   N blocks, or modules matching a pattern.
//! - **LoRA**: adapters on chosen linear layers of the blocks; the base stays frozen.
//! - **QLoRA**: LoRA over an NF4-quantized base.
//!
//! The method also decides how the frozen base is stored ([`Method::base_storage`]): NF4 block
//! linears for QLoRA, dense weights for the others. Training asks the opened model for that
//! storage, so no front end can pair a method with the wrong base.

use crate::error::{Error, Result};
use crate::model::decoder::{Decoder, LoadOptions, WeightDtype};
use crate::model::loaded::LoadedModel;
use crate::peft::lora::{fresh_adapter, lora_scale};
use candle_core::Var;
use serde::{Deserialize, Serialize};

/// The seven projections of a Llama-family block, in PEFT's naming. Other families name
/// theirs in [`crate::model::family::Family::module_names`] (Phi-3: `qkv_proj`, `o_proj`,
/// `gate_up_proj`, `down_proj`).
pub const ALL_LINEAR: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// LoRA hyperparameters (PEFT's `LoraConfig` names in comments).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct LoraSettings {
    /// `r`: adapter rank. Higher rank = more capacity and more memory for adapter weights,
    /// gradients and optimizer state (small next to activations).
    pub rank: usize,
    /// `lora_alpha`: the update is scaled by alpha/r (alpha/√r with rsLoRA).
    pub alpha: f64,
    /// `lora_dropout` on the adapter's input, training only.
    pub dropout: f32,
    /// `target_modules`: projection names (`q_proj`…) — `all-linear` means every linear
    /// layer of the blocks (seven; four fused ones for Phi-3).
    pub targets: Vec<String>,
    /// `layers_to_transform`: only these block indices (all when `None`).
    pub layers: Option<Vec<usize>>,
    /// `use_rslora`.
    pub rslora: bool,
}

impl Default for LoraSettings {
    /// r 8, alpha 16, dropout 0.05, all seven projections (the QLoRA paper's choice: adapting
    /// every linear layer matters more than the rank).
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: ALL_LINEAR.iter().map(|s| s.to_string()).collect(),
            layers: None,
            rslora: false,
        }
    }
}

impl LoraSettings {
    /// Expands `all-linear` and checks every target is a known projection of a Llama-family
    /// block ([`LoraSettings::resolved_targets_for`] for another family's names).
    pub fn resolved_targets(&self) -> Result<Vec<String>> {
        self.resolved_targets_for(&ALL_LINEAR)
    }

    /// Expands `all-linear` into `modules` (a family's PEFT module names) and checks every
    /// target is one of them.
    pub fn resolved_targets_for(&self, modules: &[&str]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for t in &self.targets {
            let t = t.trim();
            if t == "all-linear" {
                out.extend(modules.iter().map(|s| s.to_string()));
            } else if modules.contains(&t) {
                out.push(t.to_string());
            } else {
                return Err(Error::invalid(
                    "targets",
                    format!(
                        "unknown module `{t}` for this model; choose from {} or all-linear",
                        modules.join(", ")
                    ),
                ));
            }
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(Error::invalid("targets", "no target modules"));
        }
        Ok(out)
    }
}

/// What selective fine-tuning updates.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum Selective {
    /// BitFit: bias vectors only (Llama and Mistral have none; Qwen2 has q/k/v biases).
    Bias,
    /// RMSNorm weights (PEFT's "LN tuning").
    Norm,
    /// Every tensor of the last N blocks (PEFT's `layers_to_transform`).
    LastBlocks(usize),
    /// Tensors whose name matches a pattern: comma-separated; `*` matches any run of
    /// characters; a pattern without `*` matches anywhere in the name.
    Modules(String),
}

impl Selective {
    /// Parses the CLI form: `bias`, `norm`, `last:N`, `modules:PATTERN`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.split_once(':') {
            None if s == "bias" => Ok(Selective::Bias),
            None if s == "norm" => Ok(Selective::Norm),
            Some(("last", n)) => n
                .parse()
                .ok()
                .filter(|n: &usize| *n > 0)
                .map(Selective::LastBlocks)
                .ok_or_else(|| {
                    Error::invalid(
                        "selective",
                        format!("`last:{n}`: N must be a positive integer"),
                    )
                }),
            Some(("modules", p)) if !p.trim().is_empty() => Ok(Selective::Modules(p.to_string())),
            _ => Err(Error::invalid(
                "selective",
                format!("`{s}`: use bias, norm, last:N or modules:PATTERN"),
            )),
        }
    }

    pub(crate) fn selects(&self, name: &str, num_layers: usize) -> bool {
        match self {
            Selective::Bias => name.ends_with(".bias"),
            // Block norms (`…layernorm`, Qwen3/Gemma's `q_norm`/`k_norm`) and the final norm.
            Selective::Norm => name.ends_with("norm.weight"),
            Selective::LastBlocks(n) => layer_index(name).is_some_and(|i| i + n >= num_layers),
            Selective::Modules(p) => p.split(',').any(|pat| glob_match(pat.trim(), name)),
        }
    }
}

/// The fine-tuning method.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Method {
    Full,
    Selective {
        what: Selective,
    },
    Lora(LoraSettings),
    /// LoRA on an NF4 base (see [`Method::base_storage`]).
    Qlora(LoraSettings),
}

/// The method's name alone (the CLI's `--method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    /// Small adapters on a frozen base.
    Lora,
    /// LoRA over a 4-bit NF4 base (least memory).
    Qlora,
    /// Train a chosen subset of existing weights.
    Selective,
    /// Every weight (most memory).
    Full,
}

impl Method {
    /// The method of `kind` with its settings (`lora` for LoRA/QLoRA, `what` for selective).
    pub fn of_kind(kind: MethodKind, lora: LoraSettings, what: Selective) -> Self {
        match kind {
            MethodKind::Lora => Method::Lora(lora),
            MethodKind::Qlora => Method::Qlora(lora),
            MethodKind::Selective => Method::Selective { what },
            MethodKind::Full => Method::Full,
        }
    }

    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Full => MethodKind::Full,
            Method::Selective { .. } => MethodKind::Selective,
            Method::Lora(_) => MethodKind::Lora,
            Method::Qlora(_) => MethodKind::Qlora,
        }
    }

    /// How this method needs the frozen base stored: NF4 block linears with double
    /// quantization for QLoRA (the paper's storage), dense `dtype` weights otherwise (LoRA's
    /// frozen base, and the weights full/selective fine-tuning copies into trainable f32).
    pub fn base_storage(&self, dtype: WeightDtype) -> LoadOptions {
        match self {
            Method::Qlora(_) => LoadOptions::nf4(dtype),
            _ => LoadOptions::dense(dtype),
        }
    }

    /// [`Method::base_storage`] for `model` trained on the CPU or not: QLoRA over a GGUF whose
    /// block linears are all in block types trains over those (the file's own 4-bit (or k-quant)
    /// base, dequantized tile by tile like NF4: no f32 copy and no second rounding to NF4) —
    /// on the CPU, where their kernels run; elsewhere NF4.
    pub fn base_storage_for(
        &self,
        model: &LoadedModel,
        dtype: WeightDtype,
        cpu: bool,
    ) -> LoadOptions {
        match self {
            Method::Qlora(_) if cpu && model.gguf_linear_bytes().is_some() => {
                LoadOptions::gguf_types(dtype)
            }
            _ => self.base_storage(dtype),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::Selective { .. } => "selective",
            Method::Lora(_) => "lora",
            Method::Qlora(_) => "qlora",
        }
    }

    pub fn lora(&self) -> Option<&LoraSettings> {
        match self {
            Method::Lora(l) | Method::Qlora(l) => Some(l),
            _ => None,
        }
    }
}

/// The parameters the optimizer updates, by name. LoRA names follow PEFT
/// (`model.layers.0.self_attn.q_proj.lora_A.weight`); others are the model's tensor names.
#[derive(Clone, Default, Debug)]
pub struct Trainable {
    pub params: Vec<(String, Var)>,
}

impl Trainable {
    pub fn count(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// The block index in a parameter name (`model.layers.3.…` → 3).
pub fn layer_index(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn glob_match(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return name.contains(pattern);
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return part.is_empty() || rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Refuses a decoder whose block linears are not stored as `method` trains them: QLoRA over
/// anything but NF4 would be plain LoRA with 4-bit memory figures, and LoRA or full tuning over
/// NF4 would train against a degraded base.
fn check_base_storage(model: &mut Decoder, method: &Method) -> Result<()> {
    use crate::model::linear::Base;
    let linears = model.linears_mut();
    let blocks = linears.len();
    // NF4, or a GGUF's own block types (QLoRA over the file's quantization).
    let quantized = linears
        .iter()
        .filter(|(_, l)| matches!(l.base, Base::Nf4(_) | Base::Ggml(_)))
        .count();
    let (want_quantized, ok) = match method {
        Method::Qlora(_) => (true, quantized == blocks),
        _ => (false, quantized == 0),
    };
    if ok {
        return Ok(());
    }
    Err(Error::invalid(
        "method",
        format!(
            "{} needs {} block linears, but {quantized} of {blocks} are quantized; load the base with `Method::base_storage_for`",
            method.name(),
            if want_quantized { "quantized (NF4 or GGUF)" } else { "dense" },
        ),
    ))
}

/// Makes the chosen parameters trainable (or attaches fresh LoRA adapters) and returns them.
///
/// # Errors
/// [`Error::Invalid`] when the selection is empty — e.g. BitFit on an architecture without
/// biases — or a LoRA target is unknown or a layer index out of range.
pub fn apply_method(model: &mut Decoder, method: &Method, seed: u64) -> Result<Trainable> {
    check_base_storage(model, method)?;
    let num_layers = model.config.num_hidden_layers;
    let mut out = Trainable::default();
    match method {
        Method::Full | Method::Selective { .. } => {
            for (name, t) in model.named_tensors_mut() {
                let chosen = match method {
                    Method::Full => true,
                    Method::Selective { what } => what.selects(&name, num_layers),
                    _ => unreachable!(),
                };
                if chosen {
                    let var = Var::from_tensor(&t.to_dtype(candle_core::DType::F32)?)?;
                    *t = var.as_tensor().clone();
                    out.params.push((name, var));
                }
            }
            if out.params.is_empty() {
                let why = match method {
                    Method::Selective { what: Selective::Bias } => format!(
                        "bias-only tuning (BitFit) selects nothing: {} models have no bias vectors; choose norm, last:N or LoRA",
                        model.config.arch.as_str()
                    ),
                    _ => "the selection matches no tensor of this model".to_string(),
                };
                return Err(Error::invalid("selective", why));
            }
        }
        Method::Lora(s) | Method::Qlora(s) => {
            let targets = s.resolved_targets_for(&model.config.family().module_names())?;
            if s.rank == 0 {
                return Err(Error::invalid("rank", "must be at least 1"));
            }
            if let Some(layers) = &s.layers {
                if let Some(bad) = layers.iter().find(|&&l| l >= num_layers) {
                    return Err(Error::invalid(
                        "layers",
                        format!(
                            "layer {bad} does not exist; the model has layers 0..{}",
                            num_layers - 1
                        ),
                    ));
                }
            }
            let scale = lora_scale(s.alpha, s.rank, s.rslora);
            let device = model.embed_tokens.device().clone();
            for (stream, (path, lin)) in model.linears_mut().into_iter().enumerate() {
                let module = path.rsplit('.').next().unwrap_or("");
                let layer = layer_index(&path).unwrap_or(0);
                let layer_ok = s.layers.as_ref().is_none_or(|l| l.contains(&layer));
                if !targets.iter().any(|t| t == module) || !layer_ok {
                    continue;
                }
                let (o, i) = lin.dims();
                let (lora, a, b) =
                    fresh_adapter(i, o, s.rank, scale, s.dropout, seed, stream as u64, &device)?;
                lin.lora = Some(lora);
                out.params.push((format!("{path}.lora_A.weight"), a));
                out.params.push((format!("{path}.lora_B.weight"), b));
            }
        }
    }
    Ok(out)
}
