//! Ranking training configurations for a machine, a model and a dataset.
//!
//! Given free memory (VRAM for a GPU run, RAM for CPU) minus a visible safety margin, the
//! recommender walks configurations from the best-quality/fastest to the leanest — LoRA,
//! LoRA + checkpointing, QLoRA, QLoRA + checkpointing — first at a sequence length covering
//! ~95 % of the examples, then at shorter ones, and keeps every candidate with its estimate,
//! headroom, speed and a plain-language reason. When nothing fits it says what would; when the
//! preferred configuration does not fit here it names the GPU class it would fit (`elsewhere`).
//!
//! Pure: hardware and dataset figures come in as values; nothing is measured here.

use super::calibrate::Calibration;
use super::elsewhere::{elsewhere, ElsewhereFit};
use super::estimate::{estimate_with, Estimate};
use super::request::{ComputeDevice, PlanRequest, Throughput};
use crate::data::inspect::DatasetReport;
use crate::device::DeviceChoice;
use crate::hardware::Hardware;
use crate::memory::format_bytes;
use crate::model::config::Config;
use crate::model::decoder::WeightDtype;
use crate::ops::Bf16Backend;
use crate::peft::method::{LoraSettings, Method};
use serde::{Deserialize, Serialize};

/// Token lengths of the dataset's examples (before truncation).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct DataStats {
    /// Sorted ascending.
    pub lengths: Vec<usize>,
}

impl DataStats {
    pub fn from_lengths(mut lengths: Vec<usize>) -> Self {
        lengths.sort_unstable();
        Self { lengths }
    }

    /// Rebuilds lengths from an inspect report's histogram (each bin's rows spread evenly over
    /// it; the maximum and p95 are kept exact).
    pub fn from_report(r: &DatasetReport) -> Self {
        let mut lengths = Vec::with_capacity(r.rows);
        for &(lo, hi, count) in &r.histogram {
            for j in 0..count {
                lengths
                    .push((lo + (hi - lo) * (2 * j + 1) / (2 * count.max(1))).min(r.lengths.max));
            }
        }
        if let Some(last) = lengths.iter_mut().max() {
            *last = r.lengths.max;
        }
        Self::from_lengths(lengths)
    }

    /// Smallest length covering `share` of the examples (nearest rank).
    pub fn percentile(&self, share: f64) -> usize {
        if self.lengths.is_empty() {
            return 0;
        }
        let k = ((share * self.lengths.len() as f64).ceil() as usize).clamp(1, self.lengths.len());
        self.lengths[k - 1]
    }

    /// Share of examples longer than `seq` (cut by training).
    pub fn truncated_share(&self, seq: usize) -> f64 {
        if self.lengths.is_empty() {
            return 0.0;
        }
        self.lengths.iter().filter(|&&l| l > seq).count() as f64 / self.lengths.len() as f64
    }

    /// Tokens one epoch trains on at `seq`.
    pub fn epoch_tokens(&self, seq: usize) -> usize {
        self.lengths.iter().map(|&l| l.min(seq)).sum()
    }
}

/// What the user fixed; everything `None` is the recommender's to choose.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct RecommendOptions {
    /// `None`: automatic (LoRA family); `Some`: only this method (its variants may still add
    /// checkpointing or a shorter sequence).
    pub method: Option<Method>,
    /// Rank/targets used for automatic LoRA/QLoRA candidates.
    pub lora: LoraSettings,
    pub seq_len: Option<usize>,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Share of free memory kept free; at least `min_margin_bytes`.
    pub safety_margin: f64,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub min_margin_bytes: u64,
    /// Share of examples the sequence length should cover.
    pub coverage: f64,
    /// The base request (dtype, evaluation, throughput) every candidate starts from.
    pub base: PlanRequest,
    /// The device the run will train on (`auto`: a usable GPU, else the CPU); the plan
    /// budgets that device's memory.
    #[serde(default)]
    pub device: DeviceChoice,
    /// Sample packing as the user fixed it; `None`: each candidate packs exactly when the
    /// planner's epoch time for the dataset's lengths is shorter with it (short examples),
    /// which is how packing is on by default where it raises tokens/s.
    #[serde(default)]
    pub packing: Option<bool>,
    /// bf16 compute as the user fixed it; `None`: the recommender's ([`bf16_pays`]) — on for
    /// LoRA and QLoRA on a CPU with AMX tiles (1.4× f32's tokens/s measured, the loss within
    /// 0.5 % of f32's) or with AVX512-BF16 dot products measured faster than its f32 GEMM, off
    /// elsewhere (emulated it is no faster than f32).
    #[serde(default)]
    pub bf16_compute: Option<bool>,
}

