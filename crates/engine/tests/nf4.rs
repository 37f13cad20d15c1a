//! NF4 storage and the frozen NF4 linear op, checked against independent references: the code
//! table against bitsandbytes' construction recomputed in f64, block layout against brute-force
//! nearest search, the op against a dense matmul on the dequantized weight and finite differences.

use candle_core::{DType, Device, Tensor, Var, D};
use peft_engine::quant::nf4::{
    nf4_index, Absmax, Nf4Tensor, DQ_BLOCK, NF4_BLOCK, NF4_CODE, NF4_THRESHOLDS,
};
use peft_engine::quant::nf4_op::Nf4Linear;
use peft_engine::test_support::normal;
use std::collections::HashSet;
use std::sync::Arc;

/// splitmix64 → standard normals (Box–Muller): a fixed, dependency-free source of test data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u, v) = (self.uniform(), self.uniform());
                ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() * std) as f32
            })
            .collect()
    }
}

/// erf by its Maclaurin series, exact to ~1e-15 for the |x| ≤ 1.5 used here.
fn erf(x: f64) -> f64 {
    let (mut term, mut sum, x2) = (x, x, x * x);
    for n in 1..200 {
        term *= -x2 / n as f64;
        let t = term / (2 * n + 1) as f64;
        sum += t;
        if t.abs() < 1e-18 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// Inverse standard normal CDF for p in [0.5, 1) by bisection on Φ(z) = (1 + erf(z/√2)) / 2.
fn norm_ppf(p: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 4.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if 0.5 * (1.0 + erf(mid / std::f64::consts::SQRT_2)) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The next f32 above a finite, non-zero `x` (`f32::next_up` needs Rust 1.86).
fn next_up(x: f32) -> f32 {
    if x > 0.0 {
        f32::from_bits(x.to_bits() + 1)
    } else {
        f32::from_bits(x.to_bits() - 1)
    }
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale.max(1e-30)
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

// (a) ---------------------------------------------------------------------------------------

/// bitsandbytes `create_normal_map(offset=0.9677083, use_extra_value=True)`:
/// v1 = ppf(linspace(offset, 0.5, 9)[:-1]), v3 = −ppf(linspace(offset, 0.5, 8)[:-1]), plus 0,
/// sorted and divided by the max. Recomputed here in f64 (torch does it in f32).
#[test]
fn code_table_matches_bitsandbytes_construction() {
    let offset = 0.9677083f64;
    let linspace = |n: usize| -> Vec<f64> {
        (0..n)
            .map(|i| offset + (0.5 - offset) * i as f64 / (n - 1) as f64)
            .collect()
    };
    let mut v: Vec<f64> = linspace(9)[..8].iter().map(|&p| norm_ppf(p)).collect();
    v.extend(linspace(8)[..7].iter().map(|&p| -norm_ppf(p)));
    v.push(0.0);
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let max = v.iter().cloned().fold(f64::MIN, f64::max);
    let mut worst = 0.0f64;
    for (i, (&r, &c)) in v.iter().zip(NF4_CODE.iter()).enumerate() {
        let d = (r / max - c as f64).abs();
        worst = worst.max(d);
        assert!(d < 1e-6, "code {i}: reference {} vs table {c}", r / max);
    }
    eprintln!("NF4 code table vs f64 reference: max |diff| = {worst:.2e}");

    // The decision thresholds are bitsandbytes' decimal literals of the f64 midpoints of
    // adjacent codes; parsed straight to f32 they are one of the two f32 values next to the
    // exact midpoint (for code pairs whose midpoint is an exact f32 tie the literal picks a side).
    for i in 0..15 {
        let mid = (NF4_CODE[i] as f64 + NF4_CODE[i + 1] as f64) / 2.0;
        let t = NF4_THRESHOLDS[i];
        let ulp = (next_up(t) - t) as f64;
        assert!(
            (t as f64 - mid).abs() <= 0.5 * ulp,
            "threshold {i}: {t} vs midpoint {mid}"
        );
        // Ties round down (bitsandbytes' `x > t` tree); just above goes up.
        assert_eq!(nf4_index(NF4_THRESHOLDS[i]), i as u8);
        assert_eq!(nf4_index(next_up(NF4_THRESHOLDS[i])), i as u8 + 1);
    }
    // Each code maps to itself, and out-of-range values clamp to the ends.
    for (i, &c) in NF4_CODE.iter().enumerate() {
        assert_eq!(nf4_index(c), i as u8);
    }
    assert_eq!(nf4_index(-1.5), 0);
    assert_eq!(nf4_index(1.5), 15);
}

// (b) ---------------------------------------------------------------------------------------

/// Nearest code of x in f64 by exhaustive search; also returns the margin to the runner-up.
fn brute_nearest(x: f64) -> (u8, f64) {
    let mut d: Vec<(f64, u8)> = NF4_CODE
        .iter()
        .enumerate()
        .map(|(i, &c)| ((x - c as f64).abs(), i as u8))
        .collect();
    d.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (d[0].1, d[1].0 - d[0].0)
}

#[test]
fn block_layout_codes_nibbles_and_absmax() {
    // Two blocks of 64 hand-made values with different scales; block 1's absmax is negative.
    let mut data = Vec::with_capacity(128);
    for j in 0..64 {
        data.push(((j * 37 % 64) as f32 - 31.5) / 10.0 + 0.013 * j as f32);
    }
    for j in 0..64 {
        data.push(0.001 * ((j * 23 % 64) as f32 - 30.0) * if j % 3 == 0 { -1.0 } else { 1.0 });
    }
    data[64 + 17] = -0.5; // the absmax of block 1
    let q = Nf4Tensor::quantize(&data, (2, 64), false).unwrap();
    assert_eq!(q.packed().len(), 64);
    let absmax = match q.absmax() {
        Absmax::F32(v) => v.clone(),
        other => panic!("expected plain absmax, got {other:?}"),
    };
    for b in 0..2 {
        let block = &data[b * 64..(b + 1) * 64];
        let exact = block.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        assert_eq!(absmax[b], exact, "absmax of block {b}");
        let mut codes = Vec::new();
        for (j, &v) in block.iter().enumerate() {
            let (c, margin) = brute_nearest(v as f64 / exact as f64);
            assert!(margin > 1e-5, "test value {j} of block {b} sits on a tie");
            codes.push(c);
            assert_eq!(q.code_index(b * 64 + j), c, "block {b} element {j}");
        }
        // Packing: element 2j in the high nibble, 2j+1 in the low nibble.
        for j in 0..32 {
            assert_eq!(q.packed()[b * 32 + j], codes[2 * j] << 4 | codes[2 * j + 1]);
        }
        // Dequantized value = code · absmax, in f32.
        let mut rows = vec![0.0f32; 64];
        q.dequantize_rows(b, b + 1, &mut rows).unwrap();
        for j in 0..64 {
            assert_eq!(rows[j], NF4_CODE[codes[j] as usize] * exact);
        }
    }
    // The absmax element itself maps to ±1 exactly.
    assert_eq!(q.code_index(64 + 17), 0);
}

// (c) ---------------------------------------------------------------------------------------

#[test]
fn gaussian_round_trip_error_and_idempotence() {
    let (rows, cols) = (256, 1024);
    let w = Rng(1).normals(rows * cols, 0.02);
    for dq in [false, true] {
        let q = Nf4Tensor::quantize(&w, (rows, cols), dq).unwrap();
        let d = q.dequantize_vec();
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (&a, &b) in w.iter().zip(&d) {
            num += (a as f64 - b as f64).powi(2);
            den += (a as f64).powi(2);
        }
        let rel_rms = (num / den).sqrt();
        eprintln!("NF4 {rows}x{cols} Gaussian, double_quant={dq}: relative RMS error {rel_rms:.5}");
        assert!(rel_rms < 0.1, "relative RMS error {rel_rms}");
        // Requantizing the dequantized matrix reproduces every code.
        let again = Nf4Tensor::quantize(&d, (rows, cols), dq).unwrap();
        assert_eq!(again.packed(), q.packed(), "double_quant={dq}");
        // The tensor API agrees with the Vec API.
        let t = q.dequantize().unwrap();
        assert_eq!(t.dims(), &[rows, cols]);
        assert_eq!(to_vec(&t), d);
        let from_t = Nf4Tensor::from_tensor(
            "w",
            &Tensor::from_slice(&w, (rows, cols), &Device::Cpu).unwrap(),
            dq,
        )
        .unwrap();
        assert_eq!(from_t.packed(), q.packed());
    }
}

// (d) ---------------------------------------------------------------------------------------

/// Storage as counted by the format: ⌈n/2⌉ code bytes + ⌈n/64⌉ absmax (4 bytes each, or 1 byte
/// each + 4 per 256-block + a 4-byte mean with double quantization).
fn expected_bits(rows: usize, cols: usize, dq: bool) -> f64 {
    let n = rows * cols;
    let nb = n.div_ceil(NF4_BLOCK);
    let bytes = n.div_ceil(2)
        + if dq {
            nb + 4 * nb.div_ceil(DQ_BLOCK) + 4
        } else {
            4 * nb
        };
    8.0 * bytes as f64 / n as f64
}

#[test]
fn double_quant_error_bound_and_bits_per_param() {
    let (rows, cols) = (256, 1024);
    let w = Rng(2).normals(rows * cols, 0.02);
    let plain = Nf4Tensor::quantize(&w, (rows, cols), false).unwrap();
    let dq = Nf4Tensor::quantize(&w, (rows, cols), true).unwrap();
    assert_eq!(
        plain.packed(),
        dq.packed(),
        "codes do not depend on double quantization"
    );
    let exact = plain.absmax().to_vec();
    let (scales, offset) = match dq.absmax() {
        Absmax::DoubleQuant { scales, offset, .. } => (scales.clone(), *offset),
        other => panic!("expected double quant, got {other:?}"),
    };
    assert_eq!(scales.len(), exact.len().div_ceil(DQ_BLOCK));
    // Bound: half an 8-bit step of the block (scale = max|a − mean| / 127), plus a few f32
    // roundings of the numbers involved.
    let mut worst_steps = 0.0f64;
    for (b, (&a, r)) in exact.iter().zip(dq.absmax().to_vec()).enumerate() {
        let s = scales[b / DQ_BLOCK];
        let slack = 4.0 * f32::EPSILON * (a.abs() + offset.abs() + 127.0 * s);
        let err = (r - a).abs();
        assert!(err <= 0.5 * s + slack, "block {b}: |{r} − {a}| > {s}/2");
        worst_steps = worst_steps.max(err as f64 / s as f64);
        // Relative to the constant itself the error is tiny against the NF4 step (≥ 8 %).
        assert!(
            err / a < 0.01,
            "block {b}: relative absmax error {}",
            err / a
        );
    }
    eprintln!("double quant: worst absmax error = {worst_steps:.3} of an 8-bit step (bound 0.5)");

    // The double-quantized weights are still close to the plain ones.
    let (a, b) = (plain.dequantize_vec(), dq.dequantize_vec());
    assert!(max_rel_diff(&b, &a) < 0.01);

    for (q, want) in [(&plain, false), (&dq, true)] {
        let bits = q.bits_per_param();
        assert!((bits - expected_bits(rows, cols, want)).abs() < 1e-12);
    }
    assert_eq!(plain.bits_per_param(), 4.5);
    assert!(
        (dq.bits_per_param() - 4.127).abs() < 1e-3,
        "{}",
        dq.bits_per_param()
    );
    assert_eq!(dq.storage_bytes(), 131072 + 4096 + 16 * 4 + 4);

    // The figure to quote: a SmolLM2-135M MLP matrix.
    let w = Rng(3).normals(576 * 1536, 0.02);
    for d in [true, false] {
        let q = Nf4Tensor::quantize(&w, (576, 1536), d).unwrap();
        assert!((q.bits_per_param() - expected_bits(576, 1536, d)).abs() < 1e-12);
        eprintln!(
            "NF4 576x1536 double_quant={d}: {} bytes, {:.4} bits/param = {:.5} bytes/param (f32: 4)",
            q.storage_bytes(),
            q.bits_per_param(),
            q.bits_per_param() / 8.0
        );
    }
}

// (e) ---------------------------------------------------------------------------------------

fn layer(rows: usize, cols: usize, seed: u64, tile_rows: usize) -> (Nf4Linear, Tensor) {
    let w = Rng(seed).normals(rows * cols, 0.05);
    let q = Arc::new(Nf4Tensor::quantize_named("test.weight", &w, (rows, cols), true).unwrap());
    let dense = q.dequantize().unwrap();
    (Nf4Linear::new(q).with_tile_rows(tile_rows), dense)
}

/// `x · Wᵀ` on the dequantized weight, for any rank of x.
fn dense_forward(x: &Tensor, w: &Tensor) -> Tensor {
    let mut dims = x.dims().to_vec();
    let k = *dims.last().unwrap();
    let m = x.elem_count() / k;
    let y = x
        .contiguous()
        .unwrap()
        .reshape((m, k))
        .unwrap()
        .matmul(&w.t().unwrap())
        .unwrap();
    *dims.last_mut().unwrap() = w.dim(0).unwrap();
    y.reshape(dims).unwrap()
}

#[test]
fn forward_matches_dense_matmul() {
    // (out, in, tile): out not a multiple of the tile; in = 100 makes blocks straddle rows.
    for &(out, inp, tile) in &[(200, 192, 64), (37, 100, 8), (130, 64, 128), (5, 128, 1)] {
        let (lin, w) = layer(out, inp, out as u64, tile);
        let check = |x: &Tensor, what: &str| {
            let y = lin.forward(x).unwrap();
            let r = dense_forward(x, &w);
            assert_eq!(y.dims(), r.dims(), "{what}");
            let e = max_rel_diff(&to_vec(&y), &to_vec(&r));
            assert!(e < 1e-6, "{out}x{inp} tile {tile}, {what}: rel diff {e}");
        };
        check(&normal(&[5, inp], 10, 1.0), "2-D");
        check(&normal(&[2, 3, inp], 11, 1.0), "3-D");
        check(&normal(&[inp], 12, 1.0), "1-D");
        check(&normal(&[inp, 7], 13, 1.0).t().unwrap(), "transposed");
        check(
            &normal(&[3, 4, inp + 9], 14, 1.0)
                .narrow(D::Minus1, 4, inp)
                .unwrap(),
            "narrowed",
        );
        check(
            &normal(&[4, inp, 3], 15, 1.0)
                .transpose(1, 2)
                .unwrap()
                .narrow(0, 1, 2)
                .unwrap(),
            "permuted + offset",
        );
        check(
            &normal(&[1, inp], 16, 1.0).broadcast_as((3, inp)).unwrap(),
            "broadcast",
        );
        check(
            &Tensor::zeros((0, inp), DType::F32, &Device::Cpu).unwrap(),
            "empty batch",
        );
    }
    let (lin, _) = layer(576, 1536, 7, 128);
    eprintln!(
        "Nf4Linear 576x1536: tile_rows {} ({} bytes fwd tile), tile_cols {}, max tile {} bytes",
        lin.tile_rows(),
        lin.tile_rows() * 1536 * 4,
        lin.tile_cols(),
        lin.tile_bytes()
    );
    assert!(lin.tile_bytes() <= 128 * 1536 * 4);
}

#[test]
fn forward_rejects_bad_inputs() {
    let (lin, _) = layer(16, 64, 1, 8);
    let e = lin
        .forward(&normal(&[2, 63], 1, 1.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("test.weight") && e.contains("64"), "{e}");
    let x = normal(&[2, 64], 1, 1.0).to_dtype(DType::F64).unwrap();
    assert!(lin.forward(&x).unwrap_err().to_string().contains("f32"));
}

// (f) ---------------------------------------------------------------------------------------

#[test]
fn input_gradient_matches_dense_and_finite_differences() {
    for &(out, inp, tile) in &[(37, 100, 8), (200, 192, 64)] {
        let (lin, w) = layer(out, inp, 100 + out as u64, tile);
        let x0 = normal(&[2, 3, inp], 20, 1.0);
        let r = normal(&[2, 3, out], 21, 1.0);

        let x = Var::from_tensor(&x0).unwrap();
        let y = lin.forward(x.as_tensor()).unwrap();
        let prod = (&y * &r).unwrap();
        let loss = prod.sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let dx = grads.get(x.as_tensor()).expect("x has a gradient");
        assert_eq!(dx.dims(), x0.dims());

        // After backward candle keeps entries only for leaves: the Var x, and r (candle
        // computes a gradient for every operand of a recorded mul, tracked or not). Nothing for
        // the weight: the op owns W, so the graph never sees it.
        let allowed: HashSet<_> = [x.as_tensor().id(), r.id()].into();
        for id in grads.get_ids() {
            assert!(allowed.contains(id), "unexpected gradient entry {id:?}");
            let g = grads.get_id(*id).unwrap();
            assert!(
                g.dims() != [out, inp] && g.dims() != [inp, out],
                "weight-shaped gradient"
            );
        }

        // Dense reference: the same loss through candle's matmul on the dequantized weight.
        let xr = Var::from_tensor(&x0).unwrap();
        let lr = (dense_forward(xr.as_tensor(), &w) * &r)
            .unwrap()
            .sum_all()
            .unwrap();
        let dxr = lr.backward().unwrap().get(xr.as_tensor()).unwrap().clone();
        let e = max_rel_diff(&to_vec(dx), &to_vec(&dxr));
        assert!(e < 1e-6, "{out}x{inp}: dx rel diff {e}");

        // A broadcast (stride-0) output gradient: loss = Σ y gives dx = 1 · W.
        let x2 = Var::from_tensor(&x0).unwrap();
        let g2 = lin
            .forward(x2.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let colsum = w.sum(0).unwrap().broadcast_as(x0.dims()).unwrap();
        let e = max_rel_diff(&to_vec(g2.get(x2.as_tensor()).unwrap()), &to_vec(&colsum));
        assert!(e < 1e-6, "{out}x{inp}: broadcast-grad dx rel diff {e}");

        // Central differences, loss summed in f64. The loss is linear in x, so the only error is
        // f32 rounding of the perturbed row of y (~out · 1e-7 · |y| / eps): tolerance 2e-3
        // relative to max(1, |dx|).
        let loss_f64 = |xs: &[f32]| -> f64 {
            let xt = Tensor::from_slice(xs, x0.dims(), &Device::Cpu).unwrap();
            let y = to_vec(&lin.forward(&xt).unwrap());
            y.iter()
                .zip(to_vec(&r))
                .map(|(&a, b)| a as f64 * b as f64)
                .sum()
        };
        let base = to_vec(&x0);
        let dxv = to_vec(dx);
        let eps = 1e-2f32;
        let mut worst_fd = 0.0f64;
        for &i in &[0usize, 7, inp + 3, 5 * inp + inp - 1] {
            let (mut p, mut m) = (base.clone(), base.clone());
            p[i] += eps;
            m[i] -= eps;
            let fd = (loss_f64(&p) - loss_f64(&m)) / (2.0 * eps as f64);
            let an = dxv[i] as f64;
            worst_fd = worst_fd.max((fd - an).abs() / an.abs().max(1.0));
            assert!(
                (fd - an).abs() <= 2e-3 * an.abs().max(1.0),
                "{out}x{inp} element {i}: finite difference {fd} vs backward {an}"
            );
        }
        eprintln!("{out}x{inp}: worst finite-difference mismatch {worst_fd:.1e} (tolerance 2e-3)");
    }
}

// (g) ---------------------------------------------------------------------------------------

#[test]
fn bad_inputs_are_errors() {
    let mut w = vec![0.5f32; 4 * 64];
    w[70] = f32::NAN;
    let e = Nf4Tensor::quantize_named("layers.0.q_proj.weight", &w, (4, 64), true).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.code(), "BadTensor");
    assert!(
        msg.contains("layers.0.q_proj.weight") && msg.contains("[1, 6]"),
        "{msg}"
    );
    w[70] = f32::INFINITY;
    assert!(Nf4Tensor::quantize(&w, (4, 64), false).is_err());
    assert!(
        Nf4Tensor::quantize(&w[..10], (4, 64), false).is_err(),
        "length mismatch"
    );
    assert!(Nf4Tensor::quantize(&[], (0, 64), false).is_err(), "empty");
    let t3 = Tensor::zeros((2, 2, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(
        Nf4Tensor::from_tensor("x", &t3, true).is_err(),
        "3-D weight"
    );

    let q = Nf4Tensor::quantize(&vec![0.25f32; 4 * 64], (4, 64), false).unwrap();
    let mut buf = vec![0.0f32; 64];
    assert!(
        q.dequantize_rows(3, 5, &mut buf).is_err(),
        "rows past the end"
    );
    assert!(
        q.dequantize_rows(0, 2, &mut buf).is_err(),
        "buffer too small"
    );
}

/// Element counts not divisible by 64 are accepted: the last block is partial, its absmax over
/// the real elements only, and an odd count leaves a zero-code padding nibble.
#[test]
fn partial_last_block() {
    let w = Rng(5).normals(3 * 7, 1.0);
    for dq in [false, true] {
        let q = Nf4Tensor::quantize(&w, (3, 7), dq).unwrap();
        assert_eq!(q.packed().len(), 11);
        assert_eq!(q.absmax().len(), 1);
        assert_eq!(q.packed()[10] & 0x0f, 7, "padding nibble is the zero code");
        let amax = w.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        assert!((q.absmax().get(0) - amax).abs() <= amax * 1e-6);
        let d = q.dequantize_vec();
        for (&a, &b) in w.iter().zip(&d) {
            // Half the widest NF4 gap (1 − 0.7230) times absmax bounds the rounding error.
            assert!(
                (a - b).abs() <= 0.5 * 0.2771 * amax * (1.0 + 1e-6),
                "{a} vs {b}"
            );
        }
    }
    // 100 × 37 = 3700 elements: 58 blocks, the last of 52; rows straddle blocks.
    let w = Rng(6).normals(100 * 37, 1.0);
    let q = Nf4Tensor::quantize(&w, (100, 37), false).unwrap();
    assert_eq!(q.absmax().len(), 58);
    assert_eq!(q.bits_per_param(), 8.0 * (1850 + 58 * 4) as f64 / 3700.0);
}

#[test]
fn default_tiles_are_bounded_and_cover_small_matrices_whole() {
    use peft_engine::quant::nf4_op::{default_tile_rows, DEFAULT_TILE_BYTES};
    // Llama-2-7B's down_proj is [4096, 11008]: tiles of a bounded number of rows.
    let rows = default_tile_rows(4096, 11008);
    assert!(
        rows >= 1 && rows * 11008 * 4 <= DEFAULT_TILE_BYTES,
        "{rows}"
    );
    // SmolLM2's [1536, 576] up_proj fits in one tile.
    assert_eq!(default_tile_rows(1536, 576), 1536);
    let (q, _) = {
        let (lin, dense) = layer(1536, 576, 3, 1);
        (lin.weight().clone(), dense)
    };
    let lin = Nf4Linear::new(q);
    assert_eq!(lin.tile_rows(), 1536);
    assert!(lin.tile_bytes() <= DEFAULT_TILE_BYTES);
}
