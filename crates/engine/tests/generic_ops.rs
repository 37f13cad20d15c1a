//! Every device-generic op (what runs on CUDA and Metal) against the fused CPU op it stands for,
//! on the CPU: the forward and every input's gradient agree to 1e-5 relative, every tracked
//! input gets a non-zero gradient, and frozen inputs get none. Tiny shapes; tiles forced small
//! so the tiled paths (vocabulary tiles, NF4 row tiles, partial blocks) all run.

use candle_core::{DType, Tensor, Var};
use peft_engine::ops::{
    causal_softmax_grouped_with, causal_softmax_windowed_with, frozen_linear_with, geglu_with,
    linear_cross_entropy, linear_cross_entropy_generic, lora_delta_with, lora_linear_with,
    rms_norm_with, rope_with, swiglu_with, DropoutMask, OpPath, RopeTables,
};
use peft_engine::quant::nf4::Nf4Tensor;
use peft_engine::quant::nf4_op::Nf4Linear;
use peft_engine::test_support::uniform;
use std::sync::Arc;

const TOL: f32 = 1e-5;

/// `max |a − b| / max |b|` (0 when both are zero).
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let diff = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// An op under test: inputs in, output out, on the given path.
type Op<'a> = &'a dyn Fn(OpPath, &[Tensor]) -> candle_core::Result<Tensor>;

/// The output and the gradient of each tracked input of `Σ op(xs) ⊙ r`.
fn run(op: Op<'_>, path: OpPath, inputs: &[(Tensor, bool)]) -> (Tensor, Vec<Option<Tensor>>) {
    let vars: Vec<Option<Var>> = inputs
        .iter()
        .map(|(t, tracked)| tracked.then(|| Var::from_tensor(t).unwrap()))
        .collect();
    let xs: Vec<Tensor> = inputs
        .iter()
        .zip(&vars)
        .map(|((t, _), v)| {
            v.as_ref()
                .map_or_else(|| t.clone(), |v| v.as_tensor().clone())
        })
        .collect();
    let y = op(path, &xs).unwrap();
    let r = uniform(y.dims(), 99).to_dtype(y.dtype()).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = vars
        .iter()
        .zip(&xs)
        .map(|(v, x)| match v {
            Some(_) => Some(grads.get(x).expect("tracked input has a gradient").clone()),
            None => {
                assert!(grads.get(x).is_none(), "a frozen input got a gradient");
                None
            }
        })
        .collect();
    (y.detach(), g)
}

/// Fused and generic agree in value and every gradient; every gradient is non-zero.
fn compare(name: &str, op: Op<'_>, inputs: &[(Tensor, bool)]) {
    let (y1, g1) = run(op, OpPath::Auto, inputs);
    let (y2, g2) = run(op, OpPath::Generic, inputs);
    let e = rel(&y2, &y1);
    assert!(e <= TOL, "{name}: forward differs by {e:e} (relative)");
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        if let (Some(a), Some(b)) = (a, b) {
            let e = rel(b, a);
            assert!(e <= TOL, "{name}: gradient of input {i} differs by {e:e}");
            let norm = b
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{name}: gradient of input {i} is zero");
        }
    }
}

#[test]
fn rms_norm_generic_equals_fused() {
    let x = uniform(&[2, 5, 16], 1);
    let w = (uniform(&[16], 2) + 1.5).unwrap();
    let op = |p: OpPath, xs: &[Tensor]| rms_norm_with(p, &xs[0], &xs[1], 1e-5);
    compare(
        "rms_norm (trainable weight)",
        &op,
        &[(x.clone(), true), (w.clone(), true)],
    );
    compare("rms_norm (frozen weight)", &op, &[(x, true), (w, false)]);
}

#[test]
fn swiglu_generic_equals_fused() {
    let g = (uniform(&[3, 7, 24], 3) * 3.0).unwrap();
    let u = uniform(&[3, 7, 24], 4);
    let op = |p: OpPath, xs: &[Tensor]| swiglu_with(p, &xs[0], &xs[1]);
    compare("swiglu", &op, &[(g, true), (u, true)]);
}

#[test]
fn geglu_generic_equals_fused() {
    let g = (uniform(&[3, 7, 24], 13) * 3.0).unwrap();
    let u = uniform(&[3, 7, 24], 14);
    let op = |p: OpPath, xs: &[Tensor]| geglu_with(p, &xs[0], &xs[1]);
    compare("geglu", &op, &[(g, true), (u, true)]);
}

#[test]
fn rope_of_a_transposed_view_generic_equals_fused() {
    // The decoder's q: a `[b, s, heads, d]` projection seen as `[b, heads, s, d]`, not copied.
    let tables = RopeTables::new(8, 10_000.0, 32, &candle_core::Device::Cpu).unwrap();
    let x = uniform(&[2, 5, 3, 8], 16);
    let op = |p: OpPath, xs: &[Tensor]| rope_with(p, &xs[0].transpose(1, 2)?, &tables, 2);
    compare("rope of a view", &op, &[(x, true)]);
}