/// Whether bf16 products are the faster choice on this CPU: AMX tiles always are; AVX512-BF16
/// dot products only where the measured bf16 GEMM rate beats the f32 one (Zen 4's
/// `vdpbf16ps` does twice an f32 FMA's work per cycle, Sapphire Rapids' about 0.7×), and an
/// unmeasured rate is no reason to switch.
pub fn bf16_pays(hw: &Hardware, t: &Throughput) -> bool {
    match hw.cpu.features.bf16_backend() {
        Bf16Backend::Amx => true,
        Bf16Backend::Dot => t.bf16_gemm_gflops.is_some_and(|b| b > t.gemm_gflops),
        Bf16Backend::Emulated => false,
    }
}

/// The unit a recommended bf16 run multiplies on, for its reason.
fn bf16_unit(hw: &Hardware) -> &'static str {
    match hw.cpu.features.bf16_backend() {
        Bf16Backend::Amx => "this CPU's AMX tiles",
        _ => "this CPU's AVX512-BF16 dot products",
    }
}

/// Packing must save at least this share of the epoch to be chosen: below it the estimate's
/// own error decides, and an unpacked run keeps one example per step.
const PACKING_GAIN: f64 = 0.05;

impl Default for RecommendOptions {
    /// Batch 1 with 8 accumulation steps (effective batch 8: on CPU a larger batch barely
    /// raises tokens/s but multiplies activation memory); 10 % / 256 MiB margin; 95 % coverage.
    fn default() -> Self {
        Self {
            method: None,
            lora: LoraSettings::default(),
            seq_len: None,
            batch_size: 1,
            grad_accum: 8,
            safety_margin: 0.10,
            min_margin_bytes: 256 << 20,
            coverage: 0.95,
            base: PlanRequest::default(),
            device: DeviceChoice::Auto,
            packing: None,
            bf16_compute: None,
        }
    }
}

/// One ranked configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Candidate {
    /// `LoRA`, `QLoRA with checkpointing`, …
    pub label: String,
    pub request: PlanRequest,
    pub truncated_share: f64,
    pub estimate: Estimate,
    pub fits: bool,
    /// `usable − peak` (negative when it does not fit).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub headroom_bytes: i64,
    /// Real (non-padding) tokens per second over an epoch of the dataset (`epoch_seconds`).
    pub tokens_per_s: f64,
    pub epoch_seconds: f64,
    pub reason: String,
}

/// The ranked list and the verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Recommendation {
    pub device: ComputeDevice,
    /// Free memory of the budgeted device.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub available_bytes: u64,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub margin_bytes: u64,
    /// `available − margin`: what a plan may use.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub usable_bytes: u64,
    /// Fitting candidates first, best first; then the ones that do not fit.
    pub candidates: Vec<Candidate>,
    /// One-paragraph summary ("LoRA needs 9.1 GiB, you have 6.0 GiB free; …").
    pub summary: String,
    /// When the preferred configuration does not fit here: the GPU class it would fit and how
    /// to continue there (also the summary's last sentence).
    pub elsewhere: Option<ElsewhereFit>,
}

impl Recommendation {
    /// The top candidate, if any fits.
    pub fn best(&self) -> Option<&Candidate> {
        self.candidates.first().filter(|c| c.fits)
    }
}

fn label(method: &Method, ckpt: bool) -> String {
    let m = match method {
        Method::Full => "full fine-tuning",
        Method::Selective { .. } => "selective",
        Method::Lora(_) => "LoRA",
        Method::Qlora(_) => "QLoRA",
    };
    if ckpt {
        format!("{m} with checkpointing")
    } else {
        m.to_string()
    }
}

