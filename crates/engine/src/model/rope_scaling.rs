//! RoPE frequency scaling as Hugging Face's `rope_scaling` / `rope_parameters` describe it, and
//! the inverse frequencies it gives (transformers' `modeling_rope_utils`).
//!
//! Supported: `default`, `linear` (positions divided by `factor`; Gemma 3's global layers),
//! `llama3` (Llama 3.1/3.2: low frequencies divided by `factor`, high ones kept, a smooth ramp
//! between), `longrope`/`su` (Phi-3.5, Phi-4-mini) *up to the original context*: the short
//! factors and the attention factor `√(1 + ln(max/original)/ln(original))` that scales cos and
//! sin. Past `original_max_position_embeddings` transformers switches every position to the
//! long factors; we do not, so the decoder's context is capped there and longer inputs are
//! refused with an error. `frequencies`: per-frequency divisors as llama.cpp stores Llama 3
//! scaling (`rope_freqs.weight`) in GGUF files.
//!
//! Not supported (refused by name): `dynamic`, `yarn`, `mrope` and anything else.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// A validated RoPE scaling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    #[serde(rename = "longrope")]
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
    /// Each inverse frequency divided by its entry (GGUF `rope_freqs.weight`).
    Frequencies {
        divisors: Vec<f64>,
    },
}

fn num(m: &serde_json::Map<String, serde_json::Value>, key: &str, file: &str) -> Result<f64> {
    m.get(key)
        .and_then(|v| v.as_f64())
        .ok_or_else(|| Error::Config {
            file: file.into(),
            field: format!("rope_scaling.{key}"),
            message: "missing or not a number".into(),
        })
}

fn list(m: &serde_json::Map<String, serde_json::Value>, key: &str, file: &str) -> Result<Vec<f64>> {
    let bad = || Error::Config {
        file: file.into(),
        field: format!("rope_scaling.{key}"),
        message: "missing or not a list of numbers".into(),
    };
    let arr = m.get(key).and_then(|v| v.as_array()).ok_or_else(bad)?;
    arr.iter().map(|v| v.as_f64().ok_or_else(bad)).collect()
}