#[test]
fn partial_rope_generic_equals_fused() {
    // Tables for 4 of the head's 8 dimensions (Phi-3's partial rotary).
    let tables = RopeTables::new(4, 10_000.0, 32, &candle_core::Device::Cpu).unwrap();
    let x = uniform(&[2, 3, 5, 8], 15);
    let op = |p: OpPath, xs: &[Tensor]| rope_with(p, &xs[0], &tables, 3);
    compare("partial rope", &op, &[(x, true)]);
}

#[test]
fn windowed_causal_softmax_generic_equals_fused() {
    // Gemma 3's local layers: a window of 3 keys, with and without a KV cache offset.
    for (q, offset) in [(6, 0), (3, 4)] {
        let k = offset + q;
        let s = (uniform(&[2, 2, 2 * q, k], 16) * 4.0).unwrap();
        let op = |p: OpPath, xs: &[Tensor]| {
            causal_softmax_windowed_with(p, &xs[0], 0.35, offset, q, Some(3))
        };
        compare(
            &format!("windowed causal_softmax q={q} offset={offset}"),
            &op,
            &[(s, true)],
        );
    }
}

#[test]
fn rope_generic_equals_fused_with_an_offset() {
    let tables = RopeTables::new(8, 10_000.0, 32, &candle_core::Device::Cpu).unwrap();
    let x = uniform(&[2, 3, 5, 8], 5);
    for offset in [0, 7] {
        let op = |p: OpPath, xs: &[Tensor]| rope_with(p, &xs[0], &tables, offset);
        compare(
            &format!("rope at offset {offset}"),
            &op,
            &[(x.clone(), true)],
        );
    }
}

#[test]
fn causal_softmax_generic_equals_fused_grouped_and_cached() {
    // 2 query heads per key head (rows = 2·q), and a KV cache offset (k = offset + q).
    for (q, offset) in [(5, 0), (3, 4)] {
        let k = offset + q;
        let s = (uniform(&[2, 2, 2 * q, k], 6) * 4.0).unwrap();
        let op = |p: OpPath, xs: &[Tensor]| causal_softmax_grouped_with(p, &xs[0], 0.35, offset, q);
        compare(
            &format!("causal_softmax q={q} offset={offset}"),
            &op,
            &[(s, true)],
        );
    }
}

#[test]
fn frozen_linear_generic_equals_fused_for_f32_and_bf16_weights() {
    let x = uniform(&[2, 4, 12], 7);
    for dt in [DType::F32, DType::BF16] {
        let w = uniform(&[9, 12], 8).to_dtype(dt).unwrap();
        let op = |p: OpPath, xs: &[Tensor]| frozen_linear_with(p, &xs[0], &w);
        compare(&format!("frozen_linear {dt:?}"), &op, &[(x.clone(), true)]);
    }
}

#[test]
fn lora_delta_generic_equals_fused_with_and_without_dropout() {
    let x = uniform(&[2, 5, 12], 9);
    let a = uniform(&[4, 12], 10);
    let b = uniform(&[9, 4], 11);
    for dropout in [None, Some(DropoutMask { p: 0.3, seed: 7 })] {
        let op =
            |p: OpPath, xs: &[Tensor]| lora_delta_with(p, &xs[0], &xs[1], &xs[2], 1.75, dropout);
        let inputs = [(x.clone(), true), (a.clone(), true), (b.clone(), true)];
        compare(&format!("lora_delta dropout {dropout:?}"), &op, &inputs);
    }
}

#[test]
fn lora_linear_generic_equals_fused_over_f32_and_bf16_bases() {
    let x = uniform(&[3, 4, 16], 12);
    let a = uniform(&[4, 16], 13);
    let b = uniform(&[10, 4], 14);
    for dt in [DType::F32, DType::BF16] {
        let w = uniform(&[10, 16], 15).to_dtype(dt).unwrap();
        for dropout in [None, Some(DropoutMask { p: 0.25, seed: 3 })] {
            let op = |p: OpPath, xs: &[Tensor]| {
                lora_linear_with(p, &xs[0], &w, &xs[1], &xs[2], 2.0, dropout)
            };
            let inputs = [(x.clone(), true), (a.clone(), true), (b.clone(), true)];
            compare(&format!("lora_linear {dt:?} {dropout:?}"), &op, &inputs);
            // Frozen x (the first layer's input): only the adapter trains.
            let inputs = [(x.clone(), false), (a.clone(), true), (b.clone(), true)];
            compare(&format!("lora_linear {dt:?} frozen x"), &op, &inputs);
        }
    }
}

