//! A dataset report for the wizard's data step: what format was detected, how many rows were
//! usable, how long the examples are in tokens (histogram and percentiles, measured before
//! truncation), how many `max_len` cuts, and one example split into trained/untrained text so
//! the user sees what the loss will be taken on.
//!
//! It reads and tokenises the whole file once; it does not keep the tokenised data (training
//! re-renders with the same `Renderer`, which is deterministic).

use crate::data::formats::{load, DataFormat, LoadOptions, RowError};
use crate::data::render::{RenderOptions, Renderer, Segment, TrainOn};
use crate::error::Result;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use serde::Serialize;
use std::path::Path;

/// Number of equal-width bins in [`DatasetReport::histogram`].
pub const HISTOGRAM_BINS: usize = 10;

/// Token-length statistics over all usable rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct LengthStats {
    pub min: usize,
    pub p50: usize,
    pub p95: usize,
    pub max: usize,
    pub mean: f64,
}

/// Everything the app shows about a dataset before training.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct DatasetReport {
    pub file: String,
    pub format: DataFormat,
    pub rows: usize,
    pub skipped: usize,
    /// The first few skipped rows, for display.
    pub errors: Vec<RowError>,
    /// True when the model has no chat template and the built-in fallback was used.
    pub fallback_template: bool,
    pub max_len: usize,
    pub lengths: LengthStats,
    /// `(lo, hi, count)`: rows with `lo <= tokens < hi`.
    pub histogram: Vec<(usize, usize, usize)>,
    /// Rows longer than `max_len`, and their share of `rows`.
    pub truncated: usize,
    pub truncated_share: f64,
    /// Tokens carrying loss and all tokens, after truncation.
    pub trained_tokens: usize,
    pub total_tokens: usize,
    /// The first row rendered, as display segments.
    pub example: Vec<Segment>,
}

/// Loads, renders and tokenises `path` and summarises it (assistant-only loss for chats).
///
/// # Errors
/// Those of [`load`] ([`crate::Error::Data`] for bad files) and of [`Renderer`]
/// ([`crate::Error::Template`], [`crate::Error::Tokenizer`], [`crate::Error::Invalid`] for
/// `max_len == 0`).
pub fn inspect(
    path: &Path,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    max_len: usize,
    opts: &LoadOptions,
) -> Result<DatasetReport> {
    let ds = load(path, opts)?;
    let renderer = Renderer::new(
        tokenizer,
        template,
        RenderOptions {
            max_len,
            train_on: TrainOn::Assistant,
        },
    )?;
    let mut lengths = Vec::with_capacity(ds.examples.len());
    let (mut truncated, mut trained_tokens, mut total_tokens) = (0, 0, 0);
    let mut example = Vec::new();
    for (i, ex) in ds.examples.iter().enumerate() {
        let (tok, segments) = renderer.build(ex)?;
        if i == 0 {
            example = segments;
        }
        lengths.push(tok.full_len);
        truncated += usize::from(tok.truncated());
        trained_tokens += tok.trained_tokens();
        total_tokens += tok.input_ids.len();
    }
    let rows = lengths.len();
    Ok(DatasetReport {
        file: ds.file,
        format: ds.format,
        rows,
        skipped: ds.skipped,
        errors: ds.errors,
        fallback_template: template.is_fallback(),
        max_len,
        histogram: histogram(&lengths, HISTOGRAM_BINS),
        lengths: stats(&mut lengths),
        truncated,
        truncated_share: if rows == 0 {
            0.0
        } else {
            truncated as f64 / rows as f64
        },
        trained_tokens,
        total_tokens,
        example,
    })
}

/// Nearest-rank percentiles (`p` in 0..=100) of sorted lengths.
fn stats(lengths: &mut [usize]) -> LengthStats {
    lengths.sort_unstable();
    let rank = |p: usize| -> usize {
        if lengths.is_empty() {
            return 0;
        }
        let k = (p * lengths.len()).div_ceil(100).max(1);
        lengths[k - 1]
    };
    let sum: usize = lengths.iter().sum();
    LengthStats {
        min: lengths.first().copied().unwrap_or(0),
        p50: rank(50),
        p95: rank(95),
        max: lengths.last().copied().unwrap_or(0),
        mean: if lengths.is_empty() {
            0.0
        } else {
            sum as f64 / lengths.len() as f64
        },
    }
}

/// `bins` equal-width bins covering `0..=max`.
fn histogram(lengths: &[usize], bins: usize) -> Vec<(usize, usize, usize)> {
    let max = lengths.iter().copied().max().unwrap_or(0);
    let width = (max + 1).div_ceil(bins).max(1);
    let mut out: Vec<(usize, usize, usize)> =
        (0..bins).map(|b| (b * width, (b + 1) * width, 0)).collect();
    for &len in lengths {
        out[(len / width).min(bins - 1)].2 += 1;
    }
    out
}