/// Sequence lengths to try: the coverage length rounded up to 64 (capped by the model's
/// context), then halvings down to 64.
fn seq_lengths(c: &Config, data: &DataStats, o: &RecommendOptions) -> Vec<usize> {
    let first = o
        .seq_len
        .unwrap_or_else(|| data.percentile(o.coverage).max(1).div_ceil(64) * 64)
        .clamp(1, c.max_position_embeddings);
    let mut out = vec![first];
    let mut s = first;
    while s > 64 {
        s = (s / 2).max(64);
        out.push(s);
    }
    out
}

/// Whether packing `req`'s rows shortens the planner's epoch for these example lengths by at
/// least [`PACKING_GAIN`].
fn packing_pays(c: &Config, req: &PlanRequest, k: &Calibration, lengths: &[usize]) -> bool {
    let with = |packing| {
        let r = PlanRequest {
            packing,
            ..req.clone()
        };
        super::epoch::epoch_seconds(c, &r, k, lengths)
    };
    with(true) < (1.0 - PACKING_GAIN) * with(false)
}

/// Ranks configurations for `hw`; see the module docs.
pub fn recommend(
    c: &Config,
    hw: &Hardware,
    data: &DataStats,
    o: &RecommendOptions,
) -> Recommendation {
    recommend_with(c, hw, data, o, &Calibration::default())
}