#[test]
fn linear_cross_entropy_generic_equals_fused_over_many_tiles() {
    let (n, d, vocab) = (13, 8, 37);
    let h = (uniform(&[n, d], 16) * 2.0).unwrap();
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % vocab as u32).collect();
    // Masked rows (weight 0, one with an out-of-vocabulary padding target) and weighted ones.
    let weights: Vec<f32> = (0..n).map(|i| [0.0, 1.0, 0.5, 2.0][i % 4]).collect();
    let mut padded = targets.clone();
    padded[4] = u32::MAX;
    for dt in [DType::F32, DType::BF16] {
        let w = uniform(&[vocab, d], 17).to_dtype(dt).unwrap();
        for tile in [Some(5), Some(vocab), None] {
            let op = |p: OpPath, xs: &[Tensor]| match p {
                OpPath::Auto => linear_cross_entropy(&xs[0], &w, &padded, &weights),
                OpPath::Generic => {
                    linear_cross_entropy_generic(&xs[0], &w, &padded, &weights, tile)
                }
            };
            compare(
                &format!("linear_cross_entropy {dt:?} tile {tile:?}"),
                &op,
                &[(h.clone(), true)],
            );
        }
    }
    // Masked rows get exactly zero gradient on the generic path too.
    let hv = Var::from_tensor(&h).unwrap();
    let w = uniform(&[vocab, d], 17);
    let loss =
        linear_cross_entropy_generic(hv.as_tensor(), &w, &padded, &weights, Some(5)).unwrap();
    let g = loss
        .backward()
        .unwrap()
        .get(hv.as_tensor())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (i, row) in g.iter().enumerate() {
        assert_eq!(row.iter().all(|&v| v == 0.0), weights[i] == 0.0, "row {i}");
    }
}

#[test]
fn nf4_generic_dequantizes_bit_identically_and_matches_the_fused_op() {
    // Odd element counts, rows not a multiple of the 64-block, more than 256 blocks (two
    // double-quantization scales), and row tiles that split blocks.
    for (out, inp, dq) in [(20, 48, true), (7, 37, false), (33, 520, true)] {
        let w = uniform(&[out, inp], 18)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let q = Arc::new(Nf4Tensor::quantize(&w, (out, inp), dq).unwrap());
        let codes = q.codes_on(&candle_core::Device::Cpu).unwrap();
        let host = q.dequantize_vec();
        for (r0, t) in [(0, out), (1, 2), (out - 3, 3)] {
            let got = codes.dequantize_rows(r0, t, DType::F32).unwrap();
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                got,
                host[r0 * inp..(r0 + t) * inp],
                "rows {r0}..{} of {out}x{inp}",
                r0 + t
            );
        }
        let x = uniform(&[2, 3, inp], 19);
        for tile_rows in [out, 4] {
            let lin = Nf4Linear::new(q.clone()).with_tile_rows(tile_rows);
            let op = |p: OpPath, xs: &[Tensor]| lin.forward_with(p, &xs[0]);
            compare(
                &format!("nf4 {out}x{inp} dq={dq} tile {tile_rows}"),
                &op,
                &[(x.clone(), true)],
            );
        }
    }
}

#[test]
fn generic_ops_take_bf16_activations() {
    // What a GPU runs: bf16 activations, f32 adapters. Close to the f32 result at bf16's
    // precision, and the f32 adapter gradients come back in f32.
    let x = uniform(&[2, 4, 16], 20);
    let a = Var::from_tensor(&uniform(&[4, 16], 21)).unwrap();
    let b = Var::from_tensor(&uniform(&[8, 4], 22)).unwrap();
    let w = uniform(&[8, 16], 23);
    let f = |x: &Tensor, w: &Tensor| {
        lora_linear_with(
            OpPath::Generic,
            x,
            w,
            a.as_tensor(),
            b.as_tensor(),
            2.0,
            None,
        )
        .unwrap()
    };
    let y32 = f(&x, &w);
    let y16 = f(
        &x.to_dtype(DType::BF16).unwrap(),
        &w.to_dtype(DType::BF16).unwrap(),
    );
    assert_eq!(y16.dtype(), DType::BF16);
    assert!(rel(&y16, &y32) < 2e-2, "bf16 vs f32: {}", rel(&y16, &y32));
    let g = y16
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(g.get(a.as_tensor()).unwrap().dtype(), DType::F32);
    assert_eq!(g.get(b.as_tensor()).unwrap().dtype(), DType::F32);
    let h = rms_norm_with(
        OpPath::Generic,
        &y16,
        &Tensor::ones(8, DType::F32, y16.device()).unwrap(),
        1e-5,
    )
    .unwrap();
    assert_eq!(h.dtype(), DType::BF16);
}
