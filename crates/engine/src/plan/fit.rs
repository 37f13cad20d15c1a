//! Refits the time constants of [`Calibration`] to measured training steps (what
//! `peft bench plan --fit` prints): a non-negative least-squares fit of the *relative* step-time
//! error, so a 30 ms step of the demo model weighs as much as a 5 s step of a 135M model.
//!
//! Held, not fitted: `gemm_efficiency` and `logit_passes` (with two model shapes every
//! per-token term is nearly collinear with the FLOPs, and a free fit trades GEMM time for
//! absurd logit passes, hundreds, at the same residual), and `optimizer_passes` with
//! `gradient_passes` (full fine-tuning's extra work scales with the parameter count in every
//! term; a free fit put all of it elsewhere and priced AdamW at nothing). Those are set from
//! `peft bench train --profile` instead.

use super::calibrate::Calibration;
use super::request::Throughput;
use super::time::StepWork;

/// One measured step: its work, the machine speed it ran at, and its seconds.
#[derive(Clone, Copy, Debug)]
pub struct TimeSample {
    pub work: StepWork,
    pub throughput: Throughput,
    pub step_s: f64,
}

/// Fitted terms, in the order of [`features`].
const FITTED: usize = 7;

/// Seconds per unit of each fitted constant, and the seconds of the held terms.
fn features(s: &TimeSample, k: &Calibration) -> ([f64; FITTED], f64) {
    let w = &s.work;
    let bw = s.throughput.mem_gbps.max(0.1) * 1e9;
    let optimizer = k.optimizer_passes + k.gradient_passes * w.micro_steps;
    let held = w.flops / (s.throughput.gemm_gflops.max(1.0) * 1e9 * k.gemm_efficiency)
        + k.logit_passes * w.logit_bytes / bw
        + optimizer * w.trainable_bytes / bw;
    (
        [
            w.activation_bytes / bw,
            w.attention_bytes / bw,
            w.recomputed_bytes / bw,
            w.dequant_bytes / bw,
            w.weight_bytes / bw,
            w.adapter_passes,
            1.0,
        ],
        held,
    )
}

/// `base` with its time constants refitted to `samples`. Needs at least as many samples as
/// fitted terms; a term no sample exercises (no QLoRA run: no dequantization) keeps its value.
pub fn fit_time(samples: &[TimeSample], base: &Calibration) -> Calibration {
    let rows: Vec<([f64; FITTED], f64)> = samples
        .iter()
        .filter(|s| s.step_s > 0.0 && s.step_s.is_finite())
        .map(|s| {
            let (f, held) = features(s, base);
            (f.map(|v| v / s.step_s), 1.0 - held / s.step_s)
        })
        .collect();
    let current = [
        base.memory_passes,
        base.attention_passes,
        base.recompute_passes,
        base.dequant_passes,
        base.weight_passes,
        base.adapter_pass_s,
        base.step_overhead_s,
    ];
    let used: Vec<bool> = (0..FITTED)
        .map(|j| rows.iter().any(|(f, _)| f[j] > 0.0))
        .collect();
    let mut x = nnls(&rows, &used);
    for j in 0..FITTED {
        if !used[j] {
            x[j] = current[j];
        }
    }
    Calibration {
        memory_passes: x[0],
        attention_passes: x[1],
        recompute_passes: x[2],
        dequant_passes: x[3],
        weight_passes: x[4],
        adapter_pass_s: x[5],
        step_overhead_s: x[6],
        ..*base
    }
}

/// min ‖F·x − y‖² over x ≥ 0, exactly: the optimum is the unconstrained least-squares
/// solution on its own support, so with a handful of terms every support is tried and the best
/// non-negative one kept. Columns are scaled to unit norm (the terms differ by orders of
/// magnitude).
fn nnls(rows: &[([f64; FITTED], f64)], used: &[bool]) -> [f64; FITTED] {
    let mut norm = [0.0; FITTED];
    for (f, _) in rows {
        for j in 0..FITTED {
            norm[j] += f[j] * f[j];
        }
    }
    let norm = norm.map(|n: f64| if n > 0.0 { n.sqrt() } else { 1.0 });
    let mut h = [[0.0; FITTED]; FITTED];
    let mut b = [0.0; FITTED];
    for (f, y) in rows {
        for i in 0..FITTED {
            b[i] += f[i] / norm[i] * y;
            for j in 0..FITTED {
                h[i][j] += f[i] / norm[i] * f[j] / norm[j];
            }
        }
    }
    let mut best = ([0.0; FITTED], 0.0); // x = 0: residual ‖y‖², counted from 0
    for mask in 1u32..(1 << FITTED) {
        let support: Vec<usize> = (0..FITTED).filter(|&j| mask & (1 << j) != 0).collect();
        if support.iter().any(|&j| !used[j]) {
            continue;
        }
        let Some(z) = solve(&h, &b, &support) else {
            continue;
        };
        if z.iter().any(|&v| v < 0.0) {
            continue;
        }
        let mut x = [0.0; FITTED];
        for (&j, &v) in support.iter().zip(&z) {
            x[j] = v;
        }
        // ‖Fx − y‖² − ‖y‖² = xᵀHx − 2bᵀx
        let quad: f64 = (0..FITTED)
            .map(|i| x[i] * ((0..FITTED).map(|j| h[i][j] * x[j]).sum::<f64>() - 2.0 * b[i]))
            .sum();
        if quad < best.1 {
            best = (x, quad);
        }
    }
    std::array::from_fn(|j| best.0[j] / norm[j])
}

