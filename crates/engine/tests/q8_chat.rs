//! Dense models chat over Q8_0 (`LoadOptions::q8_0`, the default generation storage of a
//! dense base, `LoadedModel::generation_storage`): a quarter of f32's bytes, and the greedy
//! tokens of our test prompts unchanged — on the bundled model and on SmolLM2 (the GGUF
//! dequantized to f32 is the dense model; its Q8_0 is made from those f32 weights).

use candle_core::{Device, Tensor};
use peft_engine::infer::generate::{generate, GenerateOptions};
use peft_engine::model::decoder::{Decoder, KvCache, LoadOptions};
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;

#[path = "gguf/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

fn greedy(d: &Decoder, m: &LoadedModel, ids: &[u32], n: usize) -> Vec<u32> {
    let opts = GenerateOptions::greedy(n);
    generate(d, &m.tokenizer, ids, &opts, &[], None, &mut |_| {})
        .unwrap()
        .token_ids
}

fn last_logits(d: &Decoder, ids: &[u32]) -> Tensor {
    let t = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    d.forward_step(&t, &mut KvCache::new(d.config.num_hidden_layers))
        .unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn the_bundled_model_keeps_its_greedy_tokens_over_q8_0() {
    let m = LoadedModel::open(&ModelSource::Bundled, OpenOptions::default()).unwrap();
    let f = m.weights(&LoadOptions::default()).unwrap();
    let f_bytes = f.storage_report().base_bytes;
    let want: Vec<Vec<u32>> = ["Once upon a time", "The little dog", "Lily wanted to"]
        .iter()
        .map(|p| greedy(&f, &m, &m.prompt_ids(p).unwrap(), 32))
        .collect();
    let q = m.weights(&LoadOptions::q8_0()).unwrap();
    let r = q.storage_report();
    // 30 of 35 linears: each block's down_proj has 172 inputs, not whole 32-blocks.
    assert_eq!((r.gguf_linears, r.dense_linears), (30, 5), "{r:?}");
    assert!(q.embed_q.is_some(), "the embedding is Q8_0 too");
    assert!(
        r.base_bytes * 2 < f_bytes,
        "{} vs f32 {f_bytes}",
        r.base_bytes
    );
    for (p, want) in ["Once upon a time", "The little dog", "Lily wanted to"]
        .iter()
        .zip(&want)
    {
        let got = greedy(&q, &m, &m.prompt_ids(p).unwrap(), 32);
        assert_eq!(&got, want, "{p:?}");
    }
}

#[test]
fn smollm2_keeps_its_first_greedy_tokens_over_q8_0() {
    let source = ModelSource::Gguf(fixtures::smollm_gguf());
    let m = LoadedModel::open(&source, OpenOptions::default()).unwrap();
    let f = m.build_weights(&LoadOptions::default()).unwrap();
    let q = m.build_weights(&LoadOptions::q8_0()).unwrap();
    for prompt in [
        "<|im_start|>user\nGive me three tips for staying healthy.<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    ] {
        let ids = m.tokenizer.encode(prompt, false).unwrap();
        let (lq, lf) = (last_logits(&q, &ids), last_logits(&f, &ids));
        let diff = max_abs(&(&lq - &lf).unwrap());
        eprintln!("{prompt:?}: Q8_0 logits differ by {diff} of {}", max_abs(&lf));
        // The 8-bit activation rounding of the kernels, as for the GGUF types (measured 3.5%).
        assert!(diff < 0.04 * max_abs(&lf), "{prompt:?}: {diff}");
        assert_eq!(greedy(&q, &m, &ids, 12), greedy(&f, &m, &ids, 12), "{prompt:?}");
    }
}

/// Chat picks the storage by itself (the engine's choice, not a front end's): a GGUF's own
/// types (its float matrices Q8_0) for SmolLM2; f32 for the 1 MB bundled model, too small to
/// gain from Q8_0; an NF4 base stays NF4.
#[test]
fn generation_storage_is_the_engines_choice() {
    let m = LoadedModel::open(&ModelSource::Bundled, OpenOptions::default()).unwrap();
    assert_eq!(
        m.generation_storage(LoadOptions::default()),
        LoadOptions::default()
    );
    let nf4 = LoadOptions::nf4(Default::default());
    assert_eq!(m.generation_storage(nf4), nf4);
    let g = LoadedModel::open(
        &ModelSource::Gguf(fixtures::smollm_gguf()),
        OpenOptions::default(),
    )
    .unwrap();
    let s = g.generation_storage(LoadOptions::default());
    assert!(s.keep_gguf_types && s.q8_0, "{s:?}");
}
