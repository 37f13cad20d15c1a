//! Adapters trained elsewhere (Axolotl, LLaMA-Factory, TRL, plain PEFT scripts): the tensor
//! naming variants they write, `modules_to_save` tensors, and a summary of an adapter folder's
//! settings for the run history.
//!
//! Naming variants read (all normalised to `base_model.model.<path>.lora_{A,B}.weight`):
//! - PEFT's own `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`;
//! - the same without the `base_model.model.` prefix;
//! - an adapter-name infix, `…lora_A.default.weight`, as in a raw `model.state_dict()` (saves
//!   consolidated from FSDP or DeepSpeed ZeRO-3 checkpoints);
//! - the inner `model.` missing (`layers.0.…`, when the base was the bare decoder).
//!
//! `modules_to_save` tensors are whole replacement weights: PEFT writes them under the module's
//! name (`base_model.model.model.norm.weight`), a raw state dict as
//! `…norm.modules_to_save.default.weight` next to an `…original_module.…` copy of the frozen
//! base (ignored). They replace the model's tensor; on a model with tied embeddings a
//! replaced `lm_head` or `embed_tokens` unties the pair, as PEFT's copy does.
//!
//! What this is not: it never reads pickled `.bin` weights (running a pickle can execute code);
//! it says how to convert them instead.

use crate::error::{Error, Result};
use crate::fsutil::load_safetensors;
use crate::peft::adapter_config::{AdapterConfig, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use candle_core::Tensor;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// PyTorch's pickle format for adapter weights (refused).
pub const BIN_WEIGHTS: &str = "adapter_model.bin";
const PREFIX: &str = "base_model.model.";

/// How the tensor names in a file differed from PEFT's canonical ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NamingVariants {
    pub missing_prefix: bool,
    pub adapter_name: Option<String>,
    pub missing_inner_model: bool,
    /// `original_module` copies of the frozen base (ignored).
    pub original_copies: usize,
}

/// An adapter file's tensors, sorted out.
pub struct AdapterTensors {
    /// LoRA A/B by canonical name (`base_model.model.<path>.lora_A.weight`).
    pub lora: HashMap<String, Tensor>,
    /// Whole replacement tensors (`modules_to_save`) by the model's tensor name.
    pub full: Vec<(String, Tensor)>,
    pub variants: NamingVariants,
}

/// The weights file, or a clear error for pickled weights.
pub fn weights_path(dir: &Path) -> Result<PathBuf> {
    let st = dir.join(ADAPTER_WEIGHTS);
    let bin = dir.join(BIN_WEIGHTS);
    if !st.exists() && bin.exists() {
        return Err(Error::Unsupported {
            what: "adapter weights in PyTorch's pickle format".into(),
            found: format!(
                "{} (not opened: loading a pickle can run arbitrary code)",
                bin.display()
            ),
            supported: format!(
                "{ADAPTER_WEIGHTS}. Convert once where the adapter was trained: python -c \"import \
                 torch, safetensors.torch as s; s.save_file(torch.load('{BIN_WEIGHTS}', \
                 map_location='cpu', weights_only=True), '{ADAPTER_WEIGHTS}')\""
            ),
        });
    }
    Ok(st)
}

fn fix_inner(path: &str, v: &mut NamingVariants) -> String {
    let bare = ["layers.", "embed_tokens", "norm."];
    if bare.iter().any(|b| path.starts_with(b)) || path == "norm" {
        v.missing_inner_model = true;
        format!("model.{path}")
    } else {
        path.to_string()
    }
}

fn tensor_err(file: &Path, tensor: &str, message: impl Into<String>) -> Error {
    Error::Tensor {
        file: file.display().to_string(),
        tensor: tensor.into(),
        message: message.into(),
    }
}

