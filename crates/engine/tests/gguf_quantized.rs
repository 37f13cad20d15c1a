//! GGUF weights kept in their own block types for generation (`LoadOptions::keep_gguf_types`,
//! `quant::ggml`): what is kept quantized, that rows land in Hugging Face order, and that
//! generation matches both candle's `quantized_llama` on the same file (the same quantized
//! function) and our dequantized-f32 decoder (within the error of rounding activations to 8
//! bits, which the quantized kernels do, as llama.cpp's do).
//!
//! A test binary of its own: `tests/gguf.rs` sets `CANDLE_DEQUANTIZE_ALL` for its reference,
//! which must not leak into candle's quantized reference here.

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use peft_engine::infer::generate::{generate, GenerateOptions};
use peft_engine::model::decoder::{Decoder, KvCache, LoadOptions, WeightDtype};
use peft_engine::model::gguf::open_gguf;
use peft_engine::model::linear::Base;

#[path = "gguf/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;
use fixtures::*;

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// Chat-formatted prompts, as chat sends them. (A bare continuation like "The quick brown fox"
/// measured a larger 5.5% logit difference: its logits are flatter and farther from what the
/// model was tuned on; its greedy tokens still agreed.)
const PROMPTS: [&str; 2] = [
    "<|im_start|>user\nGive me three tips for staying healthy.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
];

#[test]
fn smollm_block_types_stay_in_memory_at_about_the_file_size() {
    let path = smollm_gguf();
    let m = open_gguf(&path).unwrap();
    let q = Decoder::load(
        &m.config,
        &m.source,
        &LoadOptions::gguf_types(WeightDtype::F32),
    )
    .unwrap();
    let r = q.storage_report();
    // 30 blocks × 7 projections in Q4_1; the head is tied to the Q8_0 embedding.
    assert_eq!(
        (r.gguf_linears, r.dense_linears, r.nf4_linears),
        (210, 0, 0)
    );
    assert!(q.embed_q.is_some(), "the Q8_0 embedding stays Q8_0");
    let file = std::fs::metadata(&path).unwrap().len();
    // The file also holds the tokenizer (a few MB): weights are a bit less than the file.
    assert!(
        r.base_bytes <= file && r.base_bytes as f64 >= 0.9 * file as f64,
        "weights {} bytes for a {file}-byte file",
        r.base_bytes
    );
    // The f32 decoder of the same file: about 5.5× more.
    let dense = Decoder::load(&m.config, &m.source, &LoadOptions::default()).unwrap();
    assert!(dense.storage_report().base_bytes > 5 * r.base_bytes);
}

/// Our quantized decoder and candle's `quantized_llama` run the same kernels on the same
/// file; only summation order and RoPE layout differ (theirs interleaved on permuted rows, ours
/// rotate-half on unpermuted rows). Those float differences move some activations across an
/// 8-bit rounding boundary, and a 30-block model amplifies such flips: measured, the two
/// quantized paths differ from each other about as much as each differs from f32 (1.5–2.3% of
/// the largest prompt logit). So the bound is the type's error (4%), and greedy tokens agree
/// for the first 8.
#[test]
fn quantized_generation_matches_candle_quantized_llama() {
    use candle_transformers::models::quantized_llama::ModelWeights;
    let path = smollm_gguf();
    let m = open_gguf(&path).unwrap();
    let ours = Decoder::load(
        &m.config,
        &m.source,
        &LoadOptions::gguf_types(WeightDtype::F32),
    )
    .unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut reference = ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap();
    let ids = m.tokenizer.encode(PROMPTS[0], false).unwrap();
    let want = reference.forward(&ids_tensor(&ids), 0).unwrap();
    let got = ours
        .forward_step(&ids_tensor(&ids), &mut KvCache::new(30))
        .unwrap();
    let diff = max_abs(&(&got - &want).unwrap());
    assert!(
        diff < 0.04 * max_abs(&want),
        "prompt logits differ by {diff}"
    );

    let mut expected = Vec::new();
    let mut logits = want;
    for i in 0..8 {
        let next = logits.squeeze(0).unwrap().argmax(0).unwrap();
        let next = next.to_scalar::<u32>().unwrap();
        expected.push(next);
        logits = reference
            .forward(&ids_tensor(&[next]), ids.len() + i)
            .unwrap();
    }
    let opts = GenerateOptions::greedy(8);
    let g = generate(&ours, &m.tokenizer, &ids, &opts, &[], None, &mut |_| {}).unwrap();
    assert_eq!(g.token_ids, expected, "ours: {:?}", g.text);
}