/// H[S,S]·z = b[S] by Gaussian elimination with partial pivoting; `None` when singular.
fn solve(h: &[[f64; FITTED]; FITTED], b: &[f64; FITTED], s: &[usize]) -> Option<Vec<f64>> {
    let n = s.len();
    let mut m: Vec<Vec<f64>> = s
        .iter()
        .map(|&i| s.iter().map(|&j| h[i][j]).chain([b[i]]).collect())
        .collect();
    for c in 0..n {
        let p = (c..n).max_by(|&x, &y| m[x][c].abs().total_cmp(&m[y][c].abs()))?;
        if m[p][c].abs() < 1e-12 {
            return None;
        }
        m.swap(c, p);
        let pivot = m[c].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                for (x, p) in row.iter_mut().zip(&pivot).skip(c) {
                    *x -= f * p;
                }
            }
        }
    }
    Some((0..n).map(|i| m[i][n] / m[i][i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::time::step_time_of;

    fn work(i: usize) -> StepWork {
        let t = (i % 5 + 1) as f64;
        StepWork {
            flops: 1e9 * t * (1.0 + (i % 3) as f64),
            bf16_flops: 0.0,
            activation_bytes: 1e6 * t * (1 + i % 4) as f64,
            attention_bytes: 2e6 * t * t,
            recomputed_bytes: if i % 4 == 1 { 1.5e6 * t * t } else { 0.0 },
            adapter_passes: (10 * (2 + i % 4 / 3) * (1 + i % 6)) as f64,
            logit_bytes: 3e5 * t,
            dequant_bytes: if i.is_multiple_of(2) { 4e6 } else { 0.0 },
            weight_bytes: 5e6 * (2 + i % 2) as f64 * (1 + i % 7) as f64,
            micro_steps: 1.0,
            trainable_bytes: if i.is_multiple_of(3) { 8e6 } else { 1e5 },
        }
    }

    #[test]
    fn recovers_the_constants_that_generated_the_steps() {
        let truth = Calibration {
            memory_passes: 40.0,
            attention_passes: 120.0,
            recompute_passes: 60.0,
            dequant_passes: 12.0,
            weight_passes: 6.0,
            adapter_pass_s: 0.0007,
            optimizer_passes: 30.0,
            gradient_passes: 90.0,
            step_overhead_s: 0.02,
            ..Calibration::default()
        };
        let samples: Vec<TimeSample> = (0..30)
            .map(|i| {
                let throughput = Throughput {
                    gemm_gflops: 150.0 + i as f64,
                    mem_gbps: 50.0 - (i % 4) as f64,
                    bf16_gemm_gflops: None,
                };
                let w = work(i);
                TimeSample {
                    work: w,
                    throughput,
                    step_s: step_time_of(&w, &throughput, &truth).total(),
                }
            })
            .collect();
        // Start from other values: only the held terms (GEMM efficiency, logit, optimizer and
        // gradient passes) are shared with the truth.
        let start = Calibration {
            memory_passes: 1.0,
            attention_passes: 1.0,
            recompute_passes: 1.0,
            dequant_passes: 1.0,
            weight_passes: 1.0,
            adapter_pass_s: 1.0,
            step_overhead_s: 1.0,
            ..truth
        };
        let got = fit_time(&samples, &start);
        // Held: the optimizer's terms stay as given (and the others are still exact, so the
        // fit subtracted their share of each step).
        assert_eq!(got.optimizer_passes, start.optimizer_passes);
        assert_eq!(got.gradient_passes, start.gradient_passes);
        for (name, g, t) in [
            ("memory", got.memory_passes, truth.memory_passes),
            ("attention", got.attention_passes, truth.attention_passes),
            ("recompute", got.recompute_passes, truth.recompute_passes),
            ("dequant", got.dequant_passes, truth.dequant_passes),
            ("adapter pass", got.adapter_pass_s, truth.adapter_pass_s),
            ("weight", got.weight_passes, truth.weight_passes),
            ("fixed", got.step_overhead_s, truth.step_overhead_s),
        ] {
            assert!((g / t - 1.0).abs() < 1e-6, "{name}: fitted {g}, true {t}");
        }
    }

    #[test]
    fn a_term_no_sample_exercises_keeps_its_value() {
        let k = Calibration::default();
        let samples: Vec<TimeSample> = (0..12)
            .map(|i| {
                let mut w = work(i);
                w.dequant_bytes = 0.0;
                let throughput = Throughput::default();
                TimeSample {
                    work: w,
                    throughput,
                    step_s: step_time_of(&w, &throughput, &k).total() * 1.1,
                }
            })
            .collect();
        let got = fit_time(&samples, &k);
        assert_eq!(got.dequant_passes, k.dequant_passes);
        assert!(got.memory_passes >= 0.0 && got.step_overhead_s >= 0.0);
    }
}