/// Reads the weights of an adapter folder and sorts every tensor into LoRA or full
/// replacement, under canonical names.
///
/// # Errors
/// Pickled weights; an unreadable file; a tensor that is neither LoRA A/B nor listed in
/// `modules_to_save` (e.g. LoRA on embeddings, DoRA magnitudes); tensors from several adapters;
/// a `modules_to_save` entry with no tensor.
pub fn read_adapter_tensors(dir: &Path, cfg: &AdapterConfig) -> Result<AdapterTensors> {
    let path = weights_path(dir)?;
    let raw = load_safetensors(&path)?;
    let mut v = NamingVariants::default();
    let mut lora = HashMap::new();
    let mut full = Vec::new();
    let to_save = cfg.modules_to_save.clone().unwrap_or_default();
    let mut names: Vec<&String> = raw.keys().collect();
    names.sort();
    for key in names {
        let t = raw[key].clone();
        let k = match key.strip_prefix(PREFIX) {
            Some(k) => k,
            None => {
                v.missing_prefix = true;
                key.as_str()
            }
        };
        let mut adapter = None;
        let mut lora_part = None;
        for ab in ["lora_A", "lora_B"] {
            if let Some(pos) = k.find(&format!(".{ab}.")) {
                lora_part = Some((&k[..pos], ab, &k[pos + ab.len() + 2..]));
            }
        }
        if let Some((module, ab, rest)) = lora_part {
            let param = match rest.split_once('.') {
                Some((name, p)) => {
                    adapter = Some(name.to_string());
                    p
                }
                None => rest,
            };
            if param != "weight" {
                return Err(tensor_err(
                    &path,
                    key,
                    format!(
                        "LoRA `{param}` tensors are not supported (only lora_A/lora_B weights)"
                    ),
                ));
            }
            let module = fix_inner(module, &mut v);
            lora.insert(format!("{PREFIX}{module}.{ab}.weight"), t);
        } else if [
            "lora_embedding_A",
            "lora_embedding_B",
            "lora_magnitude_vector",
        ]
        .iter()
        .any(|m| k.contains(m))
        {
            return Err(tensor_err(
                &path,
                key,
                "LoRA on embeddings and DoRA magnitudes are not supported",
            ));
        } else if k.contains(".original_module.") {
            v.original_copies += 1;
            continue;
        } else {
            let (name, infix) = match k.find(".modules_to_save.") {
                Some(pos) => {
                    let rest = &k[pos + ".modules_to_save.".len()..];
                    match rest.split_once('.') {
                        Some((a, p)) => (format!("{}.{p}", &k[..pos]), Some(a.to_string())),
                        None => (k.to_string(), None),
                    }
                }
                None => (k.to_string(), None),
            };
            adapter = adapter.or(infix);
            let name = fix_inner(&name, &mut v);
            let module = name.rsplit_once('.').map_or(name.as_str(), |(m, _)| m);
            if !to_save.iter().any(|m| module.ends_with(m.as_str())) {
                return Err(tensor_err(
                    &path,
                    key,
                    format!("neither a LoRA A/B weight nor a module listed in modules_to_save ({to_save:?}) of {ADAPTER_CONFIG}"),
                ));
            }
            full.push((name, t));
        }
        if let Some(a) = adapter {
            match &v.adapter_name {
                Some(prev) if *prev != a => {
                    return Err(tensor_err(
                        &path,
                        key,
                        format!("the file holds several adapters (`{prev}`, `{a}`); save one"),
                    ))
                }
                _ => v.adapter_name = Some(a),
            }
        }
    }
    for m in &to_save {
        let found = full.iter().any(|(n, _)| {
            n.rsplit_once('.')
                .is_some_and(|(module, _)| module.ends_with(m.as_str()))
        });
        if !found {
            return Err(Error::Config {
                file: dir.join(ADAPTER_CONFIG).display().to_string(),
                field: "modules_to_save".into(),
                message: format!("lists `{m}` but {} holds no tensor for it", path.display()),
            });
        }
    }
    Ok(AdapterTensors {
        lora,
        full,
        variants: v,
    })
}

/// Replaces model tensors with `modules_to_save` weights (see the module docs on tied
/// embeddings); returns how many were replaced.
///
/// # Errors
/// A name the model lacks (or stores in 4 bits) or a shape mismatch, naming the tensor.
pub fn apply_full_tensors(
    model: &mut crate::model::decoder::Decoder,
    full: Vec<(String, Tensor)>,
    file: &Path,
    keep_tying: bool,
) -> Result<usize> {
    use crate::model::linear::Linear;
    let mut n = 0;
    for (name, t) in full {
        if model.lm_head.is_none() && keep_tying && name == "lm_head.weight" {
            // `ensure_weight_tying`: the head and the embedding stay one tensor.
            check_shape(&t, model.embed_tokens.dims(), file, &name)?;
            model.embed_tokens = t.to_dtype(model.embed_tokens.dtype())?;
            n += 1;
            continue;
        }
        if model.lm_head.is_none() && !keep_tying {
            // A tied head shares the embedding; PEFT's copy of either one unties them.
            if name == "lm_head.weight" {
                check_shape(&t, model.embed_tokens.dims(), file, &name)?;
                model.lm_head = Some(Linear::dense(t, None));
                n += 1;
                continue;
            }
            if name == "model.embed_tokens.weight" {
                model.lm_head = Some(Linear::dense(model.embed_tokens.clone(), None));
            }
        }
        let mut slot = None;
        for (k, tensor) in model.named_tensors_mut() {
            if k == name {
                slot = Some(tensor);
                break;
            }
        }
        let Some(slot) = slot else {
            return Err(tensor_err(
                file,
                &name,
                "modules_to_save tensor for a weight this model does not have (or holds in 4 bits)",
            ));
        };
        check_shape(&t, slot.dims(), file, &name)?;
        *slot = t.to_dtype(slot.dtype())?;
        n += 1;
    }
    Ok(n)
}

fn check_shape(t: &Tensor, want: &[usize], file: &Path, name: &str) -> Result<()> {
    if t.dims() != want {
        return Err(tensor_err(
            file,
            name,
            format!("shape {:?}, the model has {want:?}", t.dims()),
        ));
    }
    Ok(())
}