/// Against our dequantized-f32 decoder on the same file: the weights are identical (the f32
/// path dequantizes exactly the blocks the kernel reads), so the only difference is the
/// kernels rounding each activation row to 8-bit blocks (Q8_1 for Q4_1 weights, Q8_0 for the
/// Q8_0 head): about 0.4% relative per product, compounding over 30 blocks. Measured: prompt
/// logits differ by 2.1% and 3.1% of the largest logit; we allow 4%. Greedy tokens agree for
/// the first 8 on each prompt (measured: the first flip, at a near-tie, is token 10 of the
/// first prompt).
#[test]
fn quantized_generation_matches_dequantized_f32_first_tokens() {
    let m = open_gguf(&smollm_gguf()).unwrap();
    let q = Decoder::load(
        &m.config,
        &m.source,
        &LoadOptions::gguf_types(WeightDtype::F32),
    )
    .unwrap();
    let f = Decoder::load(&m.config, &m.source, &LoadOptions::default()).unwrap();
    for prompt in PROMPTS {
        let ids = m.tokenizer.encode(prompt, false).unwrap();
        let lq = q
            .forward_step(&ids_tensor(&ids), &mut KvCache::new(30))
            .unwrap();
        let lf = f
            .forward_step(&ids_tensor(&ids), &mut KvCache::new(30))
            .unwrap();
        let diff = max_abs(&(&lq - &lf).unwrap());
        let scale = max_abs(&lf);
        eprintln!("{prompt:?}: max logit diff {diff} (scale {scale})");
        assert!(
            diff < 0.04 * scale,
            "{prompt:?}: logits differ by {diff} (scale {scale})"
        );
        let opts = GenerateOptions::greedy(8);
        let gq = generate(&q, &m.tokenizer, &ids, &opts, &[], None, &mut |_| {}).unwrap();
        let gf = generate(&f, &m.tokenizer, &ids, &opts, &[], None, &mut |_| {}).unwrap();
        assert_eq!(
            gq.token_ids, gf.token_ids,
            "{prompt:?}: {:?} vs {:?}",
            gq.text, gf.text
        );
    }
}

/// The tiny generated llama mixes Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q6_K linears (float
/// ones stay dense): every kept block type dequantizes to exactly the f32 decoder's weight,
/// q/k rows included (moved as whole quantized rows into Hugging Face order), and the logits
/// agree within the 8-bit activation rounding (random uniform weights make larger
/// activations than a trained model's: we allow 10% of the largest logit).
#[test]
fn tiny_mixed_types_keep_rows_in_hf_order_and_logits_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &tiny_metadata("llama"), &tiny_weights());
    let m = open_gguf(&path).unwrap();
    let mut q = Decoder::load(
        &m.config,
        &m.source,
        &LoadOptions::gguf_types(WeightDtype::F32),
    )
    .unwrap();
    let mut f = Decoder::load(&m.config, &m.source, &LoadOptions::default()).unwrap();
    let r = q.storage_report();
    // Per layer: 5 of 7 in block types (v_proj F32 / o_proj BF16 in layer 0; v Q5_1,
    // o F16 in layer 1 → 6 kept), plus the Q8_0 head: 5 + 6 + 1.
    assert_eq!((r.gguf_linears, r.dense_linears), (12, 3), "{r:?}");
    assert!(q.embed_q.is_none(), "an F16 embedding loads dense");
    let dense: Vec<(String, Tensor)> = f
        .linears_mut()
        .into_iter()
        .map(|(n, l)| (n, l.dense_weight().unwrap()))
        .collect();
    for ((name, lin), (_, want)) in q.linears_mut().into_iter().zip(&dense) {
        if matches!(lin.base, Base::Ggml(_)) {
            let got = lin.dense_weight().unwrap();
            assert_eq!(max_abs(&(&got - want).unwrap()), 0.0, "{name}");
        }
    }
    let ids = ids_tensor(&[1, 5, 9, 30, 31, 7, 3]);
    let lq = q.forward_step(&ids, &mut KvCache::new(2)).unwrap();
    let lf = f.forward_step(&ids, &mut KvCache::new(2)).unwrap();
    let diff = max_abs(&(&lq - &lf).unwrap());
    eprintln!("tiny: logits differ by {diff} of {}", max_abs(&lf));
    assert!(diff < 0.1 * max_abs(&lf), "logits differ by {diff}");
    assert!(diff > 0.0, "the quantized kernel really ran");
}

/// A training forward through GGUF-typed weights (QLoRA over the file's own types) goes
/// through the tiled op, which widens exactly the values the dense decoder holds: the logits
/// equal the dense decoder's to float rounding. `dequantize_all` turns the decoder into the
/// dense one.
#[test]
fn gguf_types_train_through_the_tiled_op_and_dequantize_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &tiny_metadata("llama"), &tiny_weights());
    let m = open_gguf(&path).unwrap();
    let mut q = Decoder::load(
        &m.config,
        &m.source,
        &LoadOptions::gguf_types(WeightDtype::F32),
    )
    .unwrap();
    let f = Decoder::load(&m.config, &m.source, &LoadOptions::default()).unwrap();
    let ids = ids_tensor(&[1, 5, 9]);
    let ctx = peft_engine::model::ctx::ForwardCtx {
        train: true,
        ..Default::default()
    };
    let (lq, lf) = (
        q.forward(&ids, &ctx).unwrap(),
        f.forward(&ids, &ctx).unwrap(),
    );
    let diff = max_abs(&(&lq - &lf).unwrap());
    assert!(
        diff < 1e-4 * max_abs(&lf).max(1.0),
        "logits differ by {diff}"
    );
    assert_eq!(q.dequantize_all().unwrap(), 12);
    assert_eq!(q.storage_report().gguf_linears, 0);
    q.forward(&ids, &ctx).unwrap();
}