/// [`recommend`] with explicit estimate constants.
pub fn recommend_with(
    c: &Config,
    hw: &Hardware,
    data: &DataStats,
    o: &RecommendOptions,
    k: &Calibration,
) -> Recommendation {
    // Only a GPU this build can train on (or an assumed machine's): the plan is for the device
    // that will run (`device::DeviceChoice::Auto` picks the same).
    let gpu = super::devices::planned_gpu(hw, o.device);
    let (device, available) = match gpu {
        Some(g) if g.unified_memory => (ComputeDevice::Metal, g.free_bytes),
        Some(g) => (ComputeDevice::Cuda, g.free_bytes),
        None => (ComputeDevice::Cpu, hw.memory.available_bytes),
    };
    let margin = ((available as f64 * o.safety_margin) as u64).max(o.min_margin_bytes);
    let usable = available.saturating_sub(margin);
    let methods: Vec<Method> = match &o.method {
        Some(m) => vec![m.clone()],
        None => vec![Method::Lora(o.lora.clone()), Method::Qlora(o.lora.clone())],
    };
    let mut all = Vec::new();
    for seq in seq_lengths(c, data, o) {
        for m in &methods {
            for ckpt in [false, true] {
                let mut req = PlanRequest {
                    method: m.clone(),
                    seq_len: seq,
                    batch_size: o.batch_size.max(1),
                    grad_accum: o.grad_accum.max(1),
                    grad_checkpointing: ckpt,
                    device,
                    packing: o.packing.unwrap_or(o.base.packing),
                    ..o.base.clone()
                };
                // bf16 products exist for a frozen base on the CPU only (`TrainConfig`'s
                // validation); the base request's bf16 storage came from its own setting.
                let frozen_base = matches!(m, Method::Lora(_) | Method::Qlora(_));
                req.bf16_compute = device == ComputeDevice::Cpu
                    && frozen_base
                    && o.bf16_compute.unwrap_or(bf16_pays(hw, &o.base.throughput));
                if req.bf16_compute {
                    req.weight_dtype = WeightDtype::Bf16;
                } else if o.base.bf16_compute {
                    req.weight_dtype = WeightDtype::F32;
                }
                if o.packing.is_none() && !data.lengths.is_empty() {
                    req.packing = packing_pays(c, &req, k, &data.lengths);
                }
                let est = estimate_with(c, &req, k);
                // Device memory on a GPU (host needs are small and separate), RAM on CPU.
                let need = if device == ComputeDevice::Cpu {
                    est.peak_bytes
                } else {
                    est.device_bytes
                };
                let fits = need <= usable;
                let trunc = data.truncated_share(seq);
                let tokens = data.epoch_tokens(seq).max(1) as f64;
                // What the steps compute: each micro-batch at its own length, or packed rows.
                let epoch_s = if data.lengths.is_empty() {
                    tokens / est.tokens_per_s.max(1e-9)
                } else {
                    super::epoch::epoch_seconds(c, &req, k, &data.lengths)
                };
                let name = label(m, ckpt);
                let reason = if fits {
                    format!(
                        "{name} at {seq} tokens needs {}, leaving {} of the {} usable",
                        format_bytes(need),
                        format_bytes(usable - need),
                        format_bytes(usable)
                    )
                } else {
                    format!(
                        "{name} at {seq} tokens needs {}, you have {} free",
                        format_bytes(need),
                        format_bytes(available)
                    )
                };
                let reason = match req.packing && o.packing.is_none() {
                    true => format!("{reason}; sample packing on (short examples share rows)"),
                    false => reason,
                };
                let reason = match req.bf16_compute && o.bf16_compute.is_none() {
                    true => format!("{reason}; bf16 compute on ({})", bf16_unit(hw)),
                    false => reason,
                };
                all.push(Candidate {
                    label: name,
                    truncated_share: trunc,
                    fits,
                    headroom_bytes: usable as i64 - need as i64,
                    tokens_per_s: tokens / epoch_s.max(1e-9),
                    epoch_seconds: epoch_s,
                    estimate: est,
                    request: req,
                    reason,
                });
            }
        }
    }
    let preferred = all.first().filter(|c| !c.fits).cloned();
    let away = preferred
        .as_ref()
        .map(|p| elsewhere(c, &p.label, &p.request, k));
    // Stable partition: candidates were generated best-first, so fitting ones keep that order.
    let (mut fit, mut rest): (Vec<Candidate>, Vec<Candidate>) =
        all.into_iter().partition(|c| c.fits);
    rest.sort_by_key(|c| c.estimate.peak_bytes);
    let where_ = if device == ComputeDevice::Cpu {
        "RAM"
    } else {
        "GPU memory"
    };
    let mut summary = match fit.first() {
        Some(best) => {
            let mut s = String::new();
            if let Some(first) = &preferred {
                s.push_str(&format!(
                    "{} needs {}, you have {} of {where_} free; ",
                    first.label,
                    format_bytes(first.estimate.peak_bytes),
                    format_bytes(available)
                ));
            }
            s.push_str(&format!(
                "{} at {} tokens needs {} ({} kept free as a safety margin), covering {:.0} % of examples in full.",
                best.label,
                best.request.seq_len,
                format_bytes(best.estimate.peak_bytes),
                format_bytes(margin),
                100.0 * (1.0 - best.truncated_share)
            ));
            if best.request.bf16_compute && o.bf16_compute.is_none() {
                s.push_str(&format!(
                    " It computes in bf16 on {} (adapters stay f32).",
                    bf16_unit(hw)
                ));
            }
            s
        }
        None => nothing_fits(c, &rest, available, usable, where_),
    };
    if let Some(e) = &away {
        summary.push(' ');
        summary.push_str(&e.sentence);
    }
    fit.append(&mut rest);
    Recommendation {
        device,
        available_bytes: available,
        margin_bytes: margin,
        usable_bytes: usable,
        candidates: fit,
        summary,
        elsewhere: away,
    }
}

fn nothing_fits(
    c: &Config,
    rest: &[Candidate],
    available: u64,
    usable: u64,
    where_: &str,
) -> String {
    let Some(least) = rest.first() else {
        return "no configuration to evaluate".into();
    };
    let fixed: u64 = least
        .estimate
        .lines
        .iter()
        .filter(|l| l.name == "runtime" || l.name == "tokenizer" || l.name == "gpu_context")
        .map(|l| l.bytes)
        .sum();
    let scale = usable.saturating_sub(fixed) as f64
        / least.estimate.peak_bytes.saturating_sub(fixed).max(1) as f64;
    let params = crate::model::count::parameter_count(c) as f64;
    format!(
        "Nothing fits: the leanest configuration ({} at {} tokens) needs {}, you have {} of {where_} free ({} usable after the safety margin). \
         Free {} of memory, or choose a model of about {:.0}M parameters or fewer.",
        least.label,
        least.request.seq_len,
        format_bytes(least.estimate.peak_bytes),
        format_bytes(available),
        format_bytes(usable),
        format_bytes(least.estimate.peak_bytes.saturating_sub(usable)),
        (params * scale.min(1.0) / 1e6).floor().max(0.0)
    )
}
