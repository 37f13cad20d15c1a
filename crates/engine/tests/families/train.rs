//! Training through each family's block: one LoRA step's gradients against central finite
//! differences (fused Phi-3 projections, Gemma's GeGLU, sandwich norms, windows and soft-cap,
//! Qwen3's q/k norms, Llama 3 scaling), per-layer gradient checkpointing giving the same
//! gradients, and QLoRA (NF4 bases, fused ones included) reaching every adapter.

use crate::common::*;
use crate::fixtures::{load, load_fixture, FAMILIES};
use candle_core::{Device, Tensor, Var};
use peft_engine::model::ctx::ForwardCtx;
use peft_engine::model::decoder::{masked_cross_entropy, Decoder, LoadOptions, QuantizeOptions};
use peft_engine::peft::method::{apply_method, LoraSettings, Method, Trainable};
use peft_engine::train::grad_ckpt::{checkpointed_block, GradSink};
use std::sync::Arc;

fn all_linear(rank: usize) -> LoraSettings {
    LoraSettings {
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        targets: vec!["all-linear".into()],
        layers: None,
        rslora: false,
    }
}

/// LoRA on every linear with seeded non-zero B (so A's gradient is non-zero too).
fn with_adapters(m: &mut Decoder, seed: u64) -> Trainable {
    with_method(m, &Method::Lora(all_linear(2)), seed)
}