/// Parses one `rope_scaling` object (or a `rope_parameters` block). `None` for no scaling
/// (`null`, `default`). `original_max` and `max_positions` come from the top level of the
/// config (Phi-3 keeps them there); `rotary_dim` checks longrope's factor lists.
///
/// # Errors
/// [`Error::Unsupported`] naming the rope type; [`Error::Config`] for a missing field.
pub fn parse(
    v: &serde_json::Value,
    original_max: Option<usize>,
    max_positions: usize,
    rotary_dim: usize,
    file: &str,
) -> Result<Option<RopeScaling>> {
    let serde_json::Value::Object(m) = v else {
        return Ok(None);
    };
    let kind = m
        .get("rope_type")
        .or_else(|| m.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let orig = |m: &serde_json::Map<String, serde_json::Value>| -> Result<usize> {
        m.get("original_max_position_embeddings")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .or(original_max)
            .ok_or_else(|| Error::Config {
                file: file.into(),
                field: "rope_scaling.original_max_position_embeddings".into(),
                message: "missing".into(),
            })
    };
    Ok(Some(match kind {
        "default" => return Ok(None),
        "linear" => RopeScaling::Linear {
            factor: num(m, "factor", file)?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num(m, "factor", file)?,
            low_freq_factor: num(m, "low_freq_factor", file)?,
            high_freq_factor: num(m, "high_freq_factor", file)?,
            original_max_position_embeddings: orig(m)?,
        },
        "longrope" | "su" => {
            let original = orig(m)?;
            let (short, long) = (
                list(m, "short_factor", file)?,
                list(m, "long_factor", file)?,
            );
            for (name, l) in [("short_factor", &short), ("long_factor", &long)] {
                if l.len() != rotary_dim / 2 {
                    return Err(Error::Config {
                        file: file.into(),
                        field: format!("rope_scaling.{name}"),
                        message: format!(
                            "{} entries, expected {} (half the rotary dimension)",
                            l.len(),
                            rotary_dim / 2
                        ),
                    });
                }
            }
            // transformers: the ratio of the context to the original one, unless given.
            let factor = max_positions as f64 / original as f64;
            let attention_factor = match m.get("attention_factor").and_then(|v| v.as_f64()) {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
            };
            RopeScaling::LongRope {
                short_factor: short,
                long_factor: long,
                original_max_position_embeddings: original,
                attention_factor,
            }
        }
        other => {
            return Err(Error::Unsupported {
                what: format!("{file}: rope scaling"),
                found: other.into(),
                supported: "default, linear, llama3, longrope (up to the original context)".into(),
            })
        }
    }))
}

impl RopeScaling {
    /// The inverse frequencies `θ_i = base^(−2i/dim)` after scaling.
    pub fn inv_freq(scaling: Option<&RopeScaling>, base: f64, dim: usize) -> Vec<f64> {
        let plain = (0..dim / 2).map(|i| 1.0 / base.powf(2.0 * i as f64 / dim as f64));
        match scaling {
            None => plain.collect(),
            Some(RopeScaling::Linear { factor }) => plain.map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: orig,
            }) => {
                let orig = *orig as f64;
                let (low_wavelen, high_wavelen) = (orig / low, orig / high);
                plain
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (orig / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            Some(RopeScaling::LongRope { short_factor, .. }) => {
                plain.zip(short_factor).map(|(f, s)| f / s).collect()
            }
            Some(RopeScaling::Frequencies { divisors }) => {
                plain.zip(divisors).map(|(f, d)| f / d).collect()
            }
        }
    }

    /// Factor applied to cos and sin (longrope's attention factor; 1 otherwise).
    pub fn attention_factor(scaling: Option<&RopeScaling>) -> f64 {
        match scaling {
            Some(RopeScaling::LongRope {
                attention_factor, ..
            }) => *attention_factor,
            _ => 1.0,
        }
    }

    /// Positions the tables may cover: longrope is exact only up to its original context.
    pub fn position_limit(scaling: Option<&RopeScaling>, max_positions: usize) -> usize {
        match scaling {
            Some(RopeScaling::LongRope {
                original_max_position_embeddings,
                ..
            }) => max_positions.min(*original_max_position_embeddings),
            _ => max_positions,
        }
    }

    /// The `rope_scaling` object Hugging Face writes; `None` when it has no JSON form
    /// (`Frequencies` that are not Llama 3's standard parameters).
    pub fn to_hf_json(&self, base: f64, dim: usize) -> Option<serde_json::Value> {
        use serde_json::json;
        Some(match self {
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: _,
                attention_factor: _,
            } => json!({
                "type": "longrope",
                "short_factor": short_factor,
                "long_factor": long_factor,
            }),
            RopeScaling::Frequencies { .. } => {
                return self
                    .as_llama3(base, dim)
                    .and_then(|l| l.to_hf_json(base, dim))
            }
        })
    }

    /// Recognises GGUF frequency divisors as Llama 3.1/3.2's standard scaling (low 1, high 4,
    /// original 8192, factor = the largest divisor), so a GGUF import exports a `config.json`.
    pub fn as_llama3(&self, base: f64, dim: usize) -> Option<RopeScaling> {
        let RopeScaling::Frequencies { divisors } = self else {
            return Some(self.clone());
        };
        let factor = divisors.iter().cloned().fold(1.0, f64::max);
        let candidate = RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let want = Self::inv_freq(Some(self), base, dim);
        let got = Self::inv_freq(Some(&candidate), base, dim);
        let close = want
            .iter()
            .zip(&got)
            .all(|(a, b)| ((a - b) / a).abs() < 1e-5);
        close.then_some(candidate)
    }
}
