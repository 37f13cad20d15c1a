//! The fused CPU attention (`ops::causal_attention_with`) against the three-op path it
//! replaces (scores matmul, the generic causal softmax, probs matmul) — forward and the
//! gradients of q, k and v — and its forward against an f64 computation of the masked
//! softmax, over grouped-query heads, several blocks of queries with a partial last one,
//! sliding windows, packed rows and a `v` read through a transposed view.

use candle_core::{DType, Device, Tensor, Var};
use peft_engine::ops::{causal_attention_with, OpPath, Segments};
use peft_engine::test_support::uniform;

/// `max |a − b| / max |b|`.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.max(f32::MIN_POSITIVE)
}

struct Case {
    b: usize,
    nh: usize,
    nkv: usize,
    s: usize,
    d: usize,
    window: Option<usize>,
    /// Example lengths per batch row (packed rows), or none.
    packed: Option<Vec<Vec<usize>>>,
}

impl Case {
    fn segments(&self) -> Option<Segments> {
        let rows = self.packed.as_ref()?;
        let mut starts = Vec::new();
        for lens in rows {
            let mut at = 0;
            for &n in lens {
                starts.extend(std::iter::repeat_n(at as u32, n));
                at += n;
            }
            assert_eq!(at, self.s);
        }
        Some(Segments::new(starts, self.b, self.s, &Device::Cpu).unwrap())
    }

    /// q `[b, nh, s, d]`, k `[b, nkv, s, d]`, and v as the decoder has it: a transposed view
    /// of `[b, s, nkv, d]`.
    fn inputs(&self, seed: u64) -> (Tensor, Tensor, Tensor) {
        let q = (uniform(&[self.b, self.nh, self.s, self.d], seed) * 2.0).unwrap();
        let k = (uniform(&[self.b, self.nkv, self.s, self.d], seed + 1) * 2.0).unwrap();
        let v = uniform(&[self.b, self.s, self.nkv, self.d], seed + 2);
        (q, k, v)
    }
}

fn cases() -> Vec<Case> {
    vec![
        // One block, one group.
        Case {
            b: 1,
            nh: 2,
            nkv: 2,
            s: 9,
            d: 4,
            window: None,
            packed: None,
        },
        // Grouped heads, three blocks with a partial last one, two batch rows.
        Case {
            b: 2,
            nh: 6,
            nkv: 2,
            s: 150,
            d: 8,
            window: None,
            packed: None,
        },
        // A sliding window across block borders.
        Case {
            b: 1,
            nh: 4,
            nkv: 1,
            s: 130,
            d: 8,
            window: Some(37),
            packed: None,
        },
        // Packed rows, one example crossing the first block border.
        Case {
            b: 2,
            nh: 3,
            nkv: 1,
            s: 100,
            d: 8,
            window: None,
            packed: Some(vec![vec![20, 50, 30], vec![100]]),
        },
    ]
}

/// Output and the gradients of q, k, v of `Σ attention(q, k, v) ⊙ r`.
fn run(c: &Case, path: OpPath, seed: u64) -> (Tensor, [Tensor; 3]) {
    let (q, k, v) = c.inputs(seed);
    let (q, k, v) = (
        Var::from_tensor(&q).unwrap(),
        Var::from_tensor(&k).unwrap(),
        Var::from_tensor(&v).unwrap(),
    );
    let vt = v.as_tensor().transpose(1, 2).unwrap();
    let seg = c.segments();
    let scale = 1.0 / (c.d as f64).sqrt();
    let y = causal_attention_with(
        path,
        q.as_tensor(),
        k.as_tensor(),
        &vt,
        scale,
        0,
        c.window,
        seg.as_ref(),
    )
    .unwrap();
    assert_eq!(y.dims(), &[c.b, c.s, c.nh * c.d]);
    let r = uniform(y.dims(), seed + 9);
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = |t: &Var| grads.get(t.as_tensor()).expect("a gradient").clone();
    (y.detach(), [g(&q), g(&k), g(&v)])
}

#[test]
fn fused_attention_equals_the_three_op_path_in_value_and_gradients() {
    for (n, c) in cases().iter().enumerate() {
        let (y1, g1) = run(c, OpPath::Auto, 10 + n as u64);
        let (y2, g2) = run(c, OpPath::Generic, 10 + n as u64);
        let e = rel(&y1, &y2);
        assert!(e < 2e-6, "case {n}: forward differs by {e:e}");
        for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
            let e = rel(a, b);
            assert!(e < 2e-5, "case {n}: gradient of input {i} differs by {e:e}");
            let norm = b
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "case {n}: gradient of input {i} is zero");
        }
    }
}

/// The masked softmax attention in f64, straight from the definition.
fn reference(c: &Case, q: &Tensor, k: &Tensor, v: &Tensor) -> Vec<f64> {
    let f = |t: &Tensor| -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let v = v.transpose(1, 2).unwrap().contiguous().unwrap(); // [b, nkv, s, d]
    let (q, k, v) = (f(q), f(k), f(&v));
    let (b, nh, nkv, s, d) = (c.b, c.nh, c.nkv, c.s, c.d);
    let starts = c.segments().map(|seg| seg.starts().to_vec());
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0f64; b * s * nh * d];
    for bi in 0..b {
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            for i in 0..s {
                let mut lo = c.window.map_or(0, |w| (i + 1).saturating_sub(w));
                if let Some(st) = &starts {
                    lo = lo.max(st[bi * s + i] as usize);
                }
                let qi = &q[((bi * nh + h) * s + i) * d..][..d];
                let logits: Vec<f64> = (lo..=i)
                    .map(|j| {
                        let kj = &k[((bi * nkv + kvh) * s + j) * d..][..d];
                        scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
                for (j, l) in (lo..=i).zip(&logits) {
                    let p = (l - m).exp() / z;
                    let vj = &v[((bi * nkv + kvh) * s + j) * d..][..d];
                    let o = &mut out[((bi * s + i) * nh + h) * d..][..d];
                    for (o, x) in o.iter_mut().zip(vj) {
                        *o += p * x;
                    }
                }
            }
        }
    }
    out
}

#[test]
fn fused_attention_forward_matches_an_f64_reference() {
    for (n, c) in cases().iter().enumerate() {
        let (q, k, v) = c.inputs(40 + n as u64);
        let vt = v.transpose(1, 2).unwrap();
        let seg = c.segments();
        let scale = 1.0 / (c.d as f64).sqrt();
        let y = causal_attention_with(OpPath::Auto, &q, &k, &vt, scale, 0, c.window, seg.as_ref())
            .unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let want = reference(c, &q, &k, &v);
        let worst = y
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "case {n}: {worst:e} from the f64 reference");
    }
}

#[test]
fn fused_attention_refuses_bad_shapes_and_windows() {
    let q = uniform(&[1, 4, 8, 4], 1);
    let k = uniform(&[1, 3, 8, 4], 2);
    let err = causal_attention_with(OpPath::Auto, &q, &k, &k, 0.5, 0, None, None).unwrap_err();
    assert!(err.to_string().contains("does not pair"), "{err}");
    let k = uniform(&[1, 2, 8, 4], 2);
    let err = causal_attention_with(OpPath::Auto, &q, &k, &k, 0.5, 0, Some(0), None).unwrap_err();
    assert!(err.to_string().contains("window of 0"), "{err}");
    let seg = Segments::new(vec![0; 5], 1, 5, &Device::Cpu).unwrap();
    let err = causal_attention_with(OpPath::Auto, &q, &k, &k, 0.5, 0, None, Some(&seg));
    assert!(err.is_err(), "segments of another length are refused");
}