/// [`with_adapters`] for a given method (QLoRA on an NF4 base).
fn with_method(m: &mut Decoder, method: &Method, seed: u64) -> Trainable {
    use rand::{Rng, SeedableRng};
    let t = apply_method(m, method, seed).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, v) in &t.params {
        if name.ends_with("lora_B.weight") {
            let vals: Vec<f32> = (0..v.elem_count())
                .map(|_| (rng.random::<f32>() - 0.5) * 0.4)
                .collect();
            v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    t
}

/// Next-token cross-entropy over the fixture's tokens (the first target masked out).
fn loss(m: &Decoder, tokens: &[u32]) -> Tensor {
    let s = tokens.len() - 1;
    let logits = m
        .forward(&row(&tokens[..s]), &ForwardCtx::default())
        .unwrap()
        .squeeze(0)
        .unwrap();
    let targets = Tensor::new(&tokens[1..], &Device::Cpu).unwrap();
    let w: Vec<f32> = (0..s).map(|k| if k == 0 { 0.0 } else { 1.0 }).collect();
    let w = Tensor::from_vec(w, s, &Device::Cpu).unwrap();
    masked_cross_entropy(&logits, &targets, &w).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

fn set_coord(var: &Var, base: &[f32], k: usize, value: f32) {
    let mut v = base.to_vec();
    v[k] = value;
    var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
        .unwrap();
}

/// Central differences (eps 1e-2) on the 3 largest-gradient coordinates of each named tensor;
/// the tolerance is the one `tests/lora.rs` derives: `|fd − ag| ≤ 2e-2·|ag| + 2e-4·g_max`.
fn check_fd(m: &Decoder, t: &Trainable, tokens: &[u32], names: &[String], family: &str) {
    let grads = loss(m, tokens).backward().unwrap();
    let eps = 1e-2f32;
    for name in names {
        let (_, var) = t
            .params
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{family}: {name} is not trainable"));
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{family}: {name}: no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let g_max = g.iter().fold(0f32, |a, x| a.max(x.abs())) as f64;
        assert!(g_max > 1e-4, "{family}: {name}: gradient (near) zero");
        let mut order: Vec<usize> = (0..g.len()).collect();
        order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        for &k in &order[..3] {
            set_coord(var, &base, k, base[k] + eps);
            let plus = scalar(&loss(m, tokens));
            set_coord(var, &base, k, base[k] - eps);
            let minus = scalar(&loss(m, tokens));
            set_coord(var, &base, k, base[k]);
            let fd = (plus - minus) / (2.0 * eps as f64);
            let ag = g[k] as f64;
            assert!(
                (fd - ag).abs() <= 2e-2 * ag.abs() + 2e-4 * g_max,
                "{family}: {name}[{k}]: finite difference {fd:.6e} vs autograd {ag:.6e}"
            );
        }
    }
}

#[test]
fn lora_gradients_match_finite_differences_for_every_family() {
    for family in FAMILIES {
        let f = load_fixture(family);
        let mut m = load(&f, &LoadOptions::default());
        let t = with_adapters(&mut m, 3);
        // First layer's attention input projection(s) and last layer's MLP output.
        let last = f.config.num_hidden_layers - 1;
        let first_attn = f.config.family().linears[0];
        let names: Vec<String> = [
            format!("model.layers.0.{first_attn}"),
            format!("model.layers.{last}.mlp.down_proj"),
        ]
        .iter()
        .flat_map(|p| [format!("{p}.lora_A.weight"), format!("{p}.lora_B.weight")])
        .collect();
        check_fd(&m, &t, &f.tokens, &names, family);
    }
}

/// Every adapter's gradient, plain or with per-layer checkpointing.
fn adapter_grads(m: Decoder, t: &Trainable, tokens: &[u32], ckpt: bool) -> Vec<Vec<f32>> {
    let model = Arc::new(m);
    let ids = row(&tokens[..tokens.len() - 1]);
    let ctx = ForwardCtx {
        train: true,
        step_seed: 5,
        ..ForwardCtx::default()
    };
    let sink = GradSink::default();
    let logits = if ckpt {
        let mut x = model.embed(&ids).unwrap();
        for n in 0..model.layers.len() {
            let params: Vec<Tensor> = t
                .params
                .iter()
                .filter(|(name, _)| name.starts_with(&format!("model.layers.{n}.")))
                .map(|(_, v)| v.as_tensor().clone())
                .collect();
            x = checkpointed_block(&model, n, &x, &ctx, params, &sink).unwrap();
        }
        model.logits(&model.final_norm(&x).unwrap(), &ctx).unwrap()
    } else {
        model.forward(&ids, &ctx).unwrap()
    };
    let store = logits
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut extra = sink.drain();
    t.params
        .iter()
        .map(|(name, v)| {
            store
                .get(v.as_tensor())
                .cloned()
                .or_else(|| extra.remove(&v.as_tensor().id()))
                .unwrap_or_else(|| panic!("{name}: no gradient"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
fn checkpointing_gives_the_same_gradients_for_every_family() {
    for family in FAMILIES {
        let f = load_fixture(family);
        let mut m = load(&f, &LoadOptions::default());
        let t = with_adapters(&mut m, 4);
        let plain = adapter_grads(m.clone(), &t, &f.tokens, false);
        let ckpt = adapter_grads(m, &t, &f.tokens, true);
        for (((name, _), a), b) in t.params.iter().zip(&plain).zip(&ckpt) {
            assert!(
                a.iter().any(|x| *x != 0.0),
                "{family}: {name}: zero gradient"
            );
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            let scale = a.iter().map(|x| x.abs()).fold(0f32, f32::max);
            assert!(
                d <= 1e-5 * scale.max(1e-3),
                "{family}: {name}: differs by {d}"
            );
        }
    }
}

#[test]
fn qlora_reaches_every_adapter_for_every_family() {
    for family in FAMILIES {
        let f = load_fixture(family);
        let opts = LoadOptions {
            quantize: Some(QuantizeOptions::default()),
            ..Default::default()
        };
        let mut m = load(&f, &opts);
        let t = with_method(&mut m, &Method::Qlora(all_linear(2)), 5);
        let grads = loss(&m, &f.tokens).backward().unwrap();
        for (name, v) in &t.params {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{family}: {name}: no gradient through NF4"));
            let max = g
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(max > 0.0, "{family}: {name}: zero gradient");
        }
    }
}
